"""Postline pointed at a raw MX (``BatchMX``, ``EvilMX``) with timeouts short enough to
bound one attempt, and the wait for the first attempt it makes there.

The hostile-MX tests all ask the same question: does a misbehaving server get an
outcome within a bound, or can it hang the engine? They share the timeouts that make the
bound, the routing of one domain to the raw MX, and the timed wait, so the bound is
computed once, from the timeouts actually used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

from tests.harness.fake_dns import FakeDNS
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.raw_mx import RawMX

__all__ = [
    "ATTEMPT_BOUND",
    "COMMAND_TIMEOUT",
    "CONNECT_TIMEOUT",
    "LEASE_SECONDS",
    "OUTCOME_DEADLINE",
    "TimedAttempt",
    "first_attempt",
    "postline_routed_to",
    "timed_first_attempt",
]

CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0
LEASE_SECONDS = 10
#: One misbehaving stage costs at most the connect timeout or one command timeout, then
#: the hang-up (QUIT, which close_session gives 5 s): the bound on one attempt here.
ATTEMPT_BOUND = CONNECT_TIMEOUT + 2 * COMMAND_TIMEOUT + 5.0
#: How long the tests poll: the bound plus room for a slow machine.
OUTCOME_DEADLINE = 15.0


async def postline_routed_to(
    postline_factory: Factory, fake_dns: FakeDNS, mx: RawMX[Any], domain: str
) -> PostlineUnderTest:
    """A Postline whose mail for ``domain`` goes to ``mx`` (as ``mx.<domain>``), with the
    short timeouts above and no quick retry (a second attempt would blur the first)."""
    fake_dns.add_mx(domain, (10, f"mx.{domain}"))
    fake_dns.add_a(f"mx.{domain}", mx.host)
    return await postline_factory(
        delivery_port=mx.port,
        smtp_connect_timeout=CONNECT_TIMEOUT,
        smtp_command_timeout=COMMAND_TIMEOUT,
        lease_seconds=LEASE_SECONDS,
        retry_schedule="60",
    )


async def first_attempt(
    pl: PostlineUnderTest,
    email_id: str,
    mx: RawMX[Any],
    check: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Poll until the first recipient has its first recorded attempt. ``check`` runs on
    every poll, so a test can fail at once on what makes waiting pointless (an engine
    error: the job would wait for its lease)."""

    def recorded(detail: dict[str, Any]) -> bool:
        if check is not None:
            check()
        return bool(detail["recipients"][0]["attempts"] >= 1)

    return await pl.wait_for(
        email_id, recorded, timeout=OUTCOME_DEADLINE, what=f"an outcome from {mx!r}"
    )


class TimedAttempt(NamedTuple):
    sent: dict[str, Any]
    """The API's answer to the send."""
    detail: dict[str, Any]
    """The email once its recipient has an attempt."""
    elapsed: float
    """Seconds from the send to that attempt being recorded (compare with ATTEMPT_BOUND)."""


async def timed_first_attempt(
    pl: PostlineUnderTest,
    to: str,
    mx: RawMX[Any],
    check: Callable[[], None] | None = None,
) -> TimedAttempt:
    """Send one email to ``to`` and wait for its first attempt, timing both together."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = await pl.send(to=to)
    detail = await first_attempt(pl, sent["id"], mx, check)
    return TimedAttempt(sent, detail, loop.time() - started)
