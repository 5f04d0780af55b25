"""STARTTLS policies, SIZE and SMTPUTF8: what the client must not send, it never sends."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from postline.delivery.pool import SessionPool, SmtpSettings, close_session
from tests.harness import FakeDNS, FakeMX
from tests.harness.postline import Factory
from tests.harness.tls import ThrowawayCA

MakeMX = Callable[..., Awaitable[FakeMX]]


@pytest_asyncio.fixture
async def special_mx(fake_mx: FakeMX, fake_dns: FakeDNS) -> AsyncIterator[MakeMX]:
    """A FakeMX configured before it starts, for domain special.test, on fake_mx's port."""
    started: list[FakeMX] = []

    async def make(mx_name: str = "mx.special.test", **attributes: object) -> FakeMX:
        mx = FakeMX("127.0.0.8", fake_mx.port, hostname=mx_name)
        for name, value in attributes.items():
            setattr(mx, name, value)
        await mx.start()
        started.append(mx)
        fake_dns.add_mx("special.test", (10, mx_name))
        fake_dns.add_a(mx_name, "127.0.0.8")
        return mx

    yield make
    for mx in started:
        await mx.stop()


async def test_opportunistic_tls_upgrades_when_offered(
    postline_factory: Factory, special_mx: MakeMX, tmp_path: Path
) -> None:
    ca = ThrowawayCA.create(tmp_path)
    mx = await special_mx(tls_context=ca.server_context("mx.special.test"))
    pl = await postline_factory()
    sent = await pl.send(to="user@special.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert [m.tls for m in mx.received] == [True]
    row = detail["recipients"][0]["timeline"][-1]
    assert row["tls_policy"] == "opportunistic"
    assert row["tls_version"] in ("TLSv1.2", "TLSv1.3")
    assert row["tls_verified"] is False  # nobody asked: opportunistic TLS checks nothing


async def test_plaintext_delivery_says_so_on_the_timeline(
    postline_factory: Factory, special_mx: MakeMX
) -> None:
    await special_mx()  # no STARTTLS offered, no policy: plaintext as before
    pl = await postline_factory()
    sent = await pl.send(to="user@special.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    row = detail["recipients"][0]["timeline"][-1]
    assert (row["tls_policy"], row["tls_version"], row["tls_verified"]) == (
        "opportunistic",
        None,
        False,
    )


async def test_a_failed_starttls_under_require_is_deferred_never_sent_in_plaintext(
    postline_factory: Factory, special_mx: MakeMX, tmp_path: Path
) -> None:
    # STARTTLS is offered but the handshake fails (the server's context has no certificate).
    broken = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    mx = await special_mx(tls_context=broken)
    pl = await postline_factory(tls_policies={"special.test": "require"})
    sent = await pl.send(to="user@special.test")
    detail = await pl.wait_for(
        sent["id"], lambda d: d["recipients"][0]["status"] == "deferred", what="a deferral"
    )
    recipient = detail["recipients"][0]
    assert "STARTTLS with mx.special.test failed" in recipient["response"]
    assert recipient["timeline"][-1]["tls_policy"] == "configured"
    assert mx.received == []


async def test_require_never_falls_back_to_plaintext(
    postline_factory: Factory, special_mx: MakeMX
) -> None:
    mx = await special_mx()  # no STARTTLS offered
    pl = await postline_factory(tls_policies={"special.test": "require"})
    sent = await pl.send(to="user@special.test")
    detail = await pl.wait_for(
        sent["id"], lambda d: d["recipients"][0]["status"] == "deferred", what="a deferral"
    )
    assert "does not offer STARTTLS" in detail["recipients"][0]["response"]
    assert detail["recipients"][0]["timeline"][-1]["tls_policy"] == "configured"
    assert mx.received == []


async def test_verify_refuses_a_certificate_for_another_name_and_accepts_a_valid_one(
    postline_factory: Factory, special_mx: MakeMX, tmp_path: Path
) -> None:
    ca = ThrowawayCA.create(tmp_path)
    wrong = await special_mx(tls_context=ca.server_context("imposter.test"))
    pl = await postline_factory(
        tls_policies={"special.test": "verify"}, tls_ca_file=str(ca.ca_file)
    )
    sent = await pl.send(to="user@special.test")
    detail = await pl.wait_for(
        sent["id"], lambda d: d["recipients"][0]["status"] == "deferred", what="a deferral"
    )
    assert "CERTIFICATE_VERIFY_FAILED" in detail["recipients"][0]["response"].upper()
    assert wrong.received == []
    await wrong.stop()
    right = await special_mx(tls_context=ca.server_context("mx.special.test"))
    again = await pl.send(to="other@special.test")
    delivered = await pl.wait_for_status(again["id"], ["delivered"])
    assert delivered["recipients"][0]["timeline"][-1]["tls_verified"] is True
    # The first email may be retried to the right MX meanwhile: everything there is TLS.
    assert ["other@special.test"] in [m.rcpt_tos for m in right.received]
    assert all(m.tls for m in right.received)


async def test_a_message_over_the_advertised_size_bounces_without_data(
    postline_factory: Factory, special_mx: MakeMX
) -> None:
    mx = await special_mx(size_limit=2000)
    pl = await postline_factory()
    sent = await pl.send(to="user@special.test", text="x" * 5000)
    detail = await pl.wait_for_status(sent["id"], ["bounced"])
    recipient = detail["recipients"][0]
    assert recipient["enhanced_code"] == "5.3.4"
    assert recipient["bounce_type"] == "soft"
    assert mx.received == [] and mx.rejected == []


async def test_utf8_addresses_need_smtputf8(postline_factory: Factory, special_mx: MakeMX) -> None:
    with_utf8 = await special_mx()
    pl = await postline_factory()
    sent = await pl.send(to="jörg@special.test")
    await pl.wait_for_status(sent["id"], ["delivered"])
    assert with_utf8.received[0].rcpt_tos == ["jörg@special.test"]
    assert "SMTPUTF8" in with_utf8.received[0].mail_options
    await with_utf8.stop()
    without = await special_mx(smtputf8=False)
    refused = await pl.send(to="zoë@special.test")
    detail = await pl.wait_for_status(refused["id"], ["bounced"])
    assert detail["recipients"][0]["enhanced_code"] == "5.6.7"
    assert without.received == []


async def test_tls_sessions_share_one_context_each_kind(
    special_mx: MakeMX, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the system's trust anchors costs 22 ms of CPU: once per settings, not
    once per STARTTLS (aiosmtplib builds one for each session it gets no context for)."""
    ca = ThrowawayCA.create(tmp_path)
    mx = await special_mx(tls_context=ca.server_context("mx.special.test"))
    built: list[ssl.Purpose] = []
    real = ssl.create_default_context

    def counted(purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, **kwargs: Any) -> ssl.SSLContext:
        built.append(purpose)
        return real(purpose, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counted)
    pool = SessionPool(SmtpSettings("client.test", connect_timeout=5, command_timeout=5))
    for _ in range(3):
        session = await pool.session("127.0.0.8", mx.port, mx_name="mx.special.test", fresh=True)
        assert session.tls.version in ("TLSv1.2", "TLSv1.3")
        await close_session(session.client)
    assert built == [ssl.Purpose.SERVER_AUTH]
