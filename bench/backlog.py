"""The rest of the mail with a large backlog queued behind one destination's open breaker.

One invocation runs ``postline serve`` (SQLite, the file spool, the embedded queue)
twice, each time on a fresh data dir, with the same workload of ``--emails`` M emails
of about 5 KB spread over 10 destination domains whose MX is Postfix's ``smtp-sink`` on
loopback (found through the DNS helper ``mxdns.py``), submitted in batches of 500 on
``POST /v1/emails/batch``:

- baseline: nothing else queued;
- backlog: first ``--backlog`` N emails (default 200,000) to ``blocked.test``, accepted
  through the same batch API (``--fill-clients`` connections at once), whose MX refuses
  every connection (``closed:`` in ``mxdns.py``), so that its circuit breaker opens and
  its jobs wait, parked, in the queue. The run waits until the breaker reads open and
  no job of blocked.test is in flight for two looks in a row (the engine has parked
  what was due), or at most ``--settle`` seconds from the first look that finds it
  open after the backlog is accepted (parking still under way is then part of what the
  backlog costs), then sends the M emails.

End to end is timed from the first submission of the M emails until the sink has
counted M (a sink that counts more, or a backlog that shrank, fails the run). Printed:
both rates and the slowdown, CPU milliseconds of ``postline serve`` per email (the
figure that a loaded machine disturbs least), peak (VmHWM) and final RSS of ``postline
serve`` with the backlog queued, its CPU seconds, how long the backlog took to accept
and to settle.
As users run it: a sending domain with its DKIM key (every message is signed), rate
limits off; no webhook endpoint (bench/peers.py measures those).

Everything listens on 127.0.0.1; every file goes to a temporary directory, removed at
the end, and every process started is stopped, also on failure. Run as root (it
installs Debian's postfix package for smtp-sink when it is missing).

Usage: .venv/bin/python bench/backlog.py [--backlog 200000] [--emails 5000]
       [--fill-clients 4] [--settle 600]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import (
    BATCH,
    DOMAINS,
    SENDER,
    TEXT,
    RunFailed,
    Sink,
    installation,
    postline,
    request_bodies,
    start_helper,
    stop,
    submit_batches,
    tail,
    wait_for,
)
from postfix_peer import PeerError, ensure_installed
from procwatch import ProcessWatch, Usage, read
from rawhttp import RawClient

BLOCKED = "blocked.test"
LOOK_SECONDS = 2.0  # between two looks at the destinations: each one counts the queue


@dataclass
class Run:
    backlog: int
    emails: int
    accepted_per_s: float = 0.0
    end_to_end_per_s: float = 0.0
    fill_seconds: float = 0.0
    settle_seconds: float = 0.0
    settled: bool = False
    breaker_until: str = ""
    final_rss_kb: int = 0
    serve_cpu_total: float = 0.0  # from start to the end of the measurement
    usage: list[Usage] = field(default_factory=list)  # during the measurement


def backlog_bodies(count: int) -> Iterator[bytes]:
    """The batches for blocked.test, built one at a time: 200,000 at once are 1 GB of JSON."""
    for start in range(0, count, BATCH):
        items = [
            {
                "from": f"Bench <bench@{SENDER}>",
                "to": f"user{i}@{BLOCKED}",
                "subject": f"backlog {i}",
                "text": TEXT,
            }
            for i in range(start, min(start + BATCH, count))
        ]
        yield json.dumps(items).encode()


async def fill(port: int, key: str, count: int, clients: int) -> None:
    """Accept ``count`` emails to blocked.test over ``clients`` connections at once."""
    bodies = backlog_bodies(count)
    auth = {"Authorization": f"Bearer {key}"}

    async def client() -> None:
        raw = RawClient("127.0.0.1", port, auth)
        try:
            for body in bodies:  # the connections take the next batch in turn
                status, answer = await raw.post("/v1/emails/batch", body)
                if status != 202:
                    raise RunFailed(f"backlog batch answered {status}: {answer[:300]!r}")
        finally:
            await raw.close()

    await asyncio.gather(*(client() for _ in range(clients)))


async def blocked_view(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v1/destinations")
    response.raise_for_status()
    for view in response.json()["data"]:
        if view["domain"] == BLOCKED:
            return dict(view)
    return {"domain": BLOCKED, "queued": 0, "in_flight": 0, "breaker": "closed"}


async def settle(
    client: httpx.AsyncClient, backlog: int, most_seconds: float
) -> tuple[dict[str, Any], bool]:
    """Wait until blocked.test's breaker is open and its due jobs are parked, or at most
    ``most_seconds`` once it is open; whether they were all parked."""
    deadline, quiet = 0.0, 0
    while True:
        view = await blocked_view(client)
        if view["queued"] != backlog:
            raise RunFailed(f"{BLOCKED} has {view['queued']} queued, not {backlog}")
        if view["breaker"] == "open":
            deadline = deadline or time.monotonic() + most_seconds
            quiet = quiet + 1 if view["in_flight"] == 0 else 0
        if quiet >= 2:
            return view, True
        if deadline and time.monotonic() > deadline:
            return view, False
        await asyncio.sleep(LOOK_SECONDS)


def resident_kb(pid: int) -> int:
    """VmRSS of ``pid`` now (procwatch reads the peak, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def one_run(
    backlog: int, emails: int, clients: int, most_settle: float, dns_port: str
) -> Run:
    run = Run(backlog, emails)
    sink = Sink()
    watch = ProcessWatch()
    with tempfile.TemporaryDirectory(prefix="postline-bench-") as tmp:
        inst = installation(tmp, dns_port, sink.port)
        try:
            await sink.start()
            serve = await postline(inst, "serve", banner="Postline is running")
            assert sink.process is not None
            watch.add(serve.pid, "postline serve")
            watch.add(sink.process.pid, "smtp-sink")
            watch.add_single(os.getpid(), "bench client")
            key = (Path(tmp) / "admin-key.txt").read_text().strip()
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{inst.http_port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=300,
            ) as client:
                domain = await client.post("/v1/domains", json={"name": SENDER})
                if domain.status_code != 201:
                    raise RunFailed(f"setup answered {domain.status_code}: {domain.text[:300]}")
                if backlog:
                    started = time.perf_counter()
                    await fill(inst.http_port, key, backlog, clients)
                    run.fill_seconds = time.perf_counter() - started
                    print(f"  backlog accepted in {run.fill_seconds:.0f} s", flush=True)
                    started = time.perf_counter()
                    view, run.settled = await settle(client, backlog, most_settle)
                    run.settle_seconds = time.perf_counter() - started
                    run.breaker_until = view["breaker_until"] or "(held open)"
                    state = "settled" if run.settled else "NOT settled (still parking)"
                    print(f"  {state} after {run.settle_seconds:.0f} s: {view}", flush=True)
                await measure(run, inst.http_port, key, sink, watch)
                if sink.count != emails:
                    raise RunFailed(f"the sink counted {sink.count}, not {emails}")
                if backlog and (queued := (await blocked_view(client))["queued"]) != backlog:
                    raise RunFailed(f"{BLOCKED} has {queued} queued after the run, not {backlog}")
            run.final_rss_kb = resident_kb(serve.pid)
            if (reading := read(serve.pid)) is not None:
                run.serve_cpu_total = reading.cpu_seconds
        except (RunFailed, OSError) as exc:
            if inst.processes and (code := inst.processes[0].returncode) is not None:
                exc = RunFailed(f"{exc}: postline serve exited with {code}")
            raise RunFailed(f"{exc}; {tail(inst.log)}") from None
        finally:
            await watch.stop()
            for drain in inst.drains:
                drain.cancel()
            for process in reversed(inst.processes):
                await stop(process)
            await sink.stop()
    return run


async def measure(run: Run, port: int, key: str, sink: Sink, watch: ProcessWatch) -> None:
    """Submit the M emails; time until the sink counted them."""
    bodies = request_bodies("batch", run.emails)
    accepted: dict[str, float] = {}

    def connect() -> RawClient:
        return RawClient("127.0.0.1", port, {"Authorization": f"Bearer {key}"})

    watch.start()
    started = time.perf_counter()
    await submit_batches(connect, bodies, accepted)
    run.accepted_per_s = run.emails / (time.perf_counter() - started)

    async def counted() -> bool:
        return sink.count >= run.emails

    await wait_for(counted, lambda: sink.count, "the sink")
    run.end_to_end_per_s = run.emails / (time.perf_counter() - started)
    run.usage = await watch.stop()


def report(baseline: Run, loaded: Run) -> None:
    print()
    print(
        f"{loaded.emails} emails of ~5 KB over {len(DOMAINS)} domains, batches of {BATCH}; "
        f"backlog: {loaded.backlog} emails to {BLOCKED} behind its open breaker; "
        f"{os.cpu_count()} CPUs"
    )
    for run in (baseline, loaded):
        name = "with backlog" if run.backlog else "baseline"
        print(
            f"{name:<13} accepted {run.accepted_per_s:>6.0f}/s  "
            f"end to end {run.end_to_end_per_s:>6.0f}/s"
        )
        for usage in sorted(run.usage, key=lambda u: u.label):
            count = f"x{usage.processes}" if usage.processes > 1 else ""
            print(
                f"  {usage.label:<36} {count:>4} {usage.cpu_seconds:>7.1f} s CPU "
                f"{usage.peak_rss_kb / 1024:>6.0f} MB peak"
            )
    serve = next(u for u in loaded.usage if u.label == "postline serve")
    base_ms, loaded_ms = (
        1000
        * sum(u.cpu_seconds for u in r.usage if u.label.startswith("postline serve"))
        / r.emails
        for r in (baseline, loaded)
    )
    slowdown = 100 * (1 - loaded.end_to_end_per_s / baseline.end_to_end_per_s)
    print(
        f"backlog accepted in {loaded.fill_seconds:.0f} s "
        f"({loaded.backlog / max(loaded.fill_seconds, 1e-9):.0f}/s), "
        f"{'parked' if loaded.settled else 'still parking'} {loaded.settle_seconds:.0f} s "
        f"later; breaker until {loaded.breaker_until}"
    )
    print(
        f"postline serve with the backlog queued: peak RSS {serve.peak_rss_kb / 1024:.0f} MB, "
        f"final RSS {loaded.final_rss_kb / 1024:.0f} MB, CPU {loaded.serve_cpu_total:.0f} s "
        f"in all (baseline {baseline.serve_cpu_total:.0f} s)"
    )
    print(f"baseline end to end: {baseline.end_to_end_per_s:.0f}/s")
    print(f"with backlog end to end: {loaded.end_to_end_per_s:.0f}/s")
    print(f"slowdown: {slowdown:.1f}%")
    print(
        f"postline serve CPU per email: baseline {base_ms:.1f} ms, with backlog "
        f"{loaded_ms:.1f} ms ({100 * (loaded_ms / base_ms - 1):+.1f}%)"
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--backlog", type=int, default=200_000)
    parser.add_argument("--emails", type=int, default=5_000)
    parser.add_argument("--fill-clients", type=int, default=4)
    parser.add_argument("--settle", type=float, default=600.0, help="most seconds to park")
    args = parser.parse_args()
    if args.backlog < 1 or args.emails < 1 or args.fill_clients < 1:
        parser.error("--backlog, --emails and --fill-clients must be 1 or more")
    try:
        ensure_installed()
    except (PeerError, subprocess.CalledProcessError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    dns, dns_port = await start_helper("mxdns.py", *DOMAINS, f"closed:{BLOCKED}")
    try:
        print(f"bench: baseline, {args.emails} emails ...", flush=True)
        baseline = await one_run(0, args.emails, args.fill_clients, args.settle, dns_port)
        print(f"  end to end {baseline.end_to_end_per_s:.0f}/s", flush=True)
        print(f"bench: {args.backlog} queued for {BLOCKED}, {args.emails} emails ...", flush=True)
        loaded = await one_run(args.backlog, args.emails, args.fill_clients, args.settle, dns_port)
    except (RunFailed, PeerError) as exc:
        print(f"bench: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        await stop(dns)
    report(baseline, loaded)
    return 0


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        sys.exit(asyncio.run(main()))
    sys.exit(uvloop.run(main()))
