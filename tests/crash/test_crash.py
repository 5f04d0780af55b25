"""The crash suite: Postline as real subprocesses, SIGKILLed five times while it works.

2,000 emails go to three fake destination MX servers: one accepts, one answers ``451``
to each recipient once and then accepts, one rejects every recipient with
``550 5.1.1``. A webhook endpoint is subscribed to every event. Five SIGKILLs land at
seeded random moments: while batches of emails are being accepted, while deliveries are
open, and while webhooks are being sent; the killed process is started again each time.
When every recipient is terminal and every outcome's event acknowledged, Postline is
stopped and the invariants of ``tests/crash/invariants.py`` are checked: no email that
got a 2xx lost, no event lost, duplicates only what was in flight, no orphan spool body.

Every process runs at the default lease and heartbeat settings: a killed engine's
jobs come back when its heartbeat has stopped and a live engine has swept them
(15 + 5 s), and the run prints, for each kill of an engine, the time from the SIGKILL
to the first message of the mail it held that an MX received again.

Two topologies: ``embedded`` (one ``postline serve``: SQLite, embedded queue, file
spool) and ``shared`` (``postline api`` and ``postline worker`` on a fresh PostgreSQL
database, Redis under a fresh prefix and the database spool).

Reproduce a run with the seed it prints:
``POSTLINE_CRASH_SEED=<seed> .venv/bin/pytest tests/crash -s``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, Server, auth, shared_env
from tests.crash.invariants import (
    DATABASE_SPOOL,
    Expectation,
    check_invariants,
    received_copies,
    unsettled,
)
from tests.crash.takeover import first_redelivery, leased_email_ids
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX, FakeMXFactory
from tests.integration.test_webhook_dispatch import TrackingReceiver

#: Killed processes must settle within a deadline at the defaults: run alone.
pytestmark = pytest.mark.solo

EMAILS = 2000
KILLS = 5
BATCH = 50  # emails per POST /v1/emails/batch
SENDERS = 2  # batches in flight at once, so a kill during accept always cuts one
CONCURRENCY = 16  # deliveries in flight per engine: what one kill can leave half-done
PHASES = ("accept", "delivery", "dispatch")

#: Destination domain -> (its MX address, what each recipient there ends as).
DESTINATIONS = {
    "accept.test": ("127.0.0.2", "delivered"),
    "tempfail.test": ("127.0.0.3", "delivered"),
    "reject.test": ("127.0.0.4", "bounced"),
}
#: The endpoint's subscription: every terminal outcome (what the invariants check). "*"
#: would add ``email.queued`` and ``email.deferred`` (another ~2,700 webhooks), which on
#: two cores costs more time than the rest of the run's budget allows.
HOOK_EVENTS = ["email.delivered", "email.bounced", "email.failed"]
TEMPFAIL = "451 4.3.0 try again later"
REJECT = "550 5.1.1 no such user"

RecordProperty = Callable[[str, object], None]
Trigger = Callable[[], bool]


# ---------------------------------------------------------------------------- the network


@dataclass
class Network:
    """The fake destinations (one MX each, on its own loopback address) and the receiver."""

    servers: dict[str, FakeMX]
    receiver: TrackingReceiver

    def program(self, address: str) -> None:
        """Tell the recipient's MX how to answer it, before it is sent."""
        domain = address.rsplit("@", 1)[1]
        if domain == "tempfail.test":
            self.servers[domain].on_rcpt(address, TEMPFAIL, "250 2.1.5 OK")
        elif domain == "reject.test":
            self.servers[domain].on_rcpt(address, REJECT)

    def received(self) -> int:
        return sum(len(mx.received) for mx in self.servers.values())

    def acknowledged(self) -> int:
        return sum(self.receiver.acknowledged.values())


@pytest_asyncio.fixture
async def network(fake_dns: FakeDNS, fake_mx_factory: FakeMXFactory) -> AsyncIterator[Network]:
    ips = [ip for ip, _ in DESTINATIONS.values()]
    servers = await fake_mx_factory.group(*ips)
    for domain, (ip, _) in DESTINATIONS.items():
        fake_dns.add_mx(domain, (10, f"mx.{domain}"))
        fake_dns.add_a(f"mx.{domain}", ip)
    receiver = TrackingReceiver()
    await receiver.start()
    try:
        yield Network(dict(zip(DESTINATIONS, servers, strict=True)), receiver)
    finally:
        await receiver.stop()


