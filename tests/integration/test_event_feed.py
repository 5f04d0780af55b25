"""GET /v1/events: the outbox as a feed a receiver can catch up from, on both stores."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select

from postline.store.schema import events
from postline.store.types import utcnow
from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest


async def _page(pl: PostlineUnderTest, key: str | None = None, **params: Any) -> dict[str, Any]:
    response = await pl.client.get("/v1/events", params=params, headers=pl.auth(key))
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _read_all(pl: PostlineUnderTest, after: str | None, limit: int) -> tuple[list[Any], str]:
    """Every event after ``after``, page by page; and the cursor to go on from."""
    seen: list[Any] = []
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    while True:
        answer = await _page(pl, **params)
        seen.extend(answer["data"])
        params["after"] = answer["next_cursor"]
        if not answer["has_more"]:
            return seen, answer["next_cursor"]


async def _events_of(pl: PostlineUnderTest, email_ids: list[str]) -> set[tuple[str, str]]:
    """What the emails' own answers list, as (event id, type)."""
    found: set[tuple[str, str]] = set()
    for email_id in email_ids:
        found |= {(e["id"], e["type"]) for e in (await pl.email(email_id))["events"]}
    return found


async def test_the_feed_pages_every_event_in_order_and_goes_on_after_a_restart(
    postline_factory: Factory, fake_mx: FakeMX, database_url: str
) -> None:
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    first = await postline_factory(database_url=database_url)
    sent = [
        await first.send(to="a@dest.test"),
        await first.send(to=["b@dest.test", "gone@dest.test"]),
        await first.send(to="c@other.test"),
    ]
    for email in sent:
        await first.wait_until_final(email["id"])
    expected = await _events_of(first, [e["id"] for e in sent])
    assert ("email.bounced" in {kind for _, kind in expected}) and len(expected) >= 7

    seen, cursor = await _read_all(first, None, limit=2)
    assert {(e["id"], e["type"]) for e in seen} == expected
    assert len(seen) == len(expected)  # each once
    positions = [int(e["cursor"]) for e in seen]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert cursor == seen[-1]["cursor"]
    bounced = next(e for e in seen if e["type"] == "email.bounced")
    assert bounced["data"]["recipient"] == "gone@dest.test"
    assert bounced["email_id"] == sent[1]["id"]
    assert bounced["created_at"].endswith("Z")
    # At the end: nothing more, and the cursor stays where it was, to be asked again.
    end = await _page(first, after=cursor)
    assert (end["data"], end["has_more"], end["next_cursor"]) == ([], False, cursor)
    await first.stop_engine()

    # A new process on the same database: the cursor kept outside goes on from there.
    second = await postline_factory(database_url=database_url, domains=())
    later = await second.send(to="d@dest.test")
    await second.wait_until_final(later["id"])
    after_restart, _ = await _read_all(second, cursor, limit=50)
    assert {(e["id"], e["type"]) for e in after_restart} == await _events_of(second, [later["id"]])
    assert min(int(e["cursor"]) for e in after_restart) > int(cursor)


async def test_an_event_that_commits_after_a_newer_one_is_still_read(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    """Ids are made before their transaction commits, so a reader paging by id would skip
    an event committed late with an older id. The feed's positions come after the
    commit: the late event follows the cursor the reader already holds."""
    sent = await postline.send(to="a@dest.test")
    await postline.wait_until_final(sent["id"])
    _, cursor = await _read_all(postline, None, limit=100)
    async with postline.services.db.write() as conn:
        template = (await conn.execute(select(events).limit(1))).mappings().one()
        late = {**template, "id": "evt_00000000000000000000000001", "feed_position": None}
        late["created_at"] = utcnow()
        await conn.execute(insert(events).values(**late))
    (read,) = (await _page(postline, after=cursor))["data"]
    assert read["id"] == "evt_00000000000000000000000001"
    assert int(read["cursor"]) > int(cursor)


async def test_the_feed_filters_by_type_and_shows_a_scoped_key_its_domain_only(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    pl = await postline_factory(domains=("example.test", "second.test"))
    ours = await pl.send(to=["a@dest.test", "gone@dest.test"])
    theirs = await pl.send(**{"from": "x@second.test"}, to="b@dest.test")
    for email in (ours, theirs):
        await pl.wait_until_final(email["id"])
    made = await pl.client.post(
        "/v1/api-keys", json={"name": "scoped", "domain": "second.test"}, headers=pl.auth()
    )
    assert made.status_code == 201, made.text
    scoped = made.json()["key"]

    only_bounces = await _page(pl, type="email.bounced")
    assert [(e["type"], e["data"]["recipient"]) for e in only_bounces["data"]] == [
        ("email.bounced", "gone@dest.test")
    ]
    several = await _page(pl, type="email.bounced,email.delivered")
    assert {e["type"] for e in several["data"]} == {"email.bounced", "email.delivered"}

    scoped_view = await _page(pl, key=scoped)
    assert scoped_view["data"] and {e["email_id"] for e in scoped_view["data"]} == {theirs["id"]}


async def test_a_bad_cursor_or_type_is_a_problem_not_an_empty_page(
    postline: PostlineUnderTest,
) -> None:
    for params, status, field in (
        ({"after": "evt_123"}, 400, "after"),
        ({"after": "-1"}, 400, "after"),
        ({"type": "email.opend"}, 422, "type"),
        ({"limit": "0"}, 422, "limit"),
    ):
        response = await postline.client.get("/v1/events", params=params, headers=postline.auth())
        assert response.status_code == status, (params, response.text)
        assert field in response.text
    assert (await postline.client.get("/v1/events")).status_code == 401
