"""Postline under test, in the test's event loop: real store, spool, queue and engine.

The API is reached through httpx's ASGI transport (the real FastAPI app, no
socket); deliveries go over real SMTP to FakeMX servers found through FakeDNS.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from postline.api.app import create_api
from postline.app import Services
from postline.config import Settings, load_settings
from postline.delivery.breaker import Breakers
from postline.domains import create_domain
from postline.keys import create_key
from postline.secrets import prepare_secrets
from postline.store.domains import set_bounce_notifications
from postline.store.migrate import upgrade_async
from postline.store.types import Clock, utcnow
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX
from tests.harness.receiver import LoopbackOnly

#: Every in-process instance's secret key: tests often point a second instance (or a
#: subprocess) at the first one's database, as hosts sharing PostgreSQL do.
TEST_SECRET_KEY = "cG9zdGxpbmUtdGVzdHMtc2VjcmV0LWtleS0zMmJ5dGU="

FINAL = {"delivered", "bounced", "failed", "suppressed", "cancelled", "complained"}

#: What the harness clients send: ask for problem documents by their own type.
PROBLEM_ACCEPT = "application/problem+json"


class PostlineUnderTest:
    def __init__(
        self,
        services: Services,
        client: httpx.AsyncClient,
        admin_key: str,
        transport: LoopbackOnly,
    ) -> None:
        self.services = services
        self.client = client
        self.admin_key = admin_key
        self.stop = asyncio.Event()
        self.engine_task: asyncio.Task[None] | None = None
        self.dispatcher_task: asyncio.Task[None] | None = None
        # The dispatcher's: webhook tests must never connect anywhere but loopback.
        self.transport = transport

    @property
    def settings(self) -> Settings:
        return self.services.settings

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    async def send(self, key: str | None = None, **body: Any) -> dict[str, Any]:
        """POST /v1/emails and insist on a 202."""
        body.setdefault("from", "Sender <sender@example.test>")
        body.setdefault("subject", "Hello")
        body.setdefault("text", "Hello from Postline")
        response = await self.client.post("/v1/emails", json=body, headers=self.auth(key))
        assert response.status_code == 202, response.text
        result: dict[str, Any] = response.json()
        return result

    async def email(self, email_id: str, key: str | None = None) -> dict[str, Any]:
        response = await self.client.get(f"/v1/emails/{email_id}", headers=self.auth(key))
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def wait_for(
        self,
        email_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 15.0,
        what: str = "condition",
    ) -> dict[str, Any]:
        """Poll the API until the predicate holds, with a deadline (never a bare sleep)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            detail = await self.email(email_id)
            if predicate(detail):
                return detail
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {detail}")
            await asyncio.sleep(0.05)

    async def wait_for_status(
        self, email_id: str, statuses: Iterable[str], timeout: float = 15.0
    ) -> dict[str, Any]:
        wanted = set(statuses)
        return await self.wait_for(
            email_id, lambda d: d["status"] in wanted, timeout, f"status in {sorted(wanted)}"
        )

    async def wait_until_final(self, email_id: str, timeout: float = 15.0) -> dict[str, Any]:
        return await self.wait_for(
            email_id,
            lambda d: all(r["status"] in FINAL for r in d["recipients"]),
            timeout,
            "every recipient final",
        )

    def start_engine(self) -> None:
        """Start delivery and webhook dispatch, as a worker does."""
        self.stop.clear()
        self.engine_task = asyncio.create_task(self.services.engine.run(self.stop))
        self.dispatcher_task = asyncio.create_task(self.services.dispatcher.run(self.stop))

    async def stop_engine(self) -> None:
        """Stop both, and fail if either crashed, hung or connected off loopback.

        Both are always awaited (or, hung, cancelled), whatever the other did; then one
        AssertionError names every problem. It is not to be swallowed: the harness's
        teardown raises it too, so a test that broke the engine fails.
        """
        self.stop.set()
        problems: list[str] = []
        tasks = {"engine": self.engine_task, "webhook dispatcher": self.dispatcher_task}
        self.engine_task = self.dispatcher_task = None
        for name, task in tasks.items():
            if task is not None:
                problems += await _stopped(name, task)
        if self.transport.violations:
            problems.append(f"webhooks sent off loopback: {self.transport.violations}")
        assert not problems, "; ".join(problems)


