"""End-to-end throughput: API accept -> spool + DB -> queue -> SMTP -> recorded outcome.

Starts a sink MX and ``postline serve`` as separate processes (fresh data dir,
SQLite, all mail relayed to the sink), sends N emails of ~5 KB through
``POST /v1/emails/batch`` and measures:

- accept rate: emails made durable per second (wall time of the POSTs)
- delivered rate: emails recorded ``delivered`` per second, first POST to last outcome

With ``--delivery-only`` every email is accepted with the same ``scheduled_at``
a little in the future, and the delivered rate is timed from that moment: the
engine alone, without accept competing for the CPU.

With ``--recipients N`` each email goes to N addresses at the sink's domain (one
SMTP transaction with N RCPTs); ``--pipelining`` makes the sink offer PIPELINING.

Usage: .venv/bin/python bench/throughput.py [--emails 2000] [--batch 100] [--runs 3]
       [--concurrency 32] [--no-reuse] [--delivery-only] [--recipients 1] [--pipelining]
Results go to stdout (and nothing is written into the repository).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
POSTLINE = Path(sys.executable).parent / "postline"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_line(stream: asyncio.StreamReader, needle: str, timeout: float = 30) -> None:
    async def read() -> None:
        while True:
            line = await stream.readline()
            if not line:
                raise RuntimeError(f"process ended before printing {needle!r}")
            if needle in line.decode():
                return

    await asyncio.wait_for(read(), timeout)


async def delivered_count(client: httpx.AsyncClient) -> int:
    text = (await client.get("/metrics")).text
    match = re.search(r'postline_recipient_outcomes_total\{status="delivered"\} ([0-9.e+]+)', text)
    return int(float(match.group(1))) if match else 0


async def one_run(
    emails: int,
    batch: int,
    concurrency: int,
    reuse: bool,
    delivery_only: bool,
    recipients: int = 1,
    pipelining: bool = False,
) -> tuple[float, float]:
    sink_port, http_port = free_port(), free_port()
    flags = ["--pipelining"] if pipelining else []
    sink = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "sink.py"),
        str(sink_port),
        *flags,
        stdout=asyncio.subprocess.PIPE,
    )
    assert sink.stdout is not None
    await wait_line(sink.stdout, "ready")
    with tempfile.TemporaryDirectory() as data_dir:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTLINE_")}
        env |= {
            "POSTLINE_DATA_DIR": data_dir,
            "POSTLINE_HTTP_ADDR": f"127.0.0.1:{http_port}",
            "POSTLINE_INBOUND_ADDR": "127.0.0.1:0",  # the inbound MX: any free port
            "POSTLINE_SMTP_ADDR": "127.0.0.1:0",  # the submission port: any free port
            "POSTLINE_RELAY_HOST": f"127.0.0.1:{sink_port}",
            "POSTLINE_SANDBOX": "true",
            "POSTLINE_CONCURRENCY": str(concurrency),
            "POSTLINE_DESTINATION_CONNECTIONS": str(max(concurrency, 20)),
            "POSTLINE_SMTP_MAX_MESSAGES_PER_SESSION": "100" if reuse else "1",
            "POSTLINE_LOG_LEVEL": "WARNING",
            # The pipeline, not the per-key limit: an email send takes a token per recipient.
            "POSTLINE_RATE_LIMIT_PER_SECOND": "0",
        }
        server = await asyncio.create_subprocess_exec(
            str(POSTLINE), "serve", env=env, stdout=asyncio.subprocess.PIPE
        )
        assert server.stdout is not None
        try:
            await wait_line(server.stdout, "Postline is running")
            key = (Path(data_dir) / "admin-key.txt").read_text().strip()
            body = "x" * 70 + "\n"
            text = body * 70  # ~5 KB
            item: dict[str, str | list[str]] = {
                "from": "Bench <bench@sandbox.postline.test>",
                "to": [f"someone{i}@bench.test" for i in range(recipients)],
                "subject": "benchmark",
                "text": text,
            }
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{http_port}",
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            ) as client:
                lead = emails / 80 + 3  # time to accept everything before it falls due
                due = datetime.now(UTC) + timedelta(seconds=lead)
                if delivery_only:
                    item["scheduled_at"] = due.isoformat()
                started = time.perf_counter()
                for offset in range(0, emails, batch):
                    size = min(batch, emails - offset)
                    response = await client.post("/v1/emails/batch", json=[item] * size)
                    response.raise_for_status()
                accepted = time.perf_counter() - started
                if delivery_only:
                    if accepted > lead:
                        print(f"warning: accepting took {accepted:.1f}s > lead {lead:.1f}s")
                    started += lead
                # Not much oftener: each scrape costs the server queue-depth queries.
                while await delivered_count(client) < emails * recipients:
                    await asyncio.sleep(0.2)
                delivered = time.perf_counter() - started
        finally:
            server.terminate()
            await server.wait()
            sink.terminate()
            await sink.wait()
    return emails / accepted, emails / delivered


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-reuse", action="store_true", help="one SMTP session per message")
    parser.add_argument("--delivery-only", action="store_true", help="time the engine alone")
    parser.add_argument("--recipients", type=int, default=1, help="RCPTs per email")
    parser.add_argument("--pipelining", action="store_true", help="the sink offers PIPELINING")
    args = parser.parse_args()
    accepts, deliveries = [], []
    for run in range(args.runs):
        accept_rate, delivered_rate = await one_run(
            args.emails,
            args.batch,
            args.concurrency,
            not args.no_reuse,
            args.delivery_only,
            args.recipients,
            args.pipelining,
        )
        accepts.append(accept_rate)
        deliveries.append(delivered_rate)
        print(f"run {run + 1}: accepted {accept_rate:.0f}/s, delivered {delivered_rate:.0f}/s")

    def summary(values: list[float]) -> str:
        return f"{min(values):.0f} / {statistics.median(values):.0f} / {max(values):.0f}"

    print(
        f"emails={args.emails} batch={args.batch} concurrency={args.concurrency} "
        f"reuse={not args.no_reuse} delivery_only={args.delivery_only} "
        f"recipients={args.recipients} pipelining={args.pipelining}"
    )
    print(f"accepted/s  min/median/max: {summary(accepts)}")
    print(f"delivered/s min/median/max: {summary(deliveries)}")


if __name__ == "__main__":
    asyncio.run(main())
