"""A hostile MX can neither hang the engine nor get more than 1024 clean bytes stored or logged."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from tests.harness import FakeDNS
from tests.harness.evil_mx import EvilMX, Mode, Stage
from tests.harness.postline import Factory

CASES: list[tuple[Mode, Stage]] = [
    ("huge_line", "rcpt"),
    ("binary", "rcpt"),
    ("crlf_injection", "rcpt"),
    ("multiline_flood", "ehlo"),
    ("slow_drip", "greeting"),
    ("slow_drip", "rcpt"),
]

MakeEvil = Callable[[Mode, Stage], Awaitable[EvilMX]]


@pytest_asyncio.fixture
async def evil(fake_dns: FakeDNS) -> AsyncIterator[MakeEvil]:
    servers: list[EvilMX] = []

    async def make(mode: Mode, stage: Stage) -> EvilMX:
        server = EvilMX(mode, stage)
        await server.start()
        servers.append(server)
        fake_dns.add_mx("evil.test", (10, "mx.evil.test"))
        fake_dns.add_a("mx.evil.test", server.host)
        return server

    yield make
    for server in servers:
        await server.stop()


def _clean(text: str | None) -> bool:
    if text is None:
        return True
    return len(text.encode()) <= 1024 and not any(
        ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in text
    )


@pytest.mark.parametrize(("mode", "stage"), CASES, ids=[f"{m}@{s}" for m, s in CASES])
async def test_hostile_replies_are_bounded_and_clean(
    postline_factory: Factory,
    evil: MakeEvil,
    caplog: pytest.LogCaptureFixture,
    mode: Mode,
    stage: Stage,
) -> None:
    caplog.set_level(logging.DEBUG, logger="postline")
    server = await evil(mode, stage)
    pl = await postline_factory(
        delivery_port=server.port,
        smtp_connect_timeout=1,
        smtp_command_timeout=2,
        lease_seconds=10,
        retry_schedule="60",
    )
    sent = await pl.send(to="victim@evil.test")
    detail = await pl.wait_for(
        sent["id"],
        lambda d: d["recipients"][0]["attempts"] >= 1,
        timeout=20,
        what="an outcome despite the hostile MX",
    )
    recipient = detail["recipients"][0]
    assert recipient["status"] in ("deferred", "bounced")
    assert _clean(recipient["response"])
    assert all(_clean(t["response"]) for t in recipient["timeline"])
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message, message
        assert not (sent["id"] in message and "status=delivered" in message), message

    # The engine is still running, and takes the next job.
    assert pl.engine_task is not None and not pl.engine_task.done()
    again = await pl.send(to="second@evil.test")
    await pl.wait_for(
        again["id"], lambda d: d["recipients"][0]["attempts"] >= 1, timeout=20, what="a 2nd"
    )
