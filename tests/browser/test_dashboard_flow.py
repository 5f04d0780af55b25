"""The dashboard in a real browser, against a real ``postline serve`` with the sandbox.

One operator's afternoon: sign in, hold the simulator's mail behind an open breaker,
send to delivered@ and bounced@ through the API, close the breaker from the queue page
and watch both rows of the send log change status without a reload, read the 250 in
the timeline, look the bounced address up, remove its suppression, replay a webhook
delivery, and sign out. Every page is photographed (artifacts/dashboard/).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from playwright.async_api import Locator, Page, expect

from tests.acceptance.harness import Install, Server, auth
from tests.browser.conftest import shoot, sign_in
from tests.harness.receiver import WebhookReceiver

SIMULATOR = "simulator.postline.test"
SENDER = "Acme <hello@sandbox.postline.test>"


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """``postline serve`` as ``make run`` starts it: the sandbox on, loopback webhooks."""
    started = await Server.start(
        Install(tmp_path / "data"),
        "serve",
        POSTLINE_SANDBOX="true",
        POSTLINE_WEBHOOK_ALLOW_PRIVATE="true",
    )
    try:
        await started.ready()
        yield started
    finally:
        await started.aclose()


def row(page: Page, email_id: str) -> Locator:
    return page.locator(f"#row-{email_id}")


async def test_an_operator_follows_mail_through_the_dashboard(
    server: Server, page: Page, receiver: WebhookReceiver
) -> None:
    key = await server.admin_key()
    base = server.install.base_url
    hook = await server.client.post(
        "/v1/webhooks", json={"url": receiver.url, "events": ["*"]}, headers=auth(key)
    )
    assert hook.status_code == 201, hook.text

    # The sign-in field at / takes an API key.
    await page.goto(f"{base}/")
    await expect(page.get_by_label("API key")).to_be_visible()
    await shoot(page, "signin")
    await sign_in(page, base, key)

    # Hold the simulator's mail: open its breaker from the queue page.
    await page.get_by_role("link", name="Queue").click()
    await page.get_by_label("Destination domain").fill(SIMULATOR)
    await page.get_by_role("button", name="Open breaker").click()
    destination = page.locator(f'tr[id="dest-{SIMULATOR}"]')
    await expect(destination.locator(".badge")).to_have_text("open")

    # The send log is open before the mail is sent; it is never reloaded after.
    await page.get_by_role("link", name="Send log").click()
    await page.evaluate("window.notReloaded = true")
    delivered = await server.send(
        key, **{"from": SENDER}, to=f"delivered@{SIMULATOR}", subject="Your receipt"
    )
    bounced = await server.send(
        key, **{"from": SENDER}, to=f"bounced@{SIMULATOR}", subject="Welcome aboard"
    )
    for email in (delivered, bounced):
        await expect(row(page, email["id"])).to_be_visible()
        await expect(row(page, email["id"])).not_to_have_attribute(
            "data-status", re.compile("delivered|bounced")
        )

    # Close the breaker in a second tab; the first tab's rows change by themselves.
    queue = await page.context.new_page()
    await queue.goto(f"{base}/queue")
    await shoot(queue, "queue-open")
    await queue.locator(f'tr[id="dest-{SIMULATOR}"]').get_by_role("button", name="Close").click()
    await expect(queue.get_by_role("status")).to_contain_text("breaker closed")
    await shoot(queue, "queue")
    await queue.close()

    await expect(row(page, delivered["id"])).to_have_attribute("data-status", "delivered")
    await expect(row(page, bounced["id"])).to_have_attribute("data-status", "bounced")
    assert await page.evaluate("window.notReloaded") is True
    # A few more outcomes, for a send log (and an overview) with some life in it.
    more = [
        await server.send(key, **{"from": SENDER}, to=f"{who}@{SIMULATOR}", subject=subject)
        for who, subject in (
            ("deferred", "Password reset"),
            ("blocked", "Your weekly digest"),
            ("complained", "Spring sale: 20% off"),
            ("ana", "Order #1042 has shipped"),
        )
    ]
    for email in more:
        await expect(row(page, email["id"])).to_be_visible()
    await expect(row(page, more[-1]["id"])).to_have_attribute("data-status", "delivered")
    await shoot(page, "send-log")

    # The delivered email's timeline shows the 250.
    await row(page, delivered["id"]).get_by_role("link").click()
    timeline = page.locator(".timeline")
    await expect(timeline).to_contain_text("250")
    await expect(page.get_by_role("heading", name="Your receipt")).to_be_visible()
    await shoot(page, "email-detail")

    # "Why didn't they get it?" for the bounced address, then lift its suppression.
    await page.get_by_role("link", name="Recipient lookup").click()
    await page.get_by_label("Email address").fill(f"bounced@{SIMULATOR}")
    await page.get_by_role("button", name="Look up").click()
    suppression = page.get_by_role("region", name="Suppression")
    await expect(suppression).to_contain_text("hard bounce")
    await expect(page.locator("main")).to_contain_text("550 5.1.1")
    await shoot(page, "recipient-lookup")
    await suppression.get_by_role("button", name="Remove suppression").click()
    await expect(page.get_by_role("status")).to_contain_text("no longer suppressed")
    await expect(page.get_by_role("region", name="Suppression")).to_contain_text("Not suppressed")
    await page.get_by_role("link", name="Suppressions").click()
    await expect(page.locator("main")).not_to_contain_text(f"bounced@{SIMULATOR}")
    await shoot(page, "suppressions")

    # Replay a webhook delivery: the receiver gets the same webhook-id again.
    hooks = await receiver.wait_until(
        lambda got: len(got) >= 2, what="the first events", timeout=60
    )
    await page.get_by_role("link", name="Webhooks").click()
    await shoot(page, "webhooks")
    before = len(receiver.received)
    replayed = page.locator("tr[id^=dlv-]").first
    event_id = await replayed.locator(".small").first.inner_text()
    await replayed.get_by_role("button", name="Replay").click()
    await expect(page.get_by_role("status")).to_contain_text("replayed")
    again = await receiver.wait_until(lambda got: len(got) > before, what="the replay", timeout=60)
    assert again[-1].headers["webhook-id"] == event_id, (again[-1].headers, hooks)

    await page.get_by_role("button", name="Send test").click()
    await expect(page.get_by_role("status")).to_contain_text("Test event")
    await receiver.wait_until(
        lambda got: any(h.json.get("type") == "webhook.test" for h in got),
        what="the test event",
        timeout=60,
    )
    await page.get_by_role("button", name="Rotate secret").click()
    await expect(page.locator("#new-secret")).to_contain_text("whsec_")

    # Domains: the records to publish, and bounce notifications turned on (no DNS
    # look-up here: "Verify now" would ask the machine's resolver).
    await page.get_by_role("link", name="Domains").click()
    await expect(page.locator("main")).to_contain_text("sandbox.postline.test")
    await page.get_by_role("button", name="Turn bounce notifications on").click()
    await expect(page.get_by_role("status")).to_contain_text("bounce notifications on")
    await expect(page.get_by_role("button", name="Turn bounce notifications off")).to_be_visible()
    await shoot(page, "domains")
    await page.get_by_role("link", name="Overview", exact=True).click()
    await expect(page.locator("svg.chart")).to_be_visible()
    await expect(page.locator("#window-week .stats")).to_be_visible()
    await shoot(page, "overview")

    # Phone width, and dark.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto(f"{base}/emails")
    await shoot(page, "send-log-phone")
    await page.goto(f"{base}/emails/{bounced['id']}")
    await shoot(page, "email-detail-phone")
    await page.emulate_media(color_scheme="dark")
    await page.set_viewport_size({"width": 1280, "height": 860})
    await page.goto(f"{base}/emails")
    await shoot(page, "send-log-dark")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_label("API key")).to_be_visible()
    await page.goto(f"{base}/emails")
    await expect(page.get_by_label("API key")).to_be_visible()
