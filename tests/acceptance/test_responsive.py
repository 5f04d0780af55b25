"""A real ``postline serve`` at production defaults keeps answering while it accepts the
largest batch its caps allow (issue 20, item 4): building and DKIM signing run in the
compose pool, not on the event loop.

The batch: 500 emails (the most a batch holds), 1,000 recipients between them (the most
a request may name, ``POSTLINE_MAX_RECIPIENTS_PER_REQUEST``), each email with custom
headers up to ``POSTLINE_MAX_CUSTOM_HEADER_BYTES``, from a domain with a DKIM key. While
it is accepted, ``/healthz`` is polled every 20 ms over its own kept-alive connection
and each answer timed. The issue asks for every answer within 100 ms; that bound is
asserted here, the one wall-clock bound in the suite, because it is the requirement.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, Server, auth
from tests.harness.polling import poll
from tests.harness.raw_http import DEADLINE, read_answer

#: The one wall-clock bound of the suite: run alone (``make test``'s second phase).
pytestmark = pytest.mark.solo

#: The issue's requirement, run alone (``make test``'s second phase). The worst answer was
#: 213-317 ms on an idle 2-core machine until start-up's objects were frozen out of the
#: garbage collector's full passes, 33-40 ms since (docs/PERFORMANCE.md, "/healthz during
#: the largest batch"); the worst time is printed.
BOUND = 0.100
EVERY = 0.020


def largest_batch() -> list[dict[str, Any]]:
    """500 emails, 1,000 recipients, ~16 KiB of custom headers each; scheduled a day
    ahead, so the engine leaves them be and the loop's only work is accepting."""
    later = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    headers = {f"X-Bench-{n:02d}": "v" * 300 for n in range(50)}  # 50 x 314 bytes
    return [
        {
            "from": "Sender <sender@example.test>",
            "to": [f"user{2 * n}@dest.test", f"user{2 * n + 1}@dest.test"],
            "subject": f"Batch message {n}",
            "text": "Hello, this is one of the largest batch allowed.\n" * 100,
            "html": "<p>Hello, this is one of the largest batch allowed.</p>\n" * 80,
            "headers": headers,
            "scheduled_at": later,
        }
        for n in range(500)
    ]


class HealthPoller:
    """GET /healthz every ``EVERY`` seconds on one connection, timing each answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.latencies: list[float] = []
        self.stop = asyncio.Event()

    async def run(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        request = b"GET /healthz HTTP/1.1\r\nHost: postline\r\n\r\n"
        try:
            while not self.stop.is_set():
                started = time.perf_counter()
                writer.write(request)
                status, _, body = await read_answer(reader)
                self.latencies.append(time.perf_counter() - started)
                assert (status, json.loads(body)) == (200, {"status": "ok"})
                await asyncio.sleep(EVERY)
        finally:
            writer.close()


async def _post_batch(server: Server, key: str, body: bytes) -> httpx.Response:
    """The batch, retried while the key's bucket refills (it costs 1,000 tokens)."""
    answer: httpx.Response | None = None

    async def accepted() -> bool:
        nonlocal answer
        answer = await server.client.post(
            "/v1/emails/batch",
            content=body,
            headers={"Content-Type": "application/json", **auth(key)},
            timeout=DEADLINE,
        )
        assert answer.status_code in (202, 429), f"{answer.status_code} {answer.text[:500]}"
        return answer.status_code == 202

    await poll(accepted, timeout=DEADLINE, interval=1.0, what="the batch accepted")
    assert answer is not None
    return answer


async def test_healthz_answers_within_100_ms_while_the_largest_batch_is_accepted(
    install: Install, launch: Launcher
) -> None:
    server = await launch(install, "serve", "--no-sandbox")
    key = await server.admin_key()
    await server.ready()
    created = await server.client.post(
        "/v1/domains", json={"name": "example.test"}, headers=auth(key)
    )
    assert created.status_code == 201, created.text
    # Warm: the accept path has run once (imports, first queries, the pool's workers).
    await server.send(key, to="warm@dest.test", scheduled_at=largest_batch()[0]["scheduled_at"])
    body = json.dumps(largest_batch()).encode()  # encoded before the clock starts

    poller = HealthPoller(install.http_port)
    polling = asyncio.create_task(poller.run())

    async def polled() -> bool:
        return len(poller.latencies) >= 3

    await poll(polled, timeout=DEADLINE, what="/healthz polled")
    idle = len(poller.latencies)
    answer = await _post_batch(server, key, body)
    during = len(poller.latencies) - idle
    poller.stop.set()
    await polling

    data = answer.json()["data"]
    assert len(data) == 500
    assert sum(len(email["recipients"]) for email in data) == 1000
    worst = max(poller.latencies)
    print(
        f"/healthz: {len(poller.latencies)} polls ({during} while the batch was accepted), "
        f"worst {worst * 1000:.1f} ms; slowest (ms): "
        f"{[round(t * 1000) for t in sorted(poller.latencies)[-5:]]}"
    )
    assert during >= 3, "the batch was accepted before /healthz could be asked"
    assert worst < BOUND, f"/healthz took {worst * 1000:.0f} ms\n{server.describe()}"
