"""A full disk under the spool or the database: the API answers 507 and keeps nothing.

The filesystems are really full: the test mounts two small tmpfs (one for the spool,
one for the SQLite database) and fills them with a file, so every ``ENOSPC`` comes from
the kernel. Mounting needs root; where the machine refuses, the test is skipped with
the reason ``mount`` gave.

"Nothing half-way" is checked where it could hide: no email, recipient, event, job or
idempotency row, no body left in the spool (whole or ``.tmp``), and the free space of
the spool back to what it was, so a batch whose first bodies fitted left none behind.
Once space is back, the refused requests are sent again and everything, old and new,
is delivered exactly once (the crash-suite invariants).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from postline.spool.spares import SPARE_DIR
from postline.store.schema import (
    email_recipients,
    events,
    idempotency_keys,
    queue_jobs,
    sent_emails,
)
from tests.crash.invariants import Expectation, check_invariants, received_copies
from tests.harness.capability import missing
from tests.harness.fake_mx import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest

PAGE = 4096


@dataclass
class Tmpfs:
    """A small tmpfs this test mounted, and a file that fills it on demand."""

    path: Path

    @property
    def filler(self) -> Path:
        return self.path / "filler"

    def free_bytes(self) -> int:
        stat = os.statvfs(self.path)
        return stat.f_bavail * stat.f_frsize

    def fill(self, leave: int = 0) -> None:
        """Write until the kernel says ENOSPC, then give back ``leave`` bytes."""
        self.free()
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for chunk in (64 * 1024, PAGE, 1):
                block = b"\0" * chunk
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block)
            if leave:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave))
        finally:
            os.close(fd)
        assert self.free_bytes() <= leave, (self.free_bytes(), leave)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


def mount_tmpfs(path: Path, size: str) -> Iterator[Tmpfs]:
    """Mount a tmpfs of ``size`` at ``path`` for one test, or say why not (``missing``:
    a skip on a laptop, a failure in CI, where this, the only 507 test, must run)."""
    path.mkdir(parents=True)
    if shutil.which("mount") is None:
        missing("mount", "no mount command: cannot make a small filesystem to fill")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
        missing("mount", f"cannot mount a tmpfs (needs root): {reason}")
    try:
        yield Tmpfs(path)
    finally:
        # Lazily if still busy: a failed test may leave a file open until collected.
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


@pytest.fixture
def spool_disk(tmp_path: Path) -> Iterator[Tmpfs]:
    yield from mount_tmpfs(tmp_path / "spool-disk", "1m")


@pytest.fixture
def db_disk(tmp_path: Path) -> Iterator[Tmpfs]:
    yield from mount_tmpfs(tmp_path / "db-disk", "8m")


def spool_files(root: Path) -> list[str]:
    """Every body in the spool, whole (``.eml``) or not (``.tmp``); not the spare files,
    which hold none (``spool.spares``: emptied when their body was removed)."""
    return sorted(
        str(p.relative_to(root))
        for p in root.glob("*/*")
        if p.is_file() and (p.parent.name != SPARE_DIR or p.stat().st_size)
    )


async def store_counts(app: PostlineUnderTest) -> dict[str, int]:
    counts = {}
    async with app.services.db.read() as conn:
        for table in (sent_emails, email_recipients, events, queue_jobs, idempotency_keys):
            count = await conn.scalar(select(func.count()).select_from(table))
            counts[table.name] = int(count or 0)
    return counts


def email(to: str, text: str = "Hello from the disk-full test") -> dict[str, Any]:
    return {"from": "Sender <sender@example.test>", "to": to, "subject": "Hi", "text": text}


def assert_storage_full(response: httpx.Response) -> None:
    assert response.status_code == 507, f"{response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/problem+json", response.headers
    assert response.headers.get("retry-after"), response.headers
    problem = response.json()
    assert problem["status"] == 507, problem
    assert problem["title"] == "Insufficient storage", problem
    assert "full" in problem["detail"] and "nothing was accepted" in problem["detail"], problem


def checkpoint(database: Path) -> None:
    """Move the WAL into the database file and empty it, so the next commit must grow it."""
    conn = sqlite3.connect(database)
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.close()
    assert busy == 0, "a reader kept the WAL from being truncated"


async def test_full_spool_or_database_answers_507_and_keeps_nothing(
    spool_disk: Tmpfs, db_disk: Tmpfs, postline_factory: Factory, fake_mx: FakeMX
) -> None:
    database = db_disk.path / "postline.db"
    app = await postline_factory(
        engine=False, spool_url=f"file://{spool_disk.path}", database_url=f"sqlite:///{database}"
    )
    accepted: dict[str, list[str]] = {}
    for i in range(10):
        sent = await app.send(to=f"before{i}@dest.test")
        accepted[sent["id"]] = [f"before{i}@dest.test"]
    baseline = await store_counts(app)
    bodies = spool_files(spool_disk.path)
    assert len(bodies) == 10, bodies
    refused = 0

    # 1. Not one page left in the spool.
    spool_disk.fill()
    response = await app.client.post("/v1/emails", json=email("full@dest.test"), headers=app.auth())
    assert_storage_full(response)
    refused += 1
    assert await store_counts(app) == baseline
    assert spool_files(spool_disk.path) == bodies

    # 2. Room for the first bodies of a batch, not for all: all or none, and the
    # bodies that fitted are removed again (the free space comes back to the page).
    spool_disk.fill(leave=8 * PAGE)
    room = spool_disk.free_bytes()
    batch = [email(f"batch{i}@dest.test", text="x" * 6000) for i in range(20)]
    idempotency = {"Idempotency-Key": "disk-full-batch", **app.auth()}
    response = await app.client.post("/v1/emails/batch", json=batch, headers=idempotency)
    assert_storage_full(response)
    refused += len(batch)
    assert await store_counts(app) == baseline
    assert spool_files(spool_disk.path) == bodies
    assert spool_disk.free_bytes() == room

    # 3. The database's disk is full, the spool has room: the body is written first,
    # the commit fails, and the body is removed again.
    spool_disk.free()
    checkpoint(database)
    db_disk.fill()
    response = await app.client.post(
        "/v1/emails", json=email("dbfull@dest.test"), headers=app.auth()
    )
    assert_storage_full(response)
    refused += 1
    db_disk.free()
    assert await store_counts(app) == baseline
    assert spool_files(spool_disk.path) == bodies

    # 4. Space is back: the refused batch goes through under the same Idempotency-Key
    # (the refusal kept no claim on it), and everything is delivered once.
    response = await app.client.post("/v1/emails/batch", json=batch, headers=idempotency)
    assert response.status_code == 202, response.text
    assert "idempotent-replayed" not in response.headers
    for item in response.json()["data"]:
        accepted[item["id"]] = [r["address"] for r in item["recipients"]]
    for address in ("full@dest.test", "dbfull@dest.test"):
        sent = await app.send(to=address)
        accepted[sent["id"]] = [address]
    app.start_engine()
    for email_id in accepted:
        await app.wait_until_final(email_id, timeout=30)

    await app.stop_engine()  # the invariants' cleanup pass wants Postline idle
    everyone = [address for addresses in accepted.values() for address in addresses]
    report = await check_invariants(
        database_url=app.settings.database_url,
        expectation=Expectation(accepted=accepted, outcome=dict.fromkeys(everyone, "delivered")),
        received=received_copies([fake_mx]),
        webhook_event_ids=None,
        spool=spool_disk.path,
        in_flight_bound=0,  # no crash: not one duplicate
    )
    print(
        f"\n{refused} emails refused with 507 (spool full, partial batch, database full), "
        f"{len(accepted)} accepted and delivered; {report.summary()}"
    )
