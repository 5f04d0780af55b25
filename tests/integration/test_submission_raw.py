"""The submission port against what no well-behaved client sends: raw socket sessions.

Every answer is an SMTP reply with a proper code (and an enhanced one), the
session survives what it should survive, and the per-connection limits (bad
commands, recipients, time) end what they should end. Clear-text AUTH from
loopback is allowed here (the default), so the sessions need no TLS.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from tests.harness.postline import PostlineUnderTest
from tests.harness.submission import RawSession, client_context, running_submission

Factory = Callable[..., Awaitable[PostlineUnderTest]]

MESSAGE = b"From: app@example.test\r\nTo: alice@dest.test\r\nSubject: Raw\r\n\r\nHello\r\n.\r\n"


def plain(key: str) -> str:
    return base64.b64encode(b"\0anything\0" + key.encode()).decode()


@asynccontextmanager
async def session_with(
    postline_factory: Factory, *, login: bool = True, **settings: object
) -> AsyncIterator[tuple[PostlineUnderTest, RawSession]]:
    pl = await postline_factory(engine=False, **settings)
    async with running_submission(pl) as listening:
        raw = await RawSession.open(listening.starttls)
        try:
            assert (await raw.command("EHLO raw.example.test")).startswith("250-")
            if login:
                reply = await raw.command(f"AUTH PLAIN {plain(pl.admin_key)}")
                assert reply.startswith("235 2.7.0"), reply
            yield pl, raw
        finally:
            await raw.close()


async def test_a_bare_lf_in_the_message_is_refused_and_nothing_is_accepted(
    postline_factory: Factory,
) -> None:
    async with session_with(postline_factory) as (pl, raw):
        assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("250 2.1.0")
        assert (await raw.command("RCPT TO:<alice@dest.test>")).startswith("250 2.1.5")
        assert (await raw.command("DATA")).startswith("354")
        # A bare LF, and a bare-LF "end of data" that must not end it (SMTP smuggling).
        reply = await raw.command(
            b"From: app@example.test\r\nSubject: x\r\n\r\nline one\nline two\n.\nMAIL FROM:<x>\r\n."
        )
        assert reply.startswith("550 5.6.0 Bare LF"), reply
        assert (await raw.command("NOOP")).startswith("250")
        listed = await pl.client.get("/v1/emails", headers=pl.auth())
        assert listed.json()["data"] == []


async def test_a_10_kb_command_line_is_500_556_and_the_session_goes_on(
    postline_factory: Factory,
) -> None:
    async with session_with(postline_factory) as (_, raw):
        reply = await raw.command("MAIL FROM:<" + "a" * 10_240 + "@example.test>")
        assert reply.startswith("500 5.5.6"), reply
        assert (await raw.command("NOOP")).startswith("250 2.0.0")
        assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("250 2.1.0")


async def test_a_10_kb_line_in_the_message_is_refused_after_the_data(
    postline_factory: Factory,
) -> None:
    async with session_with(postline_factory) as (_, raw):
        await raw.command("MAIL FROM:<app@example.test>")
        await raw.command("RCPT TO:<alice@dest.test>")
        assert (await raw.command("DATA")).startswith("354")
        reply = await raw.command(b"Subject: long\r\n\r\n" + b"x" * 10_240 + b"\r\n.")
        assert reply.startswith("500 5.5.6"), reply
        assert (await raw.command("RSET")).startswith("250")


async def test_auth_with_bad_base64_is_501_552(postline_factory: Factory) -> None:
    async with session_with(postline_factory, login=False) as (_, raw):
        assert (await raw.command("AUTH PLAIN not*base64!")).startswith("501 5.5.2")
        assert (await raw.command("AUTH LOGIN")).startswith("334 ")
        assert (await raw.command("%%%")).startswith("501 5.5.2")
        # Still not authenticated: MAIL needs it.
        assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("530 5.7.0")


async def test_commands_out_of_order_are_503_551(postline_factory: Factory) -> None:
    async with session_with(postline_factory) as (_, raw):
        assert (await raw.command("RCPT TO:<alice@dest.test>")).startswith("503 5.5.1")
        assert (await raw.command("DATA")).startswith("503 5.5.1")
        assert (await raw.command("MAIL FROM:<app@example.test>")).startswith("250")
        assert (await raw.command("DATA")).startswith("503 5.5.1")
        assert (await raw.command("RCPT TO:<alice@dest.test>")).startswith("250")
        assert (await raw.command("DATA")).startswith("354")
        assert (await raw.command(MESSAGE[:-2])).startswith("250 2.0.0 OK: queued as em_")


async def test_1000_pipelined_recipients_meet_the_recipient_limit(
    postline_factory: Factory,
) -> None:
    async with session_with(postline_factory, submission_max_recipients=50) as (pl, raw):
        commands = b"MAIL FROM:<app@example.test>\r\n" + b"".join(
            f"RCPT TO:<user{n}@dest.test>\r\n".encode() for n in range(1000)
        )
        await raw.send(commands + b"DATA\r\n")
        assert (await raw.reply()).startswith("250 2.1.0")
        replies = [await raw.reply() for _ in range(1000)]
        assert all(r.startswith("250 2.1.5") for r in replies[:50]), replies[:50]
        assert all(r.startswith("452 4.5.3") for r in replies[50:]), set(replies[50:])
        assert (await raw.reply()).startswith("354")
        reply = await raw.command(MESSAGE[:-2])
        assert reply.startswith("250 2.0.0"), reply
        email_id = reply.rsplit(" ", 1)[1]
        detail = await pl.email(email_id)
        assert len(detail["recipients"]) == 50
        assert {r["status"] for r in detail["recipients"]} == {"queued"}


async def test_a_stalled_client_is_told_421_and_disconnected_at_the_idle_timeout(
    postline_factory: Factory,
) -> None:
    # No AUTH first: a key check slowed by a loaded machine must not count as the silence.
    async with session_with(postline_factory, login=False, submission_idle_timeout=1.0) as (_, raw):
        assert (await raw.command("NOOP")).startswith("250")
        # Then nothing: the server speaks first, and closes.
        reply = await raw.reply()
        assert reply.startswith("421 4.4.2"), reply
        assert await raw.closed()


async def test_a_session_past_its_maximum_length_is_closed(postline_factory: Factory) -> None:
    async with session_with(postline_factory, login=False, submission_max_session_seconds=2.0) as (
        _,
        raw,
    ):
        reply = await raw.reply()  # busy or not, its time is up
        assert reply.startswith("421 4.4.2 Session time limit"), reply
        assert await raw.closed()


async def test_too_many_errors_close_the_connection(postline_factory: Factory) -> None:
    async with session_with(postline_factory, login=False, submission_max_errors=3) as (_, raw):
        assert (await raw.command("AUTH PLAIN " + plain("pl_wrong"))).startswith("535 5.7.8")
        assert (await raw.command("RCPT TO:<a@dest.test>")).startswith("503")
        third = await raw.command("AUTH PLAIN " + plain("pl_wrong_again"))
        assert third.startswith("535 5.7.8")
        assert (await raw.reply()).startswith("421 4.7.0 Too many errors")
        assert await raw.closed()


async def test_commands_sent_with_starttls_are_not_run_after_it(postline_factory: Factory) -> None:
    """The STARTTLS command injection (CVE-2011-0411 in Postfix): plain text pipelined
    after STARTTLS must be dropped, not read as if it had come over TLS."""
    async with session_with(postline_factory, login=False) as (pl, raw):
        await raw.send(b"STARTTLS\r\nMAIL FROM:<injected@example.test>\r\n")
        assert (await raw.reply()).startswith("220")
        pem = pl.settings.data_dir / "smtp-tls.pem"
        await raw.writer.start_tls(client_context(pem), server_hostname="127.0.0.1")
        first = await raw.command("EHLO raw.example.test")
        assert first.startswith("250-"), first  # the EHLO's answer, not the MAIL's
        assert "250-AUTH LOGIN PLAIN" in first
        assert (await raw.command("NOOP")).startswith("250 2.0.0")  # nothing else queued


async def test_a_message_still_arriving_outlives_the_idle_timeout(
    postline_factory: Factory,
) -> None:
    """Idle means silent: a message sent slowly, but steadily, is not cut off."""
    # Gaps of 0.3 s against a 3 s timeout: a loaded machine has 2.7 s of slack per gap.
    async with session_with(postline_factory, submission_idle_timeout=3.0) as (_, raw):
        await raw.command("MAIL FROM:<app@example.test>")
        await raw.command("RCPT TO:<alice@dest.test>")
        assert (await raw.command("DATA")).startswith("354")
        await raw.send(b"From: app@example.test\r\nSubject: slow\r\n\r\n")
        for n in range(14):  # 14 x 0.3 s: more than the timeout in all, never silent for it
            await asyncio.sleep(0.3)  # the client's pace is what is tested, not a wait
            await raw.send(f"line {n}\r\n".encode())
        reply = await raw.command(".")
        assert reply.startswith("250 2.0.0"), reply
