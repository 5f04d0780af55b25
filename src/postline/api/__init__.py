"""The HTTP API (FastAPI): routers that validate, call the core, and shape answers."""
