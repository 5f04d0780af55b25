"""Group commit of concurrent accepts, on every store, spool and queue.

Concurrent ``Acceptor.accept`` calls share one spool pass and one transaction;
each call still hears only its own answer. The tests hold the accepting
transaction back (``commits_held``) until every call has joined a group, so that
the calls really share one, on any machine; the group sizes are read from
``postline_accept_group_calls``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.accept import Accepted, AcceptError, Acceptor, Recipient, Submission
from postline.app import build_spool
from postline.keys import Principal
from postline.message import Content
from postline.model import EmailSource
from postline.spool.base import copy_ref, copy_refs
from postline.spool.files import FileSpool
from postline.store.db import Database
from postline.store.schema import sent_emails
from postline.store.types import utcnow
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest

ADMIN = Principal(key_id="key_test", name="test", domain_id=None, domain_name=None)
CALLS = 12


@pytest.fixture(params=["sqlite-files", "postgresql-files", "postgresql-database-redis"])
def adapters(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings of each store, spool and queue: SQLite with files and the embedded queue,
    PostgreSQL with files and the embedded queue, PostgreSQL with the database spool and
    Redis (the shared topology)."""
    if request.param == "sqlite-files":
        return {}
    settings: dict[str, Any] = {"database_url": request.getfixturevalue("postgres_url")}
    if request.param.endswith("redis"):
        settings |= {
            "spool_url": "database",
            "queue_url": request.getfixturevalue("redis_url"),
            "queue_prefix": request.getfixturevalue("redis_prefix"),
        }
    return settings


@contextlib.asynccontextmanager
async def commits_held(db: Database) -> AsyncIterator[None]:
    """Keep the acceptor's transactions waiting: SQLite's single writer, or on PostgreSQL
    a lock on ``sent_emails`` that the accepting INSERT waits for."""
    async with db.write() as conn:
        if not db.is_sqlite:
            await conn.execute(text("LOCK TABLE sent_emails IN SHARE ROW EXCLUSIVE MODE"))
        yield


def _sample(pl: PostlineUnderTest, suffix: str) -> float:
    value = pl.services.metrics.registry.get_sample_value(f"postline_accept_group_calls{suffix}")
    return value or 0.0


def groups(pl: PostlineUnderTest) -> int:
    """Group commits so far."""
    return int(_sample(pl, "_count"))


async def gathered(pl: PostlineUnderTest, calls: int) -> None:
    """Wait until ``calls`` accept calls are in a group commit, running or waiting."""

    async def joined() -> bool:
        taken = _sample(pl, "_sum")
        return taken + pl.services.acceptor.waiting_to_commit >= calls

    await poll(joined, timeout=30, what=f"{calls} accept calls in a group commit")


def submission(number: int, *, sender: str = "sender@example.test") -> Submission:
    address = f"r{number}@dest.test"
    return Submission(
        content=Content(
            from_name="Sender",
            from_address=sender,
            to=[address],
            subject=f"number {number}",
            text=f"body {number}",
        ),
        recipients=[Recipient(address, "to")],
    )


def raw_submission(number: int, message_id: str) -> Submission:
    """As the submission port hands a message over: its own Message-ID kept."""
    address = f"r{number}@dest.test"
    raw = (
        f"From: sender@example.test\r\nTo: {address}\r\nMessage-ID: {message_id}\r\n"
        f"Subject: number {number}\r\n\r\nbody {number}\r\n"
    ).encode()
    return Submission(
        content=Content(
            from_name="",
            from_address="sender@example.test",
            to=[address],
            subject=f"number {number}",
        ),
        recipients=[Recipient(address, "to")],
        source=EmailSource.SMTP,
        raw=raw,
        message_id=message_id,
    )


async def stored_ids(pl: PostlineUnderTest) -> set[str]:
    """The emails committed, read through a handle of its own (another process's view)."""
    db = Database(pl.settings.database_url)
    try:
        async with db.read() as conn:
            return set((await conn.execute(select(sent_emails.c.id))).scalars())
    finally:
        await db.close()


async def stored_bodies(pl: PostlineUnderTest) -> set[str]:
    """The bodies in the spool, read through a handle of its own."""
    db = Database(pl.settings.database_url)
    try:
        spool = build_spool(pl.settings, db)
        if isinstance(spool, FileSpool):
            # Temporary files too: nothing may be left half-written.
            root = pl.settings.spool_path
            return {p.stem for p in [*root.glob("*/*.eml"), *root.glob("*/*.tmp")]}
        return set(await spool.refs_older_than(utcnow().replace(year=2100)))
    finally:
        await db.close()


async def queued(pl: PostlineUnderTest) -> int:
    return sum((await pl.services.queue.depth()).values())


