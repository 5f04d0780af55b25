"""A batch larger than one compose chunk: every email's message is its own, in order; and
the line each accepted email is logged with."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from postline.accept import COMPOSE_CHUNK, Accepted, Acceptor, Recipient, Submission
from postline.ids import new_id
from postline.keys import Principal
from postline.message import Content
from postline.store import domains as domain_store
from postline.store import suppressions as suppression_store
from postline.store.schema import domains, email_recipients, events, queue_jobs, sent_emails
from postline.store.types import utcnow
from tests.harness.postline import Factory, PostlineUnderTest

ADMIN = Principal(key_id="key_test", name="test", domain_id=None, domain_name=None)


def _one_recipient(
    subject: str, *, from_name: str = "Sender", scheduled_at: datetime | None = None
) -> Submission:
    """An email from sender@example.test to a@dest.test alone, as the API would pass it."""
    return Submission(
        content=Content(
            from_name=from_name,
            from_address="sender@example.test",
            to=["a@dest.test"],
            subject=subject,
            text="Hello",
        ),
        recipients=[Recipient("a@dest.test", "to")],
        scheduled_at=scheduled_at,
    )


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
    submission = _one_recipient("never accepted")
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
        await pl.services.acceptor.accept([submission], ADMIN, on_commit=fail)
    lines = [r.getMessage() for r in caplog.records if r.name == "postline.accept"]
    assert lines == [
        f"cannot remove the body of unaccepted email_id={refused[0]} (orphan cleanup will):"
        " IsADirectoryError"
    ]


async def _rows(pl: PostlineUnderTest, table: Table, email_id: str) -> list[dict[str, Any]]:
    key = table.c.id if table is sent_emails else table.c.email_id
    async with pl.services.db.read() as conn:
        result = await conn.execute(select(table).where(key == email_id).order_by(table.c.id))
        return [dict(row) for row in result.mappings()]


async def test_an_accepted_email_writes_every_column_of_its_rows_and_jobs(
    postline_factory: Factory,
) -> None:
    """Field by field: a renamed key of a row is dropped without an error (its column
    stays NULL or takes its default), so only reading the rows shows it. A scheduled
    email of four recipients on two destinations, one of them suppressed: one job per
    destination due at the schedule, of the recipients not suppressed; a recipient named
    twice is one recipient, of the kind it was first named with."""
    pl = await postline_factory(engine=False)
    acceptor: Acceptor = pl.services.acceptor
    async with pl.services.db.write() as conn:
        domain = await domain_store.get_domain_by_name(conn, "example.test")
        assert domain is not None
        await suppression_store.add_suppression(
            conn,
            suppression_id=new_id("sup_"),
            domain_id=domain.id,
            address="gone@dest.test",
            reason="hard_bounce",
            now=utcnow(),
        )
    scheduled = utcnow() + timedelta(hours=1)
    addresses = [("a@dest.test", "to"), ("b@other.test", "cc"), ("gone@dest.test", "cc")]
    addresses.append(("c@dest.test", "bcc"))
    submission = Submission(
        content=Content(
            from_name="The Sender",
            from_address="sender@example.test",
            to=["a@dest.test"],
            cc=["b@other.test", "gone@dest.test"],
            subject="S" * 1001,
            text="hello",
        ),
        recipients=[
            Recipient(address, kind) for address, kind in [*addresses, ("a@dest.test", "bcc")]
        ],
        tags={"campaign": "field-by-field"},
        scheduled_at=scheduled,
    )
    before = utcnow()
    (accepted,) = await acceptor.accept([submission], ADMIN)
    statuses = ["scheduled", "scheduled", "suppressed", "scheduled"]
    assert accepted.recipients == [(a, s) for (a, _), s in zip(addresses, statuses, strict=True)]
    assert re.fullmatch(r"em_[0-9a-z]{26}", accepted.id)
    (email,) = await _rows(pl, sent_emails, accepted.id)
    created = email["created_at"]
    assert before <= created <= utcnow()
    body = await pl.services.spool.get(accepted.id)
    assert email == {
        "id": accepted.id,
        "domain_id": domain.id,
        "source": "api",
        "message_id": accepted.message_id,
        "from_header": "The Sender <sender@example.test>",
        "from_address": "sender@example.test",
        "envelope_from": acceptor.return_paths.address(accepted.id, "example.test"),
        "subject": "S" * 1000,
        "size": len(body),
        "body_ref": accepted.id,
        "tags": {"campaign": "field-by-field"},
        "status": "scheduled",
        "scheduled_at": scheduled,
        "created_at": created,
        "updated_at": created,
        "original_email_id": None,
        "body_purged_at": None,
    } | {k: v for k, v in email.items() if k not in _ACCEPT_COLUMNS}
    recipients = await _rows(pl, email_recipients, accepted.id)
    recipients.sort(key=lambda r: r["position"])
    for position, (row, (address, kind), status) in enumerate(
        zip(recipients, addresses, statuses, strict=True)
    ):
        assert row["id"].startswith("rcp_")
        assert {k: v for k, v in row.items() if k != "id"} == {
            "email_id": accepted.id,
            "position": position,
            "address": address,
            "destination": address.rpartition("@")[2],
            "kind": kind,
            "status": status,
            "smtp_code": None,
            "enhanced_code": None,
            "response": None,
            "bounce_type": None,
            "bounce_rule": None,
            "attempts": 0,
            "next_attempt_at": None,
            "created_at": created,
            "updated_at": created,
        } | {k: v for k, v in row.items() if k not in _RECIPIENT_COLUMNS}
    ids = [row["id"] for row in recipients]
    outbox = sorted(await _rows(pl, events, accepted.id), key=lambda e: e["sequence"])
    assert [(e["sequence"], e["recipient_id"], e["type"]) for e in outbox] == [
        (1, ids[0], "email.queued"),
        (2, ids[1], "email.queued"),
        (3, ids[2], "email.suppressed"),
        (4, ids[3], "email.queued"),
    ]
    assert outbox[2]["payload"]["data"]["reason"] == "on the suppression list"
    assert outbox[0]["payload"]["data"]["reason"] is None
    assert {e["payload"]["data"]["attempt"] for e in outbox} == {0}
    assert [e["payload"]["data"]["status"] for e in outbox] == statuses
    jobs = {job["destination"]: job for job in await _rows(pl, queue_jobs, accepted.id)}
    assert {d: (j["recipient_ids"], j["body_ref"], j["due_at"]) for d, j in jobs.items()} == {
        "dest.test": ([ids[0], ids[3]], accepted.id, scheduled),
        "other.test": ([ids[1]], accepted.id, scheduled),
    }
    assert all(j["id"].startswith("job_") for j in jobs.values())


async def test_an_email_scheduled_for_a_time_gone_by_is_queued_as_it_is_accepted(
    postline_factory: Factory,
) -> None:
    """A schedule already past (a client's clock behind, an old request sent again) is
    no schedule: the email is queued, and its job is due when it was accepted, not at
    that past time, which would put it ahead of mail accepted before it. (Mutation
    testing: a job due at a past schedule passed every test.)"""
    pl = await postline_factory(engine=False)
    submission = _one_recipient("late", scheduled_at=utcnow() - timedelta(hours=1))
    (accepted,) = await pl.services.acceptor.accept([submission], ADMIN)
    assert accepted.recipients == [("a@dest.test", "queued")]
    (email,) = await _rows(pl, sent_emails, accepted.id)
    assert (email["status"], email["scheduled_at"]) == ("queued", None)
    (job,) = await _rows(pl, queue_jobs, accepted.id)
    assert job["due_at"] == email["created_at"]


async def test_an_email_without_a_senders_name_is_listed_from_its_address_alone(
    postline_factory: Factory,
) -> None:
    """``from_header`` is the From that lists and the email's detail show: the name and
    the address in angle brackets, or the bare address when the send named nobody.
    (Mutation testing: every test of the accept's rows gave a name.)"""
    pl = await postline_factory(engine=False)
    (accepted,) = await pl.services.acceptor.accept([_one_recipient("x", from_name="")], ADMIN)
    (email,) = await _rows(pl, sent_emails, accepted.id)
    assert email["from_header"] == "sender@example.test"


#: The columns the accept writes (the others are set later, by their defaults).
_ACCEPT_COLUMNS = {
    "id",
    "domain_id",
    "source",
    "message_id",
    "from_header",
    "from_address",
    "envelope_from",
    "subject",
    "size",
    "body_ref",
    "tags",
    "status",
    "scheduled_at",
    "created_at",
    "updated_at",
    "original_email_id",
    "body_purged_at",
}
_RECIPIENT_COLUMNS = {
    "id",
    "email_id",
    "position",
    "address",
    "destination",
    "kind",
    "status",
    "smtp_code",
    "enhanced_code",
    "response",
    "bounce_type",
    "bounce_rule",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
}


async def test_an_email_from_a_domain_without_a_dkim_key_is_accepted_unsigned(
    postline_factory: Factory,
) -> None:
    """The key column may be empty (a domain row written without one, as by hand or a
    tool): its mail is accepted and goes out unsigned rather than failing to compose.
    (Mutation testing: every test's domain had a key, so a signer made of nothing passed.)"""
    pl = await postline_factory(engine=False)
    async with pl.services.db.write() as conn:
        await conn.execute(
            update(domains).where(domains.c.name == "example.test").values(dkim_private_key=None)
        )
    (accepted,) = await pl.services.acceptor.accept([_one_recipient("unsigned")], ADMIN)
    body = await pl.services.spool.get(accepted.id)
    assert b"\r\nSubject: unsigned\r\n" in body
    assert b"DKIM-Signature" not in body
