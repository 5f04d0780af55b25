"""Postline side by side with Postfix: the same mail, the same sink, the same machine.

``make bench`` runs this. One invocation runs, on one workload (``--emails`` N emails of
about 5 KB, one recipient each, spread over 10 destination domains):

- Postfix, a private instance relaying to the sink, fed over SMTP by ``smtp-source``;
- Postline embedded: ``postline serve`` (SQLite, the file spool, the embedded queue);
- Postline distributed: one ``postline api`` and two ``postline worker`` processes on a
  fresh PostgreSQL database and a fresh Redis key prefix (the database spool);

each Postline topology with submission in batches of 500 on ``POST /v1/emails/batch``,
then with single sends on ``POST /v1/emails`` from 32 concurrent clients, then through
the SMTP submission port from 10 concurrent sessions logged in with the API key (as
many as the ``smtp-source`` processes feeding Postfix), then with single sends paced at
``--rate`` per second (200 by default), each started on its schedule whether or not the
ones before it were answered, so a slow answer delays none of the later ones (an open
loop); ``--submission`` picks some.
The receiving MX of all 10 domains is Postfix's C ``smtp-sink`` on loopback, found by
Postline through a DNS server on loopback (``mxdns.py``). Postline runs as users run it:
a sending domain with its DKIM key (every message is signed), a webhook endpoint for
``email.delivered`` (a local receiver), rate limits off.

Per run: accepted/s; end to end/s, from the first submission until the sink counted
N, every email reads ``delivered`` in the API and the receiver has an
``email.delivered`` webhook for each (Postfix: until the sink counted N);
accept-to-delivered latency p50/p95/p99; CPU seconds and peak RSS per process; for the
paced run also the accept latency p50/p95/p99, from the moment a send was due to its
202.
The output ends with two lines, the end-to-end rates with batch submission over
Postfix's: ``ratio embedded/postfix: X.XX`` and ``ratio distributed/postfix: X.XX``.

Everything listens on 127.0.0.1; every file goes to a temporary directory, removed
at the end. Postfix's daemons start as root: run it as root (it installs Debian's
postfix package when smtp-sink, smtp-source or postfix is missing).

Usage: .venv/bin/python bench/peers.py [--emails 20000]
       [--submission all|both|batch|single|smtp|paced] [--rate 200]
       [--topologies postfix embedded distributed]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import asyncpg
import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from postfix_peer import PeerError, PostfixInstance, ensure_installed, port_open, tool, version
from procwatch import ProcessWatch, Usage, read
from rawhttp import RawClient
from throughput import HERE, POSTLINE, free_port, wait_line

PG_ADMIN = os.environ.get("POSTLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("POSTLINE_TEST_REDIS", "redis://127.0.0.1:6379/0")

DOMAINS = [f"dest{i}.test" for i in range(10)]
SENDER = "bench.test"
BATCH = 500
CLIENTS = 32
PACED_CONNECTIONS = 256  # the paced run's client pool: well below the server's 1,000
INJECTORS = len(DOMAINS)  # smtp-source processes, one session each, one per domain
TEXT = ("x" * 70 + "\n") * 70  # ~5 KB with the headers
PENDING = ("queued", "scheduled", "sending", "deferred")
NEVER_DELIVERED = ("bounced", "failed", "partially_delivered", "suppressed", "cancelled")
STALL_SECONDS = 180.0  # no progress for this long: the run failed


class RunFailed(Exception):
    pass


@dataclass
class Result:
    name: str
    submission: str
    emails: int
    accepted_per_s: float = 0.0
    end_to_end_per_s: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, accept to delivered
    # Seconds from the moment each paced send was due until its 202 (paced runs only).
    accept_latencies: list[float] = field(default_factory=list)
    usage: list[Usage] = field(default_factory=list)
    # Seconds from the first submission until each part of the end was reached.
    phases: dict[str, float] = field(default_factory=dict)
    sunk_at_accepted: int = 0  # what the sink had counted when the last submission was accepted
    error: str = ""


def submission_label(submission: str, rate: int = 0) -> str:
    return {
        "smtp": f"smtp x{INJECTORS}",
        "batch": f"batch {BATCH}",
        "paced": f"single {rate}/s",
    }.get(submission, f"single x{CLIENTS}")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


# ---------------------------------------------------------------- the sink and its peers


class Sink:
    """``smtp-sink`` on 127.0.0.1:port; ``count`` follows its ``mesg=`` counter."""

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        user = ["-u", "postfix"] if os.geteuid() == 0 else []
        self.process = await asyncio.create_subprocess_exec(
            tool("smtp-sink"),
            *user,
            "-c",
            "-h",
            "sink.bench.test",
            f"127.0.0.1:{self.port}",
            "1024",
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if time.monotonic() > deadline or self.process.returncode is not None:
                raise RunFailed("smtp-sink did not start")
            await asyncio.sleep(0.05)

    async def _read(self) -> None:
        # With -c the counters are records separated by carriage returns, not newlines.
        assert self.process is not None and self.process.stdout is not None
        pending = b""
        while chunk := await self.process.stdout.read(65536):
            pending += chunk
            *records, pending = re.split(rb"[\r\n]", pending)
            for record in reversed(records):
                match = re.search(rb"mesg=(\d+)", record)
                if match:
                    self.count = int(match.group(1))
                    break

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        if self._reader is not None:
            self._reader.cancel()


async def start_helper(script: str, *args: str) -> tuple[asyncio.subprocess.Process, str]:
    """A helper script of bench/ in its own process; its ``ready`` line's rest."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / script), *args, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
    if not line.startswith("ready"):
        raise RunFailed(f"{script} did not start")
    return process, line[len("ready") :].strip()


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


