"""One log line per webhook attempt, at the levels ``postline serve`` sets, and one count.

httpx logs every request it makes at INFO; left on, each webhook attempt read
twice in the log, once without the delivery's id. ``cli.setup_logging`` quiets it.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver


async def test_each_webhook_attempt_is_one_log_line(
    production_logging: pytest.LogCaptureFixture,
    postline_factory: Factory,
    receiver: WebhookReceiver,
) -> None:
    pl: PostlineUnderTest = await postline_factory(
        webhook_allow_private=True, webhook_retry_schedule="0.1,0.2"
    )
    created = await pl.client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=pl.auth()
    )
    assert created.status_code == 201, created.text
    webhook_id = created.json()["id"]
    receiver.fail_next(1, 503)
    sent = await pl.client.post(f"/v1/webhooks/{webhook_id}/test", headers=pl.auth())
    assert sent.status_code == 202, sent.text
    delivery_id, event_id = sent.json()["delivery_id"], sent.json()["event_id"]

    async def succeeded() -> Any:
        response = await pl.client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=pl.auth())
        done = [d for d in response.json()["data"] if d["id"] == delivery_id]
        return done and done[0]["status"] == "succeeded" and done[0]["attempts"] == 2

    await poll(succeeded, timeout=15, what="the second attempt to succeed")
    assert len(receiver.received) == 2
    info = [r for r in production_logging.records if r.levelno >= logging.INFO]
    from_http_client = [
        r.getMessage() for r in info if r.name.split(".")[0] in ("httpx", "httpcore")
    ]
    assert from_http_client == []
    about_it = [r.getMessage() for r in info if delivery_id in r.getMessage()]
    line = f"webhook delivery_id={delivery_id} event_id={event_id}"
    assert about_it == [
        f"{line} attempt=1 code=503 status=pending",
        f"{line} attempt=2 code=200 status=succeeded",
    ]
    metrics = (await pl.client.get("/metrics")).text.splitlines()
    counted = [m for m in metrics if m.startswith("postline_webhook_attempts_total{")]
    assert sorted(counted) == [
        'postline_webhook_attempts_total{outcome="error"} 1.0',
        'postline_webhook_attempts_total{outcome="ok"} 1.0',
    ]
    assert all(r.name.startswith("postline") for r in info if receiver.url in r.getMessage())
