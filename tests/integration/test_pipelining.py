"""PIPELINING (RFC 2920): when the MX offers it, MAIL, the RCPTs and DATA go in one write.

The servers prove the batching rather than trust it. FakeMX records what each
socket read brought. BatchMX answers nothing until DATA has arrived, then sends
every reply in one write. Each reply still decides the command it answers, as
on the sequential path. A server that lies during a batch cannot hang the
engine, get a body sent without a 354, or have its session reused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness import FakeDNS, FakeMX
from tests.harness.batch_mx import BatchMX
from tests.harness.evil_mx import MODES, EvilMX, Mode, Stage
from tests.harness.postline import Factory
from tests.harness.raw_mx_postline import ATTEMPT_BOUND, postline_routed_to, timed_first_attempt
from tests.harness.tls import ThrowawayCA
from tests.integration.test_evil_mx import (
    _assert_clean,
    _assert_logs_clean,
    _no_engine_errors,
    _still_delivers,
)

PIPELINING_EHLO = b"250-evil.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


def _batches(mx: FakeMX) -> list[list[str]]:
    """Per transaction, the commands that arrived before the server answered its MAIL.

    Reads are grouped by how many replies the server had sent when they came (TLS may
    split one write into several reads). A client that waits for each reply makes
    groups of one command.
    """
    groups: dict[tuple[int, int], list[str]] = {}
    for chunk in mx.chunks:
        groups.setdefault((chunk.session, chunk.replies_sent), []).extend(chunk.verbs)
    return [verbs for verbs in groups.values() if verbs[:1] == ["MAIL"]]


async def _until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _timeline(detail: dict[str, Any]) -> dict[str, list[tuple[str, int | None]]]:
    return {
        r["address"]: [(t["status"], t["smtp_code"]) for t in r["timeline"]]
        for r in detail["recipients"]
    }


# --------------------------------------------------------------- FakeMX (aiosmtpd)


async def test_mail_rcpts_and_data_go_before_any_reply_with_their_parameters(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.pipelining = True
    pl = await postline_factory()
    sent = await pl.send(
        to=["a@dest.test", "jörg@dest.test"], cc="c@dest.test", text="Grüße\n.leading dot\n"
    )
    await pl.wait_for_status(sent["id"], ["delivered"])
    assert _batches(fake_mx) == [["MAIL", "RCPT", "RCPT", "RCPT", "DATA"]]
    (received,) = fake_mx.received
    assert sorted(received.rcpt_tos) == ["a@dest.test", "c@dest.test", "jörg@dest.test"]
    assert "SMTPUTF8" in received.mail_options
    assert any(option.startswith("SIZE=") for option in received.mail_options)
    assert "Grüße" in received.message.get_body().get_content()  # type: ignore[union-attr]
    assert b"\r\n.leading dot\r\n" in received.data  # dot-stuffed on the wire, then undone


async def test_without_pipelining_each_command_waits_for_its_reply(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    pl = await postline_factory()
    sent = await pl.send(to=["a@dest.test", "b@dest.test"])
    await pl.wait_for_status(sent["id"], ["delivered"])
    assert _batches(fake_mx) == [["MAIL"]]
    verbs = [verb for chunk in fake_mx.chunks for verb in chunk.verbs]
    assert verbs[verbs.index("MAIL") :][:4] == ["MAIL", "RCPT", "RCPT", "DATA"]


async def test_mixed_replies_go_to_their_own_recipients(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.pipelining = True
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    fake_mx.on_rcpt("later@dest.test", "451 4.3.0 try again later", "250 2.1.5 OK")
    pl = await postline_factory()
    sent = await pl.send(to=["here@dest.test", "gone@dest.test", "later@dest.test"])
    detail = await pl.wait_for_status(sent["id"], ["partially_delivered"])
    assert _timeline(detail) == {
        "here@dest.test": [("delivered", 250)],
        "gone@dest.test": [("bounced", 550)],
        "later@dest.test": [("deferred", 451), ("delivered", 250)],
    }
    gone = next(r for r in detail["recipients"] if r["address"] == "gone@dest.test")
    assert (gone["enhanced_code"], gone["bounce_type"]) == ("5.1.1", "hard")
    assert [m.rcpt_tos for m in fake_mx.received] == [["here@dest.test"], ["later@dest.test"]]
    assert [len(batch) for batch in _batches(fake_mx)] == [5, 3]  # MAIL, RCPTs, DATA
    assert fake_mx.connections == 1  # the retry went over the pooled session


async def test_all_refused_sends_no_body_resets_and_keeps_the_session(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.pipelining = True
    fake_mx.on_rcpt("x@dest.test", "550 5.1.1 no such user")
    fake_mx.on_rcpt("y@dest.test", "554 5.7.1 blocked")
    pl = await postline_factory()
    sent = await pl.send(to=["x@dest.test", "y@dest.test"])
    detail = await pl.wait_for_status(sent["id"], ["bounced"])
    assert _timeline(detail) == {
        "x@dest.test": [("bounced", 550)],
        "y@dest.test": [("bounced", 554)],
    }
    # DATA went in the batch and got 503 (no valid recipients); then RSET, never a body.
    verbs = [verb for chunk in fake_mx.chunks for verb in chunk.verbs]
    assert verbs[verbs.index("MAIL") :] == ["MAIL", "RCPT", "RCPT", "DATA", "RSET"]
    assert fake_mx.received == fake_mx.rejected == fake_mx.dropped == []
    after = await pl.send(to="ok@dest.test")
    await pl.wait_for_status(after["id"], ["delivered"])
    assert fake_mx.connections == 1


async def test_a_refused_sender_decides_every_recipient(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.pipelining = True
    fake_mx.on_mail("550 5.7.1 sender blocked", "250 2.1.0 OK")
    pl = await postline_factory()
    sent = await pl.send(to=["a@dest.test", "b@dest.test"])
    detail = await pl.wait_for_status(sent["id"], ["bounced"])
    for recipient in detail["recipients"]:
        assert (recipient["smtp_code"], recipient["enhanced_code"]) == (550, "5.7.1")
        assert recipient["bounce_type"] == "block"
    assert fake_mx.received == fake_mx.rejected == []
    after = await pl.send(to="c@dest.test")
    await pl.wait_for_status(after["id"], ["delivered"])
    assert fake_mx.connections == 1  # in step after the refusal: the session carried on


async def test_421_mid_batch_drops_the_connection_and_defers_everyone(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.pipelining = True
    fake_mx.on_rcpt("b@dest.test", "421 4.3.2 shutting down", "250 2.1.5 OK")
    pl = await postline_factory()
    sent = await pl.send(to=["a@dest.test", "b@dest.test", "c@dest.test"])
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    first = {address: rows[0] for address, rows in _timeline(detail).items()}
    assert first == dict.fromkeys(["a@dest.test", "b@dest.test", "c@dest.test"], ("deferred", 421))
    (received,) = fake_mx.received
    assert sorted(received.rcpt_tos) == ["a@dest.test", "b@dest.test", "c@dest.test"]
    assert fake_mx.connections == 2  # the session that said 421 was not reused


@pytest.mark.parametrize("pipelining", [True, False])
async def test_421_mid_transaction_keeps_the_refusals_already_received(
    postline_factory: Factory, fake_mx: FakeMX, pipelining: bool
) -> None:
    """A definite 5xx for a RCPT stands though the server then closes with 421: that
    recipient is bounced (and suppressed), the others deferred and sent again without it."""
    fake_mx.pipelining = pipelining
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    fake_mx.on_rcpt("b@dest.test", "421 4.3.2 shutting down", "250 2.1.5 OK")
    pl = await postline_factory()
    sent = await pl.send(to=["gone@dest.test", "b@dest.test", "c@dest.test"])
    detail = await pl.wait_for_status(sent["id"], ["partially_delivered"])
    assert _timeline(detail) == {
        "gone@dest.test": [("bounced", 550)],
        "b@dest.test": [("deferred", 421), ("delivered", 250)],
        "c@dest.test": [("deferred", 421), ("delivered", 250)],
    }
    gone = next(r for r in detail["recipients"] if r["address"] == "gone@dest.test")
    assert (gone["bounce_type"], gone["bounce_rule"]) == ("hard", "code.5.1.1")
    assert gone["timeline"][0]["bounce_rule"] == "code.5.1.1"
    (received,) = fake_mx.received
    assert sorted(received.rcpt_tos) == ["b@dest.test", "c@dest.test"]
    response = await pl.client.get(
        "/v1/suppressions", params={"address": "gone@dest.test"}, headers=pl.auth(None)
    )
    (suppression,) = response.json()["data"]
    assert (suppression["reason"], suppression["expires_at"]) == ("hard_bounce", None)


async def test_a_drop_after_the_body_keeps_the_refusals_already_received(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.pipelining = True
    fake_mx.on_rcpt("gone@dest.test", "550 5.1.1 no such user")
    fake_mx.drop_mid_data()
    pl = await postline_factory()
    sent = await pl.send(to=["gone@dest.test", "here@dest.test"])
    detail = await pl.wait_for_status(sent["id"], ["partially_delivered"])
    timeline = _timeline(detail)
    assert timeline["gone@dest.test"] == [("bounced", 550)]
    assert timeline["here@dest.test"] == [("deferred", None), ("delivered", 250)]
    assert [m.rcpt_tos for m in fake_mx.received] == [["here@dest.test"]]


async def test_a_pooled_session_the_server_closed_is_replaced(
    postline_factory: Factory, fake_mx: FakeMX
) -> None:
    fake_mx.pipelining = True
    pl = await postline_factory()
    first = await pl.send(to="first@dest.test")
    await pl.wait_for_status(first["id"], ["delivered"])
    await fake_mx.stop()  # drops the idle pooled session
    await fake_mx.start()
    sent = await pl.send(to="after@dest.test")
    detail = await pl.wait_for_status(sent["id"], ["delivered"])
    assert _timeline(detail) == {"after@dest.test": [("delivered", 250)]}


async def test_pipelining_over_starttls(
    postline_factory: Factory, fake_mx: FakeMX, fake_dns: FakeDNS, tmp_path: Path
) -> None:
    ca = ThrowawayCA.create(tmp_path)
    mx = FakeMX("127.0.0.9", fake_mx.port, hostname="mx.tls.test")
    mx.tls_context = ca.server_context("mx.tls.test")
    mx.pipelining = True
    async with mx:
        fake_dns.add_mx("tls.test", (10, "mx.tls.test"))
        fake_dns.add_a("mx.tls.test", mx.host)
        pl = await postline_factory()
        for i in range(2):
            # The first message on a new TLS session needs the EHLO given after STARTTLS.
            sent = await pl.send(to=[f"a{i}@tls.test", f"jörg{i}@tls.test"])
            await pl.wait_for_status(sent["id"], ["delivered"])
        assert [m.tls for m in mx.received] == [True, True]
        assert all("SMTPUTF8" in m.mail_options for m in mx.received)
        assert _batches(mx) == [["MAIL", "RCPT", "RCPT", "DATA"]] * 2
        assert len({m.session for m in mx.received}) == 1  # (STARTTLS renumbers a session)


# --------------------------------------------------------------- BatchMX (all replies at once)


async def test_replies_that_arrive_together_are_each_read(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    rcpts = {
        "gone@batch.test": b"550 5.1.1 no such user\r\n",
        "busy@batch.test": b"452 4.2.2 full\r\n",
    }
    async with BatchMX("127.0.0.2", fake_mx.port, rcpts=rcpts) as mx:
        pl = await postline_routed_to(postline_factory, fake_dns, mx, "batch.test")
        sent = await pl.send(to=["ok@batch.test", "gone@batch.test", "busy@batch.test"])
        detail = await pl.wait_for(
            sent["id"], lambda d: all(r["attempts"] for r in d["recipients"]), what="outcomes"
        )
        assert _timeline(detail) == {
            "ok@batch.test": [("delivered", 250)],
            "gone@batch.test": [("bounced", 550)],
            "busy@batch.test": [("deferred", 452)],
        }
        (body,) = mx.bodies
        assert sent["message_id"].encode() in body
        assert mx.open_connections == 1  # in step: pooled for the next message


async def test_a_354_after_every_recipient_was_refused_gets_a_lone_dot(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    # RFC 2920 3.1: the client cannot assume the DATA fails; if it is accepted, a lone dot.
    async with BatchMX("127.0.0.2", fake_mx.port, rcpt=b"550 5.1.1 no such user\r\n") as mx:
        pl = await postline_routed_to(postline_factory, fake_dns, mx, "batch.test")
        sent = await pl.send(to=["x@batch.test", "y@batch.test"])
        detail = await pl.wait_for_status(sent["id"], ["bounced"])
        assert [r["smtp_code"] for r in detail["recipients"]] == [550, 550]
        assert mx.bodies == [b""]
        assert mx.sessions[0].verbs[-1] == "RSET"
        assert mx.open_connections == 1  # in step after the RSET: pooled


#: Replies that cannot all answer their commands: what the server says, the outcome, and
#: how many message bodies it may get. Every such session must be hung up on.
HOSTILE: dict[str, tuple[dict[str, bytes], str, int]] = {
    "extra_reply_after_mail": ({"mail": b"250 2.1.0 ok\r\n250 2.1.0 extra\r\n"}, "deferred", 0),
    "354_to_rcpt": ({"rcpt": b"354 go ahead\r\n"}, "deferred", 0),
    "250_to_data": ({"data": b"250 2.0.0 ok\r\n"}, "deferred", 0),
    "bytes_after_the_354": ({"data": b"354 go\r\n250 2.0.0 forged\r\n"}, "deferred", 0),
    "flood_in_rcpt": ({"rcpt": (b"250-" + b"x" * 60 + b"\r\n") * 20_000}, "deferred", 0),
    "extra_reply_after_end": (
        {"end": b"250 2.0.0 queued\r\n550 5.1.1 injected\r\n"},
        "delivered",
        1,
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_replies_out_of_step_close_the_session(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX, case: str
) -> None:
    replies, status, bodies = HOSTILE[case]
    mx = BatchMX("127.0.0.2", fake_mx.port)
    for name, reply in replies.items():
        setattr(mx, name, reply)
    async with mx:
        pl = await postline_routed_to(postline_factory, fake_dns, mx, "batch.test")
        _, detail, elapsed = await timed_first_attempt(pl, "victim@batch.test", mx)
        assert elapsed < ATTEMPT_BOUND
        (recipient,) = detail["recipients"]
        assert recipient["status"] == status, (recipient, mx)
        assert len(mx.bodies) == bodies, mx
        _assert_clean("email", detail)
        await _until(lambda: mx.open_connections == 0, f"{mx!r} to be hung up on")


# --------------------------------------------------------------- EvilMX (hostile replies)


@pytest.mark.parametrize("mode", MODES)
async def test_hostile_reply_in_a_batch_is_bounded_and_clean(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    caplog: pytest.LogCaptureFixture,
    mode: Mode,
) -> None:
    caplog.set_level(logging.DEBUG, logger="postline")
    stage: Stage = "rcpt"  # the middle of the batch
    hostile: dict[Stage, bytes] = {"ehlo": PIPELINING_EHLO}
    async with EvilMX(mode, stage, host="127.0.0.2", port=fake_mx.port, replies=hostile) as evil:
        pl = await postline_routed_to(postline_factory, fake_dns, evil, "evil.test")
        sent, detail, elapsed = await timed_first_attempt(
            pl, "victim@evil.test", evil, _no_engine_errors(caplog, evil)
        )
        assert elapsed < ATTEMPT_BOUND, evil
        assert evil.triggered >= 1, evil
        (recipient,) = detail["recipients"]
        assert recipient["status"] in ("deferred", "bounced"), recipient
        assert recipient["response"], recipient
        _assert_clean("email", detail)
        _assert_logs_clean(caplog, sent["id"], recipient["status"])
        await _still_delivers(pl, fake_mx)
