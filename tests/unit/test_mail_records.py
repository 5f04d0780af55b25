"""The mail path's records and wake-ups: what the engine and the recorder rely on."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from postline.delivery.record import _BatchState
from postline.model import BounceType, EmailSource, EmailStatus, RecipientStatus
from postline.outcomes import is_customer_mail
from postline.store.emails import Email, Recipient
from postline.wakeups import Wakeups

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def email(**overrides: object) -> Email:
    columns: dict[str, object] = {
        "id": "em_1",
        "domain_id": "dom_1",
        "source": "api",
        "message_id": "<em_1@postline.test>",
        "from_header": "a@example.test",
        "from_address": "a@example.test",
        "envelope_from": "bounces+em_1@bounces.example.test",
        "subject": "hello",
        "size": 10,
        "body_ref": "em_1",
        "tags": {},
        "status": "queued",
        "scheduled_at": None,
        "created_at": NOW,
        "updated_at": NOW,
        "original_email_id": None,
        "body_purged_at": None,
        "bodies": 1,
    }
    return Email.from_mapping(columns | overrides)


def recipient(**overrides: object) -> Recipient:
    columns: dict[str, object] = {
        "id": "rcp_1",
        "email_id": "em_1",
        "position": 0,
        "address": "b@dest.test",
        "destination": "dest.test",
        "kind": "to",
        "status": "deferred",
        "smtp_code": 451,
        "enhanced_code": "4.2.1",
        "response": "451 busy",
        "bounce_type": None,
        "bounce_rule": None,
        "attempts": 2,
        "next_attempt_at": NOW,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return Recipient.from_mapping(columns | overrides)


def test_an_email_reads_its_closed_sets_as_enums() -> None:
    made = email(source="dsn", status="sending")
    assert made.source is EmailSource.DSN and made.status is EmailStatus.SENDING
    assert not is_customer_mail(made)
    assert is_customer_mail(email())


def test_an_email_is_due_at_its_schedule_else_at_acceptance() -> None:
    assert email().due_at == NOW
    later = NOW + timedelta(days=6)
    assert email(scheduled_at=later).due_at == later


def test_a_recipient_reads_its_status_and_bounce_type_as_enums() -> None:
    assert recipient().status is RecipientStatus.DEFERRED
    assert recipient().bounce_type is None
    assert recipient(bounce_type="hard").bounce_type is BounceType.HARD
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipient().status = RecipientStatus.DELIVERED  # type: ignore[misc]


def test_a_batch_sees_its_own_moves_without_changing_what_it_read() -> None:
    """Two attempts of one batch for one email see each other's moves; the records
    handed out before a move stay as they were (they are frozen)."""
    first, second = recipient(), recipient(id="rcp_2", position=1, attempts=0, status="queued")
    state = _BatchState([email()], [first, second], {})
    state.moved(first, RecipientStatus.DELIVERED, attempts=3)
    state.moved(second, RecipientStatus.DEFERRED, attempts=0)
    now = state.recipients_of("em_1")
    assert [(r.id, r.status, r.attempts) for r in now] == [
        ("rcp_1", RecipientStatus.DELIVERED, 3),
        ("rcp_2", RecipientStatus.DEFERRED, 0),
    ]
    assert first.status is RecipientStatus.DEFERRED and first.attempts == 2


def test_wakeups_tell_every_listener_of_its_kind() -> None:
    woken: list[str] = []
    wakeups = Wakeups()
    wakeups.on_work(lambda: woken.append("engine"))
    wakeups.on_events(lambda: woken.append("dispatcher"))
    wakeups.events_written()
    assert woken == ["dispatcher"]
    woken.clear()
    wakeups.work_arrived()  # an accepted email brings jobs and events
    assert woken == ["engine", "dispatcher"]
