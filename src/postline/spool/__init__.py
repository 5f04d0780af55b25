"""Message bodies, kept durable from accept until no one needs them."""

from postline.spool.base import Spool, SpoolError, SpoolFull, SpoolMissing

__all__ = ["Spool", "SpoolError", "SpoolFull", "SpoolMissing"]
