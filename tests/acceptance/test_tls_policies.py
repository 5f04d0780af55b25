"""``postline serve`` honouring destinations' MTA-STS and DANE, as an operator runs it.

At default settings but the lab ones (our DNS, the policy host's port, the test CA
in POSTLINE_TLS_CA_FILE, DNSSEC trusted from the loopback DNS): an MTA-STS
``enforce`` policy whose MX pattern does not match delivers nothing and says why;
a matching MX with a valid certificate delivers and names ``mta-sts``; a TLSA
record that does not match the MX's certificate defers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, Server
from tests.acceptance.test_serve import add_domain, delivery_env, only_recipient
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX
from tests.harness.policy_server import PolicyServer
from tests.harness.tls import ThrowawayCA

MX_NAME = "mx.sts.test"


async def _serve(install: Install, launch: Launcher, **env: str) -> tuple[Server, str]:
    server = await launch(install, "serve", "--no-sandbox", **env)
    await server.ready()
    key = await server.admin_key()
    await add_domain(server, key)
    return server, key


async def _deferred_row(server: Server, key: str, to: str) -> dict[str, Any]:
    """Send to ``to``; its timeline's last row once it is deferred."""
    sent = await server.send(key, to=to)
    detail = await server.wait_email(
        key,
        sent["id"],
        lambda d: only_recipient(d)["status"] == "deferred",
        what="a deferral",
    )
    row: dict[str, Any] = only_recipient(detail)["timeline"][-1]
    return row


async def test_mta_sts_enforce_and_dane_through_the_real_server(
    install: Install, launch: Launcher, fake_dns: FakeDNS, tmp_path: Path
) -> None:
    ca = ThrowawayCA.create(tmp_path)
    mx = FakeMX("127.0.0.8", 0, hostname=MX_NAME)
    mx.tls_context = ca.server_context(MX_NAME)
    policy = PolicyServer(ca.server_context("mta-sts.sts.test"))
    async with mx, policy:
        install.extra.update(delivery_env(fake_dns, mx))
        install.extra.update(
            POSTLINE_TLS_CA_FILE=str(ca.ca_file),
            POSTLINE_MTA_STS_PORT=str(policy.port),
            POSTLINE_DNSSEC="trust-local",
        )
        # sts.test: MTA-STS enforce, the MX named by the policy or not.
        fake_dns.add_mx("sts.test", (10, MX_NAME))
        fake_dns.add_a(MX_NAME, "127.0.0.8")
        fake_dns.add_a("mta-sts.sts.test", "127.0.0.1")
        fake_dns.add_txt("_mta-sts.sts.test", "v=STSv1; id=one;", ttl=0)
        policy.serve("enforce", "mail.elsewhere.test")
        server, key = await _serve(install, launch)

        row = await _deferred_row(server, key, "user@sts.test")
        assert "matches none of its mx patterns (mail.elsewhere.test)" in row["response"]
        assert row["tls_policy"] == "mta-sts"
        assert mx.received == []

        # The domain publishes a new policy naming its MX: the new id is fetched.
        policy.serve("enforce", "*.sts.test")
        fake_dns.remove("_mta-sts.sts.test")
        fake_dns.add_txt("_mta-sts.sts.test", "v=STSv1; id=two;", ttl=0)
        sent = await server.send(key, to="other@sts.test")
        delivered = await server.wait_status(key, sent["id"], "delivered", timeout=30)
        row = only_recipient(delivered)["timeline"][-1]
        assert (row["tls_policy"], row["tls_verified"]) == ("mta-sts", True), row
        assert all(m.tls for m in mx.received)

        # dane.test: a signed zone whose TLSA record matches no certificate.
        fake_dns.add_mx("dane.test", (10, "mx.dane.test"))
        fake_dns.add_a("mx.dane.test", "127.0.0.8")
        fake_dns.add_tlsa("_25._tcp.mx.dane.test", 3, 1, 1, b"\x00" * 32)
        fake_dns.sign("dane.test")
        before = len(mx.received)
        row = await _deferred_row(server, key, "user@dane.test")
        assert row["tls_policy"] == "dane"
        assert "matches none of its TLSA records" in row["response"]
        assert len(mx.received) == before
