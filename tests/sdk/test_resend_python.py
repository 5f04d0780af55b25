"""The official ``resend`` Python SDK, pointed at a running ``postline serve``.

Code written for Resend moves by changing the SDK's base URL (``RESEND_API_URL``, read
into ``resend.api_url``) and its key. These tests use the SDK exactly as its users do,
synchronous ``requests`` and all (in a thread, so that the FakeMX in this test's event
loop keeps answering), against the real server process on a loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import pytest
import resend
import resend.exceptions

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, Server, clean_env
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX

T = TypeVar("T")

PDF = b"%PDF-1.4\n% not a real invoice\n\x00\x01\xfe\xff"


async def call(function: Callable[..., T], *args: Any) -> T:
    """The SDK blocks: run it in a thread so the FakeMX keeps being served."""
    return await asyncio.to_thread(function, *args)


def loose(answer: Any) -> dict[str, Any]:
    return cast(dict[str, Any], answer)


async def serve(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> tuple[Server, str]:
    """``postline serve`` delivering dest.test to the FakeMX; its admin key."""
    fake_dns.add_mx("dest.test", (10, "mx.dest.test"))
    fake_dns.add_a("mx.dest.test", fake_mx.host)
    install.extra.update(
        {
            "POSTLINE_DNS_NAMESERVERS": fake_dns.nameserver,
            "POSTLINE_DELIVERY_PORT": str(fake_mx.port),
        }
    )
    server = await launch(install, "serve", "--no-sandbox")
    key = await server.admin_key()
    await server.ready()
    return server, key


@pytest.fixture
def point(monkeypatch: pytest.MonkeyPatch) -> Callable[[Server, str], None]:
    """Set the SDK's base URL and key, as ``RESEND_API_URL`` and ``RESEND_API_KEY`` do."""

    def to(server: Server, key: str) -> None:
        monkeypatch.setattr(resend, "api_url", f"{server.install.base_url}/v1")
        monkeypatch.setattr(resend, "api_key", key)

    return to


