"""Messages per second accepted by the SMTP submission port (issue 16).

Starts ``postline api`` (SQLite, the file spool, the embedded queue; no delivery
engine, so what is measured is acceptance: the body fsynced and the rows committed
before each 250) in a temporary data dir, then N client processes, each one
smtplib session that logs in with an API key and sends its share of ~5 KB
messages, one recipient each. Clients are processes of their own, as in the other
benchmarks, so they never share Postline's event loop or its GIL.

    .venv/bin/python bench/submission.py --messages 2000 --clients 10 [--starttls]

Prints accepted messages per second (wall time from the first connection to the
last 250) for each of ``--runs`` runs, then min / median / max.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import smtplib
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POSTLINE = Path(sys.executable).parent / "postline"
BODY = ("All work and no play makes a benchmark a dull boy. " * 2 + "\r\n") * 48  # ~5 KB


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def message(n: int) -> bytes:
    return (
        f"From: Bench <bench@bench.test>\r\nTo: user{n}@dest{n % 10}.test\r\n"
        f"Subject: Benchmark {n}\r\nMessage-ID: <bench-{n}-{os.getpid()}@bench.test>\r\n\r\n" + BODY
    ).encode()


def client(port: int, key: str, first: int, count: int, pem: str | None) -> int:
    """One application: one session for all its messages. Returns how many got a 250."""
    accepted = 0
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as smtp:
        smtp.ehlo("bench.test")
        if pem:
            smtp.starttls(context=ssl.create_default_context(cafile=pem))
            smtp.ehlo("bench.test")
        smtp.login("bench", key)
        for n in range(first, first + count):
            refused = smtp.sendmail("bench@bench.test", [f"user{n}@dest{n % 10}.test"], message(n))
            accepted += not refused
    return accepted


def run_cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(POSTLINE), *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


def one_run(args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        smtp_port, http_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTLINE_")}
        env.update(
            POSTLINE_DATA_DIR=str(Path(tmp) / "data"),
            POSTLINE_HTTP_ADDR=f"127.0.0.1:{http_port}",
            POSTLINE_SMTP_ADDR=f"127.0.0.1:{smtp_port}",
            POSTLINE_INBOUND_ADDR="127.0.0.1:0",  # the inbound MX: any free port
            POSTLINE_HOSTNAME="postline.bench.test",
            POSTLINE_RATE_LIMIT_PER_SECOND="0",
            POSTLINE_LOG_LEVEL="WARNING",
        )
        run_cli(env, "migrate")
        run_cli(env, "domains", "add", "bench.test")
        created = run_cli(env, "keys", "create", "--name", "bench", "--domain", "bench.test")
        key = created.strip().splitlines()[-1]
        server = subprocess.Popen(
            [str(POSTLINE), "api"], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        try:
            assert server.stdout is not None
            for line in server.stdout:  # up once it has said where it listens
                if line.startswith(b"SMTP submission:"):
                    break
            pem = str(Path(tmp) / "data" / "smtp-tls.pem") if args.starttls else None
            share = args.messages // args.clients
            jobs = [(smtp_port, key, i * share, share, pem) for i in range(args.clients)]
            with multiprocessing.get_context("spawn").Pool(args.clients) as pool:
                started = time.perf_counter()
                accepted = sum(pool.starmap(client, jobs))
                elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(60)
    assert accepted == share * args.clients, accepted
    return accepted / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--starttls", action="store_true", help="STARTTLS before AUTH")
    args = parser.parse_args()
    rates = []
    for run in range(args.runs):
        rate = one_run(args)
        rates.append(rate)
        print(f"run {run + 1}: {rate:.0f} messages/s", flush=True)
    tls = "STARTTLS" if args.starttls else "clear text (loopback)"
    print(
        f"{args.clients} smtplib clients, {args.messages} messages of ~5 KB, {tls}: "
        f"min {min(rates):.0f}, median {statistics.median(rates):.0f}, "
        f"max {max(rates):.0f} messages/s"
    )


if __name__ == "__main__":
    main()
