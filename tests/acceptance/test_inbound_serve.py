"""``postline serve`` runs the inbound MX: the sandbox's complaint loop closes over it, and
an address that is no return path is refused, as ``make run`` and production see it."""

from __future__ import annotations

import asyncio
import smtplib

import pytest

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, auth


async def test_a_complaint_from_the_simulator_comes_back_through_the_inbound_mx(
    install: Install, launch: Launcher
) -> None:
    server = await launch(install, "serve", POSTLINE_SANDBOX="true")
    key = await server.admin_key()
    await server.ready()
    sent = await server.send(
        key, to="complained@simulator.postline.test", **{"from": "hi@sandbox.postline.test"}
    )
    detail = await server.wait_email(
        key,
        sent["id"],
        lambda d: d["recipients"][0]["status"] == "complained",
        what="the simulator's complaint applied",
    )
    assert detail["status"] == "delivered"
    assert [e["type"] for e in detail["events"]][-1] == "email.complained"
    listed = await server.client.get("/v1/suppressions", headers=auth(key))
    assert [(s["address"], s["reason"]) for s in listed.json()["data"]] == [
        ("complained@simulator.postline.test", "complaint")
    ]
    metrics = (await server.client.get("/metrics")).text
    assert 'postline_inbound_reports_total{kind="complaint",result="applied"} 1.0' in metrics


def _relay_attempt(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail("spam@spam.test", ["victim@gmail.com"], b"Subject: hi\r\n\r\nhi\r\n")


async def test_the_inbound_mx_of_serve_is_no_open_relay(install: Install, launch: Launcher) -> None:
    server = await launch(install, "serve", "--no-sandbox")
    await server.ready()
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(_relay_attempt, install.inbound_port)
    assert list(refused.value.recipients.values()) == [(550, b"5.1.1 No such user here")]
