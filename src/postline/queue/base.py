"""The queue contract every adapter implements (embedded table, Redis).

A job is leased, never popped: a worker that dies leaves a lease that
expires, and the job is leased again. Workers extend their lease while they
work and size their timeouts inside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection


class QueueError(Exception):
    """The queue could not answer (completely): callers must not guess."""


@dataclass
class Job:
    id: str
    email_id: str
    destination: str
    recipient_ids: list[str]
    body_ref: str
    due_at: datetime
    attempt: int = 0
    lease_owner: str | None = None
    lease_until: datetime | None = None
    created_at: datetime | None = field(default=None)


class Queue(ABC):
    #: Whether the queue lives in the same database as the store, so that jobs
    #: can be written in the same transaction as the rows they belong to.
    shares_store: bool = False

    @abstractmethod
    async def enqueue(self, jobs: Sequence[Job], conn: AsyncConnection | None = None) -> None:
        """Add jobs, at most one per (email_id, destination).

        A job whose pair already has a job (queued earlier, or earlier in
        ``jobs``) is skipped and the existing one kept, whatever its state. The
        sweep that rebuilds jobs from the database after a queue loss
        (``postline.recovery``) relies on this to run again and again safely.
        ``conn``: the store transaction to write in, for queues that share it.
        """

    @abstractmethod
    async def lease(self, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        """Claim up to ``limit`` due jobs atomically for ``owner``, sorted by due time.

        Fair across destinations: one due job per destination in turn, the one
        served least recently first, round after round, so that a destination
        with a huge backlog cannot starve the others, even at ``limit=1``. An
        expired lease counts as due.
        """

    @abstractmethod
    async def extend(self, job: Job, lease_seconds: float) -> bool:
        """Push the lease further out; False if it was lost to another worker."""

    @abstractmethod
    async def ack(self, job: Job, conn: AsyncConnection | None = None) -> None:
        """The job is finished: remove it."""

    @abstractmethod
    async def retry(
        self,
        job: Job,
        due_at: datetime,
        recipient_ids: Sequence[str],
        conn: AsyncConnection | None = None,
    ) -> None:
        """Release the job to run again at ``due_at`` for the recipients still pending."""

    @abstractmethod
    async def release(self, job: Job) -> None:
        """Give an unfinished job back now (graceful shutdown), attempt unchanged."""

    @abstractmethod
    async def recover_expired(self) -> int:
        """Free leases whose holder is gone; return how many."""

    @abstractmethod
    async def body_refs(self) -> set[str]:
        """Every body referenced by a pending or leased job; raise QueueError, never guess."""

    @abstractmethod
    async def depth(self) -> dict[str, int]:
        """Jobs per destination domain (pending and leased)."""

    @abstractmethod
    async def in_flight(self) -> dict[str, int]:
        """Leased jobs per destination domain."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
