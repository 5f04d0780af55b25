"""GET /v1/stats: a run's outcomes counted exactly, once, on both stores."""

from __future__ import annotations

from typing import Any

from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest


async def _stats(pl: PostlineUnderTest, key: str | None = None, **params: str) -> Any:
    response = await pl.client.get("/v1/stats", params=params, headers=pl.auth(key))
    assert response.status_code == 200, response.text
    return response.json()


async def test_stats_count_every_outcome_of_a_run_once(
    postline_factory: Factory, fake_mx: FakeMX, database_url: str
) -> None:
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    fake_mx.on_rcpt("blocked@dest.test", "554 5.7.1 blocked by policy")
    fake_mx.on_rcpt("later@dest.test", "451 4.3.0 try again", "250 OK")
    pl = await postline_factory(database_url=database_url)
    first = [
        await pl.send(to=["a@dest.test", "b@dest.test"]),
        await pl.send(to="c@other.test"),
        await pl.send(to=["gone@dest.test", "blocked@dest.test"]),
        await pl.send(to="later@dest.test"),
    ]
    for email in first:
        await pl.wait_until_final(email["id"])
    again = await pl.send(to=["gone@dest.test"])  # suppressed by the hard bounce
    await pl.wait_until_final(again["id"])

    # The feed numbers some events first: each still counts once.
    assert (await pl.client.get("/v1/events", params={"limit": 3}, headers=pl.auth())).is_success
    stats = await _stats(pl)
    assert stats["bucket"] == "hour" and stats["domain"] is None
    totals = stats["totals"]
    assert {k: totals[k] for k in totals if not k.endswith("_rate")} == {
        "accepted": 7,
        "delivered": 4,
        "deferred": 1,
        "bounced": 2,
        "bounced_hard": 1,
        "bounced_soft": 0,
        "bounced_block": 1,
        "bounced_undetermined": 0,
        "complained": 0,
        "failed": 0,
        "suppressed": 1,
        "cancelled": 0,
        "opened": 0,
        "clicked": 0,
        "unsubscribed": 0,
        "received": 0,
    }
    assert (totals["delivery_rate"], totals["bounce_rate"]) == (round(4 / 6, 4), round(2 / 6, 4))
    assert sum(bucket["delivered"] for bucket in stats["data"]) == 4
    assert await _stats(pl) == stats  # asking again counts nothing twice

    by_day = await _stats(pl, bucket="day", domain="example.test")
    assert by_day["domain"] == "example.test"
    assert len(by_day["data"]) == 1 and by_day["data"][0]["accepted"] == 7


async def test_a_scoped_key_counts_its_domain_only_and_bad_windows_are_refused(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(domains=("example.test", "second.test"))
    sent = await pl.send(to="a@dest.test")
    await pl.wait_until_final(sent["id"])
    made = await pl.client.post(
        "/v1/api-keys", json={"name": "s", "domain": "second.test"}, headers=pl.auth()
    )
    scoped = made.json()["key"]
    theirs = await _stats(pl, key=scoped)
    assert (theirs["domain"], theirs["totals"]["accepted"]) == ("second.test", 0)
    other = await pl.client.get(
        "/v1/stats", params={"domain": "example.test"}, headers=pl.auth(scoped)
    )
    assert other.status_code == 403
    for params in (
        {"from": "2026-12-06T10:00:00Z", "to": "2026-12-06T09:00:00Z"},
        {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from": "2026-12-06T10:00:00"},
        {"bucket": "week"},
        {"to": "0001-01-01T00:06:01Z"},
        {"to": "9999-12-31T23:59:00Z"},
    ):
        refused = await pl.client.get("/v1/stats", params=params, headers=pl.auth())
        assert refused.status_code == 422, (params, refused.text)