async def wait_for(
    done: Callable[[], Awaitable[bool]],
    progress: Callable[[], int],
    what: str,
    interval: float = 0.02,
) -> None:
    """Poll ``done`` until it holds; fail when ``progress`` stops moving for a while."""
    last, moved = progress(), time.monotonic()
    while not await done():
        now = time.monotonic()
        if progress() != last:
            last, moved = progress(), now
        elif now - moved > STALL_SECONDS:
            raise RunFailed(f"no progress for {STALL_SECONDS:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


# ---------------------------------------------------------------- Postfix


async def run_postfix(emails: int) -> Result:
    result = Result("postfix", submission_label("smtp"), emails)
    sink = Sink()
    watch = ProcessWatch()
    with tempfile.TemporaryDirectory(prefix="postline-bench-") as tmp:
        instance = PostfixInstance(Path(tmp), free_port(), sink.port)
        injectors: list[asyncio.subprocess.Process] = []
        try:
            instance.configure()
            await sink.start()
            await instance.start()
            assert sink.process is not None
            watch.add(instance.master_pid, "postfix master")
            watch.add(sink.process.pid, "smtp-sink")
            watch.start()
            shares = [emails // INJECTORS + (i < emails % INJECTORS) for i in range(INJECTORS)]
            started = time.perf_counter()
            for domain, share in zip(DOMAINS, shares, strict=True):
                if not share:
                    continue
                injector = await asyncio.create_subprocess_exec(
                    tool("smtp-source"),
                    *("-d", "-s", "1", "-N", "-m", str(share), "-l", "5120"),
                    *("-S", "benchmark", "-f", f"bench@{SENDER}", "-t", f"user@{domain}"),
                    f"127.0.0.1:{instance.inject_port}",
                    stdout=asyncio.subprocess.DEVNULL,
                )
                watch.add(injector.pid, "smtp-source")
                injectors.append(injector)
            codes = await asyncio.gather(*(injector.wait() for injector in injectors))
            result.accepted_per_s = emails / (time.perf_counter() - started)
            result.phases["all accepted"] = time.perf_counter() - started
            result.sunk_at_accepted = sink.count
            if any(codes):
                raise RunFailed(f"smtp-source failed: {instance.log_tail()}")

            async def counted() -> bool:
                return sink.count >= emails

            await wait_for(counted, lambda: sink.count, "the sink")
            result.end_to_end_per_s = emails / (time.perf_counter() - started)
            result.phases["sink has all"] = time.perf_counter() - started
            result.usage = await watch.stop()
            # The log is written by postlogd, a moment after the deliveries.
            deadline = time.monotonic() + 10
            while len(delays := instance.delivery_delays()) < emails:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            result.latencies = delays
        finally:
            await watch.stop()
            for injector in injectors:
                await stop(injector)
            await instance.stop()
            await sink.stop()
    return result


# ---------------------------------------------------------------- Postline


@dataclass
class Installation:
    env: dict[str, str]
    data_dir: Path
    http_port: int
    smtp_port: int
    log: Path
    processes: list[asyncio.subprocess.Process] = field(default_factory=list)
    drains: list[asyncio.Task[None]] = field(default_factory=list)
    pg_name: str = ""
    prefix: str = ""


def installation(tmp: str, dns_port: str, sink_port: int) -> Installation:
    """Postline in the data dir ``tmp`` as the runs use it: the MX of every domain is the
    sink (found through the DNS helper on ``dns_port``), logs go to a file, rate limits off."""
    http_port, smtp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTLINE_")}
    env |= {
        "POSTLINE_DATA_DIR": tmp,
        "POSTLINE_HTTP_ADDR": f"127.0.0.1:{http_port}",
        "POSTLINE_INBOUND_ADDR": "127.0.0.1:0",  # the inbound MX: any free port
        "POSTLINE_SMTP_ADDR": f"127.0.0.1:{smtp_port}",
        "POSTLINE_HOSTNAME": "postline.bench.test",
        "POSTLINE_DNS_NAMESERVERS": f"127.0.0.1:{dns_port}",
        "POSTLINE_DNS_CANARY": DOMAINS[0],
        "POSTLINE_DELIVERY_PORT": str(sink_port),
        "POSTLINE_DELIVERY_ALLOW_PRIVATE": "true",
        "POSTLINE_WEBHOOK_ALLOW_PRIVATE": "true",
        "POSTLINE_RATE_LIMIT_PER_SECOND": "0",
        "POSTLINE_LOG_LEVEL": "WARNING",
    }
    inst = Installation(env, Path(tmp), http_port, smtp_port, Path(tmp) / "postline.log")
    inst.log.touch(mode=0o600)
    return inst


async def postline(inst: Installation, *args: str, banner: str = "") -> asyncio.subprocess.Process:
    """Start ``postline ARGS``; wait for its banner; keep draining its output."""
    with inst.log.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            str(POSTLINE), *args, env=inst.env, stdout=asyncio.subprocess.PIPE, stderr=log
        )
    inst.processes.append(process)
    assert process.stdout is not None
    if banner:
        try:
            await wait_line(process.stdout, banner, timeout=60)
        except (RuntimeError, TimeoutError) as exc:
            raise RunFailed(f"postline {' '.join(args)}: {exc}; {tail(inst.log)}") from None
    stdout = process.stdout

    async def drain() -> None:
        while await stdout.read(65536):
            pass

    inst.drains.append(asyncio.create_task(drain()))
    return process


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-1500:] if path.exists() else ""


