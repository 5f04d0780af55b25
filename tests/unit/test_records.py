"""Store records: built from rows by field name, with enum fields turned into enums."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from postline.model import AttemptScope, RecipientStatus, WebhookDeliveryStatus
from postline.store.attempts import AttemptRow
from postline.store.records import Record
from postline.store.webhooks import WebhookDelivery

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def delivery_columns(**overrides: object) -> dict[str, object]:
    columns: dict[str, object] = {
        "id": "whd_1",
        "event_id": "evt_1",
        "event_type": "email.delivered",
        "webhook_id": "wh_1",
        "status": "pending",
        "attempts": 2,
        "next_attempt_at": None,
        "lease_until": NOW,  # a column the record does not ask for
        "response_code": None,
        "response_body": None,
        "created_at": NOW,
        "updated_at": NOW,
    }
    return columns | overrides


def test_enum_fields_become_enums_and_extra_columns_are_ignored() -> None:
    delivery = WebhookDelivery.from_mapping(delivery_columns(status="failed"))
    assert delivery.status is WebhookDeliveryStatus.FAILED
    assert delivery.attempts == 2
    assert not hasattr(delivery, "lease_until")


def test_an_unknown_value_of_a_closed_set_is_refused() -> None:
    with pytest.raises(ValueError, match="'archived'"):
        WebhookDelivery.from_mapping(delivery_columns(status="archived"))


def test_a_missing_column_is_an_error_not_a_default() -> None:
    columns = delivery_columns()
    del columns["event_type"]
    with pytest.raises(KeyError, match="event_type"):
        WebhookDelivery.from_mapping(columns)


def test_optional_enum_fields_keep_none() -> None:
    @dataclass(frozen=True, slots=True)
    class Maybe(Record):
        scope: AttemptScope | None

    assert Maybe.from_mapping({"scope": None}).scope is None
    assert Maybe.from_mapping({"scope": "local"}).scope is AttemptScope.LOCAL


def test_records_are_frozen() -> None:
    row = AttemptRow.from_mapping(
        {
            "destination": "dest.test",
            "attempt_id": "att_1",
            "scope": "breaker",
            "status": "deferred",
            "created_at": NOW,
            "response": None,
        }
    )
    assert (row.scope, row.status) == (AttemptScope.BREAKER, RecipientStatus.DEFERRED)
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.scope = AttemptScope.TRANSACTION  # type: ignore[misc]