async def test_send_with_every_parameter_reschedule_cancel_and_read_back(
    install: Install,
    launch: Launcher,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    point: Callable[[Server, str], None],
) -> None:
    server, key = await serve(install, launch, fake_dns, fake_mx)
    point(server, key)

    # Read as JSON: Postline's answers carry more than the SDK's TypedDicts name.
    domain = loose(await call(resend.Domains.create, {"name": "example.test"}))
    assert domain["name"] == "example.test" and domain["status"] == "not_started"
    assert {r["purpose"] for r in domain["records"]} >= {"dkim", "spf"}
    listed = await call(resend.Domains.list)
    assert listed["object"] == "list"
    assert [d["name"] for d in listed["data"]] == ["example.test"]

    params: resend.Emails.SendParams = {
        "from": "Sender <sender@example.test>",
        "to": ["a@dest.test", "b@dest.test"],
        "cc": ["c@dest.test"],
        "bcc": "hidden@dest.test",
        "reply_to": ["replies@example.test", "support@example.test"],
        "subject": "Your invoice",
        "html": "<p>Your invoice is attached.</p>",
        "text": "Your invoice is attached.",
        "headers": {"X-Campaign": "invoices"},
        "attachments": [
            {"filename": "invoice.pdf", "content": list(PDF)},
            {
                "filename": "notes.txt",
                "content": base64.b64encode(b"thanks").decode(),
                "content_type": "text/plain",
            },
        ],
        "tags": [{"name": "category", "value": "invoice"}, {"name": "plan", "value": "pro"}],
        "scheduled_at": "tomorrow at 9am",
    }
    sent = await call(resend.Emails.send, params)
    email = loose(await call(resend.Emails.get, sent["id"]))
    assert email["object"] == "email" and email["last_event"] == "scheduled"
    assert email["to"] == ["a@dest.test", "b@dest.test"]
    assert email["subject"] == "Your invoice"
    assert email["tags"] == {"category": "invoice", "plan": "pro"}
    assert email["scheduled_at"].endswith("T09:00:00.000Z")
    assert fake_mx.received == []

    # Rescheduled to a time already past: it goes now.
    moved = await call(
        resend.Emails.update, {"id": sent["id"], "scheduled_at": "2020-01-01T00:00:00.000Z"}
    )
    assert moved["object"] == "email" and moved["id"] == sent["id"]
    [received] = await fake_mx.wait_for_messages(1, timeout=30)
    assert sorted(received.rcpt_tos) == [
        "a@dest.test",
        "b@dest.test",
        "c@dest.test",
        "hidden@dest.test",
    ]
    message = received.message
    assert message["Subject"] == "Your invoice"
    assert message["From"] == "Sender <sender@example.test>"
    assert message["Cc"] == "c@dest.test"
    assert message["Reply-To"] == "replies@example.test, support@example.test"
    assert message["X-Campaign"] == "invoices"
    assert "hidden@dest.test" not in received.data.decode()
    files = {part.get_filename(): part for part in message.iter_attachments()}
    assert files["invoice.pdf"].get_content_type() == "application/pdf"
    assert files["invoice.pdf"].get_content() == PDF
    assert files["notes.txt"].get_content_type() == "text/plain"
    body = message.get_body(("plain",))
    assert body is not None and body.get_content().strip() == "Your invoice is attached."
    delivered = await server.wait_status(key, sent["id"], "delivered", timeout=30)
    assert delivered["last_event"] == "delivered"

    later = await call(
        resend.Emails.send,
        {
            "from": "sender@example.test",
            "to": "a@dest.test",
            "subject": "Later",
            "text": "later",
            "scheduled_at": "in 1 hour",
        },
    )
    cancelled = await call(resend.Emails.cancel, later["id"])
    assert cancelled["object"] == "email" and cancelled["id"] == later["id"]
    assert (await call(resend.Emails.get, later["id"]))["last_event"] == "canceled"
    # Cancelled: there is nothing left to reschedule.
    with pytest.raises(resend.exceptions.ResendError) as refused:
        await call(resend.Emails.update, {"id": later["id"], "scheduled_at": "in 2 hours"})
    assert str(refused.value.code) == "409"
    assert refused.value.message == "no recipient of this email is still scheduled"


async def test_batch_send_and_read_each_back(
    install: Install,
    launch: Launcher,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    point: Callable[[Server, str], None],
) -> None:
    server, key = await serve(install, launch, fake_dns, fake_mx)
    point(server, key)
    await call(resend.Domains.create, {"name": "example.test"})
    batch = await call(
        resend.Batch.send,
        [
            {"from": "sender@example.test", "to": ["a@dest.test"], "subject": "one", "text": "1"},
            {
                "from": "sender@example.test",
                "to": ["b@dest.test"],
                "subject": "two",
                "html": "<b>2</b>",
                "tags": [{"name": "n", "value": "2"}],
            },
        ],
    )
    ids = [item["id"] for item in batch["data"]]
    assert len(ids) == 2
    subjects = [(await call(resend.Emails.get, email_id))["subject"] for email_id in ids]
    assert subjects == ["one", "two"]
    await fake_mx.wait_for_messages(2, timeout=30)
    assert {m.message["Subject"] for m in fake_mx.received} == {"one", "two"}


async def test_create_and_remove_an_api_key(
    install: Install,
    launch: Launcher,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    point: Callable[[Server, str], None],
) -> None:
    server, key = await serve(install, launch, fake_dns, fake_mx)
    point(server, key)
    created = await call(resend.ApiKeys.create, {"name": "ci"})
    assert created["token"].startswith("pl_")
    point(server, created["token"])  # the new key works
    assert (await call(resend.Domains.list))["data"] == []
    point(server, key)
    removed = await call(resend.ApiKeys.remove, created["id"])
    assert removed["deleted"] is True and removed["id"] == created["id"]
    point(server, created["token"])
    with pytest.raises(resend.exceptions.ResendError) as refused:
        await call(resend.Domains.list)
    assert refused.value.message == "invalid or revoked API key"