async def create_database(name: str) -> str:
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


async def drop_database_and_prefix(name: str, prefix: str) -> None:
    if name:
        admin = await asyncpg.connect(PG_ADMIN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
    if prefix:
        client = aioredis.Redis.from_url(REDIS)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def local_postmaster_pid() -> int:
    """The pid of the PostgreSQL server the run uses, if it runs on this machine (else 0)."""
    admin = await asyncpg.connect(PG_ADMIN)
    try:
        backend = read(int(await admin.fetchval("SELECT pg_backend_pid()")))
    finally:
        await admin.close()
    return backend.ppid if backend is not None and backend.name == "postgres" else 0


async def local_redis_pid() -> int:
    """The pid of the Redis server the run uses, if it runs on this machine (else 0)."""
    client = aioredis.Redis.from_url(REDIS)
    try:
        pid = int((await client.info("server"))["process_id"])
    finally:
        await client.aclose()
    return pid if Path(f"/proc/{pid}").exists() and pid != 1 else 0


def workload(emails: int) -> list[dict[str, Any]]:
    return [
        {
            "from": f"Bench <bench@{SENDER}>",
            "to": f"user{i}@{DOMAINS[i % len(DOMAINS)]}",
            "subject": f"benchmark {i}",
            "text": TEXT,
        }
        for i in range(emails)
    ]


def request_bodies(submission: str, emails: int) -> list[bytes]:
    """The JSON of every request, encoded before the clock starts."""
    items = workload(emails)
    if submission == "batch":
        return [json.dumps(items[i : i + BATCH]).encode() for i in range(0, emails, BATCH)]
    return [json.dumps(item).encode() for item in items]


async def submit_batches(
    connect: Callable[[], RawClient], bodies: list[bytes], accepted: dict[str, float]
) -> None:
    """One request after the other on one connection."""
    client = connect()
    try:
        for body in bodies:
            status, answer = await client.post("/v1/emails/batch", body)
            if status != 202:
                raise RunFailed(f"batch answered {status}: {answer[:300]!r}")
            now = time.time()
            for item in json.loads(answer)["data"]:
                accepted[item["id"]] = now
    finally:
        await client.close()


async def submit_singles(
    connect: Callable[[], RawClient], bodies: list[bytes], accepted: dict[str, float]
) -> None:
    """CLIENTS concurrent clients, one connection each, taking the next email in turn."""
    queue = iter(bodies)

    async def sender() -> None:
        client = connect()
        try:
            for body in queue:
                status, answer = await client.post("/v1/emails", body)
                if status != 202:
                    raise RunFailed(f"send answered {status}: {answer[:300]!r}")
                accepted[json.loads(answer)["id"]] = time.time()
        finally:
            await client.close()

    await asyncio.gather(*(sender() for _ in range(CLIENTS)))


async def submit_paced(
    connect: Callable[[], RawClient],
    bodies: list[bytes],
    accepted: dict[str, float],
    rate: int,
    waits: list[float],
) -> None:
    """One single send every 1/rate s, each due at a fixed moment from the start.

    A send goes out on an idle connection, or a new one while fewer than
    ``PACED_CONNECTIONS`` are open, so a slow answer holds up no later send (an
    open loop, as independent callers load a server); past that many it waits
    for a connection, as an application's client pool makes it wait. Its latency
    runs from the moment it was due, so time spent waiting on the client's side
    counts against the server, never for it.
    """
    idle: asyncio.Queue[RawClient] = asyncio.Queue()
    opened: list[RawClient] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def send(body: bytes, due: float) -> None:
        if idle.empty() and len(opened) < PACED_CONNECTIONS:
            client = connect()
            opened.append(client)
        else:
            client = await idle.get()
        status, answer = await client.post("/v1/emails", body)
        if status != 202:
            raise RunFailed(f"send answered {status}: {answer[:300]!r}")
        waits.append(loop.time() - due)
        accepted[json.loads(answer)["id"]] = time.time()
        idle.put_nowait(client)

    try:
        async with asyncio.TaskGroup() as group:
            for number, body in enumerate(bodies):
                due = start + number / rate
                if (ahead := due - loop.time()) > 0:
                    await asyncio.sleep(ahead)
                group.create_task(send(body, due))
    finally:
        for client in opened:
            await client.close()


def smtp_messages(emails: int) -> list[tuple[str, bytes]]:
    """The workload as (recipient, message bytes) for the submission port, built before
    the clock starts: what an application hands its SMTP library."""
    return [
        (
            item["to"],
            (
                f"From: {item['from']}\r\nTo: {item['to']}\r\nSubject: {item['subject']}\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                + item["text"].replace("\n", "\r\n")
            ).encode(),
        )
        for item in workload(emails)
    ]


async def submit_smtp(
    port: int, key: str, messages: list[tuple[str, bytes]], accepted: dict[str, float]
) -> None:
    """INJECTORS concurrent sessions on the submission port (as many as the smtp-source
    processes that feed Postfix), each logged in with the API key, taking the next
    message in turn; the email id is read from each message's 250."""
    queue = iter(messages)

    async def sender() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=300)
        await client.connect()
        try:
            await client.login("bench", key)
            for recipient, message in queue:
                _, reply = await client.sendmail(f"bench@{SENDER}", [recipient], message)
                found = re.search(r"\bem_[0-9a-z]+", reply)
                if found is None:
                    raise RunFailed(f"the submission port answered {reply[:300]!r}")
                accepted[found.group()] = time.time()
        finally:
            await client.quit()

    await asyncio.gather(*(sender() for _ in range(INJECTORS)))


