"""The email-level moves of outcomes.py on their own: ``activate_scheduled`` and
``refresh_email_status`` (through it, ``store_email_statuses``).

The deliveries that reach them look at the final status only: mutation testing
(docs/TESTING.md) showed that activated recipients keeping their old ``updated_at``,
an email shown ``suppressed`` between its activation and its first attempt, or the
status ``refresh_email_status`` answers being lost went unnoticed there.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postline.model import EmailStatus, RecipientStatus
from postline.outcomes import Outcome, activate_scheduled, apply_outcome, refresh_email_status
from postline.store import emails as email_store
from postline.store.emails import Email, Recipient
from postline.store.types import utcnow
from tests.harness.postline import PostlineUnderTest


def _tomorrow() -> str:
    return (datetime.now(UTC) + timedelta(days=1)).isoformat()


async def _read(pl: PostlineUnderTest, email_id: str) -> tuple[Email, dict[str, Recipient]]:
    async with pl.services.db.read() as conn:
        email = await email_store.get_email(conn, email_id)
        recipients = await email_store.get_recipients(conn, email_id)
    assert email is not None
    return email, {r.address: r for r in recipients}


async def test_activation_queues_the_due_recipients_only_and_derives_each_emails_status(
    postline: PostlineUnderTest,
) -> None:
    """Two emails activated together (one of them for one of its two recipients), a
    third left alone: the due recipients become queued at the activation's time, the
    others keep their status and time, and each activated email's status is derived
    from all its recipients (queued, as one of them now waits for its attempt) and
    stored at that time."""
    await postline.stop_engine()  # nothing but the activation below moves them
    first = await postline.send(to=["a@dest.test", "b@other.test"], scheduled_at=_tomorrow())
    second = await postline.send(to="c@dest.test", scheduled_at=_tomorrow())
    alone = await postline.send(to="d@dest.test", scheduled_at=_tomorrow())
    _, first_before = await _read(postline, first["id"])
    _, second_before = await _read(postline, second["id"])
    c_before = second_before["c@dest.test"]
    alone_email_before, alone_before = await _read(postline, alone["id"])
    later = utcnow() + timedelta(minutes=3)
    due = {first["id"]: [first_before["a@dest.test"].id], second["id"]: [c_before.id]}
    async with postline.services.db.write() as conn:
        await activate_scheduled(conn, due, later)

    first_email, first_after = await _read(postline, first["id"])
    a, b = first_after["a@dest.test"], first_after["b@other.test"]
    assert (a.status, a.updated_at) == (RecipientStatus.QUEUED, later)
    assert b == first_before["b@other.test"]  # not due: still scheduled, untouched
    assert (first_email.status, first_email.updated_at) == (EmailStatus.QUEUED, later)
    second_email, second_after = await _read(postline, second["id"])
    c = second_after["c@dest.test"]
    assert (c.status, c.updated_at) == (RecipientStatus.QUEUED, later)
    assert (second_email.status, second_email.updated_at) == (EmailStatus.QUEUED, later)
    assert await _read(postline, alone["id"]) == (alone_email_before, alone_before)
    assert alone_email_before.status is EmailStatus.SCHEDULED


async def test_a_refresh_stores_and_answers_the_derived_status_and_writes_only_a_change(
    postline: PostlineUnderTest,
) -> None:
    """Both recipients cancelled: the refresh answers and stores ``cancelled`` at its
    time; refreshed again later, it answers the same and leaves the row as it was."""
    await postline.stop_engine()  # the email stays queued: the moves below are the only ones
    sent = await postline.send(to=["a@dest.test", "b@dest.test"])
    email, recipients = await _read(postline, sent["id"])
    assert email.status is EmailStatus.QUEUED
    later = utcnow() + timedelta(minutes=5)
    cancel = Outcome(RecipientStatus.CANCELLED, reason="cancelled by the test")
    async with postline.services.db.write() as conn:
        for recipient in recipients.values():
            assert await apply_outcome(
                conn, email=email, recipient=recipient, outcome=cancel, now=later
            )
        answered = await refresh_email_status(conn, email, later)
    assert answered is EmailStatus.CANCELLED
    refreshed, _ = await _read(postline, sent["id"])
    assert (refreshed.status, refreshed.updated_at) == (EmailStatus.CANCELLED, later)

    async with postline.services.db.write() as conn:
        again = await refresh_email_status(conn, refreshed, later + timedelta(minutes=1))
    assert again is EmailStatus.CANCELLED
    assert (await _read(postline, sent["id"]))[0] == refreshed
