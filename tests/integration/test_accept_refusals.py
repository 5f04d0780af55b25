"""What the accept refuses before it writes anything, and what it says why: the status, the
field (prefixed with the email's index in a batch of two or more) and a message naming the
limit; and that a submission exactly at a limit passes. Called on the acceptor, as the API
and the submission port call it. (Mutation testing: the API's tests of these refusals read
the status and the field only, and none sent a size at a limit or tracked copies in a
batch.)"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import event, select
from sqlalchemy.engine import make_url

from postline.accept import (
    COPIES_FACTOR,
    SMALL_MESSAGE,
    AcceptError,
    Acceptor,
    Recipient,
    Submission,
)
from postline.keys import Principal
from postline.message import Attachment, Content
from postline.spool.base import SpoolError
from postline.store import domains as domain_store
from postline.store.schema import sent_emails
from postline.store.types import utcnow
from tests.harness.lockfiles import holding, taken_within
from tests.harness.postline import Factory, PostlineUnderTest

ADMIN = Principal(key_id="key_test", name="test", domain_id=None, domain_name=None)
TRACKING_BASE = "http://postline"


def _submission(
    recipients: int = 1,
    *,
    text: str | None = "Hello",
    html: str | None = None,
    scheduled_at: datetime | None = None,
    track_opens: bool | None = None,
    attachments: tuple[Attachment, ...] = (),
    from_address: str = "sender@example.test",
) -> Submission:
    """An email from sender@example.test to ``recipients`` addresses at dest.test."""
    addresses = [f"r{i}@dest.test" for i in range(recipients)]
    return Submission(
        content=Content(
            from_name="Sender",
            from_address=from_address,
            to=addresses,
            subject="Hi",
            text=text,
            html=html,
            attachments=list(attachments),
        ),
        recipients=[Recipient(address, "to") for address in addresses],
        scheduled_at=scheduled_at,
        track_opens=track_opens,
    )


async def _refusal(
    acceptor: Acceptor, submissions: list[Submission], principal: Principal = ADMIN
) -> tuple[int, str, str]:
    """The status, field and message of the AcceptError that ``submissions`` are refused with."""
    with pytest.raises(AcceptError) as refused:
        await acceptor.accept(submissions, principal)
    return refused.value.status, refused.value.field, refused.value.message


async def _size(pl: PostlineUnderTest, email_id: str) -> int:
    async with pl.services.db.read() as conn:
        size = await conn.scalar(select(sent_emails.c.size).where(sent_emails.c.id == email_id))
    assert isinstance(size, int)
    return size


async def test_a_schedule_more_than_thirty_days_ahead_is_refused_naming_the_email(
    postline_factory: Factory,
) -> None:
    """A client reads the field and the message to fix its request; in a batch the
    field must say which email is wrong, from two emails on."""
    pl = await postline_factory(engine=False)
    acceptor = pl.services.acceptor
    too_far = _submission(scheduled_at=utcnow() + timedelta(days=31))
    expected = "must be at most 30 days ahead"
    assert await _refusal(acceptor, [too_far]) == (422, "scheduled_at", expected)
    # In a batch, even of two, the field names the email by its index.
    assert await _refusal(acceptor, [_submission(), too_far]) == (422, "[1].scheduled_at", expected)


async def test_a_message_over_the_size_limit_is_refused_and_one_at_it_accepted(
    postline_factory: Factory,
) -> None:
    """The limit is compared with the built message (headers, encoding, signature), which
    the accept alone knows: one email is built first, and the limit then set to its size
    (the next build of the same content has the same size: only the ids' random digits
    and the time differ)."""
    pl = await postline_factory(engine=False)
    acceptor = pl.services.acceptor
    email = _submission(text="x" * 3000)
    (first,) = await acceptor.accept([email], ADMIN)
    size = await _size(pl, first.id)
    acceptor.max_message_bytes = size
    (at_the_limit,) = await acceptor.accept([email], ADMIN)
    assert await _size(pl, at_the_limit.id) == size
    acceptor.max_message_bytes = size - 1
    expected = f"the message is {size} bytes; the limit is {size - 1}"
    assert await _refusal(acceptor, [email]) == (413, "body", expected)
    assert await _refusal(acceptor, [_submission(), email]) == (413, "[1]", expected)


async def test_tracked_copies_may_weigh_the_limit_together_and_not_a_byte_more(
    postline_factory: Factory,
) -> None:
    """A tracked email is built once per recipient; the copies of one request may weigh
    ``COPIES_FACTOR`` times the message limit together, counted over the whole batch
    from what their parts weigh (the html here; each copy well under the message limit).
    A tracked email to one recipient is one body, not copies: it is not counted."""
    limit = 40_000
    pl = await postline_factory(engine=False, tracking_url=TRACKING_BASE, max_message_bytes=limit)
    acceptor = pl.services.acceptor
    share = COPIES_FACTOR * limit // 10  # what each of 10 copies may weigh
    exact = [_submission(2, text=None, html="x" * share, track_opens=True) for _ in range(5)]
    accepted = await acceptor.accept(exact, ADMIN)
    assert [len(a.recipients) for a in accepted] == [2] * 5
    heavier = _submission(2, text=None, html="x" * (share + 1), track_opens=True)
    status, field, message = await _refusal(acceptor, [*exact[:4], heavier])
    assert (status, field) == (413, "[4].track")
    assert message == (
        "a tracked email is built once per recipient, and this request's copies would be"
        f" about {COPIES_FACTOR * limit + 2} bytes; the limit is {COPIES_FACTOR * limit}"
        f" ({COPIES_FACTOR} times POSTLINE_MAX_MESSAGE_BYTES): send it to fewer recipients"
        " at once, or untracked"
    )
    alone = [_submission(1, text=None, html="x" * share, track_opens=True) for _ in range(11)]
    assert len(await acceptor.accept(alone, ADMIN)) == 11


async def test_tracked_copies_count_the_text_the_html_and_the_attachments_in_base64(
    postline_factory: Factory,
) -> None:
    """What a copy weighs, known before it is built: its text, its html and its
    attachments as base64 carries them (4 bytes for 3, rounded down). Here 5000 + 4999 +
    7501 * 4 // 3 = 20000 bytes a copy, eight copies: the limit exactly, which passes,
    and one byte of text more, which does not. (Mutation testing: the earlier test's
    emails had html alone, so neither the text nor an attachment was ever counted.)"""
    limit = 40_000
    pl = await postline_factory(engine=False, tracking_url=TRACKING_BASE, max_message_bytes=limit)
    acceptor = pl.services.acceptor
    attachment = Attachment("data.bin", b"\x00" * 7501)  # 10001 bytes of base64, and a third

    def tracked(text_bytes: int) -> Submission:
        return _submission(
            8, text="t" * text_bytes, html="h" * 4999, track_opens=True, attachments=(attachment,)
        )

    assert COPIES_FACTOR * limit == 8 * (5000 + 4999 + 10001)
    (accepted,) = await acceptor.accept([tracked(5000)], ADMIN)
    assert len(accepted.recipients) == 8
    status, field, message = await _refusal(acceptor, [tracked(5001)])
    assert (status, field) == (413, "track")
    assert f"copies would be about {COPIES_FACTOR * limit + 8} bytes" in message


async def test_a_sender_from_no_sending_domain_or_another_keys_is_refused_naming_it(
    postline_factory: Factory,
) -> None:
    """A sender whose domain is not a sending domain is a 422 naming the domain; a key
    scoped to one domain sending from any other, known or not, is a 403 naming the one
    it may send from, and sends from its own. (Mutation testing: the API's tests of these
    refusals read the status and the field only.)"""
    pl = await postline_factory(engine=False, domains=("example.test", "second.test"))
    acceptor = pl.services.acceptor
    async with pl.services.db.read() as conn:
        domain = await domain_store.get_domain_by_name(conn, "example.test")
    assert domain is not None
    scoped = Principal(
        key_id="key_scoped", name="scoped", domain_id=domain.id, domain_name="example.test"
    )
    unknown = _submission(from_address="someone@Unknown-Domain.TEST")
    expected = "unknown-domain.test is not a sending domain; add it with POST /v1/domains"
    assert await _refusal(acceptor, [unknown]) == (422, "from", expected)
    assert await _refusal(acceptor, [_submission(), unknown]) == (422, "[1].from", expected)
    only_its_own = "this API key may only send from example.test"
    for foreign in ("x@second.test", "someone@unknown-domain.test"):
        refused = _submission(from_address=foreign)
        assert await _refusal(acceptor, [refused], scoped) == (403, "from", only_its_own)
        batch = [_submission(), refused]
        assert await _refusal(acceptor, batch, scoped) == (403, "[1].from", only_its_own)
    # Its own domain, twice in one batch (the domain read once), and the admin's other one.
    accepted = await acceptor.accept([_submission(), _submission()], scoped)
    assert len(accepted) == 2
    (other,) = await acceptor.accept([_submission(from_address="x@second.test")], ADMIN)
    assert other.recipients == [("r0@dest.test", "queued")]


async def test_sending_domains_asked_for_together_are_read_in_one_statement(
    postline_factory: Factory,
) -> None:
    """Concurrent sends share the sending-domain lookup: one statement for all of them,
    and each hears its own domain, or its own refusal."""
    pl = await postline_factory(engine=False, domains=("example.test", "second.test"))
    acceptor = pl.services.acceptor
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM domains" in statement:
            statements.append(statement)

    senders = ["a@example.test", "b@Second.test", "c@unknown.test", "d@example.test"] * 3

    async def domain_of(sender: str) -> str:
        try:
            found = await acceptor.sending_domain(ADMIN, sender, "from", {})
        except AcceptError as exc:
            return f"{exc.status} {exc}"
        return found.name

    event.listen(pl.services.db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        answers = await asyncio.gather(*(domain_of(sender) for sender in senders))
    finally:
        event.remove(pl.services.db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == 1, statements
    unknown = "422 unknown.test is not a sending domain; add it with POST /v1/domains"
    assert answers == ["example.test", "second.test", unknown, "example.test"] * 3


async def test_an_accept_goes_ahead_of_the_writes_nobody_waits_on(
    postline_factory: Factory,
) -> None:
    """An accept is a write a client waits on (the 202): it says so while it waits for
    SQLite's write lock, so the delivery and webhook processes' writes let it go first,
    and it never waits for another process's urgent writer (store.writer_turn)."""
    pl = await postline_factory(engine=False)
    database = make_url(pl.services.db.url).database
    assert database is not None
    lock = Path(f"{database}-writer")
    wanted = Path(f"{database}-writer-wanted")
    async with holding(wanted, shared=True):  # another accept waits
        accepted = await asyncio.wait_for(
            pl.services.acceptor.accept([_submission()], ADMIN), timeout=5
        )
    assert len(accepted) == 1
    async with holding(lock) as holder:  # a delivery write has the lock
        accepting = asyncio.create_task(pl.services.acceptor.accept([_submission()], ADMIN))
        assert await taken_within(wanted), "a waiting accept did not say so"
        await holder.let_go()
        assert len(await asyncio.wait_for(accepting, 10)) == 1