def crash_env(dns: FakeDNS, mx_port: int) -> dict[str, str]:
    """Timings short enough to recover from five kills in seconds; the lease and the
    heartbeat are left at their defaults (a dead engine's jobs come back within 20 s).
    A dead engine's webhook deliveries come back after 2 * 2 + 10 s."""
    return {
        "POSTLINE_DNS_NAMESERVERS": dns.nameserver,
        "POSTLINE_DELIVERY_PORT": str(mx_port),
        "POSTLINE_RETRY_SCHEDULE": "1",
        # Durability under kills, not the API budget: 2,000 emails cost 2,000 tokens.
        "POSTLINE_RATE_LIMIT_PER_SECOND": "0",
        "POSTLINE_CONCURRENCY": str(CONCURRENCY),
        "POSTLINE_SMTP_CONNECT_TIMEOUT": "1",
        "POSTLINE_SMTP_COMMAND_TIMEOUT": "2",
        "POSTLINE_HOUSEKEEPING_INTERVAL": "1",
        "POSTLINE_REQUEUE_GRACE_SECONDS": "2",
        "POSTLINE_SHUTDOWN_TIMEOUT": "5",
        "POSTLINE_WEBHOOK_ALLOW_PRIVATE": "true",
        "POSTLINE_WEBHOOK_TIMEOUT": "1",
        "POSTLINE_WEBHOOK_RETRY_SCHEDULE": "1,1,1,1,1",
        "POSTLINE_LOG_LEVEL": "WARNING",
    }


# ---------------------------------------------------------------------------- topologies


@dataclass
class Topology:
    """The processes of one deployment, by role, and how each is started again."""

    name: str
    install: Install
    launch: Launcher
    roles: dict[str, tuple[str, ...]]  # role -> postline arguments
    database_url: str
    spool: Path | str
    queue_url: str = "embedded"
    queue_prefix: str = "postline"
    running: dict[str, Server] = field(default_factory=dict)
    killed: list[Server] = field(default_factory=list)

    @property
    def api(self) -> Server:
        return self.running["api" if "api" in self.running else "serve"]

    def victims(self, phase: str) -> list[str]:
        """Which roles a kill during ``phase`` hits: the one process doing that work."""
        if "serve" in self.roles:
            return ["serve"]
        return ["api"] if phase == "accept" else ["worker"]

    async def start(self, role: str) -> Server:
        server = await self.launch(self.install, *self.roles[role])
        if role == "worker":
            # Logs are at WARNING (a line per delivery would cost CPU): the banner only.
            await server.wait_for_line(r"^Postline worker is running: ", timeout=30)
        else:
            await server.ready(timeout=30)
        self.running[role] = server
        return server

    async def kill(self, role: str) -> float:
        """SIGKILL the process in ``role`` and reap it; the loop time of the signal."""
        server = self.running.pop(role)
        self.killed.append(server)
        killed_at = asyncio.get_running_loop().time()
        server.proc.kill()
        assert await server.wait_exit(10) == -signal.SIGKILL, server.describe()
        return killed_at

    async def leased(self) -> set[str]:
        """The emails whose jobs are leased now (with no engine running: the dead ones')."""
        return await leased_email_ids(self.database_url, self.queue_url, self.queue_prefix)

    def check_running(self) -> None:
        dead = [s for s in self.running.values() if not s.running]
        assert not dead, "\n\n".join(s.describe() for s in dead)

    async def stop(self) -> None:
        """SIGTERM everything still running and wait: the cleanup pass needs it idle."""
        for role in list(self.running):
            server = self.running.pop(role)
            server.signal(signal.SIGTERM)
            assert await server.wait_exit(30) == 0, server.describe()

    def describe(self, tail: int = 30) -> str:
        parts = []
        for server in self.running.values():
            lines = "\n".join(server.stderr[-tail:])
            parts.append(f"$ postline {' '.join(server.args)} (pid {server.pid})\n{lines}")
        return "\n\n".join(parts)


