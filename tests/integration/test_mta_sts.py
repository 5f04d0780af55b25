"""MTA-STS (RFC 8461) end to end: real DNS, a real HTTPS policy host, real MX servers.

Everything on loopback: ``_mta-sts.sts.test`` TXT and ``mta-sts.sts.test`` (127.0.0.1)
in the fake DNS, the policy served over HTTPS with a certificate from a throwaway
CA that Postline trusts through POSTLINE_TLS_CA_FILE, the MX an aiosmtpd server on
127.0.0.8 with STARTTLS and a certificate from the same CA.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest_asyncio

from postline.store import mta_sts as sts_store
from postline.store.types import utcnow
from tests.harness import FakeDNS, FakeMX
from tests.harness.policy_server import PolicyServer
from tests.harness.polling import poll
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.timeline import deferred, last_row
from tests.harness.tls import ThrowawayCA

DOMAIN = "sts.test"
MX_NAME = "mx.sts.test"


@dataclass
class StsWorld:
    ca: ThrowawayCA
    server: PolicyServer
    dns: FakeDNS
    make_mx: Callable[..., Awaitable[FakeMX]]
    factory: Factory

    def publish(self, policy_id: str, *, ttl: int = 0) -> None:
        """The TXT record (TTL 0 by default: every delivery looks again)."""
        self.dns.remove(f"_mta-sts.{DOMAIN}")
        self.dns.add_txt(f"_mta-sts.{DOMAIN}", f"v=STSv1; id={policy_id};", ttl=ttl)

    async def postline(self, **overrides: Any) -> PostlineUnderTest:
        overrides.setdefault("tls_ca_file", str(self.ca.ca_file))
        return await self.factory(mta_sts_port=self.server.port, **overrides)


@pytest_asyncio.fixture
async def sts(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, tmp_path: Path
) -> AsyncIterator[StsWorld]:
    ca = ThrowawayCA.create(tmp_path)
    server = PolicyServer(ca.server_context(f"mta-sts.{DOMAIN}"))
    await server.start()
    fake_dns.add_a(f"mta-sts.{DOMAIN}", "127.0.0.1")
    started: list[FakeMX] = []

    async def make_mx(
        mx_name: str = MX_NAME, cert_name: str | None = None, address: str = "127.0.0.8"
    ) -> FakeMX:
        mx = FakeMX(address, fake_mx.port, hostname=mx_name)
        mx.tls_context = ca.server_context(cert_name or mx_name)
        await mx.start()
        started.append(mx)
        fake_dns.remove(DOMAIN)
        # TTL 0: a test that moves the MX is believed at once.
        fake_dns.add_mx(DOMAIN, (10, mx_name), ttl=0)
        fake_dns.add_a(mx_name, address, ttl=0)
        return mx

    yield StsWorld(ca, server, fake_dns, make_mx, postline_factory)
    for mx in started:
        await mx.stop()
    await server.stop()


async def test_enforce_with_a_matching_mx_and_a_valid_certificate_delivers(sts: StsWorld) -> None:
    mx = await sts.make_mx()
    sts.publish("one")
    sts.server.serve("enforce", MX_NAME)
    pl = await sts.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    row = last_row(detail)
    assert (row["tls_policy"], row["tls_verified"]) == ("mta-sts", True)
    assert row["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert [m.tls for m in mx.received] == [True]
    assert sts.server.requests == [("/.well-known/mta-sts.txt", f"mta-sts.{DOMAIN}")]


async def test_enforce_with_an_mx_outside_the_policy_never_delivers(sts: StsWorld) -> None:
    mx = await sts.make_mx("mail.elsewhere.test")
    sts.publish("one")
    sts.server.serve("enforce", MX_NAME, "*.mx.sts.test")
    pl = await sts.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await deferred(pl, sent["id"])
    recipient = detail["recipients"][0]
    assert "MTA-STS policy of sts.test (enforce)" in recipient["response"]
    assert "mail.elsewhere.test matches none of its mx patterns" in recipient["response"]
    assert last_row(detail)["tls_policy"] == "mta-sts"
    assert mx.connections == 0 and mx.received == []


async def test_enforce_with_a_certificate_for_another_name_defers(sts: StsWorld) -> None:
    mx = await sts.make_mx(cert_name="imposter.test")
    sts.publish("one")
    sts.server.serve("enforce", MX_NAME)
    pl = await sts.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await deferred(pl, sent["id"])
    assert "CERTIFICATE_VERIFY_FAILED" in detail["recipients"][0]["response"].upper()
    assert last_row(detail)["tls_policy"] == "mta-sts"
    assert mx.received == []


async def test_testing_mode_delivers_despite_a_bad_certificate(sts: StsWorld) -> None:
    mx = await sts.make_mx(cert_name="imposter.test")
    sts.publish("one")
    sts.server.serve("testing", "other.sts.test")
    pl = await sts.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert last_row(detail)["tls_policy"] == "mta-sts-testing"
    assert len(mx.received) == 1

    async def counted() -> list[dict[str, Any]]:
        days = await _tls_days(pl, DOMAIN)
        return days if days and days[0]["failed"] else []

    (day,) = await poll(counted, timeout=15, what="the failure counted")
    # The MX is not one the policy names: that is the failure reported.
    assert day["failures"] == {"validation-failure": 1}


async def test_a_failed_refresh_keeps_the_cached_policy_in_force(sts: StsWorld) -> None:
    await sts.make_mx()
    sts.publish("one")
    sts.server.serve("enforce", MX_NAME)
    pl = await sts.postline()
    first = await pl.send(to=f"user@{DOMAIN}")
    await pl.wait_for_status(first["id"], ["delivered"])
    # The policy host breaks, the TXT id changes (a refresh is due) and the MX moves
    # to a host the cached policy does not allow.
    sts.server.failing = True
    sts.publish("two")
    await sts.make_mx("rogue.example.test", address="127.0.0.9")
    second = await pl.send(to=f"other@{DOMAIN}")
    detail = await deferred(pl, second["id"])
    assert (
        "rogue.example.test matches none of its mx patterns" in detail["recipients"][0]["response"]
    )

    async def error_noted() -> sts_store.StoredPolicy | None:
        async with pl.services.db.read() as conn:
            stored = await sts_store.get_policy(conn, DOMAIN)
        return stored if stored is not None and stored.last_error else None

    stored = await poll(error_noted, timeout=15, what="the failed refresh noted")
    assert stored.policy_id == "one" and stored.mode == "enforce"


async def test_a_policy_in_the_store_is_used_after_a_restart_without_fetching(
    sts: StsWorld,
) -> None:
    await sts.make_mx()
    sts.publish("one")
    sts.server.serve("enforce", MX_NAME)
    first = await sts.postline()
    sent = await first.send(to=f"user@{DOMAIN}")
    await first.wait_for_status(sent["id"], ["delivered"])
    await first.stop_engine()
    sts.server.failing = True
    # Another process on the same database, with nothing in memory: the stored policy.
    second = await sts.postline(database_url=first.settings.database_url, domains=("second.test",))
    again = await second.send(to=f"again@{DOMAIN}", **{"from": "sender@second.test"})
    detail = await second.wait_for_status(again["id"], ["delivered"])
    assert last_row(detail)["tls_policy"] == "mta-sts"
    assert len(sts.server.requests) == 1


async def test_a_redirect_is_not_followed_and_gives_no_policy(sts: StsWorld) -> None:
    await sts.make_mx("mail.elsewhere.test")
    sts.publish("one")
    sts.server.serve("enforce", MX_NAME)
    sts.server.status = 301
    sts.server.headers = {"Location": "https://127.0.0.1/evil"}
    pl = await sts.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert last_row(detail)["tls_policy"] == "opportunistic"
    assert len(sts.server.requests) == 1

    async def counted() -> list[dict[str, Any]]:
        return await _tls_days(pl, DOMAIN)

    (day,) = await poll(counted, timeout=15, what="the failed fetch counted")
    assert (day["policy_type"], day["failures"]) == (
        "no-policy-found",
        {"sts-policy-fetch-error": 1},
    )


async def test_a_domain_without_a_policy_is_looked_up_once_per_negative_ttl(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    pl = await postline_factory()
    for n in range(3):
        sent = await pl.send(to=f"user{n}@dest.test")
        await pl.wait_for_status(sent["id"], ["delivered"])
    assert len(fake_dns.queries_for("_mta-sts.dest.test", "TXT")) == 1


async def _tls_days(pl: PostlineUnderTest, domain: str) -> list[dict[str, Any]]:
    response = await pl.client.get(f"/v1/destinations/{domain}", headers=pl.auth())
    assert response.status_code == 200, response.text
    days: list[dict[str, Any]] = response.json()["tls"]["days"]
    return days


async def test_testing_mode_failures_are_counted_for_the_report(sts: StsWorld) -> None:
    await sts.make_mx(cert_name="imposter.test")
    sts.publish("one")
    sts.server.serve("testing", MX_NAME)
    pl = await sts.postline()
    sent = await pl.send(to=f"user@{DOMAIN}")
    await pl.wait_for_status(sent["id"], ["delivered"])

    async def counted() -> list[dict[str, Any]]:
        days = await _tls_days(pl, DOMAIN)
        return days if days and days[0]["failed"] else []

    (day,) = await poll(counted, timeout=15, what="the certificate failure counted")
    assert day["policy_type"] == "sts" and day["successful"] == 0
    assert day["failures"] == {"certificate-host-mismatch": 1}
    metrics = (await pl.client.get("/metrics", headers=pl.auth())).text
    assert 'postline_tls_sessions_total{policy_type="sts",result="certificate-host-mismatch"}' in (
        metrics
    )


async def test_a_daily_tls_report_is_posted_with_the_right_counts(
    sts: StsWorld, fake_dns: FakeDNS
) -> None:
    await sts.make_mx()
    sts.publish("one", ttl=60)
    sts.server.serve("enforce", MX_NAME)
    collector = PolicyServer(sts.ca.server_context(f"tlsrpt.{DOMAIN}"))
    async with collector:
        fake_dns.add_a(f"tlsrpt.{DOMAIN}", "127.0.0.1")
        fake_dns.add_txt(
            f"_smtp._tls.{DOMAIN}",
            f"v=TLSRPTv1; rua=https://tlsrpt.{DOMAIN}:{collector.port}/v1/tlsrpt",
        )
        pl = await sts.postline()
        for n in range(2):
            sent = await pl.send(to=f"user{n}@{DOMAIN}")
            await pl.wait_for_status(sent["id"], ["delivered"])
        await pl.services.engine.tls_counts.flush()
        reporter = pl.services.tls_reporter
        assert reporter is not None
        reporter.clock = lambda: utcnow() + timedelta(days=1)
        assert await reporter.send_due() == 1
        assert await reporter.send_due() == 0  # claimed once
        ((kind, body),) = collector.posted
    assert kind == "application/tlsrpt+gzip"
    report = json.loads(gzip.decompress(body))
    (policy,) = report["policies"]
    assert policy["policy"]["policy-type"] == "sts"
    assert policy["policy"]["policy-domain"] == DOMAIN
    assert "mode: enforce" in policy["policy"]["policy-string"]
    assert policy["summary"] == {
        "total-successful-session-count": 2,
        "total-failure-session-count": 0,
    }
    assert report["date-range"]["start-datetime"].startswith(utcnow().strftime("%Y-%m-%d"))
    days = await _tls_days(pl, DOMAIN)
    assert [(d["successful"], d["reported"]) for d in days] == [(2, True)]


async def test_a_mailto_report_goes_out_through_postlines_own_engine(
    sts: StsWorld, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    await sts.make_mx(address="127.0.0.8")
    sts.publish("one", ttl=60)
    sts.server.serve("enforce", "*.elsewhere.test")  # every attempt fails: a failure count
    fake_dns.add_txt(f"_smtp._tls.{DOMAIN}", "v=TLSRPTv1; rua=mailto:tls-reports@dest.test")
    pl = await sts.postline(tlsrpt_from="tlsrpt@example.test")
    sent = await pl.send(to=f"user@{DOMAIN}")
    await deferred(pl, sent["id"])
    await pl.services.engine.tls_counts.flush()
    reporter = pl.services.tls_reporter
    assert reporter is not None
    reporter.clock = lambda: utcnow() + timedelta(days=1)
    assert await reporter.send_due() == 1
    (mail,) = await fake_mx.wait_for_messages(1)
    assert mail.rcpt_tos == ["tls-reports@dest.test"]
    message = mail.message
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    assert message["TLS-Report-Domain"] == DOMAIN
    (attachment,) = [p for p in message.iter_attachments()]
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    report = json.loads(gzip.decompress(payload))
    (policy,) = report["policies"]
    assert policy["summary"]["total-failure-session-count"] >= 1
    assert policy["failure-details"][0]["result-type"] == "validation-failure"