async def test_the_spools_sync_runs_while_the_suppression_list_is_read(
    postline_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bodies' fsync (one ``syncfs``) and the group commit's lookup overlap: a sync
    that waits for the lookup to begin would wait for ever if they ran one after the
    other. The write still begins only once the sync is done."""
    pl = await postline_factory(engine=False)
    acceptor = pl.services.acceptor
    looked = asyncio.Event()
    synced = asyncio.Event()
    real_sync = acceptor.spool.sync
    real_suppressed = acceptor._suppressed

    async def sync() -> None:
        await asyncio.wait_for(looked.wait(), 5)
        await real_sync()
        synced.set()

    async def suppressed(*args: Any) -> Any:
        looked.set()
        return await real_suppressed(*args)

    real_write = pl.services.db.write

    def write(**options: Any) -> Any:
        assert synced.is_set(), "the write began before the bodies were durable"
        return real_write(**options)

    monkeypatch.setattr(acceptor.spool, "sync", sync)
    monkeypatch.setattr(acceptor, "_suppressed", suppressed)
    monkeypatch.setattr(pl.services.db, "write", write)
    assert len(await acceptor.accept([_submission()], ADMIN)) == 1


async def test_a_sync_that_fails_fails_the_group_and_leaves_no_body(
    postline_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    pl = await postline_factory(engine=False)
    acceptor = pl.services.acceptor

    async def sync() -> None:
        await asyncio.sleep(0)
        raise SpoolError("cannot write to the spool: Input/output error")

    monkeypatch.setattr(acceptor.spool, "sync", sync)
    with pytest.raises(SpoolError):
        await acceptor.accept([_submission()], ADMIN)
    async with pl.services.db.read() as conn:
        assert (await conn.execute(select(sent_emails.c.id))).all() == []
    assert list(pl.settings.spool_path.glob("*/*.eml")) == []


class _CountingPool(Executor):
    """The compose pool, counting the emails handed to it."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.emails = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.emails += len(args[0])
        return self.inner.submit(fn, *args, **kwargs)


@pytest.mark.parametrize(
    ("submissions", "in_the_pool"),
    [
        ([_submission()], 0),
        ([_submission(text="x" * SMALL_MESSAGE)], 0),
        ([_submission(text="x" * (SMALL_MESSAGE + 1))], 1),
        ([_submission(attachments=(Attachment("a.txt", b"hi"),))], 1),
        ([_submission(track_opens=True, html="<p>hi</p>")], 1),
        ([_submission(), _submission()], 2),
    ],
    ids=["small", "at-the-limit", "over-it", "attachment", "tracked", "two"],
)
async def test_a_small_email_that_comes_alone_is_built_on_the_event_loop(
    postline_factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
    submissions: list[Submission],
    in_the_pool: int,
) -> None:
    """A worker's round trip costs a lone small email more than building it; a large one,
    one with attachments or tracking, or a batch, is built in the pool, off the loop."""
    pl = await postline_factory(engine=False)
    acceptor = pl.services.acceptor
    pool = _CountingPool(acceptor.compose_pool)
    monkeypatch.setattr(acceptor, "compose_pool", pool)
    accepted = await acceptor.accept(submissions, ADMIN)
    assert pool.emails == in_the_pool
    assert len(accepted) == len(submissions)
    if not submissions[0].track_opens:  # a tracked email's copies are spooled apart
        for body in await acceptor.spool.read_many([item.id for item in accepted]):
            assert isinstance(body, bytes) and b"\r\nSubject: Hi\r\n" in body


async def test_a_group_commit_holds_sqlites_write_lock_for_one_trip(
    postline_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows of a group commit are built and the suppression list read before the
    write begins, its INSERTs go with its COMMIT, and the embedded queue does not look
    for jobs of emails that are new: the write (BEGIN IMMEDIATE, the INSERTs of the
    emails, recipients, events and jobs, COMMIT) is one trip to the database thread, so
    the lock the delivery and webhook processes wait for is held for that trip only."""
    pl = await postline_factory(engine=False)
    trips: list[tuple[str, tuple[Any, ...]]] = []
    real = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append((fn.__name__, args))
        return await real(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    await asyncio.gather(*(pl.services.acceptor.accept([_submission()], ADMIN) for _ in range(3)))
    monkeypatch.undo()
    # One group commit, or two (the first call's, then the others' that came meanwhile).
    writes = [(name, args) for name, args in trips if "BEGIN IMMEDIATE" in args]
    assert 1 <= len(writes) <= 2, writes
    for name, args in writes:
        assert name == "_commit_after", writes
        _conn, _begin, deferred = args
        tables = [operation.split()[2] for _work, operation, _params in deferred]
        assert tables == ["sent_emails", "email_recipients", "events", "queue_jobs"]
