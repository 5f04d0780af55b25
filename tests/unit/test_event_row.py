"""The outbox row of one recipient outcome (outcomes.py ``event_row``), field by field.

The recording tests read events back through the API, which rebuilds some of them;
mutation testing (docs/TESTING.md) showed that no test looked at the row itself, so a
renamed key, a dropped field or a wrong value in the payload went unnoticed.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from postline.model import BounceType, EmailSource, EmailStatus, EventType, RecipientStatus
from postline.outcomes import Outcome, event_row
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
                "recipient": "someone@dest.test",
                "status": "bounced",
                "smtp_code": 550,
                "enhanced_code": "5.1.1",
                "reason": "the mailbox does not exist",
                "bounce_type": "hard",
                "attempt": 3,
                "tags": {"order": "42"},
                "sequence": 7,
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
