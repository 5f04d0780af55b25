"""The official ``resend`` npm SDK, run by Node, sends through Postline and reads its errors.

Nothing about the SDK is changed: ``tests/sdk/node/call.mjs`` makes one call with
``RESEND_BASE_URL`` pointed at a running Postline (``postline serve``'s real HTTP server
on loopback) and ``RESEND_API_KEY`` set to a Postline key, as a user moving from
Resend would. The package is installed by ``make test`` (``npm ci --prefix
tests/sdk/node``), never by a test; without Node or without that install the tests
skip, and fail under ``CI``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest_asyncio

from postline.supervisor import serve
from tests.harness import FakeMX
from tests.harness.capability import missing
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.receiver import WebhookReceiver

NODE_PROJECT = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_PROJECT / "call.mjs"
#: A cold Node start on a loaded 2-core machine, plus one HTTP call.
NODE_TIMEOUT = 120.0


def node() -> str:
    """The ``node`` binary, once the SDK is installed; skip (fail under CI) otherwise."""
    binary = shutil.which("node")
    if binary is None:
        missing("Node.js", "no node on PATH, needed to run the resend npm SDK")
    if not (NODE_PROJECT / "node_modules" / "resend" / "package.json").is_file():
        missing("the resend npm package", "run `npm ci --prefix tests/sdk/node` (make test does)")
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture
async def running(postline_factory: Factory) -> AsyncIterator[PostlineUnderTest]:
    """Postline with its engine, and its HTTP API on a loopback port as ``serve`` runs it."""
    port = free_port()
    postline = await postline_factory(
        http_addr=f"127.0.0.1:{port}", webhook_allow_private=True, webhook_retry_schedule="0.1"
    )
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(postline.services, engine=False, ready=ready, stop=stop))
    await asyncio.wait_for(ready.wait(), 60)
    try:
        yield postline
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def base_url(postline: PostlineUnderTest) -> str:
    host, port = postline.settings.http_host_port
    return f"http://{host}:{port}/v1"


async def run_sdk(postline: PostlineUnderTest, key: str, method: str, *args: Any) -> Any:
    """``resend.<method>(*args)`` in Node: ``{"result": ..., "thrown": None | message}``.

    A subprocess of the event loop, not a blocking one: the Postline it calls runs in
    this same loop.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESEND_")}
    env |= {"RESEND_BASE_URL": base_url(postline), "RESEND_API_KEY": key}
    proc = await asyncio.create_subprocess_exec(
        node(),
        str(SCRIPT),
        cwd=NODE_PROJECT,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    call = json.dumps({"method": method, "args": list(args)}).encode()
    try:
        out, err = await asyncio.wait_for(proc.communicate(call), NODE_TIMEOUT)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode == 0, f"node exited {proc.returncode}: {err.decode()}"
    return json.loads(out)


async def sdk(postline: PostlineUnderTest, key: str, method: str, *args: Any) -> Any:
    """What ``resend.<method>(*args)`` returned (``{data, error}`` for an API call)."""
    answer = await run_sdk(postline, key, method, *args)
    assert answer["thrown"] is None, f"resend.{method} threw: {answer['thrown']}"
    return answer["result"]


async def test_the_node_sdk_sends_an_email_that_is_delivered(
    running: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    answer = await sdk(
        running,
        running.admin_key,
        "emails.send",
        {
            "from": "Acme <hello@example.test>",
            "to": ["ana@dest.test"],
            "cc": "ben@dest.test",
            "replyTo": "support@example.test",
            "subject": "Sent by the resend npm SDK",
            "html": "<p>Hello from <strong>Node</strong></p>",
            "text": "Hello from Node",
            "headers": {"X-Entity-Ref-ID": "node-1"},
        },
    )
    assert answer["error"] is None, answer
    email_id = answer["data"]["id"]
    assert email_id.startswith("em_")

    detail = await running.wait_until_final(email_id)
    assert {r["address"]: r["status"] for r in detail["recipients"]} == {
        "ana@dest.test": "delivered",
        "ben@dest.test": "delivered",
    }
    (received,) = fake_mx.messages_for("ana@dest.test")
    message = received.message
    assert message["Subject"] == "Sent by the resend npm SDK"
    assert message["Reply-To"] == "support@example.test"
    assert message["X-Entity-Ref-ID"] == "node-1"


async def test_the_node_sdk_surfaces_postlines_error_for_an_invalid_key(
    running: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    """The SDK turns any JSON error body into its ``error``; Postline's problem document
    carries Resend's ``name``, ``message`` and ``statusCode`` beside RFC 9457's members."""
    bad_key = "pl_" + "x" * 40
    email = {"from": "hello@example.test", "to": "ana@dest.test", "subject": "x", "text": "x"}
    async with httpx.AsyncClient(base_url=base_url(running)) as client:
        direct = await client.post(
            "/emails", json=email, headers={"Authorization": f"Bearer {bad_key}"}
        )
    assert direct.status_code == 401
    problem = direct.json()

    answer = await sdk(running, bad_key, "emails.send", email)
    assert answer["data"] is None
    error = answer["error"]
    assert error.get("statusCode") == 401, error
    assert error.get("message") == problem["detail"], error
    assert error.get("name") == "invalid_api_key", error
    assert fake_mx.received == []


async def test_the_node_sdks_webhook_check_verifies_a_delivered_event(
    running: PostlineUnderTest,
) -> None:
    """``resend.webhooks.verify`` (the SDK's own receiver helper) takes the ``svix-*``
    values of a real delivery and the endpoint's secret, and returns the event."""
    async with WebhookReceiver() as receiver:
        created = await running.client.post(
            "/v1/webhooks",
            json={"url": receiver.url, "events": ["email.delivered"]},
            headers=running.auth(),
        )
        assert created.status_code == 201, created.text
        endpoint = created.json()
        sent = await running.send(to="ana@dest.test", subject="Verified in Node")
        (hook,) = await receiver.wait_until(lambda hs: len(hs) >= 1, what="email.delivered")

    def check(secret: str) -> dict[str, Any]:
        return {
            "payload": hook.body.decode(),
            "headers": {
                "id": hook.headers["svix-id"],
                "timestamp": hook.headers["svix-timestamp"],
                "signature": hook.headers["svix-signature"],
            },
            "webhookSecret": secret,
        }

    event = await sdk(running, running.admin_key, "webhooks.verify", check(endpoint["secret"]))
    assert event["type"] == "email.delivered"
    assert event["data"]["email_id"] == sent["id"]
    assert event["data"]["to"] == ["ana@dest.test"]
    assert event["data"]["subject"] == "Verified in Node"
    other_secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    refused = await run_sdk(running, running.admin_key, "webhooks.verify", check(other_secret))
    assert refused["result"] is None
    assert "signature" in refused["thrown"].lower(), refused
