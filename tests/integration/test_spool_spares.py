"""The file spool's spare files (``spool.spares``): a deleted body's file, emptied, reused.

A new file is most of what a body costs the spool, so deleted bodies leave their
files behind, empty, for the next ones. What must hold: a delivered body's content
is gone, each spare is taken once even by two processes at once, and nothing that
scans the spool takes a spare for a body.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from datetime import timedelta
from pathlib import Path

from postline.ids import new_id
from postline.spool.files import FileSpool
from postline.spool.spares import SPARE_DIR
from postline.store.types import utcnow


def body_of(ref: str) -> bytes:
    return f"Subject: {ref}\r\n\r\n".encode() + ref.encode() * 200


async def spooled(spool: FileSpool, count: int) -> list[str]:
    refs = [new_id("em_") for _ in range(count)]
    await spool.put_many([(ref, body_of(ref)) for ref in refs])
    return refs


def spares(root: Path) -> list[Path]:
    directory = root / SPARE_DIR
    return sorted(directory.iterdir()) if directory.exists() else []


async def test_a_deleted_bodys_file_is_emptied_and_holds_the_next_body(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    [old] = await spooled(spool, 1)
    inode = (tmp_path / old[-2:] / f"{old}.eml").stat().st_ino
    await spool.delete(old)
    [spare] = spares(tmp_path)
    assert (spare.stat().st_ino, spare.stat().st_size) == (inode, 0)
    [new] = await spooled(spool, 1)
    assert (tmp_path / new[-2:] / f"{new}.eml").stat().st_ino == inode
    assert await spool.get(new) == body_of(new)
    assert spares(tmp_path) == []


async def test_two_spools_on_one_directory_never_take_the_same_spare(tmp_path: Path) -> None:
    """``postline serve`` and its delivery process share the spool: each body whole."""
    first, second = FileSpool(tmp_path), FileSpool(tmp_path)
    await first.delete_many(await spooled(first, 300))
    assert len(spares(tmp_path)) == 300
    written = await asyncio.gather(*(spooled(spool, 200) for spool in (first, second) * 2))
    refs = [ref for batch in written for ref in batch]
    for ref in refs:
        assert await second.get(ref) == body_of(ref)
    assert spares(tmp_path) == []  # 300 taken once each, 500 new files


async def test_the_orphan_scan_never_reports_a_spare(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path)
    kept = await spooled(spool, 3)
    await spool.delete_many(await spooled(spool, 3))
    assert len(spares(tmp_path)) == 3
    found = await spool.refs_older_than(utcnow() + timedelta(minutes=1))
    assert sorted(found) == sorted(kept)


async def test_a_shard_directory_removed_behind_the_spools_back_is_made_again(
    tmp_path: Path,
) -> None:
    spool = FileSpool(tmp_path)
    [ref] = await spooled(spool, 1)
    shard = tmp_path / ref[-2:]
    shutil.rmtree(shard)
    twin = new_id("em_")[:-2] + ref[-2:]  # another body of the same shard
    await spool.put_many([(twin, body_of(twin))])
    assert await spool.get(twin) == body_of(twin)
    assert oct(os.stat(shard).st_mode & 0o777) == oct(0o700)
