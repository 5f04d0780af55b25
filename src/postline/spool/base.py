"""The spool contract every body store implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime


class SpoolError(Exception):
    """The spool could not do what was asked; nothing was half-written."""


class SpoolFull(SpoolError):
    """No space left: the API answers 507 and accepts nothing."""


class SpoolMissing(SpoolError):
    """A body that should exist does not."""


class Spool(ABC):
    @abstractmethod
    async def put_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store bodies durably (fsynced) before returning; all or none."""

    @abstractmethod
    async def get(self, ref: str) -> bytes: ...

    @abstractmethod
    async def delete(self, ref: str) -> None:
        """Remove a body; removing one that is already gone is not an error."""

    @abstractmethod
    async def refs_older_than(self, moment: datetime) -> list[str]:
        """Bodies written before ``moment``: the candidates for orphan cleanup."""

    async def put(self, ref: str, body: bytes) -> None:
        await self.put_many([(ref, body)])
