"""MX routing: preference order, fallbacks, null MX, TTL cache (RFC 5321 5.1, RFC 7505)."""

from __future__ import annotations

from tests.harness import FakeDNS, FakeMX, FakeMXFactory
from tests.harness.postline import Factory


async def test_next_mx_when_the_first_refuses_connections_or_greets_421(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx_factory: FakeMXFactory
) -> None:
    busy, good = await fake_mx_factory.group("127.0.0.3", "127.0.0.4")
    busy.on_greeting("421 4.3.2 Service not available, closing channel")
    fake_dns.add_mx(
        "multi.test", (5, "down.multi.test"), (10, "busy.multi.test"), (20, "good.multi.test")
    )
    fake_dns.add_a("down.multi.test", "127.0.0.2")  # nothing listens there
    fake_dns.add_a("busy.multi.test", "127.0.0.3")
    fake_dns.add_a("good.multi.test", "127.0.0.4")
    pl = await postline_factory(delivery_port=good.port)
    sent = await pl.send(to="user@multi.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert detail["recipients"][0]["timeline"][0]["mx_host"] == "good.multi.test"
    assert busy.connections == 1 and len(good.received) == 1


async def test_equal_preferences_share_the_load(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx_factory: FakeMXFactory
) -> None:
    first, second = await fake_mx_factory.group("127.0.0.5", "127.0.0.6")
    fake_dns.add_mx("twin.test", (10, "a.twin.test"), (10, "b.twin.test"))
    fake_dns.add_a("a.twin.test", "127.0.0.5")
    fake_dns.add_a("b.twin.test", "127.0.0.6")
    pl = await postline_factory(delivery_port=first.port)
    ids = [(await pl.send(to=f"u{i}@twin.test"))["id"] for i in range(16)]
    for email_id in ids:
        await pl.wait_for_status(email_id, ["delivered"])
    assert first.received and second.received  # 2 * 2**-16 chance of a false failure


async def test_null_mx_bounces_without_connecting(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    fake_dns.null_mx("nomail.test")
    pl = await postline_factory()
    sent = await pl.send(to="user@nomail.test")
    detail = await pl.wait_for_status(sent["id"], ["bounced"])
    recipient = detail["recipients"][0]
    assert recipient["bounce_type"] == "hard"
    assert "null MX" in recipient["response"]
    assert fake_mx.connections == 0


async def test_no_mx_falls_back_to_the_address_record(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    fake_dns.add_a("bare.test", fake_mx.host)
    pl = await postline_factory()
    sent = await pl.send(to="user@bare.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert detail["recipients"][0]["timeline"][0]["mx_host"] == "bare.test"


async def test_mx_answers_are_cached_for_their_ttl(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    pl = await postline_factory()
    for _ in range(3):
        sent = await pl.send(to="user@dest.test")
        await pl.wait_for_status(sent["id"], ["delivered"])
    assert len(fake_dns.queries_for("dest.test", "MX")) == 1
    assert len(fake_dns.queries_for("mx.dest.test", "A")) == 1
