"""Mail servers that fail in the ways real ones do, for a while, then recover.

Each scenario sends several emails while the fault is active, waits until every
recipient has been deferred by it (never bounced: none of these faults is the
recipient's fault), checks that no attempt hung past the SMTP timeouts, ends the fault
and insists that everything is delivered, then checks the crash-suite invariants:
nothing lost, nothing duplicated at the MX, one acknowledged event per outcome.

- an MX that takes the whole message and hangs up before answering the end of data;
- an MX that stalls past the timeouts (at the greeting, or at the end of data);
- an MX that answers 421 at the greeting, so the next MX host is tried;
- an MX that drips its replies one byte at a time (past the timeout, then slow but in time).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.crash.invariants import received_copies
from tests.faults.scenario import ATTEMPT_BOUND_MS, FaultRun, Topology, every_attempt, fault_modes
from tests.harness.evil_mx import EvilMX
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX, FakeMXFactory, Stage
from tests.harness.postline import Factory
from tests.harness.receiver import WebhookReceiver

EMAILS = 4  # two recipients each
DOMAINS = ("dest.test", "other.test")  # both route to the ``fake_mx`` fixture
#: A stall far past every timeout: an attempt still waiting for it has hung.
STALL_SECONDS = 60.0


def assert_deferred_in_time(details: list[dict[str, Any]], *words: str) -> None:
    """Every attempt so far was a deferral that ended within the timeouts, and its
    recorded reason names the fault (one of ``words``)."""
    for detail in details:
        for row in every_attempt(detail):
            assert row["status"] == "deferred", row
            assert row["duration_ms"] <= ATTEMPT_BOUND_MS, row
            assert any(w.lower() in (row["response"] or "").lower() for w in words), row


async def test_mx_hanging_up_before_the_end_of_data_reply_defers_then_delivers(
    postline_factory: Factory,
    fake_mx: FakeMX,
    topology: Topology,
    webhook_receiver: WebhookReceiver,
) -> None:
    run = await FaultRun.start(postline_factory, topology, webhook_receiver)
    fake_mx.drop_mid_data(times=1_000_000)
    ids = await run.send_many(EMAILS, DOMAINS, "drop")
    details = await run.wait_each_met_the_fault(ids)
    assert_deferred_in_time(details, "disconnect", "connection lost")
    assert fake_mx.received == []
    assert len(fake_mx.dropped) >= EMAILS  # the MX really had each body, unanswered

    fake_mx.drop_mid_data(times=0)  # the outage is over
    await run.finish(lambda: received_copies([fake_mx]))
    # The copies the MX dropped without answering are not in ``received``: Postline
    # could not know they arrived (RFC 1047), so it sent each again, once.
    assert sorted(len(r.rcpt_tos) for r in fake_mx.received) == [2] * EMAILS


#: Scenarios whose fault is all in the SMTP conversation run on the default install
#: only: the store and queue see the same deferrals as in the ones above (time budget).
SQLITE_ONLY = pytest.mark.parametrize("topology", ["sqlite"], indirect=True)


# The first reply and the last (after the whole body) on the default install; the
# last on PostgreSQL + Redis too. A stall in between is the slow drip's case below.
@fault_modes("stage", ["greeting", "data"], pg_redis="data")
async def test_mx_stalling_past_the_command_timeout_defers_then_delivers(
    postline_factory: Factory,
    fake_mx: FakeMX,
    topology: Topology,
    webhook_receiver: WebhookReceiver,
    stage: Stage,
) -> None:
    run = await FaultRun.start(postline_factory, topology, webhook_receiver)
    fake_mx.stall(stage, STALL_SECONDS)
    ids = await run.send_many(EMAILS, DOMAINS, f"stall{stage}")
    details = await run.wait_each_met_the_fault(ids)
    assert_deferred_in_time(details, "timed out", "timeout")
    # The client hung up on each stalled session, so the stalled end of data never
    # completed: nothing was received twice.
    assert fake_mx.received == []

    fake_mx.stall(stage, 0)
    await run.finish(lambda: received_copies([fake_mx]))


@SQLITE_ONLY
async def test_421_at_greeting_defers_then_the_next_mx_host_takes_the_mail(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx_factory: FakeMXFactory,
    topology: Topology,
    webhook_receiver: WebhookReceiver,
) -> None:
    primary, backup = await fake_mx_factory.group("127.0.0.21", "127.0.0.22")
    fake_dns.add_mx("pair.test", (10, "mx1.pair.test"), (20, "mx2.pair.test"))
    fake_dns.add_a("mx1.pair.test", primary.host)
    fake_dns.add_a("mx2.pair.test", backup.host)
    busy = "421 4.3.2 Service not available, closing channel"
    primary.on_greeting(busy)
    backup.on_greeting(busy)
    run = await FaultRun.start(
        postline_factory, topology, webhook_receiver, delivery_port=primary.port
    )

    # Both hosts busy: every attempt tried the primary, then the backup, and deferred.
    ids = await run.send_many(EMAILS, ["pair.test"], "busy")
    details = await run.wait_each_met_the_fault(ids)
    assert_deferred_in_time(details, "421")
    assert all(row["smtp_code"] == 421 for d in details for row in every_attempt(d))
    assert primary.connections >= EMAILS and backup.connections >= EMAILS
    assert primary.received == backup.received == []

    # The backup recovers, the primary still says 421: the mail goes to the backup.
    backup.clear()
    for detail in await run.wait_all_final():
        for recipient in detail["recipients"]:
            assert recipient["status"] == "delivered", recipient
            assert recipient["timeline"][-1]["mx_host"] == "mx2.pair.test", recipient

    # The primary is back too: new mail goes to it again, the preferred host.
    primary.clear()
    later = await run.send_many(2, ["pair.test"], "back")
    for email_id in later:
        detail = await run.pl.wait_until_final(email_id)
        assert {r["timeline"][-1]["mx_host"] for r in detail["recipients"]} == {"mx1.pair.test"}
    await run.finish(lambda: received_copies([primary, backup]))
    assert len(primary.received) == 2 and len(backup.received) == EMAILS


@SQLITE_ONLY
async def test_slow_drip_defers_past_the_timeout_then_delivers_when_slow_but_in_time(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    topology: Topology,
    webhook_receiver: WebhookReceiver,
) -> None:
    # The RCPT reply, 24 bytes at 0.2 s each, takes ~5 s: past the 1 s command timeout.
    async with EvilMX("slow_drip", "rcpt", host="127.0.0.23", drip_interval=0.2) as evil:
        fake_dns.add_mx("drip.test", (10, "mx.drip.test"))
        fake_dns.add_a("mx.drip.test", evil.host)
        run = await FaultRun.start(
            postline_factory, topology, webhook_receiver, delivery_port=evil.port
        )
        ids = await run.send_many(EMAILS, ["drip.test"], "drip")
        details = await run.wait_each_met_the_fault(ids)
        assert_deferred_in_time(details, "timed out", "timeout")
        assert evil.delivered == [] and evil.triggered >= EMAILS

        # Still dripping, but the end-of-data reply now takes ~0.15 s: in time.
        evil.drip_interval = 0.005
        evil.set_fault("slow_drip", "data-end")
        await run.finish(evil.copies)
        assert sorted(len(rcpts) for rcpts in evil.delivered) == [2] * EMAILS
