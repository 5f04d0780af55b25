"""``postline webhooks listen`` accepts what verifies and refuses what does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from postline.events.listener import make_app
from postline.events.signing import Signers, new_secret


def _signed(secret: str, body: str) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "webhook-id": "evt_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Signers().header(
            secret=secret,
            previous_secret=None,
            rotated_at=None,
            msg_id="evt_1",
            timestamp=now,
            body=body,
        ),
    }


async def test_listener_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    secret = new_secret()
    body = json.dumps({"type": "email.delivered", "data": {"recipient": "a@b.test"}})
    app = make_app(secret)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l") as c:
        good = await c.post("/", content=body, headers=_signed(secret, body))
        bad = await c.post("/", content=body, headers=_signed(new_secret(), body))
    assert good.status_code == 200
    assert bad.status_code == 401
    printed = capsys.readouterr().out
    assert "email.delivered a@b.test [signature ok]" in printed
    assert "REJECTED" in printed