async def api_reads_all_delivered(client: httpx.AsyncClient) -> bool:
    """No email waits in a pending status; one that can no longer be delivered fails the run."""
    for status in (*PENDING, *NEVER_DELIVERED):
        response = await client.get("/v1/emails", params={"status": status, "limit": 1})
        if response.status_code == 422:
            continue  # a status this version does not have (deferred: it reads sending)
        response.raise_for_status()
        if response.json()["data"]:
            if status in NEVER_DELIVERED:
                raise RunFailed(f"an email reads {status}: {response.json()['data'][0]}")
            return False
    return True


async def count_delivered(client: httpx.AsyncClient) -> int:
    """Every email that reads ``delivered``, page by page (after the clock stopped)."""
    count, cursor = 0, None
    while True:
        params: dict[str, Any] = {"status": "delivered", "limit": 500}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/v1/emails", params=params)).json()
        count += len(page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            return count


async def run_postline(
    topology: str, submission: str, emails: int, dns_port: str, rate: int
) -> Result:
    result = Result(topology, submission_label(submission, rate), emails)
    sink = Sink()
    watch = ProcessWatch()
    hook_port = free_port()
    receiver: asyncio.subprocess.Process | None = None
    with tempfile.TemporaryDirectory(prefix="postline-bench-") as tmp:
        inst = installation(tmp, dns_port, sink.port)
        env = inst.env
        try:
            await sink.start()
            receiver, _ = await start_helper("receiver.py", str(hook_port))
            if topology == "distributed":
                pg_name = f"postline_bench_{secrets.token_hex(4)}"
                database_url = await create_database(pg_name)
                inst.pg_name = pg_name  # dropped at the end
                inst.prefix = f"postline_bench_{secrets.token_hex(4)}"
                env |= {
                    "POSTLINE_DATABASE_URL": database_url,
                    "POSTLINE_QUEUE_URL": REDIS,
                    "POSTLINE_QUEUE_PREFIX": inst.prefix,
                    "POSTLINE_SPOOL_URL": "database",
                    # As hosts sharing a database are run: one sealing key for all.
                    "POSTLINE_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
                }
                migrate = await postline(inst, "migrate")
                if await migrate.wait():
                    raise RunFailed(f"postline migrate failed: {tail(inst.log)}")
                inst.processes.remove(migrate)
                api = await postline(inst, "api", banner="Postline is running")
                watch.add(api.pid, "postline api")
                for number in (1, 2):
                    worker = await postline(inst, "worker", banner="worker is running")
                    watch.add(worker.pid, f"postline worker {number}")
                # The servers' share of the work: the database's own backends, and the
                # CPU Redis spent during the run (it may serve others too).
                if postmaster := await local_postmaster_pid():
                    label = "postgres: bench database backends"
                    watch.add_matching(postmaster, inst.pg_name, label)
                if redis_pid := await local_redis_pid():
                    watch.add_single(redis_pid, "redis-server")
            else:
                serve = await postline(inst, "serve", banner="Postline is running")
                watch.add(serve.pid, "postline serve")
            assert sink.process is not None
            watch.add(sink.process.pid, "smtp-sink")
            watch.add(receiver.pid, "webhook receiver")
            watch.add_single(os.getpid(), "bench client")
            key = (Path(tmp) / "admin-key.txt").read_text().strip()
            await measure(result, submission, rate, inst, key, hook_port, sink, watch)
        finally:
            await watch.stop()
            for process in reversed(inst.processes):
                await stop(process)
            if receiver is not None:
                await stop(receiver)
            await sink.stop()
            await drop_database_and_prefix(inst.pg_name, inst.prefix)
    return result


async def measure(
    result: Result,
    submission: str,
    rate: int,
    inst: Installation,
    key: str,
    hook_port: int,
    sink: Sink,
    watch: ProcessWatch,
) -> None:
    emails = result.emails
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with (
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{inst.http_port}",
            headers={"Authorization": f"Bearer {key}"},
            timeout=300,
            limits=limits,
        ) as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{hook_port}", timeout=60) as hooks,
    ):
        # As users run it: a sending domain (with its DKIM key) and a webhook endpoint.
        domain = await client.post("/v1/domains", json={"name": SENDER})
        webhook = await client.post(
            "/v1/webhooks",
            json={"url": f"http://127.0.0.1:{hook_port}/hook", "events": ["email.delivered"]},
        )
        for response in (domain, webhook):
            if response.status_code != 201:
                raise RunFailed(f"setup answered {response.status_code}: {response.text[:300]}")
        bodies = request_bodies(submission, emails) if submission != "smtp" else []
        messages = smtp_messages(emails) if submission == "smtp" else []
        accepted: dict[str, float] = {}
        reported = 0
        watch.start()
        started = time.perf_counter()
        auth = {"Authorization": f"Bearer {key}"}

        def connect() -> RawClient:
            return RawClient("127.0.0.1", inst.http_port, auth)

        if submission == "smtp":
            await submit_smtp(inst.smtp_port, key, messages, accepted)
        elif submission == "paced":
            await submit_paced(connect, bodies, accepted, rate, result.accept_latencies)
        else:
            submit = submit_batches if submission == "batch" else submit_singles
            await submit(connect, bodies, accepted)
        result.accepted_per_s = emails / (time.perf_counter() - started)
        result.phases["all accepted"] = time.perf_counter() - started
        result.sunk_at_accepted = sink.count

        async def counted() -> bool:
            return sink.count >= emails

        async def webhooks_in() -> bool:
            nonlocal reported
            reported = int((await hooks.get("/delivered")).json()["count"])
            return reported >= emails

        async def api_done() -> bool:
            return await api_reads_all_delivered(client)

        await wait_for(counted, lambda: sink.count, "the sink")
        result.phases["sink has all"] = time.perf_counter() - started
        # Each poll is a request to a process being measured: not too often.
        await wait_for(webhooks_in, lambda: reported, "the webhooks", 0.05)
        result.phases["webhooks in"] = time.perf_counter() - started
        await wait_for(api_done, lambda: 0, "the API", 0.1)
        result.end_to_end_per_s = emails / (time.perf_counter() - started)
        result.phases["API reads delivered"] = time.perf_counter() - started
        result.usage = await watch.stop()
        if (delivered := await count_delivered(client)) != emails:
            raise RunFailed(f"{delivered} emails read delivered, not {emails}")
        events = (await hooks.get("/delivered", params={"full": "1"})).json()["emails"]
        result.latencies = [
            max(0.0, datetime.fromisoformat(events[email_id]).timestamp() - at)
            for email_id, at in accepted.items()
        ]


