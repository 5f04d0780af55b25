"""The outbox row of one recipient outcome (outcomes.py ``event_row``), field by field.

The recording tests read events back through the API, which rebuilds some of them;
mutation testing (docs/TESTING.md) showed that no test looked at the row itself, so a
renamed key, a dropped field or a wrong value in the payload went unnoticed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from postline.model import (
    EVENT_FOR_STATUS,
    BounceType,
    EmailSource,
    EmailStatus,
    EventType,
    RecipientStatus,
)
from postline.outcomes import Outcome, email_data, event_row
from postline.store.emails import Email, Recipient

NOW = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)

EMAIL = Email(
    id="em_1",
    domain_id="dom_1",
    source=EmailSource.API,
    message_id="<m1@postline.example.test>",
    from_header="Shop Team <shop@example.test>",
    from_address="shop@example.test",
    envelope_from="bounces@example.test",
    subject="Your order",
    size=1234,
    body_ref="em_1",
    tags={"order": "42"},
    status=EmailStatus.SENDING,
    scheduled_at=None,
    created_at=NOW,
    updated_at=NOW,
    original_email_id=None,
    body_purged_at=None,
    bodies=1,
)

RECIPIENT = Recipient(
    id="rcp_1",
    email_id="em_1",
    position=0,
    address="someone@dest.test",
    destination="dest.test",
    kind="to",
    status=RecipientStatus.BOUNCED,
    smtp_code=550,
    enhanced_code="5.1.1",
    response="550 5.1.1 User unknown",
    bounce_type=BounceType.HARD,
    bounce_rule="user-unknown",
    attempts=1,
    next_attempt_at=None,
    created_at=NOW,
    updated_at=NOW,
)


def row_for(outcome: Outcome, event_type: EventType, attempt: int, sequence: int) -> dict[str, Any]:
    return event_row(
        email=EMAIL,
        recipient=RECIPIENT,
        event_type=event_type,
        outcome=outcome,
        attempt=attempt,
        sequence=sequence,
        now=NOW,
    )


def test_event_row_carries_every_field_of_the_payload() -> None:
    outcome = Outcome(
        status=RecipientStatus.BOUNCED,
        smtp_code=550,
        enhanced_code="5.1.1",
        response="550 5.1.1 User unknown",
        bounce_type=BounceType.HARD,
        reason="the mailbox does not exist",
    )
    row = row_for(outcome, EventType.BOUNCED, attempt=3, sequence=7)
    event_id = row.pop("id")
    assert isinstance(event_id, str) and event_id.startswith("evt_")
    assert row == {
        "type": "email.bounced",
        "email_id": "em_1",
        "recipient_id": "rcp_1",
        "domain_id": "dom_1",
        "sequence": 7,
        "created_at": NOW,
        "payload": {
            "type": "email.bounced",
            "created_at": "2024-05-01T12:30:15.123456Z",
            "data": {
                "email_id": "em_1",
                "message_id": "<m1@postline.example.test>",
                "domain": "example.test",
                "from": "Shop Team <shop@example.test>",
                "to": ["someone@dest.test"],
                "subject": "Your order",
                "created_at": "2024-05-01T12:30:15.123Z",
                "recipient": "someone@dest.test",
                "status": "bounced",
                "smtp_code": 550,
                "enhanced_code": "5.1.1",
                "reason": "the mailbox does not exist",
                "bounce_type": "hard",
                "deferral_type": None,
                "attempt": 3,
                "tags": {"order": "42"},
                "sequence": 7,
                "bounce": {
                    "message": "the mailbox does not exist",
                    "type": "Permanent",
                    "subType": "hard",
                },
            },
        },
    }
    # The row's tags are a copy: the event does not change with the email object.
    assert row["payload"]["data"]["tags"] is not EMAIL.tags


def test_event_row_without_a_reason_gives_the_reply_and_no_bounce_type() -> None:
    outcome = Outcome(
        status=RecipientStatus.DEFERRED,
        smtp_code=451,
        enhanced_code="4.7.1",
        response="451 4.7.1 Try again later",
    )
    row = row_for(outcome, EventType.DEFERRED, attempt=1, sequence=2)
    data = row["payload"]["data"]
    assert data["reason"] == "451 4.7.1 Try again later"
    assert data["bounce_type"] is None
    assert data["status"] == "deferred"
    assert row["type"] == row["payload"]["type"] == "email.deferred"
    assert "bounce" not in data  # Resend's bounce member is on email.bounced only


def test_a_deferral_names_its_class_without_claiming_a_bounce() -> None:
    outcome = Outcome(
        status=RecipientStatus.DEFERRED,
        smtp_code=421,
        enhanced_code="4.7.0",
        response="421 4.7.0 Try again later",
        bounce_type=BounceType.SOFT,
    )
    data = row_for(outcome, EventType.DEFERRED, attempt=1, sequence=2)["payload"]["data"]
    assert (data["bounce_type"], data["deferral_type"]) == (None, "soft")


def test_an_expiry_claims_no_bounce_either() -> None:
    outcome = Outcome(
        status=RecipientStatus.FAILED,
        smtp_code=421,
        response="421 4.7.0 Try again later",
        bounce_type=BounceType.SOFT,
        reason="expired after 5 attempts",
    )
    data = row_for(outcome, EventType.FAILED, attempt=5, sequence=6)["payload"]["data"]
    assert (data["bounce_type"], data["deferral_type"]) == (None, None)


def test_a_bounce_reads_as_resends_bounce_object() -> None:
    """Resend's ``bounce.type`` is Amazon SES's: only a hard bounce is ``Permanent``."""
    expected = {
        BounceType.HARD: "Permanent",
        BounceType.SOFT: "Transient",
        BounceType.BLOCK: "Transient",
        BounceType.UNDETERMINED: "Undetermined",
        None: "Undetermined",
    }
    for bounce_type, resend_type in expected.items():
        outcome = Outcome(
            status=RecipientStatus.BOUNCED,
            smtp_code=554,
            response="554 5.7.1 refused",
            bounce_type=bounce_type,
        )
        data = row_for(outcome, EventType.BOUNCED, attempt=1, sequence=2)["payload"]["data"]
        assert data["bounce"] == {
            "message": "554 5.7.1 refused",
            "type": resend_type,
            "subType": None if bounce_type is None else str(bounce_type),
        }


def test_every_event_names_the_email_as_resend_does() -> None:
    """``to``, ``subject`` and the email's ``created_at`` on every type of an outcome, not
    only bounces (the tracking events: tests/integration/test_tracking.py; email.received
    is about no email of Postline's)."""
    for status, event_type in EVENT_FOR_STATUS.items():
        data = row_for(Outcome(status=status), event_type, attempt=0, sequence=1)["payload"]["data"]
        assert (data["to"], data["subject"], data["created_at"]) == (
            ["someone@dest.test"],
            "Your order",
            "2024-05-01T12:30:15.123Z",
        ), event_type


def test_event_row_domain_is_after_the_last_at_sign() -> None:
    # A quoted local part may hold an "@" (RFC 5322): the domain is after the last one.
    email = replace(EMAIL, from_header='"a@b"@example.test', from_address='"a@b"@example.test')
    row = event_row(
        email=email,
        recipient=RECIPIENT,
        event_type=EventType.DELIVERED,
        outcome=Outcome(status=RecipientStatus.DELIVERED),
        attempt=1,
        sequence=1,
        now=NOW,
    )
    assert row["payload"]["data"]["domain"] == "example.test"


def test_an_event_about_no_recipient_names_nobody() -> None:
    """A tracking token made before each recipient had a copy of its own names no
    address (tracking/tokens.py): its event's ``to`` is empty, not ``[None]``."""
    data = email_data(EMAIL, None)
    assert (data["to"], data["recipient"]) == ([], None)
    assert data["email_id"] == "em_1"
