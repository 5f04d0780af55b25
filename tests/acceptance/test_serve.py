"""``postline serve`` as a real process: crashes, graceful shutdown, the sandbox, health.

Deliveries go over real SMTP to a FakeMX found through FakeDNS. The FakeMX runs in
this test's event loop, so everything here is async and never blocks the loop.
"""

from __future__ import annotations

import asyncio
import re
import signal
from typing import Any

import httpx

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, Server, auth
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX

SHUTDOWN_TIMEOUT = 5.0
#: How long a stopping process may take before the test calls it hung: far more than the
#: drain, so that a loaded machine never fails it; the tests assert what the exit left.
EXIT_BOUND = SHUTDOWN_TIMEOUT + 60


def route_to(fake_dns: FakeDNS, fake_mx: FakeMX, domain: str = "dest.test") -> None:
    fake_dns.add_mx(domain, (10, f"mx.{domain}"))
    fake_dns.add_a(f"mx.{domain}", fake_mx.host)


def delivery_env(fake_dns: FakeDNS, fake_mx: FakeMX) -> dict[str, str]:
    """Deliver to the FakeMX; the lease and the heartbeat at their defaults, so that a
    crash is recovered from as it would be in production (within 15 + 5 s)."""
    return {
        "POSTLINE_DNS_NAMESERVERS": fake_dns.nameserver,
        "POSTLINE_DELIVERY_PORT": str(fake_mx.port),
        "POSTLINE_RETRY_SCHEDULE": "1",
        "POSTLINE_SMTP_CONNECT_TIMEOUT": "1",
        "POSTLINE_SMTP_COMMAND_TIMEOUT": "2",
        "POSTLINE_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
    }


async def add_domain(server: Server, key: str, name: str = "example.test") -> None:
    response = await server.client.post("/v1/domains", json={"name": name}, headers=auth(key))
    assert response.status_code == 201, f"{response.status_code} {response.text}"


def only_recipient(detail: dict[str, Any]) -> dict[str, Any]:
    recipients: list[dict[str, Any]] = detail["recipients"]
    assert len(recipients) == 1, detail
    return recipients[0]


def _released_some(line: str) -> bool:
    """A drain log line that gave jobs back unfinished."""
    match = re.search(r"drained; released (\d+) unfinished", line)
    return match is not None and int(match.group(1)) > 0


def message_ids(fake_mx: FakeMX, address: str) -> list[str]:
    return [str(r.message["Message-ID"]) for r in fake_mx.messages_for(address)]


