"""No raw email address in any log record at INFO or above.

Operators ship INFO logs to aggregators with weaker access control than the
database, so addresses stay in the database: log lines name the email and
recipient ids instead. The test runs a realistic flow in-process with the
production logging levels (``cli.setup_logging``): API sends (single, batch,
scheduled then cancelled, idempotent), deliveries with delivered, hard bounce,
block and deferred-then-delivered outcomes whose remote replies quote the
addresses, suppressions by hand and by bounce, DSNs, webhook dispatch to a
healthy and a gone (410) endpoint, refused requests, and a request through the
real uvicorn server with addresses in its query string. Then every captured
record at INFO or above, formatted with its traceback, is searched for every
address the flow used.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

from postline.supervisor import serve
from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import Hook, WebhookReceiver

SENDER = "sender@example.test"
DELIVERED = "ok@dest.test"
BOUNCED = "bounce@dest.test"
BLOCKED = "blocked@dest.test"
LATER = "later@dest.test"
CC = "carbon@other.test"
BCC = "hidden@other.test"
REPLY_TO = "replies@example.test"
UNSUBSCRIBED = "unsub@dest.test"
BATCH = ("batch1@other.test", "batch2@dest.test")
SCHEDULED = "sched@dest.test"
FOREIGN_FROM = "intruder@second.test"
ADDRESSES = (
    SENDER,
    DELIVERED,
    BOUNCED,
    BLOCKED,
    LATER,
    CC,
    BCC,
    REPLY_TO,
    UNSUBSCRIBED,
    *BATCH,
    SCHEDULED,
    FOREIGN_FROM,
)
FORMAT = logging.Formatter("%(levelname)s %(name)s %(message)s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until(what: str, condition: Any, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _post(pl: PostlineUnderTest, path: str, body: Any, **headers: str) -> httpx.Response:
    return await pl.client.post(path, json=body, headers={**pl.auth(), **headers})


async def _run_flow(pl: PostlineUnderTest, fake_mx: FakeMX) -> None:
    hooks, gone = WebhookReceiver(), WebhookReceiver(default_status=410)
    await hooks.start()
    await gone.start()
    try:
        for receiver in (hooks, gone):
            response = await _post(pl, "/v1/webhooks", {"url": receiver.url, "events": ["*"]})
            assert response.status_code == 201, response.text
        fake_mx.on_rcpt(BOUNCED, f"550 5.1.1 <{BOUNCED}>: Recipient address rejected")
        fake_mx.on_rcpt(BLOCKED, f"554 5.7.1 <{BLOCKED}>: relay access denied for <{SENDER}>")
        fake_mx.on_rcpt(LATER, f"451 4.2.1 <{LATER}>: mailbox busy, try later", "250 2.1.5 OK")
        manual = await _post(
            pl, "/v1/suppressions", {"address": UNSUBSCRIBED, "domain": "example.test"}
        )
        assert manual.status_code == 201, manual.text

        main = await _post(
            pl,
            "/v1/emails",
            {
                "from": f"Sender <{SENDER}>",
                "to": [DELIVERED, BOUNCED, BLOCKED, LATER, UNSUBSCRIBED],
                "cc": CC,
                "bcc": BCC,
                "reply_to": REPLY_TO,
                "subject": "Privacy",
                "text": "hello",
            },
            **{"Idempotency-Key": "privacy-1"},
        )
        assert main.status_code == 202, main.text
        batch = await _post(
            pl,
            "/v1/emails/batch",
            [{"from": SENDER, "to": to, "subject": "B", "text": "b"} for to in BATCH],
        )
        assert batch.status_code == 202, batch.text
        later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
        scheduled = await _post(
            pl,
            "/v1/emails",
            {"from": SENDER, "to": SCHEDULED, "subject": "S", "text": "s", "scheduled_at": later},
        )
        assert scheduled.status_code == 202, scheduled.text
        cancel = await pl.client.post(
            f"/v1/emails/{scheduled.json()['id']}/cancel", headers=pl.auth()
        )
        assert cancel.status_code == 200, cancel.text
        # Refused requests that carry addresses.
        key = await _post(pl, "/v1/api-keys", {"name": "shop", "domain": "example.test"})
        foreign = await pl.client.post(
            "/v1/emails",
            json={"from": FOREIGN_FROM, "to": DELIVERED, "subject": "x", "text": "x"},
            headers=pl.auth(key.json()["key"]),
        )
        assert foreign.status_code == 403, foreign.text
        bad = await _post(
            pl, "/v1/emails", {"from": SENDER, "to": f"{DELIVERED}@@", "subject": "x", "text": "x"}
        )
        assert bad.status_code == 422, bad.text

        ids = [main.json()["id"], *(e["id"] for e in batch.json()["data"])]
        for email_id in ids:
            await pl.wait_until_final(email_id)

        async def dsn_arrived() -> bool:
            return any(SENDER in m.rcpt_tos for m in fake_mx.received)

        await _until("the DSN to the sender", dsn_arrived)

        def all_told(hs: list[Hook]) -> bool:
            seen = {(h.json["type"], h.json["data"].get("recipient")) for h in hs}
            return {
                ("email.delivered", LATER),
                ("email.bounced", BOUNCED),
                ("email.suppressed", UNSUBSCRIBED),
                ("email.cancelled", SCHEDULED),
            } <= seen

        await hooks.wait_until(all_told, what="the webhooks")

        async def gone_disabled() -> bool:
            listed = (await pl.client.get("/v1/webhooks", headers=pl.auth())).json()["data"]
            return any(w["url"] == gone.url and not w["enabled"] for w in listed)

        await _until("the 410 endpoint to be disabled", gone_disabled)
        # The hard bounce suppressed BOUNCED: the next send to it is refused at accept.
        again = await _post(
            pl, "/v1/emails", {"from": SENDER, "to": BOUNCED, "subject": "x", "text": "x"}
        )
        assert again.json()["recipients"][0]["status"] == "suppressed", again.text
        listed = await pl.client.get(
            "/v1/suppressions", params={"address": BOUNCED}, headers=pl.auth()
        )
        deleted = await pl.client.delete(
            f"/v1/suppressions/{listed.json()['data'][0]['id']}", headers=pl.auth()
        )
        assert deleted.status_code == 204, deleted.text
        await pl.stop_engine()
    finally:
        await hooks.stop()
        await gone.stop()


async def _through_uvicorn(factory: Factory, pl: PostlineUnderTest, port: int) -> None:
    """The production HTTP server (its access log would print query strings)."""
    api = await factory(
        engine=False,
        domains=(),
        database_url=pl.settings.database_url,
        http_addr=f"127.0.0.1:{port}",
    )
    # As in a fresh ``postline serve`` process: only Postline's own server config decides
    # whether requests are logged (the harness's receivers switched uvicorn's access log off).
    access = logging.getLogger("uvicorn.access")
    access.propagate, access.handlers[:] = True, []
    ready, stop = asyncio.Event(), asyncio.Event()
    server = asyncio.create_task(serve(api.services, engine=False, ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for params in ({"recipient": DELIVERED}, {"from": SENDER}, {"recipient": "x@@"}):
                response = await client.get("/v1/emails", params=params, headers=pl.auth())
                assert response.status_code in (200, 422), response.text
            missing = await client.get(f"/v1/suppressions?address={BOUNCED}")
            assert missing.status_code == 401
    finally:
        stop.set()
        await asyncio.wait_for(server, 15)


async def test_no_address_in_info_logs(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    production_logging: pytest.LogCaptureFixture,
) -> None:
    # The sender's domain has an MX too, so the DSNs are delivered.
    fake_dns.add_mx("example.test", (10, "mx.example.test"))
    fake_dns.add_a("mx.example.test", fake_mx.host)
    pl = await postline_factory(
        domains=("example.test", "second.test"),
        bounce_notifications=True,
        webhook_allow_private=True,
        webhook_retry_schedule="0.1",
    )
    await _run_flow(pl, fake_mx)
    port = _free_port()
    await _through_uvicorn(postline_factory, pl, port)

    # The test's own HTTP clients log through httpx too: only Postline's records count.
    ours = (f"http://{pl.client.base_url.host}/", f"http://127.0.0.1:{port}/")
    records = [
        r
        for r in production_logging.records
        if r.levelno >= logging.INFO
        and not (r.name == "httpx" and any(url in r.getMessage() for url in ours))
    ]
    lines = [FORMAT.format(r) for r in records]
    # The capture saw the flow: accepts, outcomes, the DSN and webhook deliveries.
    for expected in (
        "accepted email_id=",
        "outcome email_id=",
        "dsn queued",
        "webhook delivery_id=",
    ):
        assert any(expected in line for line in lines), (expected, lines)
    # Raw, and as they appear in a URL query string.
    forms = {form.lower() for a in ADDRESSES for form in (a, quote(a), quote_plus(a))}
    leaks = [(form, line) for line in lines for form in forms if form in line.lower()]
    assert not leaks, "raw addresses in INFO+ logs:\n" + "\n".join(
        f"{form}: {line}" for form, line in leaks
    )