@pytest.fixture(
    params=[
        "embedded",
        pytest.param("shared", marks=[pytest.mark.postgres, pytest.mark.redis]),
    ]
)
def topology(request: pytest.FixtureRequest, install: Install, launch: Launcher) -> Topology:
    """``embedded``: one ``postline serve`` on SQLite, the embedded queue and the file
    spool. ``shared``: ``postline api`` and ``postline worker`` on a fresh PostgreSQL
    database, Redis under a fresh key prefix and the database spool."""
    if request.param == "embedded":
        return Topology(
            "embedded",
            install,
            launch,
            {"serve": ("serve", "--no-sandbox")},
            database_url=f"sqlite:///{install.data_dir / 'postline.db'}",
            spool=install.data_dir / "spool",
        )
    database_url = str(request.getfixturevalue("postgres_url"))
    queue_url = str(request.getfixturevalue("redis_url"))
    prefix = str(request.getfixturevalue("redis_prefix"))
    install.extra.update(shared_env(database_url, queue_url, prefix))
    return Topology(
        "shared",
        install,
        launch,
        {"api": ("api",), "worker": ("worker",)},
        database_url=database_url,
        spool=DATABASE_SPOOL,
        queue_url=queue_url,
        queue_prefix=prefix,
    )


# ---------------------------------------------------------------------------- the run


@dataclass
class Sending:
    """Batches of new recipients, posted by SENDERS tasks until EMAILS got a 202.

    A batch whose request died with the API gets no 2xx: its emails may or may not
    exist, and either is allowed, so they stay out of ``expectation.accepted``; the
    run carries on with new addresses until EMAILS were accepted.
    """

    topology: Topology
    network: Network
    key: str
    expectation: Expectation = field(default_factory=Expectation)
    next_address: int = 0
    reserved: int = 0  # emails in requests in flight
    in_flight: int = 0  # requests in flight
    cut: int = 0  # requests that got no 2xx (the API died under them)
    cut_emails: int = 0
    up: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def accepted(self) -> int:
        return len(self.expectation.accepted)

    def new_batch(self) -> list[str]:
        size = min(BATCH, EMAILS - self.accepted - self.reserved)
        domains = list(DESTINATIONS)
        batch = []
        for _ in range(size):
            n = self.next_address
            self.next_address += 1
            address = f"user{n:05d}@{domains[n % len(domains)]}"
            self.network.program(address)
            batch.append(address)
        return batch

    async def post(self, batch: list[str]) -> list[dict[str, Any]] | None:
        bodies = [
            {"from": "Sender <sender@example.test>", "to": a, "subject": "Hi", "text": "Hello"}
            for a in batch
        ]
        while True:
            try:
                response = await self.topology.api.client.post(
                    "/v1/emails/batch", json=bodies, headers=auth(self.key), timeout=30
                )
            except httpx.TransportError:
                return None
            if response.status_code != 429:
                break
            # Over the key's rate limit (a batch costs a token per recipient): a 429
            # keeps nothing, so a client waits as told and sends the same batch again.
            await asyncio.sleep(float(response.headers["retry-after"]))
        if response.status_code != 202:
            # The only other answer allowed here is none at all: never a 5xx.
            raise AssertionError(f"{response.status_code} {response.text}")
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    async def sender(self) -> None:
        while self.accepted + self.reserved < EMAILS:
            await self.up.wait()
            batch = self.new_batch()
            self.reserved += len(batch)
            self.in_flight += 1
            try:
                data = await self.post(batch)
            finally:
                self.in_flight -= 1
                self.reserved -= len(batch)
            if data is None:
                self.cut += 1
                self.cut_emails += len(batch)
                continue
            for email, address in zip(data, batch, strict=True):
                assert [r["address"] for r in email["recipients"]] == [address], email
                domain = address.rsplit("@", 1)[1]
                self.expectation.add(email["id"], [address], DESTINATIONS[domain][1])


