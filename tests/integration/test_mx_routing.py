"""MX routing: preference order, fallbacks, null MX, TTL cache (RFC 5321 5.1, RFC 7505),
and a resolver that lies (NXDOMAIN for a domain that exists) suppressing nobody."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tests.harness import FakeDNS, FakeMX, FakeMXFactory
from tests.harness.postline import Factory, PostlineUnderTest


async def _suppressions(pl: PostlineUnderTest, address: str) -> list[dict[str, Any]]:
    response = await pl.client.get(
        "/v1/suppressions", params={"address": address}, headers=pl.auth()
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def _deferred_by(rule: str) -> Any:
    def check(detail: dict[str, Any]) -> bool:
        timeline = detail["recipients"][0]["timeline"]
        return any(row["status"] == "deferred" and row["bounce_rule"] == rule for row in timeline)

    return check


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
    assert (recipient["bounce_type"], recipient["bounce_rule"]) == ("hard", "dns.null_mx")
    assert "null MX" in recipient["response"]
    assert fake_mx.connections == 0
    # Hard, so suppressed; but a DNS verdict about a domain only for a while.
    (suppression,) = await _suppressions(pl, "user@nomail.test")
    assert suppression["reason"] == "hard_bounce"
    assert suppression["expires_at"] is not None


async def test_nxdomain_with_a_healthy_resolver_bounces_and_suppresses_for_a_while(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory()  # the canary, dest.test, resolves
    sent = await pl.send(to="user@nowhere.test")
    detail = await pl.wait_for_status(sent["id"], ["bounced"])
    recipient = detail["recipients"][0]
    assert (recipient["bounce_type"], recipient["bounce_rule"]) == ("hard", "dns.nxdomain")
    assert recipient["timeline"][0]["bounce_rule"] == "dns.nxdomain"
    (suppression,) = await _suppressions(pl, "user@nowhere.test")
    assert suppression["expires_at"] is not None


async def test_nxdomain_while_the_canary_fails_too_is_a_deferral(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    """A filtering resolver says gmail.com does not exist: it says so of the canary too."""
    pl = await postline_factory(dns_canary="canary.missing.test")
    sent = await pl.send(to="someone@filtered.test")
    detail = await pl.wait_for(sent["id"], _deferred_by("dns.canary_failed"), what="deferral")
    recipient = detail["recipients"][0]
    assert detail["status"] == "deferred" and recipient["status"] == "deferred"
    # Nothing bounced: the deferral's class is in its timeline row, not on the recipient.
    assert recipient["bounce_type"] is None
    assert recipient["timeline"][-1]["bounce_type"] == "soft"
    assert await _suppressions(pl, "someone@filtered.test") == []
    # Once the resolver tells the truth again, the mail goes out. The domain first: the
    # fake DNS server answers from its own thread, and a retry that found the domain
    # missing and then the canary present would rightly bounce.
    fake_dns.add_mx("filtered.test", (10, "mx.dest.test"))
    fake_dns.add_mx("canary.missing.test", (10, "mx.dest.test"))
    await pl.wait_for_status(sent["id"], ["delivered"])


async def test_nxdomain_for_a_domain_that_resolved_before_is_a_deferral(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    fake_dns.add_mx("flaky.test", (10, "mx.dest.test"), ttl=0)  # not cached: asked each time
    pl = await postline_factory()
    first = await pl.send(to="someone@flaky.test")
    await pl.wait_for_status(first["id"], ["delivered"])
    fake_dns.remove("flaky.test")  # now NXDOMAIN, while the canary still resolves
    second = await pl.send(to="someone@flaky.test")
    detail = await pl.wait_for(
        second["id"], _deferred_by("dns.contradicts_earlier"), what="deferral"
    )
    assert detail["recipients"][0]["status"] == "deferred"
    assert await _suppressions(pl, "someone@flaky.test") == []


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


async def test_deliveries_that_miss_the_dns_caches_together_share_each_lookup(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    """A hundred deliveries to a domain not looked up yet start together (a new
    domain's first lease): its MX, its MX host's addresses, its MTA-STS record and
    any TLSA record are each asked for once, not once per delivery. Mutation testing:
    without ``SingleFlight`` each of the 20 here asked for every one of them."""
    fake_dns.add_mx("new.test", (10, "mx.new.test"))
    fake_dns.add_a("mx.new.test", "127.0.0.1")
    pl = await postline_factory(engine=False)
    engine = pl.services.engine

    async def plan() -> None:
        targets = await engine.router.route("new.test")
        await engine.tls_policies.plan("new.test", targets)
        assert [target.host for target in targets] == ["mx.new.test"]
        assert await engine.router.addresses("mx.new.test") == ["127.0.0.1"]

    await asyncio.gather(*(plan() for _ in range(20)))
    asked = Counter(fake_dns.queries)
    assert asked[("new.test", "MX")] == 1
    assert asked[("_mta-sts.new.test", "TXT")] == 1
    assert asked[("mx.new.test", "A")] == 1
    assert asked and set(asked.values()) == {1}, asked
