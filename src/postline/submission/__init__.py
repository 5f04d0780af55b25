"""SMTP submission: applications that only speak SMTP send through Postline with an API
key as their password, and their mail is tracked like mail sent to the HTTP API."""
