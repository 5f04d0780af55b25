"""The default spool: one file per body under the data dir.

A body is written to a temporary name and renamed into place, so a name holds a
whole body or nothing; then the batch is made durable at once, before
``put_many`` returns (and so before its email is committed and accepted). On
Linux that is one ``syncfs`` of the spool's filesystem for the whole batch: the
journal commits every body, name and directory in one go, where an ``fsync``
per body pays a journal commit each (a loop of the same os calls on the
machine of docs/PERFORMANCE.md: 500 bodies of 5 KB in 15 to 28 ms against 110 to
330 ms with eight threads fsyncing; one body 1.3 ms either way; bench/spool.py
times the spool itself). Elsewhere each body and directory is fsynced. A crash before it returns
leaves at most bodies no committed email names, which orphan cleanup removes.
The accept path writes a batch's bodies chunk by chunk as they are built
(``write_many``) and syncs once for its group commit (``sync``).

A deleted body's file is emptied and kept as a spare for a later body
(``spool.spares``): creating a file is what a body costs most.

Reads go to a thread, as writes do, one trip for the bodies asked for together
(``Spool.get``): with a thread hop per 5 KB body, reading bodies was 6.7% of the
delivery process's samples, most of it the hop (docs/PERFORMANCE.md, stop 34).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable, Sequence
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
from postline.spool.spares import Spares
from postline.spool.spread import spread_subdirectories
from postline.spool.syncfs import linux_syncfs

_NEW = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


class FileSpool(Spool):
    def __init__(self, root: Path, *, fsync_each: bool = False) -> None:
        super().__init__()
        self.root = root
        self._root_name = os.fspath(root)
        #: Files of deleted bodies, kept empty for new ones: a new file costs far more.
        self._spares = Spares(self._root_name)
        #: Shard directories this spool has seen exist (none is ever removed).
        self._shards: set[str] = set()
        #: Makes a whole filesystem durable (``syncfs``), or None: fsync body by body
        #: (off Linux, or asked for).
        self._syncfs: Callable[[int], None] | None = None if fsync_each else linux_syncfs()

    def _path(self, ref: str) -> Path:
        check_ref(ref)
        # Ids start with the time; their last characters are random, so shard on those
        # (a recipient's copy of a body on its email's, beside it).
        return self.root / owner_ref(ref)[-2:] / f"{ref}.eml"

    def _name(self, ref: str) -> str:
        """``_path`` as a string, for the batch loops."""
        check_ref(ref)
        return f"{self._root_name}/{owner_ref(ref)[-2:]}/{ref}.eml"

    def _open_new(self, tmp: str) -> int:
        """``tmp`` open for a new body: a spare file renamed to it, else a new file (0600;
        its shard directory 0700, like the data dir: ``postline.private_files``)."""
        shard = os.path.dirname(tmp)
        if shard not in self._shards:
            if not self._shards:  # before the first shard this spool makes (``spool.spread``)
                os.makedirs(self._root_name, mode=0o700, exist_ok=True)
                spread_subdirectories(self._root_name)
            os.makedirs(shard, mode=0o700, exist_ok=True)
            self._shards.add(shard)
        if self._spares.take(tmp):
            return os.open(tmp, os.O_WRONLY | os.O_TRUNC)
        try:
            return os.open(tmp, _NEW, 0o600)
        except FileNotFoundError:  # the shard directory was removed behind our back
            os.makedirs(shard, mode=0o700, exist_ok=True)
            return os.open(tmp, _NEW, 0o600)

    def _write_all(self, items: Sequence[tuple[str, bytes]], *, durable: bool = True) -> None:
        """Write each body under a temporary name, then rename it; with ``durable``, then
        one ``syncfs`` (fsync body by body, and each directory, never waits for ``sync``)."""
        written: list[str] = []
        dirs: set[str] = set()
        each = self._syncfs is None
        try:
            for ref, body in items:
                name = self._name(ref)
                tmp = name.removesuffix(".eml") + ".tmp"
                fd = self._open_new(tmp)
                try:
                    view = memoryview(body)
                    while view:
                        view = view[os.write(fd, view) :]
                    if each:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, name)
                written.append(name)
                dirs.add(os.path.dirname(name))
            if self._syncfs is None:
                for directory in dirs:
                    dir_fd = os.open(directory, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
            elif durable:
                self._sync_filesystem()
        except OSError as exc:
            # Best effort: the failure may be the directory itself (not one, gone, full).
            for name in [
                *written,
                *(self._name(ref).removesuffix(".eml") + ".tmp" for ref, _ in items),
            ]:
                with contextlib.suppress(OSError):
                    os.unlink(name)
            raise _spool_error(exc) from exc

    def _sync_filesystem(self) -> None:
        """One syncfs, through any descriptor on the filesystem."""
        assert self._syncfs is not None
        dir_fd = os.open(self._root_name, os.O_RDONLY)
        try:
            self._syncfs(dir_fd)
        finally:
            os.close(dir_fd)

    async def put_many(
        self, items: Sequence[tuple[str, bytes]], conn: AsyncConnection | None = None
    ) -> None:
        # Files are never part of a store transaction: fsynced here, before returning.
        # Every ref first: one bad ref found halfway would leave the bodies before it behind.
        for ref, _ in items:
            check_ref(ref)
        if not items:
            return
        await asyncio.to_thread(self._write_all, items)

    async def write_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        for ref, _ in items:
            check_ref(ref)
        if items:
            await asyncio.to_thread(self._write_all, items, durable=False)

    async def sync(self) -> None:
        if self._syncfs is None:
            return  # every body and directory was fsynced as it was written
        try:
            await asyncio.to_thread(self._sync_filesystem)
        except OSError as exc:
            raise _spool_error(exc) from exc

    async def read_many(self, refs: list[str]) -> list[bytes | Exception]:
        names = [self._name(ref) for ref in refs]
        return await asyncio.to_thread(_read_all, names, refs)

    def _unlink_all(self, paths: Sequence[Path]) -> None:
        # os calls on names: pathlib's objects cost more than the unlink on a busy engine.
        for path in paths:
            name = os.fspath(path)
            if not self._spares.keep(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
            # A write cut short by a crash (SIGKILL before the rename) left only the .tmp.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name.removesuffix(".eml") + ".tmp")

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


def _spool_error(exc: OSError) -> SpoolError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return SpoolFull("the spool is full")
    return SpoolError(f"cannot write to the spool: {exc.strerror}")


def _read_all(names: list[str], refs: list[str]) -> list[bytes | Exception]:
    """Each body, or the error of its own read (only its caller hears it)."""
    bodies: list[bytes | Exception] = []
    for name, ref in zip(names, refs, strict=True):
        try:
            with open(name, "rb") as file:
                bodies.append(file.read())
        except FileNotFoundError:
            bodies.append(SpoolMissing(ref))
        except OSError as exc:
            bodies.append(exc)
    return bodies
