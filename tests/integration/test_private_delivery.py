"""Delivery at production defaults (POSTLINE_DELIVERY_ALLOW_PRIVATE off) never connects to
an MX on a loopback or private address; the relay host, the operator's choice, still does.

A tenant who controls a recipient domain's DNS could otherwise point its MX at
127.0.0.1 and have Postline talk to an internal relay, with the replies shown in
the email's timeline.
"""

from __future__ import annotations

from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import Factory


async def test_mx_on_loopback_is_not_delivered_to_and_says_why(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    fake_dns.add_mx("inside.test", (10, "mx.inside.test"))
    fake_dns.add_a("mx.inside.test", fake_mx.host)  # where the fake MX listens: 127.0.0.1
    fake_dns.add_aaaa("mx.inside.test", "0064:ff9b:0000:0000:0000:0000:7f00:0001")
    pl = await postline_factory(delivery_allow_private=False)
    # More than the breaker's threshold: a policy refusal must not count as failures.
    threshold = pl.services.engine.breakers.policy.failure_threshold
    sent = [await pl.send(to=f"user{i}@inside.test") for i in range(threshold + 1)]
    for email in sent:
        detail = await pl.wait_for_status(email["id"], ["bounced"])
        (recipient,) = detail["recipients"]
        assert recipient["bounce_type"] == "block", recipient
        assert recipient["bounce_rule"] == "dns.private_address", recipient
        assert recipient["enhanced_code"] == "5.4.4", recipient
        response = recipient["response"]
        assert "MX mx.inside.test resolves only to non-public addresses" in response
        assert f"{fake_mx.host}: loopback" in response, response
        assert "NAT64 form of 127.0.0.1" in response, response
        assert "POSTLINE_DELIVERY_ALLOW_PRIVATE=true" in response, response
    assert fake_mx.connections == 0 and fake_mx.received == []
    breakers = pl.services.engine.breakers
    assert breakers.admits("inside.test") and breakers.view("inside.test").consecutive_failures == 0
    # A policy verdict, not a statement about the address: nobody is suppressed.
    suppressions = await pl.client.get(
        "/v1/suppressions", params={"address": "user0@inside.test"}, headers=pl.auth()
    )
    assert suppressions.status_code == 200 and suppressions.json()["data"] == []


async def test_relay_host_on_loopback_still_delivers(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(
        delivery_allow_private=False, relay_host=f"{fake_mx.host}:{fake_mx.port}"
    )
    sent = await pl.send(to="user@anywhere.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert detail["recipients"][0]["timeline"][0]["mx_host"] == fake_mx.host
    assert [r.rcpt_tos for r in fake_mx.received] == [["user@anywhere.test"]]


async def test_allowing_private_delivery_reaches_the_loopback_mx(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    """The lab switch (which the test harness turns on everywhere else) does what it says."""
    pl = await postline_factory(delivery_allow_private=True)
    sent = await pl.send(to="user@dest.test")
    await pl.wait_for_status(sent["id"], ["delivered"])
    assert [r.rcpt_tos for r in fake_mx.received] == [["user@dest.test"]]
