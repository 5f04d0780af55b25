"""The dispatcher's hot path: checked targets kept for their TTL, and lanes of small pools.

Targets: the address a delivery connects to has always passed the policy, an answer
is used no longer than its DNS TTL (a name rebound to a private address is refused
once the old answer expires), and a refusal is never kept. Lanes: senders share a few
small keep-alive pools, never one large one.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from postline.delivery.routing import Router
from postline.events.lanes import LANE, LaneTransport
from postline.events.ssrf import Targets, UnsafeURL
from tests.harness import FakeDNS
from tests.harness.receiver import WebhookReceiver

PUBLIC = "93.184.216.34"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _targets(fake_dns: FakeDNS, clock: Clock, *, allow_private: bool = False) -> Targets:
    host, port = fake_dns.nameserver.rsplit(":", 1)
    resolver = Router(nameservers=[(host, int(port))], delivery_port=25).resolver
    return Targets(resolver, allow_private=allow_private, clock=clock)


async def test_a_checked_answer_is_used_until_its_ttl_runs_out(fake_dns: FakeDNS) -> None:
    fake_dns.add_a("hook.ttl.test", PUBLIC, ttl=30)
    clock = Clock()
    targets = _targets(fake_dns, clock)
    url = "https://hook.ttl.test/events"
    first = await targets.get(url)
    assert first.url.host == PUBLIC
    assert (first.host_header, first.sni_hostname) == ("hook.ttl.test", "hook.ttl.test")
    asked = len(fake_dns.queries_for("hook.ttl.test", "A"))
    clock.now += 29
    assert await targets.get(url) is first
    assert len(fake_dns.queries_for("hook.ttl.test", "A")) == asked
    clock.now += 2
    await targets.get(url)
    assert len(fake_dns.queries_for("hook.ttl.test", "A")) == asked + 1


async def test_a_name_rebound_to_a_private_address_is_refused_once_the_answer_expires(
    fake_dns: FakeDNS,
) -> None:
    fake_dns.add_a("hook.rebind.test", PUBLIC, ttl=5)
    clock = Clock()
    targets = _targets(fake_dns, clock)
    url = "http://hook.rebind.test:8080/"
    assert (await targets.get(url)).url.host == PUBLIC
    fake_dns.remove("hook.rebind.test")
    fake_dns.add_a("hook.rebind.test", "127.0.0.1", ttl=5)
    clock.now += 1
    kept = await targets.get(url)  # still the checked public address, never the new one
    assert (kept.url.host, kept.host_header) == (PUBLIC, "hook.rebind.test:8080")
    clock.now += 5
    with pytest.raises(UnsafeURL, match="loopback"):
        await targets.get(url)


async def test_a_refusal_and_a_zero_ttl_are_not_kept(fake_dns: FakeDNS) -> None:
    fake_dns.add_a("hook.refused.test", "10.0.0.1")
    fake_dns.add_a("hook.zero.test", PUBLIC, ttl=0)
    clock = Clock()
    targets = _targets(fake_dns, clock)
    with pytest.raises(UnsafeURL, match="private"):
        await targets.get("http://hook.refused.test/")
    fake_dns.remove("hook.refused.test")
    fake_dns.add_a("hook.refused.test", PUBLIC)
    assert (await targets.get("http://hook.refused.test/")).url.host == PUBLIC
    for _ in range(2):
        await targets.get("http://hook.zero.test/")
    assert len(fake_dns.queries_for("hook.zero.test", "A")) == 2


async def test_each_sender_sends_over_connections_of_its_own() -> None:
    senders = 3
    transport = LaneTransport(senders)
    assert len(transport.lanes) == senders
    async with WebhookReceiver() as receiver, httpx.AsyncClient(transport=transport) as client:

        async def sender(lane: int) -> None:
            for _ in range(5):
                request = httpx.Request("POST", receiver.url, content=b"{}")
                request.extensions[LANE] = lane
                response = await client.send(request)
                assert response.status_code == 200

        await asyncio.gather(*(sender(i) for i in range(senders)))
        assert len(receiver.received) == 5 * senders
        # Each sender opened one connection, kept for all five of its POSTs.
        opened = [len(lane._pool.connections) for lane in transport.lanes]
        assert opened == [1] * senders, opened
