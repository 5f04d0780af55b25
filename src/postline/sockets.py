"""Listening sockets for the servers ``serve`` and ``api`` run (HTTP, SMTP submission)."""

from __future__ import annotations

import socket

from postline.config import ConfigError


def listen(host: str, port: int, label: str = "POSTLINE_HTTP_ADDR") -> socket.socket:
    """Bind and listen here, not in uvicorn: a port taken since the start-up check (another
    instance won the race) is then a ConfigError, not uvicorn's ``sys.exit(3)`` in a task."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on sockets that say so,
    # and without it every keep-alive request waits for a delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"{label} {host}:{port}: cannot listen ({exc.strerror})") from None
    return sock