async def test_sigkill_during_delivery_then_restart_delivers_once(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    route_to(fake_dns, fake_mx)
    install.extra.update(delivery_env(fake_dns, fake_mx))
    (await install.acli("domains", "add", "example.test")).assert_ok()
    created = (await install.acli("keys", "create", "--name", "t")).assert_ok()
    key = created.stdout_lines[-1]
    assert key.startswith("pl_"), created.describe()

    fake_mx.stall("rcpt", 30)  # the first delivery cannot finish
    first = await launch(install, "serve", "--no-sandbox")
    await first.ready()
    sent = await first.send(key, to="user@dest.test")
    assert sent["recipients"] == [{"address": "user@dest.test", "status": "queued"}], sent
    # The job is leased and its SMTP session open (stalled in RCPT): kill the process now.
    await fake_mx.wait_for_connections(1, timeout=10)
    killed_at = asyncio.get_running_loop().time()
    first.proc.kill()
    assert await first.wait_exit(10) == -signal.SIGKILL, first.describe()
    assert fake_mx.received == [], fake_mx

    fake_mx.stall("rcpt", 0)
    second = await launch(install, "serve", "--no-sandbox")
    await second.ready()
    # The job is leased by the dead process: taken over once its heartbeat has run out.
    detail = await second.wait_status(key, sent["id"], "delivered", timeout=60)
    (received,) = fake_mx.received
    print(f"SIGKILL to the redelivery of the killed serve's mail: {received.at - killed_at:.1f}s")
    recipient = only_recipient(detail)
    assert recipient["status"] == "delivered", detail
    assert [row["status"] for row in recipient["timeline"]] == ["delivered"], detail
    # The killed session never reached DATA, so the recovered job delivers exactly once.
    assert message_ids(fake_mx, "user@dest.test") == [sent["message_id"]], fake_mx


async def test_sigkill_right_after_202_then_restart_delivers(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    route_to(fake_dns, fake_mx)
    install.extra.update(delivery_env(fake_dns, fake_mx))
    first = await launch(install, "serve", "--no-sandbox")
    key = await first.admin_key()
    await first.ready()
    await add_domain(first, key)

    sent = await first.send(key, to="user@dest.test")
    first.proc.kill()  # no stall: the process may or may not have delivered it
    assert await first.wait_exit(10) == -signal.SIGKILL, first.describe()
    before = len(fake_mx.received)

    second = await launch(install, "serve", "--no-sandbox")
    await second.ready()
    await second.wait_status(key, sent["id"], "delivered", timeout=60)
    copies = message_ids(fake_mx, "user@dest.test")
    # At least once; twice only if the kill fell between the MX's 250 and the commit.
    assert copies and set(copies) == {sent["message_id"]}, fake_mx
    print(f"MX received {len(copies)} (before the restart: {before})")


async def test_sigterm_finishes_in_flight_deliveries_and_exits_0(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    route_to(fake_dns, fake_mx)
    install.extra.update(delivery_env(fake_dns, fake_mx))
    server = await launch(install, "serve", "--no-sandbox")
    key = await server.admin_key()
    await server.ready()
    await add_domain(server, key)

    fake_mx.stall("rcpt", 1)
    addresses = [f"user{i}@dest.test" for i in range(3)]
    sent = [await server.send(key, to=address) for address in addresses]
    await fake_mx.wait_for_connections(len(addresses), timeout=10)  # all three in flight
    server.signal(signal.SIGTERM)
    # A bound that catches a hang only: how fast the exit comes is not what is tested.
    assert await server.wait_exit(EXIT_BOUND) == 0, server.describe()
    assert any(line.endswith(" stopped") for line in server.stderr), server.describe()
    assert not any("Traceback" in line for line in server.stderr), server.describe()
    # Finished before the exit, not given back: every message is at the MX already.
    for address, email in zip(addresses, sent, strict=True):
        assert message_ids(fake_mx, address) == [email["message_id"]], server.describe()
    assert not any(_released_some(line) for line in server.stderr), server.describe()

    fake_mx.clear()
    again = await launch(install, "serve", "--no-sandbox")
    await again.ready()
    for email in sent:
        await again.wait_status(key, email["id"], "delivered", timeout=20)
    for address, email in zip(addresses, sent, strict=True):
        assert message_ids(fake_mx, address) == [email["message_id"]], fake_mx


async def test_sigterm_releases_stuck_deliveries_within_the_timeout(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    route_to(fake_dns, fake_mx)
    install.extra.update(delivery_env(fake_dns, fake_mx))
    shutdown_timeout = 1.5
    install.extra.update(
        POSTLINE_SHUTDOWN_TIMEOUT=str(shutdown_timeout),
        # Keep the SMTP timeouts out of the way: only the shutdown may end these sessions.
        POSTLINE_SMTP_CONNECT_TIMEOUT="5",
        POSTLINE_SMTP_COMMAND_TIMEOUT="20",
        POSTLINE_LEASE_SECONDS="60",
    )
    server = await launch(install, "serve", "--no-sandbox")
    key = await server.admin_key()
    await server.ready()
    await add_domain(server, key)

    fake_mx.stall("rcpt", 30)
    addresses = [f"stuck{i}@dest.test" for i in range(3)]
    sent = [await server.send(key, to=address) for address in addresses]
    await fake_mx.wait_for_connections(len(addresses), timeout=10)
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(EXIT_BOUND) == 0, server.describe()
    assert any(line.endswith(" stopped") for line in server.stderr), server.describe()
    # Cut off at the drain timeout and given back, not waited for: the MX has nothing.
    assert fake_mx.received == [], fake_mx
    released = await server.wait_for_line(r"drained; released (\d+) unfinished", stream="stderr")
    assert int(released.group(1)) == len(addresses), server.describe()

    fake_mx.clear()
    again = await launch(install, "serve", "--no-sandbox")
    await again.ready()
    for email in sent:
        # Released, not leased: delivered at once, without waiting for a lease to expire.
        await again.wait_status(key, email["id"], "delivered", timeout=10)
    for address, email in zip(addresses, sent, strict=True):
        assert message_ids(fake_mx, address) == [email["message_id"]], fake_mx


async def test_sandbox_walkthrough(install: Install, launch: Launcher) -> None:
    # At the production default: the simulator is Postline's own MX, on loopback, and
    # routed to without allowing private delivery.
    server = await launch(
        install,
        "serve",
        POSTLINE_SANDBOX="true",
        POSTLINE_RETRY_SCHEDULE="1",
        POSTLINE_DELIVERY_ALLOW_PRIVATE="false",
    )
    key = await server.admin_key()
    await server.ready()
    await server.wait_for_line(r"^Sandbox on:")

    sender = "hello@sandbox.postline.test"
    ids = {}
    for local in ("delivered", "bounced", "deferred", "blocked"):
        sent = await server.send(key, to=f"{local}@simulator.postline.test", **{"from": sender})
        ids[local] = sent["id"]

    delivered = await server.wait_status(key, ids["delivered"], "delivered")
    assert only_recipient(delivered)["smtp_code"] == 250, delivered

    bounced = only_recipient(await server.wait_status(key, ids["bounced"], "bounced"))
    assert bounced["status"] == "bounced", bounced
    assert bounced["smtp_code"] == 550, bounced
    assert bounced["enhanced_code"] == "5.1.1", bounced
    assert bounced["bounce_type"] == "hard", bounced

    blocked = only_recipient(await server.wait_status(key, ids["blocked"], "bounced"))
    assert blocked["smtp_code"] == 554, blocked
    assert blocked["enhanced_code"] == "5.7.1", blocked
    assert blocked["bounce_type"] == "block", blocked

    first_try = await server.wait_email(
        key,
        ids["deferred"],
        lambda d: bool(only_recipient(d)["timeline"]),
        what="the first attempt of deferred@",
    )
    row = only_recipient(first_try)["timeline"][0]
    assert row["status"] == "deferred" and row["smtp_code"] == 451, first_try
    retried = only_recipient(await server.wait_status(key, ids["deferred"], "delivered"))
    assert [(r["status"], r["smtp_code"]) for r in retried["timeline"]] == [
        ("deferred", 451),
        ("delivered", 250),
    ], retried
    assert retried["attempts"] == 2, retried

    metrics = (await server.client.get("/metrics")).text
    for status, count in (("delivered", 2), ("bounced", 2), ("deferred", 1)):
        pattern = rf'^postline_recipient_outcomes_total\{{status="{status}"\}} {count}\.0$'
        assert re.search(pattern, metrics, re.MULTILINE), metrics


async def test_mx_on_loopback_is_refused_at_production_defaults(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    """A tenant who controls a domain's DNS cannot steer delivery into 127.0.0.1."""
    route_to(fake_dns, fake_mx)  # dest.test's MX is the fake MX, on 127.0.0.1
    install.extra.update(delivery_env(fake_dns, fake_mx))
    server = await launch(install, "serve", "--no-sandbox", POSTLINE_DELIVERY_ALLOW_PRIVATE="false")
    key = await server.admin_key()
    await server.ready()
    await add_domain(server, key)
    sent = await server.send(key, to="user@dest.test")
    recipient = only_recipient(await server.wait_status(key, sent["id"], "bounced"))
    assert recipient["bounce_rule"] == "dns.private_address", recipient
    assert "resolves only to non-public addresses (127.0.0.1: loopback" in recipient["response"]
    assert fake_mx.connections == 0 and fake_mx.received == [], fake_mx


async def test_health_readiness_and_metrics_over_http(install: Install, launch: Launcher) -> None:
    server = await launch(install, "serve", "--no-sandbox")
    await server.ready()

    health = await server.client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}, health.text
    ready = await server.client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}, ready.text
    metrics = await server.client.get("/metrics")
    assert metrics.status_code == 200, metrics.text
    assert metrics.headers["content-type"].startswith("text/plain"), metrics.headers
    assert re.search(r"^postline_queue_depth 0\.0$", metrics.text, re.MULTILINE), metrics.text
    anonymous = await server.client.get("/v1/emails")
    assert anonymous.status_code == 401, anonymous.text
    assert anonymous.headers["content-type"].startswith("application/problem+json")

    server.signal(signal.SIGTERM)
    assert await server.wait_exit(15) == 0, server.describe()


async def test_the_banner_names_an_api_index_and_docs_that_answer(
    install: Install, launch: Launcher
) -> None:
    server = await launch(install, "serve", "--no-sandbox")
    await server.ready()
    banner = await server.wait_for_line(
        r"^Postline is running\. API: (http://\S+/v1)  Docs: (http://\S+/docs)$"
    )
    api_url, docs_url = banner.group(1), banner.group(2)
    assert api_url == f"{install.base_url}/v1", banner.group(0)
    async with httpx.AsyncClient(timeout=10.0) as client:
        index = await client.get(api_url)
        assert index.status_code == 200, index.text
        assert index.json()["object"] == "index" and index.json()["docs"] == "/docs", index.text
        docs = await client.get(docs_url)
        assert docs.status_code == 200, docs.text
        assert docs.headers["content-type"].startswith("text/html"), docs.headers
        assert "/docs/assets/swagger-ui/swagger-ui-bundle.js" in docs.text, docs.text
