"""Delivery jobs: one per (email, destination domain), leased by workers."""

from postline.queue.base import Job, Queue, QueueError, Tokens

__all__ = ["Job", "Queue", "QueueError", "Tokens"]
