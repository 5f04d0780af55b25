"""/v1/templates and sends that name one: versions, sandboxed rendering, scoping."""

from __future__ import annotations

import email
import email.policy
from typing import Any

from tests.harness import FakeMX
from tests.harness.postline import Factory, PostlineUnderTest

WELCOME = {
    "name": "welcome",
    "subject": "Welcome, {{ name }}",
    "html": "<p>Hello {{ name }}, your plan is {{ plan }}.</p>",
    "text": "Hello {{ name }}, your plan is {{ plan }}.",
}


async def _create(pl: PostlineUnderTest, body: dict[str, Any], key: str | None = None) -> Any:
    response = await pl.client.post("/v1/templates", json=body, headers=pl.auth(key))
    assert response.status_code == 201, response.text
    return response.json()


def _parts(raw: bytes) -> tuple[str, str, str]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    html = message.get_body(("html",))
    text = message.get_body(("plain",))
    assert html is not None and text is not None
    return str(message["Subject"]), html.get_content(), text.get_content()


async def test_a_template_send_arrives_rendered_with_html_escaped_and_text_as_given(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    template = await _create(postline, WELCOME)
    assert (template["id"].startswith("tpl_"), template["version"]) == (True, 1)
    variables = {"name": "Ada <script>alert(1)</script>", "plan": "Pro & more"}
    sent = await postline.client.post(
        "/v1/emails",
        json={
            "from": "Sender <sender@example.test>",
            "to": ["a@dest.test"],
            "template": {"id": template["id"], "variables": variables},
        },
        headers=postline.auth(),
    )
    assert sent.status_code == 202, sent.text
    await postline.wait_for_status(sent.json()["id"], ["delivered"])
    (received,) = fake_mx.received
    subject, html, text = _parts(received.data)
    assert subject == "Welcome, Ada <script>alert(1)</script>"
    assert (
        "<p>Hello Ada &lt;script&gt;alert(1)&lt;/script&gt;, your plan is Pro &amp; more.</p>"
        in html
    )
    assert "<script>" not in html
    assert text.strip() == "Hello Ada <script>alert(1)</script>, your plan is Pro & more."


async def test_a_missing_variable_is_a_422_naming_it_and_nothing_is_sent(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    template = await _create(postline, WELCOME)
    response = await postline.client.post(
        "/v1/emails",
        json={
            "from": "sender@example.test",
            "to": ["a@dest.test"],
            "template": {"id": template["id"], "variables": {"name": "Ada"}},
        },
        headers=postline.auth(),
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert "plan" in problem["detail"]
    assert problem["errors"] == [
        {"field": "template.variables.plan", "message": problem["errors"][0]["message"]}
    ]
    listed = await postline.client.get("/v1/emails", headers=postline.auth())
    assert listed.json()["data"] == []
    preview = await postline.client.post(
        f"/v1/templates/{template['id']}/render",
        json={"variables": {"plan": "Pro"}},
        headers=postline.auth(),
    )
    assert preview.status_code == 422 and "'name'" in preview.json()["detail"]


async def test_versions_are_kept_and_a_send_may_name_one(
    postline: PostlineUnderTest, fake_mx: FakeMX
) -> None:
    template = await _create(postline, WELCOME)
    edited = await postline.client.put(
        f"/v1/templates/{template['id']}",
        json={"subject": "Hi {{ name }}", "text": "Version two for {{ name }}"},
        headers=postline.auth(),
    )
    assert edited.status_code == 200, edited.text
    assert (edited.json()["version"], edited.json()["name"]) == (2, "welcome")
    first = await postline.client.get(
        f"/v1/templates/{template['id']}/versions/1", headers=postline.auth()
    )
    assert (first.json()["subject"], first.json()["latest_version"]) == ("Welcome, {{ name }}", 2)
    latest = await postline.client.get(f"/v1/templates/{template['id']}", headers=postline.auth())
    assert latest.json()["html"] is None and latest.json()["version"] == 2
    missing = await postline.client.get(
        f"/v1/templates/{template['id']}/versions/3", headers=postline.auth()
    )
    assert missing.status_code == 404 and "no version 3" in missing.json()["detail"]

    body = {"from": "sender@example.test", "to": ["a@dest.test"]}
    old = {"id": template["id"], "version": 1, "variables": {"name": "Ada", "plan": "Pro"}}
    new = {"id": template["id"], "variables": {"name": "Bob"}}
    batch = await postline.client.post(
        "/v1/emails/batch",
        json=[{**body, "template": old}, {**body, "template": new}],
        headers=postline.auth(),
    )
    assert batch.status_code == 202, batch.text
    for accepted in batch.json()["data"]:
        await postline.wait_for_status(accepted["id"], ["delivered"])
    subjects = sorted(_parts_subject(m.data) for m in fake_mx.received)
    assert subjects == ["Hi Bob", "Welcome, Ada"]


def _parts_subject(raw: bytes) -> str:
    return str(email.message_from_bytes(raw, policy=email.policy.default)["Subject"])


async def test_bad_templates_and_bad_sends_are_refused_clearly(
    postline: PostlineUnderTest,
) -> None:
    broken = await postline.client.post(
        "/v1/templates",
        json={"name": "x", "subject": "Hi", "text": "{% for x in y %}no end"},
        headers=postline.auth(),
    )
    assert broken.status_code == 422 and "text" in broken.json()["detail"]
    sneaky = await _create(
        postline, {"name": "s", "subject": "{{ ''.__class__.__mro__ }}", "text": "x"}
    )
    escape = await postline.client.post(
        f"/v1/templates/{sneaky['id']}/render", json={}, headers=postline.auth()
    )
    assert escape.status_code == 422, escape.text
    injected = await _create(postline, {"name": "i", "subject": "{{ s }}", "text": "x"})
    header = await postline.client.post(
        f"/v1/templates/{injected['id']}/render",
        json={"variables": {"s": "Hi\r\nBcc: victim@dest.test"}},
        headers=postline.auth(),
    )
    assert header.status_code == 422 and "subject" in header.json()["detail"]
    both = await postline.client.post(
        "/v1/emails",
        json={
            "from": "sender@example.test",
            "to": ["a@dest.test"],
            "subject": "Hi",
            "template": {"id": injected["id"]},
        },
        headers=postline.auth(),
    )
    assert both.status_code == 422 and "template" in both.text
    unknown = await postline.client.post(
        "/v1/emails",
        json={
            "from": "sender@example.test",
            "to": ["a@dest.test"],
            "template": {"id": "tpl_nope"},
        },
        headers=postline.auth(),
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "template.id"
    neither = await postline.client.post(
        "/v1/emails",
        json={"from": "sender@example.test", "to": ["a@dest.test"], "text": "x"},
        headers=postline.auth(),
    )
    assert neither.status_code == 422 and "subject" in neither.text


async def test_a_scoped_key_sees_and_uses_only_its_domains_templates(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory(domains=("example.test", "second.test"))
    keys = {}
    for domain in ("example.test", "second.test"):
        made = await pl.client.post(
            "/v1/api-keys", json={"name": domain, "domain": domain}, headers=pl.auth()
        )
        keys[domain] = made.json()["key"]
    ours = await _create(pl, {**WELCOME, "name": "ours"}, key=keys["example.test"])
    assert ours["domain"] == "example.test"
    admins = await _create(pl, {**WELCOME, "name": "admin only"})
    assert admins["domain"] is None

    for other in (ours["id"], admins["id"]):
        seen = await pl.client.get(f"/v1/templates/{other}", headers=pl.auth(keys["second.test"]))
        assert seen.status_code == 404
    listed = await pl.client.get("/v1/templates", headers=pl.auth(keys["second.test"]))
    assert listed.json()["data"] == []
    use = await pl.client.post(
        "/v1/emails",
        json={
            "from": "x@second.test",
            "to": ["a@dest.test"],
            "template": {"id": ours["id"], "variables": {"name": "A", "plan": "B"}},
        },
        headers=pl.auth(keys["second.test"]),
    )
    assert use.status_code == 422 and ours["id"] in use.json()["detail"]
    gone = await pl.client.delete(
        f"/v1/templates/{ours['id']}", headers=pl.auth(keys["example.test"])
    )
    assert gone.status_code == 204
    assert (
        await pl.client.get(f"/v1/templates/{ours['id']}", headers=pl.auth())
    ).status_code == 404


async def test_a_template_cannot_build_a_huge_string_or_crash_the_request(
    postline: PostlineUnderTest,
) -> None:
    for source in (
        "{{ 'x' * 1000000000 }}",
        "{{ 10 ** 100000000 }}",
        "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "{{ 1 / 0 }}",
        "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}",
    ):
        made = await _create(postline, {"name": "evil", "subject": "s", "text": source})
        response = await postline.client.post(
            f"/v1/templates/{made['id']}/render", json={}, headers=postline.auth()
        )
        assert response.status_code == 422, (source, response.text[:300])
        assert response.json()["errors"][0]["field"] == "text"
