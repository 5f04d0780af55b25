"""The open pixel behind a reverse proxy: ``X-Forwarded-For`` is believed only from a
peer in ``POSTLINE_TRUSTED_PROXIES``.

Each test runs ``postline serve``'s HTTP server on loopback and fetches the pixel of
a tracked email over TCP, as a proxy on this host would: the peer is 127.0.0.1. An
address in Apple's network (17.0.0.0/8) names Apple Mail Privacy Protection; the
event records the client address the check used.
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from tests.harness.postline import Factory
from tests.integration.test_http_hardening import port_of, serving

APPLE = "17.58.101.7"
HTML = "<html><body><p>Hello</p></body></html>"


async def _opened(factory: Factory, forwarded_for: list[str], **settings: Any) -> list[Any]:
    """The ``data`` of the opens recorded by one fetch of the pixel per X-Forwarded-For
    value, made over TCP to the served API."""
    async with serving(factory, tracking_url="http://postline", **settings) as pl:
        base = f"http://127.0.0.1:{port_of(pl)}"
        async with httpx.AsyncClient(base_url=base, headers=pl.auth()) as client:
            body = {"from": "sender@example.test", "to": ["reader@dest.test"], "subject": "Hi"}
            sent = await client.post(
                "/v1/emails", json={**body, "html": HTML, "track": {"opens": True}}
            )
            assert sent.status_code == 202, sent.text
            content = await client.get(f"/v1/emails/{sent.json()['id']}/content")
            assert content.status_code == 200, content.text
            text = content.text.replace("=\r\n", "").replace("=3D", "=")
            (pixel,) = re.findall(r'<img src="http://postline(/t/o/[^"]+)"', text)
            for value in forwarded_for:
                fetched = await client.get(pixel, headers={"X-Forwarded-For": value})
                assert fetched.status_code == 200, fetched.text
            feed = await client.get("/v1/events", params={"type": "email.opened"})
            assert feed.status_code == 200, feed.text
            return [event["data"] for event in feed.json()["data"]]


def _seen(opens: list[Any]) -> list[tuple[str, bool, str | None]]:
    return [(o["ip"], o["machine"], o["machine_by"]) for o in opens]


async def test_x_forwarded_for_is_ignored_when_no_proxy_is_trusted(
    postline_factory: Factory,
) -> None:
    # A client claiming Apple's address is still 127.0.0.1, and no machine open.
    opens = await _opened(postline_factory, [APPLE], trusted_proxies="")
    assert _seen(opens) == [("127.0.0.1", False, None)]


async def test_x_forwarded_for_from_a_peer_outside_the_trusted_networks_is_ignored(
    postline_factory: Factory,
) -> None:
    opens = await _opened(postline_factory, [APPLE], trusted_proxies="10.0.0.0/8")
    assert _seen(opens) == [("127.0.0.1", False, None)]


async def test_a_trusted_proxys_client_is_the_address_checked_and_recorded(
    postline_factory: Factory,
) -> None:
    # At the default, a proxy on this host (loopback) is trusted.
    opens = await _opened(
        postline_factory,
        [
            APPLE,  # Apple's fetch, through our proxy
            "203.0.113.9",  # a reader
            f"{APPLE}, 203.0.113.9",  # a reader who claims to be Apple: the rightmost wins
            f"203.0.113.9, {APPLE}, 127.0.0.1",  # Apple via two of our proxies
        ],
    )
    assert _seen(opens) == [
        (APPLE, True, "apple_mail_privacy_protection"),
        ("203.0.113.9", False, None),
        ("203.0.113.9", False, None),
        (APPLE, True, "apple_mail_privacy_protection"),
    ]
