"""What one send request may ask for (issue 20, item 4): recipients per request, custom
headers and attachments per email, and a rate limit that counts recipients.

Each cap is checked on the JSON before any field is validated and answers a problem
that names the limit and its setting; a request within them is accepted as before.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from postline.store.schema import sent_emails
from tests.harness.postline import PostlineUnderTest

Factory = Callable[..., Awaitable[PostlineUnderTest]]

#: One token per 100 s: nothing refills while a test runs, however slow the machine.
SLOW = 0.01


def email(recipients: int = 1, **fields: Any) -> dict[str, Any]:
    to = [f"user{n}@dest.test" for n in range(recipients)]
    return {"from": "sender@example.test", "to": to, "subject": "Hi", "text": "Hello"} | fields


async def sent_count(pl: PostlineUnderTest) -> int:
    async with pl.services.db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(sent_emails))).scalar_one())


async def test_a_batch_counts_the_recipients_of_all_its_emails(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False, max_recipients_per_request=10)
    within = [email(4), email(2, cc=["c@dest.test"], bcc=["b@dest.test", "d@dest.test"])]
    accepted = await pl.client.post("/v1/emails/batch", json=within, headers=pl.auth())
    assert accepted.status_code == 202, accepted.text

    over = [email(4), email(4, cc="c@dest.test"), email(1, bcc=["b@dest.test"])]
    refused = await pl.client.post("/v1/emails/batch", json=over, headers=pl.auth())
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"]
    assert "11 recipients" in detail and "POSTLINE_MAX_RECIPIENTS_PER_REQUEST" in detail
    assert "the limit is 10" in detail

    one = await pl.client.post("/v1/emails", json=email(11), headers=pl.auth())
    assert one.status_code == 422, one.text
    assert one.json()["errors"] == [{"field": "to", "message": one.json()["detail"]}]
    assert await sent_count(pl) == 2, "a refused request accepts nothing"


async def test_the_recipient_cap_is_checked_before_any_address_is_parsed(
    postline_factory: Factory,
) -> None:
    """Over the cap, the answer names the cap, not the first bad address of 1,001."""
    pl = await postline_factory(engine=False)
    over = [email(1, to=["not an address"] * 501), email(1, to=["nor this"] * 500)]
    refused = await pl.client.post("/v1/emails/batch", json=over, headers=pl.auth())
    assert refused.status_code == 422, refused.text
    assert "1001 recipients" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("fields", "status", "field", "setting"),
    [
        ({"headers": {f"X-H{n}": "v" for n in range(4)}}, 422, "headers", "CUSTOM_HEADERS"),
        ({"headers": {"X-Long": "v" * 200}}, 422, "headers", "CUSTOM_HEADER_BYTES"),
        (
            {"attachments": [{"filename": f"{n}.txt", "content": "QUJD"} for n in range(3)]},
            422,
            "attachments",
            "ATTACHMENTS",
        ),
        (
            {"attachments": [{"filename": "big.bin", "content": "QUJD" * 400}]},
            413,
            "attachments",
            "MESSAGE_BYTES",
        ),
    ],
)
async def test_headers_and_attachments_past_their_caps_are_refused(
    postline_factory: Factory, fields: dict[str, Any], status: int, field: str, setting: str
) -> None:
    pl = await postline_factory(
        engine=False,
        max_custom_headers=3,
        max_custom_header_bytes=128,
        max_attachments=2,
        max_message_bytes=1000,
    )
    refused = await pl.client.post(
        "/v1/emails/batch", json=[email(), email(**fields)], headers=pl.auth()
    )
    assert refused.status_code == status, refused.text
    problem = refused.json()
    assert f"POSTLINE_MAX_{setting}" in problem["detail"]
    assert problem["errors"][0]["field"] == f"[1].{field}"
    assert await sent_count(pl) == 0


async def test_headers_and_attachments_within_their_caps_are_accepted(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(
        engine=False, max_custom_headers=3, max_custom_header_bytes=128, max_attachments=2
    )
    content = base64.b64encode(b"hello").decode()
    sent = await pl.send(
        to="a@dest.test",
        headers={f"X-H{n}": "v" * 20 for n in range(3)},
        attachments=[{"filename": f"{n}.txt", "content": content} for n in range(2)],
    )
    raw = await pl.client.get(f"/v1/emails/{sent['id']}/content", headers=pl.auth())
    assert raw.status_code == 200
    assert raw.content.count(b"X-H") == 3


async def test_an_email_send_takes_a_rate_limit_token_per_recipient(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False, rate_limit_per_second=SLOW, rate_limit_burst=10)
    first = await pl.client.post("/v1/emails", json=email(4), headers=pl.auth())
    assert first.status_code == 202, first.text
    assert first.headers["ratelimit-remaining"] == "6"
    batch = [email(2), email(1, cc="c@dest.test")]
    second = await pl.client.post("/v1/emails/batch", json=batch, headers=pl.auth())
    assert second.status_code == 202, second.text
    assert second.headers["ratelimit-remaining"] == "2"

    refused = await pl.client.post("/v1/emails", json=email(3), headers=pl.auth())
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    # The refused send took its request's token, not the two more it needed.
    reads = await pl.client.get("/v1/emails", headers=pl.auth())
    assert reads.status_code == 200 and reads.headers["ratelimit-remaining"] == "0"
    assert await sent_count(pl) == 3


async def test_a_send_needing_more_than_the_burst_is_refused_outright(
    postline_factory: Factory,
) -> None:
    """Waiting would never be enough: 422 naming the burst, not a 429 to retry."""
    pl = await postline_factory(engine=False, rate_limit_per_second=SLOW, rate_limit_burst=5)
    refused = await pl.client.post("/v1/emails", json=email(6), headers=pl.auth())
    assert refused.status_code == 422, refused.text
    assert "retry-after" not in refused.headers
    detail = refused.json()["detail"]
    assert "6 rate-limit tokens" in detail and "POSTLINE_RATE_LIMIT_BURST" in detail
    assert await sent_count(pl) == 0
