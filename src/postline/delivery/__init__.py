"""The delivery engine: lease jobs, route, speak SMTP, record outcomes."""
