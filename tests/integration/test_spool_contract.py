"""The spool contract (file spool today; the database spool joins with scale-out)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from postline.spool import Spool, SpoolError, SpoolMissing
from postline.spool.files import FileSpool
from postline.store.types import utcnow


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return FileSpool(tmp_path / "spool")


async def test_put_get_delete(spool: Spool) -> None:
    await spool.put_many([("em_a1", b"one"), ("em_b2", b"two\r\n" * 1000)])
    assert await spool.get("em_a1") == b"one"
    assert await spool.get("em_b2") == b"two\r\n" * 1000
    await spool.delete("em_a1")
    await spool.delete("em_a1")  # deleting twice is fine
    with pytest.raises(SpoolMissing):
        await spool.get("em_a1")


async def test_refs_older_than(spool: Spool) -> None:
    await spool.put("em_old1", b"x")
    assert await spool.refs_older_than(utcnow() - timedelta(hours=1)) == []
    assert await spool.refs_older_than(utcnow() + timedelta(seconds=5)) == ["em_old1"]


async def test_references_cannot_escape_the_spool(spool: Spool) -> None:
    for ref in ("../x", "a/b", "", "x" * 100):
        with pytest.raises(SpoolError):
            await spool.put(ref, b"x")


async def test_no_temporary_files_left(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    await spool.put_many([(f"em_{i}", b"body") for i in range(20)])
    leftovers = [p for p in (tmp_path / "spool").rglob("*") if p.suffix == ".tmp"]
    assert leftovers == []
    modes = {oct(os.stat(p).st_mode & 0o777) for p in (tmp_path / "spool").rglob("*.eml")}
    assert modes == {"0o600"}
