"""The spool contract every body store implements."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

# Email ids: letters, digits and "_". Nothing that could name a path or need quoting.
_REF = re.compile(r"[A-Za-z0-9_]{1,64}")


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


class Spool(ABC):
    #: Whether bodies live in the store's database, so that they can be written in the
    #: same transaction as the rows that name them (``put_many(items, conn)``).
    shares_store: bool = False

    @abstractmethod
    async def put_many(
        self, items: Sequence[tuple[str, bytes]], conn: AsyncConnection | None = None
    ) -> None:
        """Store bodies durably (fsynced) before returning; all or none.

        ``conn``: the store transaction to write in, for spools that share it; the
        bodies are then durable when, and only if, that transaction commits.
        """

    @abstractmethod
    async def get(self, ref: str) -> bytes: ...

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
