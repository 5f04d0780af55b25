"""``postline serve`` as a real process takes mail on its submission port: Python's
smtplib with STARTTLS and an API key, the sandbox simulator at the far end, the
result read back through the HTTP API, and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import signal

import pytest

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install
from tests.harness.submission import smtplib_submit

MESSAGE = (
    b"From: Shop <hello@sandbox.postline.test>\r\n"
    b"To: delivered@simulator.postline.test\r\n"
    b"Subject: Sent over SMTP\r\n"
    b"Message-ID: <smtp-acceptance@shop.test>\r\n"
    b"\r\n"
    b"Hello from smtplib.\r\n"
)


async def test_smtplib_with_starttls_sends_through_serve_and_it_is_delivered(
    install: Install, launch: Launcher
) -> None:
    install.extra["POSTLINE_SUBMISSION_LOOPBACK_PLAINTEXT_AUTH"] = "false"
    server = await launch(install, "serve", "--sandbox")
    key = await server.admin_key()
    await server.ready()
    await server.wait_for_line(rf"SMTP submission: 127\.0\.0\.1:{install.smtp_port} \(STARTTLS\)")
    await server.wait_for_line(r"SMTP TLS certificate: self-signed, generated in .*smtp-tls\.pem")
    pem = install.data_dir / "smtp-tls.pem"
    code, reply = await asyncio.to_thread(
        smtplib_submit,
        ("127.0.0.1", install.smtp_port),
        key,
        MESSAGE,
        "hello@sandbox.postline.test",
        ["delivered@simulator.postline.test"],
        cert_file=pem,
    )
    assert code == 250, reply
    found = re.search(r"queued as (em_\w+)", reply)
    assert found is not None, reply
    listed = await server.client.get(
        "/v1/emails", params={"source": "smtp"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert [e["id"] for e in listed.json()["data"]] == [found.group(1)], listed.text
    detail = await server.wait_status(key, found.group(1), "delivered", timeout=60)
    assert detail["source"] == "smtp"
    assert detail["message_id"] == "<smtp-acceptance@shop.test>"
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(30) == 0, server.describe()
    assert not any("Traceback" in line for line in server.stderr), server.describe()


async def test_postline_api_opens_the_submission_port_too(
    install: Install, launch: Launcher
) -> None:
    """``api`` processes accept mail, so they take it over SMTP as well (``worker`` has
    no port at all); it is closed again when the process stops."""
    server = await launch(install, "api")
    await server.ready()
    await server.wait_for_line(rf"SMTP submission: 127\.0\.0\.1:{install.smtp_port} ")
    reader, writer = await asyncio.open_connection("127.0.0.1", install.smtp_port)
    greeting = await asyncio.wait_for(reader.readline(), 30)
    assert greeting.startswith(b"220 postline.acceptance.test "), greeting
    writer.close()
    server.signal(signal.SIGTERM)
    assert await server.wait_exit(30) == 0, server.describe()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", install.smtp_port)
