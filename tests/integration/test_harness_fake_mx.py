"""Self-tests of FakeMX, driven by a real SMTP client (aiosmtplib)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiosmtplib
import pytest

from tests.harness import FakeMX, FakeMXFactory

SENDER = "sender@origin.test"

MESSAGE = (
    b"From: Sender <sender@origin.test>\r\n"
    b"To: Alice <alice@dest.test>\r\n"
    b"Subject: Hello from the harness\r\n"
    b"Message-ID: <selftest-1@origin.test>\r\n"
    b"X-Postline-Test: yes\r\n"
    b"\r\n"
    b"Line one.\r\n"
    b"Line two.\r\n"
)


def client(mx: FakeMX, timeout: float = 5.0) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname=mx.host,
        port=mx.port,
        timeout=timeout,
        start_tls=False,
        local_hostname="client.test",
    )


async def send(
    mx: FakeMX,
    rcpts: Sequence[str],
    *,
    sender: str = SENDER,
    data: bytes = MESSAGE,
    timeout: float = 5.0,
) -> None:
    smtp = client(mx, timeout)
    await smtp.connect()
    try:
        await smtp.ehlo()
        await smtp.mail(sender)
        for rcpt in rcpts:
            await smtp.rcpt(rcpt)
        await smtp.data(data)
        await smtp.quit()
    finally:
        smtp.close()


async def test_default_accept_records_message(fake_mx: FakeMX) -> None:
    await send(fake_mx, ["alice@dest.test", "Bob@Dest.test"])

    (received,) = await fake_mx.wait_for_messages(1)
    assert received.mail_from == SENDER
    assert received.rcpt_tos == ["alice@dest.test", "Bob@Dest.test"]
    assert received.data == MESSAGE
    assert received.peer.startswith("127.0.0.1:")
    assert received.helo == "client.test"
    assert received.session == 1
    msg = received.message
    assert msg["Subject"] == "Hello from the harness"
    assert msg["Message-ID"] == "<selftest-1@origin.test>"
    assert msg["X-Postline-Test"] == "yes"
    assert msg.get_content() == "Line one.\nLine two.\n"
    assert fake_mx.connections == 1
    assert fake_mx.messages_for("BOB@dest.TEST") == [received]
    assert fake_mx.messages_for("nobody@dest.test") == []


async def test_per_recipient_reject(fake_mx: FakeMX) -> None:
    fake_mx.on_rcpt("Unknown@Dest.test", "550 5.1.1 user unknown")
    smtp = client(fake_mx)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.mail(SENDER)
    await smtp.rcpt("alice@dest.test")
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await smtp.rcpt("unknown@dest.test")
    assert refused.value.code == 550
    assert "5.1.1 user unknown" in refused.value.message
    await smtp.data(MESSAGE)
    await smtp.quit()

    (received,) = await fake_mx.wait_for_messages(1)
    assert received.rcpt_tos == ["alice@dest.test"]
    assert fake_mx.messages_for("unknown@dest.test") == []


async def test_tempfail_then_accept_across_sessions(fake_mx: FakeMX) -> None:
    rcpt = "grey@dest.test"
    fake_mx.on_rcpt(rcpt, "451 4.3.0 try later", "250 2.1.5 OK")

    smtp = client(fake_mx)
    await smtp.connect()
    await smtp.ehlo()
    await smtp.mail(SENDER)
    with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
        await smtp.rcpt(rcpt)
    assert refused.value.code == 451
    await smtp.quit()
    assert fake_mx.received == []

    await send(fake_mx, [rcpt])  # second session: accepted
    await send(fake_mx, [rcpt])  # the last programmed reply repeats
    received = await fake_mx.wait_for_messages(2)
    assert [r.rcpt_tos for r in received] == [[rcpt], [rcpt]]
    assert [r.session for r in received] == [2, 3]
    assert fake_mx.connections == 3


async def test_mail_and_data_replies(fake_mx: FakeMX) -> None:
    fake_mx.on_mail("451 4.7.1 greylisted", "250 2.1.0 OK")
    fake_mx.on_data("554 5.7.1 looks like spam", "250 2.0.0 queued as X")

    smtp = client(fake_mx)
    await smtp.connect()
    await smtp.ehlo()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as sender_refused:
        await smtp.mail(SENDER)
    assert sender_refused.value.code == 451
    await smtp.mail(SENDER)
    await smtp.rcpt("alice@dest.test")
    with pytest.raises(aiosmtplib.SMTPDataError) as data_error:
        await smtp.data(MESSAGE)
    assert data_error.value.code == 554
    await smtp.mail(SENDER)
    await smtp.rcpt("alice@dest.test")
    response = await smtp.data(MESSAGE)
    assert response.message == "2.0.0 queued as X"
    await smtp.quit()

    assert len(await fake_mx.wait_for_messages(1)) == 1
    assert len(fake_mx.rejected) == 1
    assert fake_mx.rejected[0].rcpt_tos == ["alice@dest.test"]


async def test_greeting_override(fake_mx: FakeMX) -> None:
    fake_mx.on_greeting("421 4.3.2 busy, come back later")
    with pytest.raises(aiosmtplib.SMTPConnectResponseError) as exc_info:
        await client(fake_mx).connect()
    assert exc_info.value.code == 421

    fake_mx.clear()
    await send(fake_mx, ["alice@dest.test"])
    await fake_mx.wait_for_messages(1)


async def test_stall_makes_client_time_out_and_stop_does_not_hang() -> None:
    mx = FakeMX()
    await mx.start()
    try:
        mx.stall("rcpt", 2.0)
        smtp = client(mx, timeout=0.5)
        await smtp.connect()
        await smtp.ehlo()
        await smtp.mail(SENDER)
        # The client's timeout, not the end of the stall: that would answer the RCPT.
        with pytest.raises(aiosmtplib.SMTPTimeoutError):
            await smtp.rcpt("alice@dest.test")
        smtp.close()

        # A second client is left stuck in a stalled RCPT while the server stops.
        stuck = client(mx, timeout=5.0)
        await stuck.connect()
        await stuck.ehlo()
        await stuck.mail(SENDER)
        pending = asyncio.ensure_future(stuck.rcpt("bob@dest.test"))
        await mx.wait_for_connections(2)
    finally:
        await asyncio.wait_for(mx.stop(), timeout=30)  # a hang, not a speed, fails this
    # Cut off by the stop, not answered after the stall: stop did not wait for it.
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await asyncio.wait_for(pending, timeout=2.0)
    stuck.close()
    assert mx.received == []


async def test_drop_mid_data(fake_mx: FakeMX) -> None:
    fake_mx.drop_mid_data()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await send(fake_mx, ["alice@dest.test"])
    assert fake_mx.received == []
    assert len(fake_mx.dropped) == 1
    assert fake_mx.dropped[0].data == MESSAGE

    await send(fake_mx, ["alice@dest.test"])  # only the next transaction was dropped
    (received,) = await fake_mx.wait_for_messages(1)
    assert received.session == 2


async def test_two_servers_on_two_ips_with_the_same_port() -> None:
    first = FakeMX("127.0.0.2")
    await first.start()
    second = FakeMX("127.0.0.3", first.port, hostname="mx2.test")
    await second.start()
    try:
        assert second.port == first.port
        second.on_rcpt("alice@dest.test", "550 5.7.1 not here")
        await send(first, ["alice@dest.test"])
        with pytest.raises(aiosmtplib.SMTPRecipientRefused):
            await send(second, ["alice@dest.test"])
        await send(second, ["bob@dest.test"])
        (on_first,) = await first.wait_for_messages(1)
        (on_second,) = await second.wait_for_messages(1)
        assert on_first.rcpt_tos == ["alice@dest.test"]
        assert on_second.rcpt_tos == ["bob@dest.test"]
        assert (first.connections, second.connections) == (1, 2)
    finally:
        await first.stop()
        await second.stop()


async def test_factory_group_shares_one_port(fake_mx_factory: FakeMXFactory) -> None:
    mx_a, mx_b = await fake_mx_factory.group("127.0.0.2", "127.0.0.3")
    assert mx_a.port == mx_b.port != 0
    assert (mx_a.host, mx_b.host) == ("127.0.0.2", "127.0.0.3")
    await send(mx_b, ["alice@dest.test"])
    await mx_b.wait_for_messages(1)
    assert mx_a.received == []


async def test_smtputf8_8bitmime_and_dot_stuffing(fake_mx: FakeMX) -> None:
    sender = "jörg@absender.test"
    rcpt = "ñandú@dest.test"
    body = (
        "From: Jörg <jörg@absender.test>\r\n"
        "To: ñandú@dest.test\r\n"
        "Subject: Grüße\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Schöne Grüße ✓\r\n"
        ".leading dot survives\r\n"
        "..two dots too\r\n"
    ).encode()
    smtp = client(fake_mx)
    await smtp.connect()
    await smtp.ehlo()
    assert smtp.supports_extension("smtputf8")
    assert smtp.supports_extension("8bitmime")
    await smtp.mail(sender, options=["SMTPUTF8", "BODY=8BITMIME"], encoding="utf-8")
    await smtp.rcpt(rcpt, encoding="utf-8")
    await smtp.data(body)
    await smtp.quit()

    (received,) = await fake_mx.wait_for_messages(1)
    assert received.mail_from == sender
    assert received.rcpt_tos == [rcpt]
    assert received.data == body
    assert received.mail_options == ["SMTPUTF8", "BODY=8BITMIME"]
    assert received.message["Subject"] == "Grüße"


async def test_null_sender_and_large_message(fake_mx: FakeMX) -> None:
    smtp = client(fake_mx)
    await smtp.connect()
    await smtp.ehlo()
    assert int(smtp.esmtp_extensions["size"]) >= 50 * 1024 * 1024
    await smtp.quit()

    big = MESSAGE + (b"x" * 998 + b"\r\n") * 4_000  # ~4 MB
    await send(fake_mx, ["alice@dest.test"], sender="", data=big, timeout=30.0)
    (received,) = await fake_mx.wait_for_messages(1)
    assert received.mail_from == "<>"
    assert received.data == big


async def test_wait_for_messages_times_out_with_clear_message(fake_mx: FakeMX) -> None:
    await send(fake_mx, ["alice@dest.test"])
    with pytest.raises(AssertionError, match=r"timed out after 0.2s waiting for at least 2"):
        await fake_mx.wait_for_messages(2, timeout=0.2)


async def test_clear_forgets_programming_but_keeps_received(fake_mx: FakeMX) -> None:
    await send(fake_mx, ["alice@dest.test"])
    fake_mx.on_rcpt("alice@dest.test", "550 5.1.1 gone")
    fake_mx.on_mail("421 4.3.0 closing")
    fake_mx.on_data("452 4.3.1 full")
    fake_mx.stall("mail", 5.0)
    fake_mx.drop_mid_data(3)
    fake_mx.clear()
    await send(fake_mx, ["alice@dest.test"])
    assert len(await fake_mx.wait_for_messages(2)) == 2


def test_programming_validates_replies() -> None:
    mx = FakeMX()
    with pytest.raises(ValueError, match="not an SMTP reply"):
        mx.on_rcpt("a@b.test", "user unknown")
    with pytest.raises(ValueError, match="at least one reply"):
        mx.on_data()
    with pytest.raises(ValueError, match="unknown stage"):
        mx.stall("quit", 1.0)  # type: ignore[arg-type]
