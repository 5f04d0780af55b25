"""Standard Webhooks signatures (the reference library does the HMAC)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta

from standardwebhooks.webhooks import Webhook

#: After a rotation the old secret still signs for this long, so receivers can switch over.
ROTATION_OVERLAP = timedelta(hours=24)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def signature_header(
    *,
    secret: str,
    previous_secret: str | None,
    rotated_at: datetime | None,
    msg_id: str,
    timestamp: datetime,
    body: str,
) -> str:
    """``v1,<sig>``, plus the previous secret's signature during the overlap window."""
    signatures = [Webhook(secret).sign(msg_id, timestamp, body)]
    if previous_secret and rotated_at and timestamp - rotated_at < ROTATION_OVERLAP:
        signatures.append(Webhook(previous_secret).sign(msg_id, timestamp, body))
    return " ".join(signatures)