# ---------------------------------------------------------------- the report


def row(result: Result) -> str:
    head = f"{result.name:<12} {result.submission:<12}"
    if result.error:
        return f"{head} FAILED: {result.error}"
    if result.latencies:
        p50, p95, p99 = (percentile(result.latencies, s) * 1000 for s in (0.5, 0.95, 0.99))
        latency = f"{p50:>9.0f} {p95:>9.0f} {p99:>9.0f}"
    else:
        latency = f"{'-':>9} {'-':>9} {'-':>9}"
    return f"{head} {result.accepted_per_s:>11.0f} {result.end_to_end_per_s:>13.0f} {latency}"


def report(results: list[Result], emails: int) -> None:
    print()
    print(
        f"{emails} emails of ~5 KB, one recipient each, over {len(DOMAINS)} domains; "
        f"MX: smtp-sink on 127.0.0.1; Postfix {version()}; {os.cpu_count()} CPUs"
    )
    print(
        f"{'run':<12} {'submission':<12} {'accepted/s':>11} {'end-to-end/s':>13} "
        f"{'p50 ms':>9} {'p95 ms':>9} {'p99 ms':>9}"
    )
    for result in results:
        print(row(result))
    print()
    print("processes: CPU seconds from the first submission to the end, peak RSS")
    for result in results:
        if result.error:
            continue
        print(f"{result.name} / {result.submission}:")
        if result.accept_latencies:
            p50, p95, p99 = (
                percentile(result.accept_latencies, s) * 1000 for s in (0.5, 0.95, 0.99)
            )
            print(f"  accept latency: p50 {p50:.0f} ms, p95 {p95:.0f} ms, p99 {p99:.0f} ms")
        if result.phases:
            print("  reached at: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.phases.items()))
            print(f"  the sink had {result.sunk_at_accepted} when all were accepted")
        for usage in sorted(result.usage, key=lambda u: u.label):
            count = f"x{usage.processes}" if usage.processes > 1 else ""
            print(
                f"  {usage.label:<40} {count:>4} {usage.cpu_seconds:>8.1f} s "
                f"{usage.peak_rss_kb / 1024:>8.0f} MB"
            )
    print()
    postfix = next((r for r in results if r.name == "postfix" and not r.error), None)
    for topology in ("embedded", "distributed"):
        mine = next(
            (
                r
                for r in results
                if r.name == topology and r.submission.startswith("batch") and not r.error
            ),
            None,
        )
        if postfix and mine:
            print(
                f"ratio {topology}/postfix: {mine.end_to_end_per_s / postfix.end_to_end_per_s:.2f}"
            )
        else:
            print(f"ratio {topology}/postfix: n/a")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--emails", type=int, default=20_000)
    parser.add_argument(
        "--submission",
        choices=["all", "both", "batch", "single", "smtp", "paced"],
        default="all",
    )
    parser.add_argument(
        "--rate", type=int, default=200, help="single sends per second in the paced run"
    )
    parser.add_argument(
        "--topologies",
        nargs="+",
        choices=["postfix", "embedded", "distributed"],
        default=["postfix", "embedded", "distributed"],
    )
    args = parser.parse_args()
    if args.emails < 1:
        parser.error("--emails must be 1 or more")
    try:
        ensure_installed()
    except (PeerError, subprocess.CalledProcessError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if "postfix" in args.topologies and os.geteuid() != 0:
        print("bench: Postfix's daemons start as root: run make bench as root", file=sys.stderr)
        return 2
    if args.rate < 1:
        parser.error("--rate must be 1 or more")
    submissions = {"all": ["batch", "single", "smtp", "paced"], "both": ["batch", "single"]}.get(
        args.submission, [args.submission]
    )
    plan: list[tuple[str, str]] = []
    if "postfix" in args.topologies:
        plan.append(("postfix", "smtp"))
    for submission in submissions:
        plan += [(t, submission) for t in ("embedded", "distributed") if t in args.topologies]
    dns, dns_port = await start_helper("mxdns.py", *DOMAINS)
    results = []
    try:
        for name, submission in plan:
            print(f"bench: {name}, {submission}, {args.emails} emails ...", flush=True)
            try:
                if name == "postfix":
                    result = await run_postfix(args.emails)
                else:
                    result = await run_postline(name, submission, args.emails, dns_port, args.rate)
            except Exception as exc:  # one failed run does not stop the others
                error = str(exc) if isinstance(exc, RunFailed | PeerError) else repr(exc)
                label = submission_label(submission, args.rate)
                result = Result(name, label, args.emails, error=error)
            print(row(result), flush=True)
            results.append(result)
    finally:
        await stop(dns)
    report(results, args.emails)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        sys.exit(asyncio.run(main()))
    sys.exit(uvloop.run(main()))
