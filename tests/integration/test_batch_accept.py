"""A batch larger than one compose chunk: every email's message is its own, in order; and
the line each accepted email is logged with."""

from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.accept import COMPOSE_CHUNK, Accepted, Recipient, Submission
from postline.keys import Principal
from postline.message import Content
from tests.harness.postline import Factory


async def test_each_email_of_a_batch_gets_its_own_message(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    count = 2 * COMPOSE_CHUNK + 3  # three chunks, the last one short
    body = [
        {
            "from": "sender@example.test",
            "to": [f"r{i}@dest.test"],
            "subject": f"number {i}",
            "text": f"body {i}",
        }
        for i in range(count)
    ]
    response = await pl.client.post("/v1/emails/batch", json=body, headers=pl.auth())
    assert response.status_code == 202, response.text
    accepted = response.json()["data"]
    assert [item["recipients"][0]["address"] for item in accepted] == [
        f"r{i}@dest.test" for i in range(count)
    ]
    for i in (0, COMPOSE_CHUNK - 1, COMPOSE_CHUNK, count - 1):
        raw = await pl.client.get(f"/v1/emails/{accepted[i]['id']}/content", headers=pl.auth())
        assert raw.status_code == 200, raw.text
        message = raw.content
        assert f"Subject: number {i}\r\n".encode() in message
        assert f"Message-ID: <{accepted[i]['id']}@".encode() in message
        assert b"DKIM-Signature:" in message


async def test_each_accepted_email_is_logged_once_with_its_id_counts_and_source(
    postline_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The info line an operator follows an email by: its id, not its addresses."""
    pl = await postline_factory(engine=False)
    with caplog.at_level(logging.INFO, logger="postline.accept"):
        sent = await pl.send(to=["a@dest.test", "b@dest.test"])
    lines = [r.getMessage() for r in caplog.records if r.name == "postline.accept"]
    assert len(lines) == 1, lines
    pattern = rf"accepted email_id={sent['id']} recipients=2 size=[1-9][0-9]* source=api"
    assert re.fullmatch(pattern, lines[0]), lines


async def test_a_body_that_cannot_be_removed_after_a_failed_commit_is_named_for_cleanup(
    postline_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit fails (here ``on_commit`` raises) after the body was written, and the
    body cannot be removed (a directory stands where its file was): the commit's error
    is what the caller hears, and a warning names the email whose body is left for
    orphan cleanup, and why."""
    pl = await postline_factory(engine=False)
    submission = Submission(
        content=Content(
            from_name="Sender",
            from_address="sender@example.test",
            to=["a@dest.test"],
            subject="never accepted",
            text="Hello",
        ),
        recipients=[Recipient("a@dest.test", "to")],
    )
    principal = Principal(key_id="key_test", name="test", domain_id=None, domain_name=None)
    refused: list[str] = []

    async def fail(conn: AsyncConnection, results: list[Accepted]) -> None:
        (accepted,) = results
        body = pl.settings.spool_path / accepted.id[-2:] / f"{accepted.id}.eml"
        body.unlink()
        body.mkdir()
        refused.append(accepted.id)
        raise RuntimeError("commit refused")

    with (
        caplog.at_level(logging.WARNING, logger="postline.accept"),
        pytest.raises(RuntimeError, match="commit refused"),
    ):
        await pl.services.acceptor.accept([submission], principal, on_commit=fail)
    lines = [r.getMessage() for r in caplog.records if r.name == "postline.accept"]
    assert lines == [
        f"cannot remove the body of unaccepted email_id={refused[0]} (orphan cleanup will):"
        " IsADirectoryError"
    ]
