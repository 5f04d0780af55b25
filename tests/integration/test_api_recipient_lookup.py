"""GET /v1/recipients/{address} ("why didn't they get it?") and GET /v1/stats (the
overview's numbers): what each answers, and what a scoped key may see of them."""

from __future__ import annotations

from postline.keys import create_key
from tests.harness.fake_mx import FakeMX
from tests.harness.postline import Factory


async def test_the_lookup_shows_each_email_the_suppression_and_the_destination(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(domains=("example.test", "other.test"))
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    first = await pl.send(to=["gone@dest.test"], subject="First")
    await pl.wait_until_final(first["id"])
    second = await pl.send(to=["gone@dest.test"], subject="Second")
    await pl.wait_until_final(second["id"])
    theirs = await pl.send(**{"from": "x@other.test"}, to=["gone@dest.test"], subject="Theirs")
    await pl.wait_until_final(theirs["id"])

    answer = await pl.client.get("/v1/recipients/Gone@Dest.test", headers=pl.auth())
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["address"] == "gone@dest.test"
    assert [e["subject"] for e in body["emails"]] == ["Theirs", "Second", "First"]
    assert body["emails"][2]["status"] == "bounced"
    assert (body["emails"][2]["smtp_code"], body["emails"][2]["enhanced_code"]) == (550, "5.1.1")
    assert body["emails"][1]["status"] == "suppressed"  # held back by the first bounce
    causes = {(s["domain"], s["reason"], s["source_email_id"]) for s in body["suppressions"]}
    assert ("example.test", "hard_bounce", first["id"]) in causes
    assert body["destination"] == {
        "domain": "dest.test",
        "breaker": "closed",
        "breaker_until": None,
    }
    assert body["next_attempt_at"] is None

    scoped = await create_key(pl.services.db, "scoped", "example.test")
    mine = (
        await pl.client.get("/v1/recipients/gone@dest.test", headers=pl.auth(scoped.key))
    ).json()
    assert [e["subject"] for e in mine["emails"]] == ["Second", "First"]
    assert {s["domain"] for s in mine["suppressions"]} == {"example.test"}

    refused = await pl.client.get("/v1/recipients/not-an-address", headers=pl.auth())
    assert refused.status_code == 422, refused.text
