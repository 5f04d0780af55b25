"""Untrusted text stays text: a subject, a header and an SMTP reply that carry
``<script>`` and an ``onerror`` handler are shown on every page that shows them, and
nothing of theirs runs in the browser (escaping, and a CSP that allows no inline script).

Postline runs in-process here, behind a real uvicorn socket, so that the fake MX can
answer RCPT with the hostile reply."""

from __future__ import annotations

from playwright.async_api import Page, expect

from tests.browser.conftest import shoot, sign_in
from tests.harness.fake_mx import FakeMX
from tests.harness.postline import PostlineUnderTest

VICTIM = "victim@dest.test"
SUBJECT = (
    "Invoice <script>window.pwned='subject'</script><img src=x onerror=\"window.pwned='img'\">"
)
REPLY = "550 5.1.1 <script>window.pwned='reply'</script> <b onmouseover=\"window.pwned='b'\">no</b>"


async def test_hostile_text_is_shown_and_never_run(
    postline: PostlineUnderTest, fake_mx: FakeMX, base_url: str, page: Page
) -> None:
    fake_mx.on_rcpt(VICTIM, REPLY)
    sent = await postline.send(
        to=[VICTIM], subject=SUBJECT, headers={"X-Note": "<script>window.pwned='header'</script>"}
    )
    bounced = await postline.wait_until_final(sent["id"])
    assert bounced["recipients"][0]["response"].startswith("550 5.1.1 <script>"), bounced

    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    first = await page.goto(f"{base_url}/")
    assert first is not None
    policy = first.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy, policy
    await sign_in(page, base_url, postline.admin_key)

    pages = {
        "xss-send-log": ("/emails", SUBJECT),
        "xss-email-detail": (f"/emails/{sent['id']}", "<script>window.pwned='reply'</script>"),
        "xss-recipient-lookup": (f"/recipients?address={VICTIM}", "window.pwned='reply'"),
        "xss-suppressions": ("/suppressions", "window.pwned='reply'"),
    }
    for name, (path, shown) in pages.items():
        await page.goto(f"{base_url}{path}")
        await expect(page.locator("main")).to_contain_text(shown)
        await shoot(page, name)
        assert await page.evaluate("window.pwned === undefined"), f"script ran on {path}"
    await page.goto(f"{base_url}/emails/{sent['id']}")
    await expect(page.locator(".headers")).to_contain_text("<script>window.pwned='header'")
    await page.locator(".reply").first.hover()
    assert await page.evaluate("window.pwned === undefined")
    assert await page.locator("main script, main img").count() == 0
    assert dialogs == []
