"""An email waiting for a retry reads ``deferred``, and the send log finds it.

A deferred recipient does not read as bounced: its ``bounce_type`` stays null and
the class of the temporary failure is in its timeline row. ``status=deferred``
and ``recipient_status=<recipient status>`` list what waits, on both stores,
combined with the other filters and through pagination.
"""

from __future__ import annotations

from typing import Any

from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest

LATER = "later@dest.test"
DEFER = "451 4.3.0 please try again later"


async def _ids(pl: PostlineUnderTest, query: str) -> list[str]:
    response = await pl.client.get(f"/v1/emails?{query}", headers=pl.auth())
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["data"]]


def _recipient(detail: dict[str, Any], address: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [r for r in detail["recipients"] if r["address"] == address]
    assert len(found) == 1, found
    return found[0]


async def test_an_email_waiting_for_a_retry_reads_deferred(
    postline_factory: Factory, fake_mx: FakeMX, database_url: str
) -> None:
    # The retry an hour away: the tests' schedule (0.2 s) let a second attempt come
    # before the reads below, one run in forty on a loaded machine.
    pl = await postline_factory(database_url=database_url, retry_schedule="3600")
    fake_mx.on_rcpt(LATER, DEFER)
    waiting = await pl.send(to=[LATER, "ok@dest.test"])
    done = await pl.send(to="fine@other.test")
    detail = await pl.wait_for_status(waiting["id"], ["deferred"])
    await pl.wait_for_status(done["id"], ["delivered"])

    later = _recipient(detail, LATER)
    assert later["status"] == "deferred"
    assert later["next_attempt_at"] is not None
    assert later["bounce_type"] is None, "a deferral is no bounce"
    (row,) = later["timeline"]
    assert (row["status"], row["smtp_code"], row["bounce_type"]) == ("deferred", 451, "soft")
    delivered = _recipient(detail, "ok@dest.test")
    assert (delivered["status"], delivered["bounce_type"]) == ("delivered", None)
    assert delivered["timeline"][0]["bounce_type"] is None
    (event,) = [e for e in detail["events"] if e["type"] == "email.deferred"]
    assert event["recipient"] == LATER

    assert await _ids(pl, "status=deferred") == [waiting["id"]]
    assert await _ids(pl, "status=sending") == []
    assert await _ids(pl, "recipient_status=deferred") == [waiting["id"]]
    # Newest first, whatever else the email's recipients did.
    assert await _ids(pl, "recipient_status=delivered") == [done["id"], waiting["id"]]
    assert await _ids(pl, "recipient_status=delivered&status=delivered") == [done["id"]]
    assert await _ids(pl, "recipient_status=deferred&recipient=ok@dest.test") == [waiting["id"]]
    assert await _ids(pl, "recipient_status=deferred&domain=example.test") == [waiting["id"]]
    assert await _ids(pl, "recipient_status=bounced") == []

    first = await pl.client.get("/v1/emails?recipient_status=delivered&limit=1", headers=pl.auth())
    page = first.json()
    assert [item["id"] for item in page["data"]] == [done["id"]]
    assert page["next_cursor"] == done["id"]
    rest = await _ids(pl, f"recipient_status=delivered&limit=1&cursor={page['next_cursor']}")
    assert rest == [waiting["id"]]


async def test_recipient_status_is_one_of_the_recipient_statuses(
    postline: PostlineUnderTest,
) -> None:
    for query in ("recipient_status=sending", "recipient_status=", "status=waiting"):
        response = await postline.client.get(f"/v1/emails?{query}", headers=postline.auth())
        assert response.status_code == 422, (query, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