async def accept_held(
    pl: PostlineUnderTest, calls: list[tuple[Submission, Any]], joining: int
) -> list[list[Accepted] | BaseException]:
    """Make the calls at once while commits are held; release once ``joining`` joined."""
    acceptor = pl.services.acceptor
    async with commits_held(pl.services.db):
        tasks = [
            asyncio.create_task(acceptor.accept([sub], ADMIN, on_commit=hook))
            for sub, hook in calls
        ]
        await gathered(pl, joining)
    return list(await asyncio.gather(*tasks, return_exceptions=True))


async def test_concurrent_accepts_share_commits_and_each_hears_its_own_answer(
    postline_factory: Factory, adapters: dict[str, Any]
) -> None:
    pl = await postline_factory(engine=False, **adapters)
    answers = await accept_held(pl, [(submission(i), None) for i in range(CALLS)], CALLS)
    ids = []
    for number, answer in enumerate(answers):
        assert isinstance(answer, list), answer
        (accepted,) = answer
        assert accepted.recipients == [(f"r{number}@dest.test", "queued")]
        ids.append(accepted.id)
    assert len(set(ids)) == CALLS
    assert groups(pl) <= 2  # the one held, and every call that gathered behind it
    # Durable when answered: rows and bodies as another process reads them, and a job each.
    assert await stored_ids(pl) == set(ids)
    assert await stored_bodies(pl) == set(ids)
    assert await queued(pl) == CALLS
    for number, email_id in enumerate(ids):
        body = await pl.services.spool.get(email_id)
        assert f"Subject: number {number}\r\n".encode() in body
        assert f"Message-ID: <{email_id}@".encode() in body


async def test_a_call_refused_for_its_own_data_fails_alone(
    postline_factory: Factory, adapters: dict[str, Any]
) -> None:
    """Refused before the group (an unknown sending domain) or inside its transaction
    (a Message-ID already taken, an ``on_commit`` that refuses): the others are accepted,
    and nothing of the refused ones is left."""
    pl = await postline_factory(engine=False, **adapters)
    acceptor: Acceptor = pl.services.acceptor
    (first,) = await acceptor.accept([raw_submission(100, "<taken@example.test>")], ADMIN)
    refused_ids: list[str] = []

    async def refuse(conn: AsyncConnection, results: list[Accepted]) -> None:
        refused_ids.extend(r.id for r in results)
        raise ValueError("refused by on_commit")

    seen_in_commit: list[int] = []

    async def note(conn: AsyncConnection, results: list[Accepted]) -> None:
        # An on_commit that writes with the connection it is given (as the API's
        # idempotency record does), in a group written again call by call.
        found = select(func.count()).select_from(sent_emails)
        found = found.where(sent_emails.c.id.in_([r.id for r in results]))
        seen_in_commit.append((await conn.execute(found)).scalar_one())

    calls: list[tuple[Submission, Any]] = [(submission(i), None) for i in range(CALLS)]
    calls[3] = (raw_submission(3, "<taken@example.test>"), None)
    calls[5] = (submission(5), refuse)
    calls[7] = (submission(7, sender="sender@unknown.test"), None)
    calls[9] = (submission(9), note)
    answers = await accept_held(pl, calls, CALLS - 1)  # the unknown domain never joins
    assert isinstance(answers[3], IntegrityError), answers[3]
    assert isinstance(answers[5], ValueError), answers[5]
    assert isinstance(answers[7], AcceptError) and answers[7].status == 422, answers[7]
    accepted = {}
    for number, answer in enumerate(answers):
        if number not in (3, 5, 7):
            assert isinstance(answer, list), answer
            assert answer[0].recipients == [(f"r{number}@dest.test", "queued")]
            accepted[number] = answer[0].id
    assert groups(pl) <= 3  # the first email's, the held one, the rest
    expected = {first.id, *accepted.values()}
    assert await stored_ids(pl) == expected
    assert await stored_bodies(pl) == expected
    assert await queued(pl) == len(expected)
    assert refused_ids and not set(refused_ids) & expected
    assert seen_in_commit[-1] == 1  # its own row, inside its own savepoint