#: How long the engine and the dispatcher may take to stop: their own drain
#: (``shutdown_timeout``, 5 s in tests) and then some, on a loaded machine.
STOP_SECONDS = 30.0


async def _stopped(name: str, task: asyncio.Task[None]) -> list[str]:
    """Wait for a task told to stop; what went wrong with it, if anything."""
    done, _ = await asyncio.wait([task], timeout=STOP_SECONDS)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return [f"the {name} did not stop within {STOP_SECONDS:g} s (hung; cancelled)"]
    if task.cancelled():
        return [f"the {name} was cancelled instead of stopping"]
    error = task.exception()
    if error is not None:
        trace = "".join(traceback.format_exception(error))
        return [f"the {name} crashed: {error!r}\n{trace}"]
    return []


def test_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "hostname": "postline.example.test",
        "retry_schedule": "0.2",
        "poll_interval": 0.05,
        "smtp_connect_timeout": 5.0,
        "smtp_command_timeout": 10.0,
        "lease_seconds": 60,
        "shutdown_timeout": 5.0,
        # Never a real name: the canary is asked of the fake DNS, where dest.test exists.
        "dns_canary": "dest.test",
        # The fake MXs listen on loopback, which production refuses to deliver to.
        "delivery_allow_private": True,
        "secret_key": TEST_SECRET_KEY,
        # supervisor.serve runs the inbound MX and the submission port: on ports of their
        # own, never the defaults.
        "inbound_addr": "127.0.0.1:0",
        "smtp_addr": "127.0.0.1:0",
    }
    values.update(overrides)
    return load_settings(**values)


Factory = Callable[..., Awaitable[PostlineUnderTest]]


@pytest_asyncio.fixture
async def postline_factory(
    tmp_path: Path, fake_dns: FakeDNS, fake_mx: FakeMX
) -> AsyncIterator[Factory]:
    """Build Postline instances wired to ``fake_dns`` and ``fake_mx`` (MX for dest.test).

    ``await postline_factory(engine=False, **settings)``. Destination domains
    ``dest.test`` and ``other.test`` route to ``fake_mx``. The sending domains are
    created with DSNs off (so a bounce sends no extra mail to count) unless
    ``bounce_notifications=True``.
    """
    for domain in ("dest.test", "other.test"):
        fake_dns.add_mx(domain, (10, f"mx.{domain}"))
        fake_dns.add_a(f"mx.{domain}", fake_mx.host)
    made: list[PostlineUnderTest] = []

    async def make(
        engine: bool = True,
        domains: tuple[str, ...] = ("example.test",),
        bounce_notifications: bool = False,
        clock: Clock = utcnow,
        webhook_transport: LoopbackOnly | None = None,
        breakers: Breakers | None = None,
        **overrides: Any,
    ) -> PostlineUnderTest:
        overrides.setdefault("dns_nameservers", fake_dns.nameserver)
        overrides.setdefault("delivery_port", fake_mx.port)
        settings = test_settings(tmp_path / f"data{len(made)}", **overrides)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.spool_path.mkdir(parents=True, exist_ok=True)
        await upgrade_async(settings.database_url)
        transport = webhook_transport or LoopbackOnly()
        services = Services.build(
            settings, clock=clock, webhook_transport=transport, breakers=breakers
        )
        await prepare_secrets(services.db)
        for name in domains:
            domain = await create_domain(services.db, name)
            if not bounce_notifications:
                async with services.db.write() as conn:
                    await set_bounce_notifications(conn, domain.id, False)
        admin = await create_key(services.db, "test admin")
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_api(services)),
            base_url="http://postline",
            # Problems come as RFC 9457's type to a client that asks for it by name, as the
            # tests' assertions of it expect (test_api_errors covers the plain JSON answer).
            headers={"Accept": PROBLEM_ACCEPT},
        )
        under_test = PostlineUnderTest(services, client, admin.key, transport)
        if engine:
            under_test.start_engine()
        made.append(under_test)
        return under_test

    yield make
    problems: list[str] = []
    for under_test in made:
        try:
            await under_test.stop_engine()
        except AssertionError as failed:
            problems.append(str(failed))
        finally:
            await under_test.client.aclose()
            await under_test.services.close()
    # After closing every instance: the test fails, and leaves nothing running.
    assert not problems, "; ".join(problems)