async def test_each_error_reaches_the_sdk_with_postlines_message(
    install: Install,
    launch: Launcher,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    point: Callable[[Server, str], None],
) -> None:
    server, key = await serve(install, launch, fake_dns, fake_mx)
    point(server, key)
    example = await call(resend.Domains.create, {"name": "example.test"})
    await call(resend.Domains.create, {"name": "other.test"})
    email: resend.Emails.SendParams = {
        "from": "sender@other.test",
        "to": "a@dest.test",
        "subject": "Hello",
        "text": "Hello",
    }

    # A key that is not one.
    point(server, "pl_not_a_key")
    with pytest.raises(resend.exceptions.ResendError) as bad_key:
        await call(resend.Emails.send, email)
    assert (str(bad_key.value.code), bad_key.value.error_type) == ("401", "invalid_api_key")
    assert bad_key.value.message == "invalid or revoked API key"

    # No key at all: the SDK's own class for it (which words the message itself).
    point(server, "")
    with pytest.raises(resend.exceptions.MissingApiKeyError) as no_key:
        await call(resend.Emails.send, email)
    assert (str(no_key.value.code), no_key.value.error_type) == ("401", "missing_api_key")

    # A key scoped to example.test (Resend's sending_access key), sending from other.test.
    point(server, key)
    scoped = await call(
        resend.ApiKeys.create,
        {"name": "shop", "permission": "sending_access", "domain_id": example["id"]},
    )
    point(server, scoped["token"])
    with pytest.raises(resend.exceptions.ResendError) as forbidden:
        await call(resend.Emails.send, email)
    assert (str(forbidden.value.code), forbidden.value.error_type) == (
        "403",
        "invalid_from_address",
    )
    assert forbidden.value.message == "this API key may only send from example.test"

    # A from domain that is no sending domain at all.
    point(server, key)
    with pytest.raises(resend.exceptions.ValidationError) as unknown:
        await call(resend.Emails.send, {**email, "from": "sender@nowhere.test"})
    assert (
        unknown.value.message
        == "nowhere.test is not a sending domain; add it with POST /v1/domains"
    )

    # Validation: the SDK's ValidationError, Postline's message naming the field.
    with pytest.raises(resend.exceptions.ValidationError) as invalid:
        await call(resend.Emails.send, {**email, "from": "sender@example.test", "subject": None})
    assert str(invalid.value.code) == "422"
    assert invalid.value.message.startswith("subject: ")
    with pytest.raises(resend.exceptions.ValidationError) as unreadable:
        await call(
            resend.Emails.send,
            {**email, "from": "sender@example.test", "scheduled_at": "when pigs fly"},
        )
    assert "'when pigs fly' is not a time Postline reads" in unreadable.value.message

    with pytest.raises(resend.exceptions.ResendError) as missing:
        await call(resend.Emails.get, "em_nothing")
    assert (str(missing.value.code), missing.value.error_type) == ("404", "not_found")
    assert missing.value.message == "no email em_nothing"


async def test_the_environment_variables_alone_point_the_sdk_at_postline(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    """What a user changes: ``RESEND_API_URL`` and ``RESEND_API_KEY``, nothing in code."""
    server, key = await serve(install, launch, fake_dns, fake_mx)
    script = (
        "import resend\n"
        "resend.Domains.create({'name': 'example.test'})\n"
        "sent = resend.Emails.send({'from': 'sender@example.test', 'to': 'a@dest.test',"
        " 'subject': 'env', 'text': 'env'})\n"
        "print(resend.Emails.get(sent['id'])['subject'])\n"
    )
    env = {
        **clean_env(),
        "RESEND_API_URL": f"{server.install.base_url}/v1",
        "RESEND_API_KEY": key,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "env"
    await fake_mx.wait_for_messages(1, timeout=30)
