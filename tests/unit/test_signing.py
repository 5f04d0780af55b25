"""Signers: the dispatcher's signatures, with each secret decoded once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from postline.events import signing
from postline.events.signing import Signers, new_secret


def _headers(signature: str, now: datetime) -> dict[str, str]:
    return {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


def test_signers_sign_as_the_library_verifies_and_keep_one_key_per_secret() -> None:
    signers = Signers()
    secret, old = new_secret(), new_secret()
    now = datetime.now(UTC)
    body = b'{"type":"email.delivered"}'
    for _ in range(3):
        header = signers.header(
            secret=secret,
            previous_secret=old,
            rotated_at=now - timedelta(hours=1),
            msg_id="evt_1",
            timestamp=now,
            body=body,
        )
    assert len(signers._keys) == 2
    # Within the overlap both secrets verify; a fresh Signers signs the same (str or bytes).
    for key in (secret, old):
        Webhook(key).verify(body, _headers(header, now))
    assert header == Signers().header(
        secret=secret,
        previous_secret=old,
        rotated_at=now - timedelta(hours=1),
        msg_id="evt_1",
        timestamp=now,
        body=body.decode(),
    )
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, _headers(header, now))


def test_signers_forget_the_oldest_secret_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "MAX_KEYS", 2)
    signers = Signers()
    secrets = [new_secret() for _ in range(3)]
    now = datetime.now(UTC)
    for secret in secrets:
        signers.header(
            secret=secret,
            previous_secret=None,
            rotated_at=None,
            msg_id="evt_1",
            timestamp=now,
            body="{}",
        )
    assert list(signers._keys) == secrets[1:]
