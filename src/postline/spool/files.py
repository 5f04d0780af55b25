"""The default spool: one file per body under the data dir.

A body is written to a temporary name, fsynced, renamed into place and the
directory fsynced, so after a crash a body either exists whole or not at all.
"""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection

from postline.spool.base import (
    Spool,
    SpoolError,
    SpoolFull,
    SpoolMissing,
    check_ref,
    owner_ref,
)


class FileSpool(Spool):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, ref: str) -> Path:
        check_ref(ref)
        # Ids start with the time; their last characters are random, so shard on those
        # (a recipient's copy of a body on its email's, beside it).
        return self.root / owner_ref(ref)[-2:] / f"{ref}.eml"

    def _write_all(self, items: Sequence[tuple[str, bytes]]) -> None:
        written: list[Path] = []
        dirs: set[Path] = set()
        try:
            for ref, body in items:
                path = self._path(ref)
                # 0700 like the data dir (postline.private_files), the bodies 0600.
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    view = memoryview(body)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
                written.append(path)
                dirs.add(path.parent)
            for directory in dirs:
                dir_fd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            for path in written:
                path.unlink(missing_ok=True)
            for ref, _ in items:
                self._path(ref).with_suffix(".tmp").unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull("the spool is full") from exc
            raise SpoolError(f"cannot write to the spool: {exc.strerror}") from exc

    async def put_many(
        self, items: Sequence[tuple[str, bytes]], conn: AsyncConnection | None = None
    ) -> None:
        # Files are never part of a store transaction: fsynced here, before returning.
        # Every ref first: one bad ref found halfway would leave the bodies before it behind.
        for ref, _ in items:
            check_ref(ref)
        if items:
            await asyncio.to_thread(self._write_all, items)

    async def get(self, ref: str) -> bytes:
        path = self._path(ref)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise SpoolMissing(ref) from None

    def _unlink_all(self, paths: Sequence[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)
            # A write cut short by a crash (SIGKILL before the rename) left only this.
            path.with_suffix(".tmp").unlink(missing_ok=True)

    async def delete(self, ref: str) -> None:
        await self.delete_many([ref])

    async def delete_many(self, refs: Sequence[str]) -> None:
        # Every ref first, as in put_many; then one thread hop for the whole batch.
        paths = [self._path(ref) for ref in refs]
        if paths:
            await asyncio.to_thread(self._unlink_all, paths)

    def _scan(self, moment: datetime) -> list[str]:
        limit = moment.timestamp()
        found: list[str] = []
        # Temp files too: one a crash left mid-write is never renamed, and its email was
        # never committed, so only this scan can find it (a live write is never old).
        for path in [*self.root.glob("*/*.eml"), *self.root.glob("*/*.tmp")]:
            try:
                if path.stat().st_mtime < limit:
                    found.append(path.stem)
            except FileNotFoundError:
                continue
        return found

    async def refs_older_than(self, moment: datetime) -> list[str]:
        return await asyncio.to_thread(self._scan, moment.astimezone(UTC))
