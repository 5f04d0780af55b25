"""The SMTP client alone, with and without PIPELINING (RFC 2920).

``throughput.py`` measures the whole path, where recording outcomes costs more
than SMTP (add ``--recipients 10 --pipelining`` there for that view). This
script takes the store out. ``SmtpDelivery``, the engine's SMTP client with its
session pool, sends messages of R recipients to the sink (``sink.py``, its own
process). It runs C senders at once, the sink offering PIPELINING and then not.

Loopback has a round trip of some 50 µs, and pipelining saves round trips.
``--rtt-ms`` puts a relay in front of the sink that delays every chunk by half
the RTT each way, as a distant MX would. The relay runs in this process.

Usage: .venv/bin/python bench/pipelining.py [--messages 2000] [--recipients 10]
       [--concurrency 10] [--runs 3] [--rtt-ms 0]
Results go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import sys
import time
from pathlib import Path

from postline.delivery.pool import SmtpSettings
from postline.delivery.routing import Router, Target
from postline.delivery.smtp import SmtpDelivery

HERE = Path(__file__).resolve().parent
BODY = b"From: bench@example.test\r\nSubject: bench\r\n\r\n" + b"x" * 70 + b"\r\n" * 70


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_sink(port: int, pipelining: bool) -> asyncio.subprocess.Process:
    flags = ["--pipelining"] if pipelining else []
    sink = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "sink.py"), str(port), *flags, stdout=asyncio.subprocess.PIPE
    )
    assert sink.stdout is not None
    line = await asyncio.wait_for(sink.stdout.readline(), 30)
    assert b"ready" in line, line
    return sink


async def start_delay_relay(target_port: int, one_way: float) -> tuple[asyncio.Server, int]:
    """A TCP relay that delivers every chunk ``one_way`` seconds after it arrived, in order."""

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
            writer.close()

        delivering = asyncio.create_task(deliver())
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + one_way, data))
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(ConnectionError):
            await delivering

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def one_run(
    messages: int, recipients: int, concurrency: int, pipelining: bool, rtt: float
) -> float:
    sink_port = free_port()
    sink = await start_sink(sink_port, pipelining)
    relay: asyncio.Server | None = None
    port = sink_port
    if rtt > 0:
        relay, port = await start_delay_relay(sink_port, rtt / 2)
    settings = SmtpSettings(
        helo_name="bench.test",
        connect_timeout=10,
        command_timeout=30,
        max_messages_per_session=100_000,
    )
    delivery = SmtpDelivery(Router(nameservers=[], delivery_port=port), settings)
    target = Target("127.0.0.1", port, "sink.bench")
    addresses = [f"user{i}@bench.test" for i in range(recipients)]
    left = messages

    async def sender() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            result = await delivery.send([target], "bench@example.test", addresses, BODY)
            assert result.error is None and result.data is not None, result

    try:
        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    finally:
        await delivery.pool.close()
        if relay is not None:
            relay.close()
        sink.terminate()
        await sink.wait()
    return messages / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--recipients", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rtt-ms", type=float, default=0.0, help="simulated round trip")
    args = parser.parse_args()
    rates: dict[bool, list[float]] = {False: [], True: []}
    for run in range(args.runs):
        for pipelining in (False, True):  # alternate, so load changes hit both alike
            rate = await one_run(
                args.messages, args.recipients, args.concurrency, pipelining, args.rtt_ms / 1000
            )
            rates[pipelining].append(rate)
            print(f"run {run + 1} pipelining={pipelining}: {rate:.0f} messages/s")
    print(
        f"messages={args.messages} recipients={args.recipients} "
        f"concurrency={args.concurrency} rtt_ms={args.rtt_ms:g}"
    )
    for pipelining, values in rates.items():
        print(
            f"pipelining={pipelining!s:5} messages/s min/median/max: "
            f"{min(values):.0f} / {statistics.median(values):.0f} / {max(values):.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
