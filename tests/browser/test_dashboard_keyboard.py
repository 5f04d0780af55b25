"""The dashboard from the keyboard alone, and at phone width without sideways scrolling."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from tests.browser.conftest import sign_in
from tests.harness.postline import PostlineUnderTest

#: What sticks out on the right of a 390 px page, outside the scrolling nav, for the message.
WIDER_THAN_A_PHONE = """[...document.querySelectorAll('body *')]
    .filter(e => !e.closest('nav') && e.getBoundingClientRect().right > 390)
    .map(e => `${e.tagName}.${e.className} ${e.getBoundingClientRect().right}`).slice(0, 8)"""
#: Resolves once htmx has swapped and settled new content (the send log's poll).
NEXT_SWAP = """() => new Promise(done => document.body.addEventListener(
    'htmx:afterSettle', () => done(true), {once: true}))"""
PAGES = (
    "/",
    "/emails",
    "/recipients?address=a@dest.test",
    "/suppressions",
    "/webhooks",
    "/domains",
    "/queue",
)


async def test_sign_in_and_move_around_with_the_keyboard(
    postline: PostlineUnderTest, base_url: str, page: Page
) -> None:
    sent = await postline.send(to=["a@dest.test"], subject="Keyboard")
    await page.goto(f"{base_url}/")
    await expect(page.get_by_label("API key")).to_be_focused()
    await page.keyboard.type(postline.admin_key)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("navigation", name="Dashboard")).to_be_visible()

    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    for _ in range(3):  # the logo, Overview, Send log
        await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Send log")).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{base_url}/emails")

    await page.get_by_label("Recipient", exact=True).focus()
    await page.keyboard.type("a@dest.test")
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"/emails\?recipient=a%40dest\.test&"))
    link = page.get_by_role("link", name="Keyboard")
    await link.focus()
    # The rows are swapped by the live poll; the focused link keeps the focus.
    await page.evaluate(NEXT_SWAP)
    await expect(link).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(f"{base_url}/emails/{sent['id']}")


async def test_every_page_fits_a_phone(
    postline: PostlineUnderTest, base_url: str, page: Page
) -> None:
    await postline.send(to=["a@dest.test"], subject="A subject long enough to need room " * 3)
    await sign_in(page, base_url, postline.admin_key)
    await page.set_viewport_size({"width": 390, "height": 844})
    for path in PAGES:
        await page.goto(f"{base_url}{path}")
        await expect(page.locator("main h1")).to_be_visible()
        width = await page.evaluate("document.documentElement.scrollWidth")
        wide = await page.evaluate(WIDER_THAN_A_PHONE)
        assert width <= 390, f"{path} is {width} px wide at a 390 px viewport: {wide}"
