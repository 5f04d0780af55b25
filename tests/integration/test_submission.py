"""The SMTP submission port with a real client: Python's smtplib, STARTTLS and AUTH.

Mail goes in through the real listeners (``postline.submission``), is accepted by
the same acceptor as the API's, delivered over real SMTP to a FakeMX and read
back through the real API. The loopback exemption for clear-text AUTH is off in
these tests unless a test is about it, so STARTTLS is what they exercise.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import threading
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import event

from postline.domains import create_domain
from postline.keys import create_key
from tests.harness import FakeDNS, FakeMX
from tests.harness.fake_mx import FakeMXFactory
from tests.harness.postline import PostlineUnderTest
from tests.harness.submission import running_submission, smtplib_submit

Factory = Callable[..., Awaitable[PostlineUnderTest]]
EMAIL_ID = re.compile(r"queued as (em_\w+)")


def message(
    sender: str = "App <app@example.test>",
    to: str = "alice@dest.test",
    cc: str | None = None,
    message_id: str | None = "<order-42@app.example.test>",
    body: str = "Your order shipped.\r\n",
) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = "Order shipped"
    if message_id:
        msg["Message-ID"] = message_id
    msg["X-App"] = "shop"
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def email_id_of(reply: str) -> str:
    """The email id the one 250 of a message names."""
    found = EMAIL_ID.search(reply)
    assert found is not None, reply
    return found.group(1)


def error_text(error: smtplib.SMTPResponseException) -> str:
    text = error.smtp_error
    return text.decode() if isinstance(text, bytes) else text


async def submit(listening: Any, key: str, data: bytes, **kwargs: Any) -> tuple[int, str]:
    kwargs.setdefault("sender", "app@example.test")
    kwargs.setdefault("recipients", ["alice@dest.test"])
    kwargs.setdefault("cert_file", listening.tls.cert_file)
    address = kwargs.pop("address", listening.starttls)
    return await asyncio.to_thread(smtplib_submit, address, key, data, **kwargs)


async def test_starttls_and_an_api_key_send_a_tracked_email_to_delivery(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(submission_loopback_plaintext_auth=False)
    data = message(cc="carol@dest.test")
    async with running_submission(pl) as listening:
        assert listening.tls.self_signed
        code, reply = await submit(
            listening,
            pl.admin_key,
            data,
            recipients=["alice@dest.test", "carol@dest.test", "bob@dest.test"],
        )
        assert code == 250 and reply.startswith("2.0.0 "), reply
        email_id = email_id_of(reply)
        detail = await pl.wait_for_status(email_id, ["delivered"])
    assert detail["source"] == "smtp"
    assert detail["message_id"] == "<order-42@app.example.test>"
    assert detail["subject"] == "Order shipped"
    kinds = {r["address"]: (r["kind"], r["status"]) for r in detail["recipients"]}
    assert kinds == {
        "alice@dest.test": ("to", "delivered"),
        "carol@dest.test": ("cc", "delivered"),
        "bob@dest.test": ("bcc", "delivered"),
    }
    listed = await pl.client.get("/v1/emails", params={"source": "smtp"}, headers=pl.auth())
    assert [e["id"] for e in listed.json()["data"]] == [email_id]
    (received,) = await fake_mx.wait_for_messages(1)
    assert sorted(received.rcpt_tos) == ["alice@dest.test", "bob@dest.test", "carol@dest.test"]
    # The VERP return path, as on API mail: late bounces come back to Postline.
    assert received.mail_from.startswith(f"bounces+{email_id}-")
    assert received.mail_from.endswith("@bounces.example.test")
    # As received, apart from the fields Postline puts in front: DKIM and nothing else
    # (the message has its Message-ID and a Date is added only when missing).
    head, _, rest = received.data.partition(data[:40])
    assert rest and data[:40] + rest == data, "the client's bytes are kept as sent"
    assert head.startswith(b"DKIM-Signature:") and b"d=example.test" in head
    assert b"Date: " in head  # it had none


async def test_a_message_without_message_id_gets_one_and_the_api_shows_it(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(submission_loopback_plaintext_auth=False)
    async with running_submission(pl) as listening:
        _, reply = await submit(listening, pl.admin_key, message(message_id=None))
    email_id = email_id_of(reply)
    detail = await pl.wait_for_status(email_id, ["delivered"])
    (received,) = await fake_mx.wait_for_messages(1)
    assert received.message["Message-ID"] == detail["message_id"]
    assert detail["message_id"] == f"<{email_id}@postline.example.test>"


async def test_auth_before_starttls_is_refused_530_and_not_advertised(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False, submission_loopback_plaintext_auth=False)
    async with running_submission(pl) as listening:

        def session() -> tuple[dict[str, str], tuple[int, bytes], dict[str, str]]:
            with smtplib.SMTP(*listening.starttls, timeout=30) as client:
                client.ehlo("app.example.test")
                before = dict(client.esmtp_features)
                refused = client.docmd("AUTH", "PLAIN")
                client.starttls(context=_context(listening))
                client.ehlo("app.example.test")
                return before, refused, dict(client.esmtp_features)

        before, refused, after = await asyncio.to_thread(session)
    assert refused[0] == 530 and refused[1].startswith(b"5.7.0"), refused
    for extension in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
        assert extension in before and extension in after, (extension, before, after)
    assert "starttls" in before and "starttls" not in after
    assert "auth" not in before
    assert set(after["auth"].split()) == {"PLAIN", "LOGIN"}
    assert before["size"] == str(pl.settings.max_message_bytes)


def _context(listening: Any) -> Any:
    from tests.harness.submission import client_context

    return client_context(listening.tls.cert_file)


async def test_clear_text_auth_from_loopback_when_the_exemption_is_on(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False)  # the default: on
    async with running_submission(pl) as listening:
        code, reply = await submit(listening, pl.admin_key, message(), starttls=False)
    assert code == 250, reply


async def test_auth_login_and_implicit_tls(postline_factory: Factory) -> None:
    pl = await postline_factory(
        engine=False,
        submission_loopback_plaintext_auth=False,
        submission_tls_addr="127.0.0.1:0",
    )
    async with running_submission(pl) as listening:
        assert listening.implicit_tls is not None
        code, reply = await submit(
            listening,
            pl.admin_key,
            message(),
            address=listening.implicit_tls,
            starttls=False,
            implicit_tls=True,
            mechanism="LOGIN",
        )
    assert code == 250, reply


async def test_a_wrong_key_is_535(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False, submission_loopback_plaintext_auth=False)
    async with running_submission(pl) as listening:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            await submit(listening, "pl_not_a_real_key", message())
    assert refused.value.smtp_code == 535
    assert error_text(refused.value).startswith("5.7.8")


async def test_a_key_without_the_send_scope_is_refused_at_auth(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False, submission_loopback_plaintext_auth=False)
    reader = await create_key(pl.services.db, "reader", scopes=["read"])
    sender = await create_key(pl.services.db, "sender", scopes=["send"])
    async with running_submission(pl) as listening:
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            await submit(listening, reader.key, message())
        code, reply = await submit(listening, sender.key, message())
    assert refused.value.smtp_code == 535
    assert code == 250 and email_id_of(reply)


async def test_a_scoped_key_may_only_send_from_its_domain(postline_factory: Factory) -> None:
    pl = await postline_factory(
        engine=False,
        domains=("example.test", "other-sender.test"),
        submission_loopback_plaintext_auth=False,
    )
    scoped = await create_key(pl.services.db, "app", "example.test")
    async with running_submission(pl) as listening:
        with pytest.raises(smtplib.SMTPSenderRefused) as envelope:
            await submit(listening, scoped.key, message(), sender="app@other-sender.test")
        with pytest.raises(smtplib.SMTPDataError) as header:
            await submit(listening, scoped.key, message(sender="app@other-sender.test"))
        ok, reply = await submit(listening, scoped.key, message())
    assert envelope.value.smtp_code == 550
    assert error_text(envelope.value).startswith("5.7.1")
    assert "envelope sender's domain other-sender.test" in error_text(envelope.value)
    assert header.value.smtp_code == 550
    assert error_text(header.value).startswith("5.7.1")
    assert "From header's domain other-sender.test" in error_text(header.value)
    assert ok == 250, reply


async def test_mail_without_auth_is_530(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    async with running_submission(pl) as listening:

        def session() -> tuple[int, bytes]:
            with smtplib.SMTP(*listening.starttls, timeout=30) as client:
                client.ehlo("app.example.test")
                return client.mail("app@example.test")

        code, text = await asyncio.to_thread(session)
    assert (code, text[:5]) == (530, b"5.7.0")


async def test_a_suppressed_recipient_is_suppressed_as_in_the_api(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory()
    added = await pl.client.post(
        "/v1/suppressions",
        json={"address": "gone@dest.test", "domain": "example.test"},
        headers=pl.auth(),
    )
    assert added.status_code == 201, added.text
    async with running_submission(pl) as listening:
        _, reply = await submit(
            listening, pl.admin_key, message(), recipients=["alice@dest.test", "gone@dest.test"]
        )
    email_id = email_id_of(reply)
    detail = await pl.wait_until_final(email_id)
    statuses = {r["address"]: r["status"] for r in detail["recipients"]}
    assert statuses == {"alice@dest.test": "delivered", "gone@dest.test": "suppressed"}
    (received,) = await fake_mx.wait_for_messages(1)
    assert received.rcpt_tos == ["alice@dest.test"]


async def test_size_limit_is_552_534(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False, max_message_bytes=4000)
    async with running_submission(pl) as listening:

        def session() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            with smtplib.SMTP(*listening.starttls, timeout=30) as client:
                client.ehlo("app.example.test")
                client.login("app", pl.admin_key)
                declared = client.mail("app@example.test", ["SIZE=9000"])
                client.rset()
                client.mail("app@example.test")
                client.rcpt("alice@dest.test")
                big = message(body=("x" * 70 + "\r\n") * 80)
                return declared, client.data(big)

        declared, sent = await asyncio.to_thread(session)
    assert (declared[0], declared[1][:5]) == (552, b"5.3.4")
    assert (sent[0], sent[1][:5]) == (552, b"5.3.4")


async def test_the_per_key_rate_limit_is_451_471_with_a_retry_hint(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False, rate_limit_per_second=0.01, rate_limit_burst=1)
    async with running_submission(pl) as listening:
        first, _ = await submit(listening, pl.admin_key, message())
        with pytest.raises(smtplib.SMTPSenderRefused) as refused:
            await submit(listening, pl.admin_key, message())
    assert first == 250
    assert refused.value.smtp_code == 451
    error = error_text(refused.value)
    assert error.startswith("4.7.1") and re.search(r"try again in \d+ s", error), error


async def test_a_bounce_of_submitted_mail_is_reported_to_the_from_address(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, fake_mx_factory: FakeMXFactory
) -> None:
    """Submitted mail goes out with the VERP return path, so the DSN cannot go to the
    envelope: it goes to the From address, as for API mail (and never to Postline's own
    return path)."""
    (sender_mx,) = await fake_mx_factory.group("127.0.0.7", port=fake_mx.port)
    fake_dns.add_mx("example.test", (10, "mx.example.test"))
    fake_dns.add_a("mx.example.test", "127.0.0.7")
    pl = await postline_factory(bounce_notifications=True)
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 <gone@dest.test>: no such user")
    async with running_submission(pl) as listening:
        _, reply = await submit(
            listening,
            pl.admin_key,
            message(),
            sender="bounce-handler@example.test",
            recipients=["gone@dest.test"],
        )
    detail = await pl.wait_for_status(email_id_of(reply), ["bounced"])
    (dsn,) = await sender_mx.wait_for_messages(1)
    assert dsn.rcpt_tos == ["app@example.test"]
    assert [n["recipient"] for n in detail["notifications"]] == ["app@example.test"]


async def test_no_address_or_key_in_info_logs_of_a_submission(
    postline_factory: Factory, fake_mx: FakeMX, production_logging: pytest.LogCaptureFixture
) -> None:
    pl = await postline_factory(submission_loopback_plaintext_auth=False)
    scoped = await create_key(pl.services.db, "app", "example.test")
    async with running_submission(pl) as listening:
        _, reply = await submit(listening, scoped.key, message())
        with pytest.raises(smtplib.SMTPSenderRefused):
            await submit(listening, scoped.key, message(), sender="x@elsewhere.test")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            await submit(listening, "pl_wrong", message())
    await pl.wait_for_status(email_id_of(reply), ["delivered"])
    logged = "\n".join(r.getMessage() for r in production_logging.records)
    assert email_id_of(reply) in logged, "the acceptance is logged, by id"
    for secret in ("app@example.test", "alice@dest.test", "x@elsewhere.test", scoped.key):
        assert secret not in logged, secret


async def test_a_message_reads_its_sending_domain_once_outside_a_transaction(
    postline_factory: Factory,
) -> None:
    """MAIL's and DATA's checks of the sending domain ask the acceptor, whose lookups are
    shared with everyone's meanwhile and open no read transaction: with ten sessions
    submitting, those BEGINs and ROLLBACKs were 9% of the process's samples. And a
    message whose envelope sender and From header share a domain reads it once: MAIL
    reads it, DATA and the acceptor use that row."""
    pl = await postline_factory(engine=False)
    modes: list[str] = []

    def watch(
        _conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        if "FROM domains" in statement:
            modes.append(context.execution_options.get("sqlite_begin", "DEFERRED"))

    engine = pl.services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", watch)
    try:
        async with running_submission(pl) as listening:
            code, reply = await submit(listening, pl.admin_key, message(), starttls=False)
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    assert code == 250, reply
    assert modes == ["none"], modes  # once, by Database.lookup: no BEGIN, no ROLLBACK


async def test_a_sender_refused_for_an_unknown_domain_may_try_again_once_it_is_added(
    postline_factory: Factory,
) -> None:
    """The envelope keeps the sending domains it found, not the refusals: MAIL from a
    domain added since it was refused, in the same transaction, is taken."""
    pl = await postline_factory(engine=False)
    added, refused = threading.Event(), threading.Event()

    def session(address: tuple[str, int]) -> list[int]:
        codes = []
        with smtplib.SMTP(address[0], address[1], timeout=30) as client:
            client.ehlo("app.example.test")
            client.user, client.password = "anything", pl.admin_key
            client.auth("PLAIN", client.auth_plain)
            codes.append(client.mail("app@later.test")[0])
            refused.set()
            assert added.wait(30)
            codes.append(client.mail("app@later.test")[0])
        return codes

    async with running_submission(pl) as listening:
        codes = asyncio.create_task(asyncio.to_thread(session, listening.starttls))
        assert await asyncio.to_thread(refused.wait, 30)
        await create_domain(pl.services.db, "later.test")
        added.set()
        assert await codes == [550, 250]
