"""DNS that fails for a while, then recovers: deferred (never bounced), then delivered.

Two ways a look-up fails, each for two names at once:

- SERVFAIL: the nameserver answers that it cannot answer;
- timeout: the nameserver never answers at all (a dead or firewalled server).

and two places it fails: the destination's MX query (``nomx.test``), and the address
of an MX host whose MX record resolved fine (``mx.noaddr.test``). Neither says the
domain does not exist, so every recipient must be deferred, never bounced or
suppressed; once DNS answers again, everything is delivered and the crash-suite
invariants hold.
"""

from __future__ import annotations

from typing import Literal

from tests.crash.invariants import received_copies
from tests.faults.scenario import ATTEMPT_BOUND_MS, FaultRun, Topology, every_attempt, fault_modes
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX
from tests.harness.postline import Factory
from tests.harness.receiver import WebhookReceiver

EMAILS = 4  # two recipients each, half to each domain
#: The router's resolver gives up on a look-up after its lifetime (10 s by default, not
#: a setting); a shorter one keeps each timed-out attempt to about a second here. The
#: default lifetime, with the default retry schedule, is test_recovery_at_defaults.py's.
RESOLVER_LIFETIME = 1.0


# Both failures on the default install, the slower one on PostgreSQL + Redis too.
@fault_modes("failure", ["servfail", "timeout"], pg_redis="timeout")
async def test_dns_failure_defers_then_everything_is_delivered_when_dns_recovers(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    topology: Topology,
    webhook_receiver: WebhookReceiver,
    failure: Literal["servfail", "timeout"],
) -> None:
    for domain in ("nomx.test", "noaddr.test"):
        fake_dns.add_mx(domain, (10, f"mx.{domain}"))
        fake_dns.add_a(f"mx.{domain}", fake_mx.host)
    broken = ["nomx.test", "mx.noaddr.test"]
    for name in broken:
        fake_dns.servfail(name) if failure == "servfail" else fake_dns.timeout(name)
    run = await FaultRun.start(postline_factory, topology, webhook_receiver)
    resolver = run.pl.services.router.resolver
    resolver.lifetime = RESOLVER_LIFETIME
    resolver.timeout = RESOLVER_LIFETIME / 2

    ids = await run.send_many(EMAILS, ["nomx.test", "noaddr.test"], failure)
    details = await run.wait_each_met_the_fault(ids)
    for detail in details:
        domain = detail["recipients"][0]["address"].split("@")[1]
        reason = "DNS lookup for nomx.test failed" if domain == "nomx.test" else "has no address"
        for row in every_attempt(detail):
            assert row["status"] == "deferred", row
            assert row["smtp_code"] is None, row
            assert reason in (row["response"] or ""), row
            assert row["duration_ms"] <= ATTEMPT_BOUND_MS, row
    assert fake_mx.connections == 0  # nowhere to connect to yet
    assert fake_dns.queries_for("nomx.test", "MX") and fake_dns.queries_for("mx.noaddr.test")
    suppressions = await run.pl.client.get("/v1/suppressions", headers=run.pl.auth())
    assert suppressions.json()["data"] == []

    for name in broken:
        fake_dns.restore(name)
    await run.finish(lambda: received_copies([fake_mx]))
