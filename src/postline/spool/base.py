"""The spool contract every body store implements."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.store.gathering import GroupRead

# Email ids: letters, digits and "_". Nothing that could name a path or need quoting.
_REF = re.compile(r"[A-Za-z0-9_]{1,64}")
# A recipient's own copy of an email's body: the email's ref, "_r" and its position.
_COPY = re.compile(r"([A-Za-z0-9_]+)_r([1-9][0-9]{0,5})")


class SpoolError(Exception):
    """The spool could not do what was asked; nothing was half-written."""


class SpoolFull(SpoolError):
    """No space left: the API answers 507 and accepts nothing."""


class SpoolMissing(SpoolError):
    """A body that should exist does not."""


def check_ref(ref: str) -> str:
    """Refuse a reference that could escape a directory or overflow a key column.

    Every adapter checks the same way, so a ref one spool accepts is never
    refused by another; ``fullmatch`` so a trailing newline cannot slip through.
    """
    if not _REF.fullmatch(ref):
        raise SpoolError(f"invalid body reference {ref!r}")
    return ref


def copy_ref(ref: str, position: int) -> str:
    """The reference of the copy of body ``ref`` sent to the recipient at ``position``.

    A tracked email with several recipients has one body per recipient, since each
    copy's tokens name its own recipient (``postline.tracking``). The first copy is
    stored under the email's own ref, so whatever reads "the email's body" (the
    content endpoint, a DSN's quoted headers) finds one; the others under
    ``{ref}_r{position}``, which an email id never looks like (``owner_ref``).
    """
    return ref if position == 0 else f"{ref}_r{position}"


def copy_refs(ref: str, bodies: int) -> list[str]:
    """Every reference of an email whose spool holds ``bodies`` copies (1: one for all)."""
    return [copy_ref(ref, position) for position in range(max(bodies, 1))]


def owner_ref(ref: str) -> str:
    """The email's own ref of a recipient's copy (``copy_ref``); any other ref itself.

    Orphan cleanup keeps a copy exactly while its email's own ref is kept, and the
    file spool shards a copy beside it.
    """
    match = _COPY.fullmatch(ref)
    return match.group(1) if match else ref


#: Bodies read together at most: a delivery engine's window is 100.
READ_BATCH = 100


class Spool(ABC):
    #: Whether bodies live in the store's database, so that they can be written in the
    #: same transaction as the rows that name them (``put_many(items, conn)``).
    shares_store: bool = False

    def __init__(self) -> None:
        #: Bodies asked for at once, read together (``read_many``): the deliveries that
        #: start at the same time read theirs in one trip to a thread or one statement,
        #: where a trip each cost the delivery process more than the reading
        #: (docs/PERFORMANCE.md, stop 34).
        self._reads: GroupRead[str, bytes] = GroupRead(
            self.read_many, name="spool reads", max_batch=READ_BATCH
        )

    @abstractmethod
    async def put_many(
        self, items: Sequence[tuple[str, bytes]], conn: AsyncConnection | None = None
    ) -> None:
        """Store bodies durably (fsynced) before returning; all or none.

        ``conn``: the store transaction to write in, for spools that share it; the
        bodies are then durable when, and only if, that transaction commits.
        """

    async def get(self, ref: str) -> bytes:
        """The body of ``ref``; ``SpoolMissing`` if there is none."""
        check_ref(ref)
        return await self._reads.get(ref)

    @abstractmethod
    async def read_many(self, refs: list[str]) -> list[bytes | Exception]:
        """The body of each ref (checked already), in order, or the error its own read
        met (``SpoolMissing`` for none): only that ref's caller hears it."""

    @abstractmethod
    async def delete(self, ref: str) -> None:
        """Remove a body; removing one that is already gone is not an error."""

    @abstractmethod
    async def refs_older_than(self, moment: datetime) -> list[str]:
        """Bodies written before ``moment``: the candidates for orphan cleanup."""

    async def delete_many(self, refs: Sequence[str]) -> None:
        """Remove many bodies (housekeeping frees whole batches); gone ones are no error.

        Adapters override it to pay one round trip, not one per body.
        """
        for ref in refs:
            await self.delete(ref)

    async def put(self, ref: str, body: bytes) -> None:
        await self.put_many([(ref, body)])

    async def write_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store bodies, all or none, not yet durable: ``sync`` makes them so.

        For the accept path, which writes a batch's bodies while the rest of it is still
        being built and makes the whole group durable at once before its commit. Where
        writing and making durable are one step, this is ``put_many``.
        """
        await self.put_many(items)

    async def sync(self) -> None:  # noqa: B027 - nothing to do where writes are durable
        """Make every body ``write_many`` stored so far durable."""