@dataclass
class Kill:
    phase: str
    roles: list[str]
    at: float  # seconds since the first email was sent
    accepted: int
    requests_in_flight: int
    received: int
    acknowledged: int
    killed_at: float = 0.0  # loop time of the SIGKILL
    held: set[str] = field(default_factory=set)  # emails the killed engine had leased

    def takeover(self, network: Network) -> float | None:
        """Seconds from the SIGKILL to the first redelivery of the mail the engine held."""
        return first_redelivery(network.servers.values(), self.held, self.killed_at)

    def describe(self) -> str:
        return (
            f"{self.phase}@{self.at:.1f}s(kill {'+'.join(self.roles)}, accepted="
            f"{self.accepted}, requests={self.requests_in_flight}, received={self.received}, "
            f"acked={self.acknowledged})"
        )


def plan_kills(rng: random.Random) -> list[tuple[str, int]]:
    """KILLS moments covering every phase: the accept kills first (while emails are still
    being sent), then the delivery and dispatch kills in a random order. For accept, how
    many emails must have been accepted; for delivery and dispatch, how many more MX
    copies or acknowledged webhooks since the previous kill."""
    later = ["delivery", "dispatch", *rng.choices(PHASES, k=KILLS - len(PHASES))]
    accepts = 1 + later.count("accept")
    later = [p for p in later if p != "accept"]
    rng.shuffle(later)
    phases = ["accept"] * accepts + later
    accept_at = sorted(rng.sample(range(100, EMAILS - 300), phases.count("accept")))
    plan: list[tuple[str, int]] = []
    for phase in phases:
        if phase == "accept":
            plan.append((phase, accept_at.pop(0)))
        else:
            plan.append((phase, rng.randint(20, 150)))
    return plan


def moment(phase: str, mark: int, sending: Sending, network: Network) -> tuple[str, Trigger]:
    """What a planned kill waits for, and the condition that says it has come."""
    if phase == "accept":
        return (
            f"{mark} emails accepted, a request in flight",
            lambda: sending.accepted >= mark and sending.in_flight > 0,
        )
    if phase == "delivery":
        target = network.received() + mark
        return f"{mark} more messages received", lambda: network.received() >= target
    target = network.acknowledged() + mark
    return f"{mark} more webhooks acknowledged", lambda: network.acknowledged() >= target


async def run_kills(
    plan: list[tuple[str, int]],
    topology: Topology,
    sending: Sending,
    network: Network,
    started: float,
) -> list[Kill]:
    """SIGKILL the process doing each phase's work at its planned moment, then start it
    again (the senders hold off while the API is down, then carry on)."""
    loop = asyncio.get_running_loop()
    kills: list[Kill] = []
    for phase, mark in plan:
        what, condition = moment(phase, mark, sending, network)
        await wait_for(what, condition, topology, timeout=60)
        victims = topology.victims(phase)
        if {"api", "serve"} & set(victims):
            sending.up.clear()
        kill = Kill(
            phase,
            victims,
            round(loop.time() - started, 1),
            sending.accepted,
            sending.in_flight,
            network.received(),
            network.acknowledged(),
        )
        kills.append(kill)
        for role in victims:
            kill.killed_at = await topology.kill(role)
        if set(victims) & {"serve", "worker"}:
            # No engine runs now: what is leased is the dead one's, less what an earlier
            # kill left leased and no engine has freed yet.
            earlier = set().union(*(k.held for k in kills[:-1]))
            kill.held = await topology.leased() - earlier
        for role in victims:
            await topology.start(role)
        print(f"kill {kill.describe()}, restarted at {loop.time() - started:.1f}s")
        sending.up.set()
    return kills


async def wait_for(what: str, condition: Trigger, topology: Topology, timeout: float) -> None:
    """Poll ``condition`` (every 10 ms, with a deadline); fail if a process dies first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        topology.check_running()
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s\n{topology.describe()}")
        await asyncio.sleep(0.01)


async def wait_settled(topology: Topology, network: Network, timeout: float) -> float:
    """Poll the store (with a deadline) until every recipient is terminal and every
    terminal event acknowledged by the receiver; the seconds it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        topology.check_running()
        waiting, unacked = await unsettled(
            topology.database_url, network.receiver.acknowledged, HOOK_EVENTS
        )
        if not waiting and not unacked:
            return loop.time() - started
        if loop.time() - started > timeout:
            raise AssertionError(
                f"after {timeout:g}s {waiting} recipients not terminal, {unacked} terminal "
                f"events not acknowledged\n{topology.describe()}"
            )
        await asyncio.sleep(0.25)


