"""Standard Webhooks signatures (the reference library does the HMAC)."""

from __future__ import annotations

import base64
import secrets
from datetime import datetime, timedelta

from standardwebhooks.webhooks import Webhook

#: After a rotation the old secret still signs for this long, so receivers can switch over.
ROTATION_OVERLAP = timedelta(hours=24)
#: Secrets whose decoded keys a :class:`Signers` keeps (then the oldest go first).
MAX_KEYS = 1024


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Signers:
    """Signs deliveries, decoding each endpoint's secret once rather than per delivery.

    The library's ``Webhook(secret)`` base64-decodes the secret; the dispatcher keeps
    one per secret in use (a rotated-away secret drops out once the cache is full).
    """

    def __init__(self) -> None:
        self._keys: dict[str, Webhook] = {}

    def _key(self, secret: str) -> Webhook:
        key = self._keys.get(secret)
        if key is None:
            if len(self._keys) >= MAX_KEYS:
                del self._keys[next(iter(self._keys))]
            key = self._keys[secret] = Webhook(secret)
        return key

    def header(
        self,
        *,
        secret: str,
        previous_secret: str | None,
        rotated_at: datetime | None,
        msg_id: str,
        timestamp: datetime,
        body: str | bytes,
    ) -> str:
        """``v1,<sig>``, plus the previous secret's signature during the overlap window."""
        signatures = [self._key(secret).sign(msg_id, timestamp, body)]
        if previous_secret and rotated_at and timestamp - rotated_at < ROTATION_OVERLAP:
            signatures.append(self._key(previous_secret).sign(msg_id, timestamp, body))
        return " ".join(signatures)