async def test_a_failed_commit_fails_the_whole_group_and_leaves_nothing(
    postline_factory: Factory, adapters: dict[str, Any]
) -> None:
    pl = await postline_factory(engine=False, **adapters)
    engine = pl.services.db.engine.sync_engine
    refused = 0

    @event.listens_for(engine, "before_cursor_execute")
    def _accepting(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SENT_EMAILS"):
            conn.info["accepting"] = True

    @event.listens_for(engine, "commit")
    def _refuse(conn: Any) -> None:
        nonlocal refused
        if conn.info.pop("accepting", False):
            refused += 1
            raise RuntimeError("the commit failed")

    @event.listens_for(engine, "rollback")
    def _forget(conn: Any) -> None:
        conn.info.pop("accepting", None)

    answers = await accept_held(pl, [(submission(i), None) for i in range(CALLS)], CALLS)
    assert all(isinstance(a, RuntimeError) for a in answers), answers
    assert refused == groups(pl) < CALLS
    assert await stored_ids(pl) == set()
    assert await stored_bodies(pl) == set()
    assert await queued(pl) == 0


def tracked_submission(number: int) -> Submission:
    """Tracked, to two recipients: a body for each (the second ``copy_ref(id, 1)``)."""
    addresses = [f"r{number}@dest.test", f"s{number}@other.test"]
    return Submission(
        content=Content(
            from_name="Sender",
            from_address="sender@example.test",
            to=addresses,
            subject=f"number {number}",
            html=f"<p>body {number}</p>",
        ),
        recipients=[Recipient(address, "to") for address in addresses],
        track_opens=True,
    )


async def test_the_copies_of_tracked_emails_are_durable_with_them_or_not_at_all(
    postline_factory: Factory, adapters: dict[str, Any]
) -> None:
    pl = await postline_factory(engine=False, **adapters)
    calls = [(tracked_submission(i) if i % 2 else submission(i), None) for i in range(CALLS)]
    answers = await accept_held(pl, calls, CALLS)
    ids = [answer[0].id for answer in answers if isinstance(answer, list)]
    assert len(ids) == CALLS
    copies = {copy_ref(email_id, 1) for email_id in ids[1::2]}
    assert await stored_bodies(pl) == set(ids) | copies
    for email_id in ids[1::2]:
        first, second = [await pl.services.spool.get(r) for r in copy_refs(email_id, 2)]
        assert first != second and b"DKIM-Signature:" in first and b"DKIM-Signature:" in second

    # A failed commit leaves none of them.
    engine = pl.services.db.engine.sync_engine

    @event.listens_for(engine, "commit")
    def _refuse(conn: Any) -> None:
        if conn.info.pop("accepting", False):
            raise RuntimeError("the commit failed")

    @event.listens_for(engine, "before_cursor_execute")
    def _accepting(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO SENT_EMAILS"):
            conn.info["accepting"] = True

    failed = await accept_held(pl, [(tracked_submission(i), None) for i in range(4)], 4)
    assert all(isinstance(a, RuntimeError) for a in failed), failed
    assert await stored_bodies(pl) == set(ids) | copies


async def test_idempotency_keys_in_concurrent_sends(
    postline_factory: Factory, adapters: dict[str, Any]
) -> None:
    """Each key answered once and replayed after; the same key twice at once: one email,
    and the other request hears its answer or the documented conflict. On PostgreSQL the
    sends are held in one group (on SQLite the keys' claims, writes of their own, would
    wait behind the hold too: there the sends gather as they come)."""
    pl = await postline_factory(engine=False, **adapters)

    async def send(number: int, key: str) -> Any:
        body = {
            "from": "sender@example.test",
            "to": [f"r{number}@dest.test"],
            "subject": f"number {number}",
            "text": "Hello",
        }
        headers = pl.auth() | {"Idempotency-Key": key}
        return await pl.client.post("/v1/emails", json=body, headers=headers)

    requests = [send(i, f"key-{i}") for i in range(CALLS)] + [send(0, "key-0")]
    if pl.services.db.is_sqlite:
        responses = await asyncio.gather(*requests)
    else:
        async with commits_held(pl.services.db):
            tasks = [asyncio.create_task(request) for request in requests]
            await gathered(pl, CALLS)  # one of the twins never joins
        responses = await asyncio.gather(*tasks)
        assert groups(pl) <= 2
    ids = {}
    for number, response in enumerate(responses[:CALLS]):
        if number == 0 and response.status_code == 409:
            continue
        assert response.status_code == 202, response.text
        ids[number] = response.json()["id"]
    twin, first = responses[CALLS], responses[0]
    if twin.status_code == 409:
        assert twin.json()["name"] == "concurrent_idempotent_requests", twin.text
    else:
        assert twin.status_code == 202, twin.text
        if first.status_code == 202:
            assert twin.json()["id"] == first.json()["id"]
        ids[0] = twin.json()["id"]
    assert sorted(ids) == list(range(CALLS))
    assert await stored_ids(pl) == set(ids.values())
    for number, email_id in ids.items():
        again = await send(number, f"key-{number}")
        assert again.status_code == 202, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == email_id
    async with pl.services.db.read() as conn:
        count = await conn.scalar(select(func.count()).select_from(sent_emails))
    assert count == CALLS