def seed() -> int:
    value = os.environ.get("POSTLINE_CRASH_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


@pytest.mark.timeout(300)
async def test_five_sigkills_lose_no_email_and_no_event(
    topology: Topology,
    install: Install,
    fake_dns: FakeDNS,
    network: Network,
    record_property: RecordProperty,
) -> None:
    topology_name = topology.name
    run_seed = seed()
    rng = random.Random(run_seed)
    plan = plan_kills(rng)
    print(f"\ncrash suite {topology_name}: POSTLINE_CRASH_SEED={run_seed} plan={plan}")
    record_property("seed", run_seed)

    mx_port = next(iter(network.servers.values())).port
    install.extra.update(crash_env(fake_dns, mx_port))
    (await install.acli("migrate")).assert_ok()
    added = (await install.acli("domains", "add", "example.test")).assert_ok()
    domain_id = added.stdout_lines[0].split("(id ", 1)[1].split(")", 1)[0]
    roles = list(topology.roles)
    for role in roles:
        await topology.start(role)
    key = await topology.api.admin_key()
    api = topology.api.client
    # Bounce reports to sender@example.test would be mail of their own: not this test's.
    patched = await api.patch(
        f"/v1/domains/{domain_id}", json={"bounce_notifications": False}, headers=auth(key)
    )
    assert patched.status_code == 200, patched.text
    hook = await api.post(
        "/v1/webhooks", json={"url": network.receiver.url, "events": HOOK_EVENTS}, headers=auth(key)
    )
    assert hook.status_code == 201, hook.text

    sending = Sending(topology, network, key)
    sending.up.set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    senders = [asyncio.create_task(sending.sender()) for _ in range(SENDERS)]
    try:
        kills = await run_kills(plan, topology, sending, network, started)
        await asyncio.wait_for(asyncio.gather(*senders), timeout=60)
    finally:
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    accepted_in = loop.time() - started
    assert sending.accepted == EMAILS, sending.accepted
    settled_in = await wait_settled(topology, network, timeout=120)
    await topology.stop()

    engine_kills = sum(1 for k in kills if "api" not in k.roles)
    report = await check_invariants(
        database_url=topology.database_url,
        expectation=sending.expectation,
        received=received_copies(network.servers.values()),
        webhook_event_ids=network.receiver.acknowledged,
        webhook_event_types=HOOK_EVENTS,
        spool=topology.spool,
        in_flight_bound=CONCURRENCY * engine_kills,
        queue_url=topology.queue_url,
        queue_prefix=topology.queue_prefix,
        raise_on_violation=False,
    )
    runtime = loop.time() - started
    takeovers = [
        f"{k.phase}: held {len(k.held)}, "
        + (f"{seconds:.1f}s" if (seconds := k.takeover(network)) is not None else "none received")
        for k in kills
        if k.held
    ]
    print(f"SIGKILL to first redelivery of the killed engine's mail: {'; '.join(takeovers)}")
    record_property("sigkill_to_redelivery", takeovers)
    summary = (
        f"crash suite {topology_name}: seed={run_seed} kills={len(kills)} "
        f"(cut requests={sending.cut}, {sending.cut_emails} emails without a 2xx) "
        f"{report.summary()} runtime={runtime:.1f}s "
        f"(all accepted {accepted_in:.1f}s, settled {settled_in:.1f}s later)"
    )
    print(summary)
    record_property("summary", summary)
    record_property("kills", [k.describe() for k in kills])
    for name, value in report.measures().items():
        record_property(name, value)
    record_property("runtime_seconds", round(runtime, 1))
    assert not report.violations, "\n".join(report.violations) + "\n" + summary
    assert [k.phase for k in kills].count("accept") >= 1
    assert {k.phase for k in kills} == set(PHASES), kills
    assert report.lost_emails == 0 and report.lost_events == 0, summary
