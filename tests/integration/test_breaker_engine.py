"""Circuit breakers in the engine: open on transaction failures, defer without connecting."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from postline.delivery.breaker import Breakers, BreakerState
from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import Factory, PostlineUnderTest


async def _destination(pl: PostlineUnderTest, domain: str) -> dict[str, Any]:
    response = await pl.client.get("/v1/destinations", headers=pl.auth())
    assert response.status_code == 200
    found: dict[str, Any] = next(d for d in response.json()["data"] if d["domain"] == domain)
    return found


async def test_five_failed_transactions_open_the_breaker_then_jobs_wait_without_connecting(
    postline_factory: Factory, fake_dns: FakeDNS
) -> None:
    fake_dns.add_mx("dead.test", (10, "mx.dead.test"))
    fake_dns.add_a("mx.dead.test", "127.0.0.9")  # nothing listens: connection refused
    pl = await postline_factory()
    sent = await pl.send(to="user@dead.test")
    detail = await pl.wait_for(
        sent["id"],
        lambda d: any(
            "circuit breaker open" in (t["response"] or "") for t in d["recipients"][0]["timeline"]
        ),
        what="a deferral by the open breaker",
    )
    timeline = detail["recipients"][0]["timeline"]
    refused = [t for t in timeline if "circuit breaker" not in (t["response"] or "")]
    assert len(refused) == 5  # five real attempts, then the breaker held the job
    assert detail["recipients"][0]["status"] == "deferred"
    destination = await _destination(pl, "dead.test")
    assert destination["breaker"] == "open"
    assert destination["consecutive_failures"] == 5
    assert "SMTPConnectError" in destination["last_error"]

    # A restart warms the breaker from the recorded attempts: still open.
    pl.services.engine.breakers = Breakers()
    await pl.services.engine.warm_up()
    assert pl.services.engine.breakers.view("dead.test").state is BreakerState.OPEN

    # ... and so does `postline queue status`, from another process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTLINE_")}
    env["POSTLINE_DATA_DIR"] = str(pl.settings.data_dir)
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "postline"),
        "queue",
        "status",
        env=env | {"COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    line = next(x for x in stdout.decode().splitlines() if "dead.test" in x)
    assert "open until" in line


async def test_recipient_rejections_never_open_a_breaker(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    for i in range(6):
        fake_mx.on_rcpt(f"nobody{i}@dest.test", "550 5.1.1 no such user")
    for i in range(6):
        sent = await postline.send(to=f"nobody{i}@dest.test")
        await postline.wait_for_status(sent["id"], ["bounced"])
    assert postline.services.engine.breakers.view("dest.test").state is BreakerState.CLOSED


async def test_operator_opens_and_closes_a_breaker(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    opened = await postline.client.post(
        "/v1/destinations/dest.test/breaker", json={"state": "open"}, headers=postline.auth()
    )
    assert opened.status_code == 200 and opened.json()["breaker"] == "open"
    sent = await postline.send(to="held@dest.test")
    await postline.wait_for(
        sent["id"],
        lambda d: d["recipients"][0]["status"] == "deferred",
        what="a deferral by the forced-open breaker",
    )
    assert fake_mx.connections == 0
    closed = await postline.client.post(
        "/v1/destinations/dest.test/breaker", json={"state": "closed"}, headers=postline.auth()
    )
    assert closed.json()["breaker"] == "closed"
    scoped = await postline.client.post(
        "/v1/api-keys", json={"name": "s", "domain": "example.test"}, headers=postline.auth()
    )
    forbidden = await postline.client.post(
        "/v1/destinations/dest.test/breaker",
        json={"state": "open"},
        headers=postline.auth(scoped.json()["key"]),
    )
    assert forbidden.status_code == 403
