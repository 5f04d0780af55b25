"""The spool contract, run against the file spool and the database spool on both stores."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from postline.config import normalize_database_url
from postline.spool import Spool, SpoolError, SpoolMissing
from postline.spool.base import copy_ref, copy_refs, owner_ref
from postline.spool.database import DatabaseSpool
from postline.spool.files import FileSpool
from postline.spool.syncfs import linux_syncfs
from postline.store.db import Database
from postline.store.migrate import upgrade_async
from postline.store.types import utcnow

FUTURE = timedelta(seconds=5)


@pytest.fixture(
    params=["file", "file-fsync", "sqlite", "postgresql"],
    ids=["file", "file-fsync-each", "database-sqlite", "database-postgresql"],
)
def store_backend(request: pytest.FixtureRequest) -> str:
    """Overrides conftest's: where bodies live, files (made durable by one syncfs per
    batch, or by an fsync per body as off Linux) or the database spool on each store."""
    return str(request.param)


@pytest.fixture
def spool_database_url(store_backend: str, request: pytest.FixtureRequest) -> str | None:
    """The database behind the database spool (conftest's ``database_url``); None for files."""
    if store_backend.startswith("file"):
        return None
    return normalize_database_url(str(request.getfixturevalue("database_url")))


@pytest_asyncio.fixture
async def open_spool(
    spool_database_url: str | None, store_backend: str, tmp_path: Path
) -> AsyncIterator[Callable[[], Spool]]:
    """Open spools over one store: each call is another process, or host, reaching it."""
    if spool_database_url is not None:
        await upgrade_async(spool_database_url)
    databases: list[Database] = []

    def open_one() -> Spool:
        if spool_database_url is None:
            return FileSpool(tmp_path / "spool", fsync_each=store_backend == "file-fsync")
        db = Database(spool_database_url)
        databases.append(db)
        return DatabaseSpool(db)

    try:
        yield open_one
    finally:
        for db in databases:
            await db.close()


@pytest.fixture
def spool(open_spool: Callable[[], Spool]) -> Spool:
    return open_spool()


async def test_put_get_delete(spool: Spool) -> None:
    await spool.put_many([("em_a1", b"one"), ("em_b2", b"two\r\n" * 1000)])
    assert await spool.get("em_a1") == b"one"
    assert await spool.get("em_b2") == b"two\r\n" * 1000
    await spool.delete("em_a1")
    await spool.delete("em_a1")  # deleting twice is fine
    with pytest.raises(SpoolMissing):
        await spool.get("em_a1")
    assert await spool.get("em_b2") == b"two\r\n" * 1000


async def test_delete_many(spool: Spool) -> None:
    await spool.put_many([("em_a1", b"one"), ("em_b2", b"two"), ("em_c3", b"three")])
    # A bad ref anywhere in the batch: refused before anything is deleted.
    with pytest.raises(SpoolError):
        await spool.delete_many(["em_a1", "../etc/passwd"])
    assert await spool.get("em_a1") == b"one"
    # Refs already gone (or never written) are fine, as with delete.
    await spool.delete_many(["em_a1", "em_b2", "em_never", "em_a1"])
    await spool.delete_many([])
    for ref in ("em_a1", "em_b2"):
        with pytest.raises(SpoolMissing):
            await spool.get(ref)
    assert await spool.get("em_c3") == b"three"


async def test_bodies_come_back_byte_for_byte(spool: Spool) -> None:
    body = bytes(range(256)) * 4096 + b"\x00\r\n.\r\n"  # 1 MB, every byte value, NULs
    await spool.put("em_binary", body)
    assert await spool.get("em_binary") == body


async def test_another_process_reads_what_one_wrote(open_spool: Callable[[], Spool]) -> None:
    api, worker = open_spool(), open_spool()
    await api.put_many([("em_shared1", b"one"), ("em_shared2", b"two")])
    assert await worker.get("em_shared1") == b"one"
    await worker.delete("em_shared1")
    with pytest.raises(SpoolMissing):
        await api.get("em_shared1")
    assert await api.get("em_shared2") == b"two"


async def test_get_of_an_unknown_ref_is_spool_missing(spool: Spool) -> None:
    with pytest.raises(SpoolMissing):
        await spool.get("em_never_put")


async def test_bodies_asked_for_at_once_each_get_their_own_answer(spool: Spool) -> None:
    """Reads that start together may share a trip (the file spool's group read): a
    missing body fails its own caller only, and every other caller gets its own body."""
    refs = [f"em_together{n}" for n in range(30)]
    await spool.put_many([(ref, ref.encode()) for ref in refs if ref != "em_together7"])
    answers = await asyncio.gather(*(spool.get(ref) for ref in refs), return_exceptions=True)
    assert isinstance(answers[7], SpoolMissing)
    assert [a for n, a in enumerate(answers) if n != 7] == [
        ref.encode() for ref in refs if ref != "em_together7"
    ]


async def test_delete_of_a_missing_ref_is_fine(spool: Spool) -> None:
    await spool.delete("em_never_put")
    await spool.put("em_once", b"x")
    await spool.delete("em_once")
    await spool.delete("em_once")
    with pytest.raises(SpoolMissing):
        await spool.get("em_once")


async def test_put_again_replaces_the_body(spool: Spool) -> None:
    await spool.put("em_again", b"first")
    await spool.put_many([("em_again", b"second, longer than the first")])
    assert await spool.get("em_again") == b"second, longer than the first"
    assert await spool.refs_older_than(utcnow() + FUTURE) == ["em_again"]


async def test_a_ref_twice_in_one_batch_keeps_the_last_body(spool: Spool) -> None:
    await spool.put_many([("em_twice", b"first"), ("em_twice", b"last")])
    assert await spool.get("em_twice") == b"last"


async def test_empty_batch_is_a_no_op(spool: Spool) -> None:
    await spool.put_many([])
    assert await spool.refs_older_than(utcnow() + FUTURE) == []


@pytest.mark.parametrize("bad_at", [0, 1, 2])
async def test_put_many_is_all_or_none(spool: Spool, bad_at: int) -> None:
    await spool.put("em_kept", b"before")
    batch = [("em_new1", b"1"), ("em_kept", b"overwritten?"), ("em_new2", b"2")]
    batch.insert(bad_at, ("../escape", b"bad"))
    with pytest.raises(SpoolError):
        await spool.put_many(batch)
    for ref in ("em_new1", "em_new2"):
        with pytest.raises(SpoolMissing):
            await spool.get(ref)
    assert await spool.get("em_kept") == b"before"
    assert await spool.refs_older_than(utcnow() + FUTURE) == ["em_kept"]


async def test_refs_older_than(spool: Spool) -> None:
    await spool.put("em_old1", b"x")
    assert await spool.refs_older_than(utcnow() - timedelta(hours=1)) == []
    assert await spool.refs_older_than(utcnow() + FUTURE) == ["em_old1"]


async def test_refs_older_than_excludes_newer_bodies(spool: Spool) -> None:
    await spool.put("em_old2", b"x")
    # Time has to pass between the two writes; file times are a few ms coarse.
    await asyncio.sleep(0.05)
    moment = utcnow()
    await asyncio.sleep(0.05)
    await spool.put_many([("em_new3", b"y"), ("em_new4", b"z")])
    assert await spool.refs_older_than(moment) == ["em_old2"]
    assert sorted(await spool.refs_older_than(utcnow() + FUTURE)) == [
        "em_new3",
        "em_new4",
        "em_old2",
    ]


@pytest.mark.parametrize("ref", ["../x", "a/b", "", "x" * 65, "em_a\n", "em a", "em-é"])
async def test_references_cannot_escape_the_spool(spool: Spool, ref: str) -> None:
    with pytest.raises(SpoolError) as put_error:
        await spool.put(ref, b"x")
    assert not isinstance(put_error.value, SpoolMissing)
    with pytest.raises(SpoolError):
        await spool.get(ref)
    with pytest.raises(SpoolError):
        await spool.delete(ref)
    assert await spool.refs_older_than(utcnow() + FUTURE) == []


async def test_a_ref_of_64_characters_is_fine(spool: Spool) -> None:
    ref = "em_" + "x" * 61
    await spool.put(ref, b"x")
    assert await spool.get(ref) == b"x"


async def test_a_recipients_copies_are_bodies_like_any_other(spool: Spool) -> None:
    """A tracked email's copy per recipient (``copy_ref``): kept, read, listed and
    removed on its own, beside its email's body and not mistaken for it."""
    email_id = "em_01m95a5vv69pqrjv35dsc0sb1z"
    refs = copy_refs(email_id, 3)
    assert refs == [email_id, f"{email_id}_r1", f"{email_id}_r2"]
    await spool.put_many([(ref, ref.encode()) for ref in refs])
    assert [await spool.get(ref) for ref in refs] == [ref.encode() for ref in refs]
    assert sorted(await spool.refs_older_than(utcnow() + FUTURE)) == sorted(refs)
    await spool.delete_many(refs[1:])
    assert await spool.get(email_id) == email_id.encode()
    for ref in refs[1:]:
        with pytest.raises(SpoolMissing):
            await spool.get(ref)


def test_a_copy_names_its_email() -> None:
    assert owner_ref(copy_ref("em_abc", 7)) == "em_abc"
    assert copy_ref("em_abc", 0) == "em_abc" and owner_ref("em_abc") == "em_abc"
    # Only "_r" and a position from 1 is a copy: an id's own characters never are.
    for ref in ("em_abc_r0", "em_abc_r", "em_abc_rx", "em_r1x", "x_r01"):
        assert owner_ref(ref) == ref
    assert copy_refs("em_abc", 1) == ["em_abc"] == copy_refs("em_abc", 0)


async def test_a_copy_is_filed_beside_its_email(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    await spool.put_many([("em_abc", b"x"), (copy_ref("em_abc", 12), b"y")])
    assert sorted(p.name for p in (tmp_path / "spool" / "bc").iterdir()) == [
        "em_abc.eml",
        "em_abc_r12.eml",
    ]


async def test_no_temporary_files_left(tmp_path: Path) -> None:
    spool = FileSpool(tmp_path / "spool")
    await spool.put_many([(f"em_{i}", b"body") for i in range(20)])
    leftovers = [p for p in (tmp_path / "spool").rglob("*") if p.suffix == ".tmp"]
    assert leftovers == []
    modes = {oct(os.stat(p).st_mode & 0o777) for p in (tmp_path / "spool").rglob("*.eml")}
    assert modes == {"0o600"}


@pytest.mark.parametrize("fsync_each", [False, True], ids=["syncfs", "fsync-each"])
async def test_a_batch_that_cannot_be_written_whole_leaves_nothing(
    tmp_path: Path, fsync_each: bool
) -> None:
    """One body of a large batch cannot be written (a file stands where its directory
    should be): the bodies written before it are removed, and the error is the spool's."""
    root = tmp_path / "spool"
    root.mkdir()
    (root / "zz").write_bytes(b"not a directory")
    # 64 refs over 64 directories (a directory is named by a ref's last two characters).
    batch = [(f"em_{i:03d}{chr(97 + i % 26)}{chr(97 + i // 26)}", b"body") for i in range(64)]
    batch.append(("em_blockedzz", b"body"))
    spool = FileSpool(root, fsync_each=fsync_each)
    with pytest.raises(SpoolError):
        await spool.put_many(batch)
    left = sorted(p.name for p in root.rglob("*") if p.is_file())
    assert left == ["zz"]


def counting_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[FileSpool, list[int], list[int]]:
    """A file spool whose syncfs calls are counted, and every os.fsync (none made)."""
    if linux_syncfs() is None:
        pytest.skip("syncfs is Linux's")
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", fsyncs.append)
    spool = FileSpool(tmp_path / "spool")
    calls: list[int] = []
    real = spool._syncfs
    assert real is not None

    def counted(fd: int) -> None:
        calls.append(fd)
        real(fd)

    spool._syncfs = counted
    return spool, calls, fsyncs


async def test_a_batch_is_made_durable_by_one_syncfs_on_linux(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Linux no body is fsynced on its own: the batch's durability is the one syncfs."""
    spool, calls, fsyncs = counting_syncfs(tmp_path, monkeypatch)
    await spool.put_many([(f"em_{i:03d}ab", b"body") for i in range(40)])
    assert (len(calls), fsyncs) == (1, [])


async def test_bodies_written_in_chunks_are_made_durable_by_one_syncfs_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accept path's way (``write_many`` per chunk as the bodies are built, then
    ``sync`` for the group): each body readable once written, none fsynced on its own,
    and one syncfs in all, at ``sync``."""
    spool, calls, fsyncs = counting_syncfs(tmp_path, monkeypatch)
    for chunk in range(3):
        refs = [f"em_{chunk}{i:02d}ab" for i in range(25)]
        await spool.write_many([(ref, ref.encode()) for ref in refs])
        assert [await spool.get(ref) for ref in refs] == [ref.encode() for ref in refs]
    assert (calls, fsyncs) == ([], [])
    await spool.sync()
    assert (len(calls), fsyncs) == (1, [])


async def test_written_bodies_can_be_read_and_synced_on_every_spool(spool: Spool) -> None:
    """``write_many`` then ``sync`` on every adapter: where writes are durable at once
    (the database, fsync per body) ``sync`` has nothing left to do."""
    await spool.write_many([("em_w1", b"one"), ("em_w2", b"two")])
    await spool.sync()
    assert [await spool.get("em_w1"), await spool.get("em_w2")] == [b"one", b"two"]
