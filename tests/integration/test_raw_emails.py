"""``POST /v1/emails/raw``: the client's message reaches the MX byte for byte.

What the fake MX receives is the raw message with only Postline's DKIM signature in
front (and, for a message without them, the ``Message-ID`` and ``Date`` the
submission path adds); each envelope recipient is tracked; what cannot be sent as
it is gets a 422, a From the key may not use a 403, a message over the cap a 413.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest

RAW = (
    b"From: App <app@example.test>\r\n"
    b"To: reader@dest.test\r\n"
    b"Subject: Built by the client\r\n"
    b"Date: Sun, 06 Dec 2026 07:00:00 +0000\r\n"
    b"Message-ID: <built.1@client.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Kept as it is,  spaces\tand all.\r\n"
    b".leading dot\r\n"
)
#: The DKIM-Signature field (folded over several lines) at the start of a message.
SIGNATURE = re.compile(rb"\ADKIM-Signature:[^\r]*\r\n(?:[ \t][^\r]*\r\n)*")


def _body(raw: bytes, to: list[str], sender: str = "app@example.test") -> dict[str, Any]:
    return {"from": sender, "to": to, "raw": base64.b64encode(raw).decode("ascii")}


async def _post(pl: PostlineUnderTest, body: Any, key: str | None = None) -> tuple[int, Any]:
    response = await pl.client.post("/v1/emails/raw", json=body, headers=pl.auth(key))
    return response.status_code, response.json()


def _unsigned(data: bytes) -> bytes:
    signature = SIGNATURE.match(data)
    assert signature is not None, data[:200]
    return data[signature.end() :]


async def test_the_raw_message_arrives_byte_for_byte_and_each_recipient_is_tracked(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    status, accepted = await _post(postline, _body(RAW, ["reader@dest.test", "hidden@dest.test"]))
    assert status == 202, accepted
    assert accepted["message_id"] == "<built.1@client.example>"
    detail = await postline.wait_for_status(accepted["id"], ["delivered"])
    kinds = {r["address"]: r["kind"] for r in detail["recipients"]}
    assert kinds == {"reader@dest.test": "to", "hidden@dest.test": "bcc"}
    assert detail["subject"] == "Built by the client"
    assert sorted(e["type"] for e in detail["events"]).count("email.delivered") == 2
    (received,) = fake_mx.received
    assert sorted(received.rcpt_tos) == ["hidden@dest.test", "reader@dest.test"]
    assert _unsigned(received.data) == RAW
    assert "d=example.test" in received.message["DKIM-Signature"].replace(" ", "")


async def test_a_message_without_message_id_and_date_gets_them_in_front(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    bare = b"From: app@example.test\r\nTo: reader@dest.test\r\nSubject: Bare\r\n\r\nHi\r\n"
    status, accepted = await _post(postline, _body(bare, ["reader@dest.test"]))
    assert status == 202, accepted
    await postline.wait_for_status(accepted["id"], ["delivered"])
    (received,) = fake_mx.received
    added, _, rest = _unsigned(received.data).partition(b"\r\nDate: ")
    assert added == f"Message-ID: {accepted['message_id']}".encode()
    assert rest.split(b"\r\n", 1)[1] == bare


async def test_what_cannot_be_sent_as_it_is_is_refused(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False, max_message_bytes=2000)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({**_body(RAW, ["a@dest.test"]), "raw": "not base64!"}, 422, "raw"),
        (_body(b"Subject: no From\r\n\r\nx\r\n", ["a@dest.test"]), 422, "From"),
        (_body(RAW.replace(b"\r\n", b"\n"), ["a@dest.test"]), 422, "Bare LF"),
        (_body(RAW, []), 422, "to"),
        (_body(RAW + b"x" * 3000 + b"\r\n", ["a@dest.test"]), 413, "limit"),
    ]
    for body, status, word in cases:
        got, problem = await _post(pl, body)
        assert (got, word in str(problem)) == (status, True), (body, problem)


async def test_a_scoped_key_sends_only_from_its_own_domain(postline: PostlineUnderTest) -> None:
    made = await postline.client.post(
        "/v1/api-keys", json={"name": "k", "domain": "example.test"}, headers=postline.auth()
    )
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    foreign = RAW.replace(b"app@example.test", b"app@elsewhere.test")
    status, problem = await _post(postline, _body(foreign, ["a@dest.test"]), key)
    assert status == 403, problem
    status, problem = await _post(
        postline, _body(RAW, ["a@dest.test"], sender="bounce@elsewhere.test"), key
    )
    assert status == 403, problem
    status, accepted = await _post(postline, _body(RAW, ["a@dest.test"]), key)
    assert status == 202, accepted


async def test_tags_are_kept_and_reach_the_events(postline: PostlineUnderTest) -> None:
    body = {**_body(RAW, ["reader@dest.test"]), "tags": [{"name": "campaign", "value": "raw_1"}]}
    status, accepted = await _post(postline, body)
    assert status == 202, accepted
    detail = await postline.wait_for_status(accepted["id"], ["delivered"])
    assert detail["tags"] == {"campaign": "raw_1"}
    feed = await postline.client.get("/v1/events", headers=postline.auth())
    delivered = [e for e in feed.json()["data"] if e["type"] == "email.delivered"]
    assert [e["data"]["tags"] for e in delivered] == [{"campaign": "raw_1"}]


async def test_an_idempotency_key_sends_once_and_replays_the_answer(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False)
    body = _body(RAW, ["reader@dest.test"])
    keyed = {**pl.auth(), "Idempotency-Key": "raw-order-7"}
    first = await pl.client.post("/v1/emails/raw", json=body, headers=keyed)
    again = await pl.client.post("/v1/emails/raw", json=body, headers=keyed)
    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert again.json() == first.json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    listed = await pl.client.get("/v1/emails", headers=pl.auth())
    assert [e["id"] for e in listed.json()["data"]] == [first.json()["id"]]

    other = await pl.client.post(
        "/v1/emails/raw", json=_body(RAW, ["other@dest.test"]), headers=keyed
    )
    assert other.status_code == 409, other.text
    assert other.json()["name"] == "invalid_idempotent_request"
    # The same key on POST /v1/emails is another request too.
    email = {"from": "app@example.test", "to": ["reader@dest.test"], "subject": "s", "text": "t"}
    crossed = await pl.client.post("/v1/emails", json=email, headers=keyed)
    assert crossed.status_code == 409, crossed.text
    empty = await pl.client.post(
        "/v1/emails/raw", json=body, headers={**pl.auth(), "Idempotency-Key": ""}
    )
    assert empty.status_code == 400, empty.text


async def test_a_refused_raw_message_does_not_burn_its_idempotency_key(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False)
    keyed = {**pl.auth(), "Idempotency-Key": "fix-then-retry"}
    bad = await pl.client.post(
        "/v1/emails/raw", json=_body(RAW.replace(b"\r\n", b"\n"), ["a@dest.test"]), headers=keyed
    )
    assert bad.status_code == 422, bad.text
    good = await pl.client.post("/v1/emails/raw", json=_body(RAW, ["a@dest.test"]), headers=keyed)
    assert good.status_code == 202, good.text
