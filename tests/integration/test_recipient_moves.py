"""Recipients moved many at a time: each with its own columns, each behind its guard.

The recorder writes a batch's moves in one statement per status
(``email_store.move_recipients``); what moved is what the statement answers, and
only those get a timeline row and an event. On both stores.
"""

from __future__ import annotations

from datetime import timedelta

import pytest_asyncio

from postline.ids import new_id
from postline.model import AttemptScope, RecipientStatus
from postline.outcomes import AttemptInfo, Outcome, apply_outcome
from postline.store import emails as email_store
from postline.store.emails import Recipient, RecipientMove
from postline.store.types import utcnow
from tests.harness.postline import Factory, PostlineUnderTest

QUEUED = (RecipientStatus.QUEUED,)


@pytest_asyncio.fixture
async def pl(postline_factory: Factory, database_url: str) -> PostlineUnderTest:
    """Postline on each store with no engine: the recipients stay queued until moved here."""
    return await postline_factory(engine=False, database_url=database_url)


async def _recipients(pl: PostlineUnderTest, email_id: str) -> dict[str, Recipient]:
    async with pl.services.db.read() as conn:
        return {r.address: r for r in await email_store.get_recipients(conn, email_id)}


async def test_one_call_moves_each_recipient_with_its_own_columns_behind_its_guard(
    pl: PostlineUnderTest,
) -> None:
    sent = await pl.send(to=["a@dest.test", "b@dest.test", "c@dest.test", "d@dest.test"])
    before = await _recipients(pl, sent["id"])
    now = utcnow() + timedelta(minutes=3)
    retry = now + timedelta(minutes=10)
    full = {
        "smtp_code": 250,
        "enhanced_code": "2.0.0",
        "response": "250 ok",
        "bounce_type": None,
        "bounce_rule": None,
        "next_attempt_at": None,
    }
    moves = [
        RecipientMove(
            before["a@dest.test"].id,
            RecipientStatus.DELIVERED,
            QUEUED,
            {"updated_at": now, "attempts": 1} | full,
        ),
        RecipientMove(
            before["b@dest.test"].id,
            RecipientStatus.DEFERRED,
            QUEUED,
            {"updated_at": now, "attempts": 4}
            | full
            | {"smtp_code": 451, "response": "451 later", "next_attempt_at": retry},
        ),
        # Only updated_at and attempts: a move that is no attempt keeps the reply it had.
        RecipientMove(
            before["c@dest.test"].id,
            RecipientStatus.CANCELLED,
            QUEUED,
            {"updated_at": now, "attempts": 0},
        ),
        # Its guard does not hold (it is queued): it stays as it was.
        RecipientMove(
            before["d@dest.test"].id,
            RecipientStatus.DELIVERED,
            (RecipientStatus.DEFERRED,),
            {"updated_at": now, "attempts": 9} | full,
        ),
    ]
    async with pl.services.db.write() as conn:
        moved = await email_store.move_recipients(conn, moves)
    assert moved == {before[a].id for a in ("a@dest.test", "b@dest.test", "c@dest.test")}
    after = await _recipients(pl, sent["id"])
    a, b, c = after["a@dest.test"], after["b@dest.test"], after["c@dest.test"]
    assert (a.status, a.attempts, a.smtp_code, a.response, a.next_attempt_at, a.updated_at) == (
        RecipientStatus.DELIVERED,
        1,
        250,
        "250 ok",
        None,
        now,
    )
    assert (b.status, b.attempts, b.smtp_code, b.response, b.next_attempt_at) == (
        RecipientStatus.DEFERRED,
        4,
        451,
        "451 later",
        retry,
    )
    assert (c.status, c.attempts, c.smtp_code, c.updated_at) == (
        RecipientStatus.CANCELLED,
        0,
        None,
        now,
    )
    assert after["d@dest.test"] == before["d@dest.test"]


async def test_moves_beyond_one_statement_all_land(pl: PostlineUnderTest) -> None:
    """More moves than one statement takes (500): the parts after the first are written too."""
    sent = await pl.send(to=["first@dest.test", "middle@dest.test", "last@dest.test"])
    real = [r.id for r in (await _recipients(pl, sent["id"])).values()]
    # Ids no row has fill the statements; the real ones sit at the start, at the
    # second statement's start and at the very end.
    ids = [new_id("rcp_") for _ in range(1_100)]
    ids[0], ids[500], ids[-1] = real
    now = utcnow()
    moves = [
        RecipientMove(rid, RecipientStatus.DELIVERED, QUEUED, {"updated_at": now, "attempts": 1})
        for rid in ids
    ]
    async with pl.services.db.write() as conn:
        moved = await email_store.move_recipients(conn, moves)
    assert moved == set(real)
    statuses = {r.status for r in (await _recipients(pl, sent["id"])).values()}
    assert statuses == {RecipientStatus.DELIVERED}


async def test_a_move_from_a_stale_record_is_refused_by_the_store(
    pl: PostlineUnderTest,
) -> None:
    """The record says queued, the store says delivered: the guard in the statement
    refuses the deferral, and no event or timeline row is written for it."""
    sent = await pl.send(to="late@dest.test")
    stale = (await _recipients(pl, sent["id"]))["late@dest.test"]
    async with pl.services.db.read() as conn:
        email = await email_store.get_email(conn, sent["id"])
    assert email is not None
    now = utcnow()

    def attempt() -> AttemptInfo:
        return AttemptInfo(new_id("att_"), 1, "mx.dest.test", 3, AttemptScope.RECIPIENT)

    async with pl.services.db.write() as conn:
        delivered = Outcome(status=RecipientStatus.DELIVERED, smtp_code=250, response="250 ok")
        assert await apply_outcome(
            conn, email=email, recipient=stale, outcome=delivered, now=now, attempt=attempt()
        )
    async with pl.services.db.write() as conn:
        deferred = Outcome(status=RecipientStatus.DEFERRED, smtp_code=451, response="451 x")
        moved = await apply_outcome(
            conn, email=email, recipient=stale, outcome=deferred, now=now, attempt=attempt()
        )
    assert moved is False
    async with pl.services.db.read() as conn:
        events = await email_store.get_events(conn, sent["id"])
        attempts = await email_store.get_attempts(conn, sent["id"])
    assert [e.type for e in events if e.recipient_id == stale.id][-1] == "email.delivered"
    assert [a.status for a in attempts] == [RecipientStatus.DELIVERED]
    assert (await _recipients(pl, sent["id"]))["late@dest.test"].status is RecipientStatus.DELIVERED


def test_the_move_statement_is_built_once_per_shape_and_sqlalchemy_can_cache_it() -> None:
    """A ``values()`` list made every batch compile its statement afresh (and asyncpg
    prepare it anew); the text is built once per set of columns and row count."""
    names = ("updated_at", "attempts")
    statement = email_store._move_statement(names, 3)
    assert email_store._move_statement(names, 3) is statement
    assert email_store._move_statement(names, 4) is not statement
    assert statement._generate_cache_key() is not None
