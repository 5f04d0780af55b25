"""apply_outcome on its own: what a refused move returns, and what an allowed one writes.

The recorder's tests see these through whole deliveries; mutation testing showed
that a refused move answering True, or an allowed one forgetting ``updated_at``,
``bounce_rule`` or the complaint's reason, went unnoticed there.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select

from postline.ids import new_id
from postline.model import AttemptScope, BounceType, RecipientStatus, TlsInfo, TlsPolicySource
from postline.outcomes import DOMAIN_SUPPRESSION, AttemptInfo, Outcome, apply_outcome
from postline.store import emails as email_store
from postline.store import suppressions as suppression_store
from postline.store.emails import Email, Recipient
from postline.store.schema import delivery_attempts, events
from postline.store.types import utcnow
from tests.harness.postline import PostlineUnderTest


async def _read(pl: PostlineUnderTest, email_id: str) -> tuple[Email, Recipient]:
    async with pl.services.db.read() as conn:
        email = await email_store.get_email(conn, email_id)
        (recipient,) = await email_store.get_recipients(conn, email_id)
    assert email is not None
    return email, recipient


async def test_a_refused_move_answers_false_and_writes_nothing(
    postline: PostlineUnderTest,
) -> None:
    sent = await postline.send(to="done@dest.test")
    await postline.wait_for_status(sent["id"], ["delivered"])
    await postline.stop_engine()
    email, before = await _read(postline, sent["id"])
    async with postline.services.db.write() as conn:
        moved = await apply_outcome(
            conn,
            email=email,
            recipient=before,
            outcome=Outcome(status=RecipientStatus.DEFERRED, response="451 late"),
            now=utcnow() + timedelta(minutes=5),
        )
    assert moved is False
    _, after = await _read(postline, sent["id"])
    assert after == before


@pytest.mark.parametrize("domain_level", [False, True], ids=["address", "domain"])
async def test_an_allowed_move_writes_its_time_rule_and_suppression(
    postline: PostlineUnderTest, domain_level: bool
) -> None:
    """The move and the suppression it brings, column by column: which email caused it,
    the reply as its detail, and its end (none for an address that does not exist; a
    while for a verdict about the whole domain). Mutation testing: the suppression's
    source, detail and end could each be written as NULL unseen."""
    await postline.stop_engine()  # the email stays queued: the move below is the only one
    sent = await postline.send(to="gone@dest.test")
    email, recipient = await _read(postline, sent["id"])
    later = utcnow() + timedelta(minutes=7)
    bounce = Outcome(
        status=RecipientStatus.BOUNCED,
        smtp_code=550,
        enhanced_code="5.1.1",
        response="550 5.1.1 no such user",
        bounce_type=BounceType.HARD,
        bounce_rule="test.user_unknown",
        domain_level=domain_level,
    )
    attempt = AttemptInfo(new_id("att_"), 1, "mx.dest.test", 3, AttemptScope.RECIPIENT)
    async with postline.services.db.write() as conn:
        moved = await apply_outcome(
            conn, email=email, recipient=recipient, outcome=bounce, now=later, attempt=attempt
        )
    assert moved is True
    _, after = await _read(postline, sent["id"])
    assert after.status is RecipientStatus.BOUNCED
    assert after.updated_at == later
    assert after.bounce_rule == "test.user_unknown"
    assert after.attempts == recipient.attempts + 1
    async with postline.services.db.read() as conn:
        where = suppression_store.SuppressionFilter(email.domain_id, "gone@dest.test")
        (suppressed,) = await suppression_store.list_suppressions(conn, where, None, 10)
    assert suppressed.id.startswith("sup_")
    assert (
        suppressed.reason,
        suppressed.source_email_id,
        suppressed.detail,
        suppressed.created_at,
        suppressed.expires_at,
    ) == (
        "hard_bounce",
        email.id,
        "550 5.1.1 no such user",
        later,
        later + DOMAIN_SUPPRESSION if domain_level else None,
    )


async def test_a_complaint_suppresses_with_its_own_reason(
    postline: PostlineUnderTest,
) -> None:
    sent = await postline.send(to="annoyed@dest.test")
    await postline.wait_for_status(sent["id"], ["delivered"])
    await postline.stop_engine()
    email, recipient = await _read(postline, sent["id"])
    later = utcnow() + timedelta(hours=1)
    async with postline.services.db.write() as conn:
        moved = await apply_outcome(
            conn,
            email=email,
            recipient=recipient,
            outcome=Outcome(status=RecipientStatus.COMPLAINED, reason="feedback report"),
            now=later,
        )
    assert moved is True
    _, after = await _read(postline, sent["id"])
    assert (after.status, after.updated_at) == (RecipientStatus.COMPLAINED, later)
    # A complaint is no bounce: the recipient keeps its delivery's reply (mutation
    # testing: taking every move out of a final status for a late bounce blanked it).
    assert recipient.smtp_code == 250
    assert (after.smtp_code, after.response, after.bounce_type) == (
        recipient.smtp_code,
        recipient.response,
        recipient.bounce_type,
    )
    async with postline.services.db.read() as conn:
        where = suppression_store.SuppressionFilter(email.domain_id, "annoyed@dest.test")
        suppressed = await suppression_store.list_suppressions(conn, where, None, 10)
    assert [s.reason for s in suppressed] == ["complaint"]


async def test_an_attempt_writes_every_column_of_its_recipient_timeline_row_and_event(
    postline: PostlineUnderTest,
) -> None:
    """Field by field: a renamed key of the timeline row is dropped without an error
    (its column stays NULL or takes its default), so only reading the row shows it."""
    await postline.stop_engine()  # the email stays queued: the move below is the only one
    sent = await postline.send(to="later@dest.test")
    email, recipient = await _read(postline, sent["id"])
    later = utcnow() + timedelta(minutes=3)
    retry_at = later + timedelta(minutes=10)
    deferral = Outcome(
        status=RecipientStatus.DEFERRED,
        smtp_code=451,
        enhanced_code="4.2.1",
        response="451 4.2.1 mailbox busy",
        bounce_type=BounceType.SOFT,
        bounce_rule="test.busy",
    )
    attempt = AttemptInfo("att_field_by_field", 4, "mx2.dest.test", 1234, AttemptScope.RECIPIENT)
    tls = TlsInfo(TlsPolicySource.MTA_STS, "TLSv1.3", verified=True)
    attempt = replace(attempt, next_attempt_at=retry_at, tls=tls)
    async with postline.services.db.write() as conn:
        moved = await apply_outcome(
            conn, email=email, recipient=recipient, outcome=deferral, now=later, attempt=attempt
        )
    assert moved is True
    _, after = await _read(postline, sent["id"])
    assert after == replace(
        recipient,
        status=RecipientStatus.DEFERRED,
        smtp_code=451,
        enhanced_code="4.2.1",
        response="451 4.2.1 mailbox busy",
        bounce_type=None,  # a deferral is not a bounce: its class is on the timeline row
        bounce_rule="test.busy",
        attempts=recipient.attempts + 1,
        next_attempt_at=retry_at,
        updated_at=later,
    )
    async with postline.services.db.read() as conn:
        (row,) = (
            await conn.execute(
                select(delivery_attempts).where(delivery_attempts.c.email_id == email.id)
            )
        ).mappings()
        sequences = {
            e["type"]: e
            for e in (
                await conn.execute(select(events).where(events.c.email_id == email.id))
            ).mappings()
        }
    event = sequences.pop("email.deferred")
    assert {k: v for k, v in row.items() if k != "id"} == {
        "email_id": email.id,
        "recipient_id": recipient.id,
        "attempt_id": "att_field_by_field",
        "destination": "dest.test",
        "attempt": 4,
        "status": "deferred",
        "scope": "recipient",
        "mx_host": "mx2.dest.test",
        "smtp_code": 451,
        "enhanced_code": "4.2.1",
        "response": "451 4.2.1 mailbox busy",
        "bounce_type": "soft",
        "bounce_rule": "test.busy",
        "duration_ms": 1234,
        "tls_version": "TLSv1.3",
        "tls_policy": "mta-sts",
        "tls_verified": True,
        "created_at": later,
    }
    # The next in the email's events, after those written at accept.
    assert event["recipient_id"] == recipient.id
    assert event["sequence"] == max(e["sequence"] for e in sequences.values()) + 1
    assert event["payload"]["data"]["attempt"] == recipient.attempts + 1
