"""A hostile MX can neither hang the engine, nor get more than 1024 clean bytes stored,
nor inject a line into the logs; and the engine keeps delivering elsewhere afterwards.

The evil MX listens on 127.0.0.2 on the regular FakeMX's port, so the one
``delivery_port`` reaches both: evil.test goes to the evil MX, dest.test to FakeMX.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import FakeDNS, FakeMX
from tests.harness.evil_mx import MODES, STAGES, EvilMX, Mode, Stage
from tests.harness.postline import Factory, PostlineUnderTest
from tests.harness.raw_mx_postline import (
    ATTEMPT_BOUND,
    OUTCOME_DEADLINE,
    first_attempt,
    postline_routed_to,
    timed_first_attempt,
)

MAX_RESPONSE_BYTES = 1024

CASES: list[tuple[Mode, Stage]] = [(mode, stage) for mode in MODES for stage in STAGES]


def _control_chars(text: str) -> list[str]:
    return [hex(ord(c)) for c in text if ord(c) < 32 or 0x7F <= ord(c) <= 0x9F]


def _assert_clean(path: str, value: Any) -> None:
    """Every string of an API document is valid, single-line, control-free text, and
    every reply kept (``response``, ``last_error``, ``detail``) is at most 1024 bytes."""
    if isinstance(value, dict):
        for key, item in value.items():
            _assert_clean(f"{path}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _assert_clean(f"{path}[{index}]", item)
    elif isinstance(value, str):
        encoded = value.encode("utf-8")  # raises on a lone surrogate: not valid text
        assert not _control_chars(value), (path, _control_chars(value), value[:200])
        if path.rsplit(".", 1)[-1] in ("response", "last_error", "detail"):
            assert len(encoded) <= MAX_RESPONSE_BYTES, (path, len(encoded))


def _postline_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}: {r.exc_info[1] if r.exc_info else ''}"
        for r in caplog.records
        if r.name.startswith("postline") and r.levelno >= logging.ERROR
    ]


def _assert_logs_clean(caplog: pytest.LogCaptureFixture, email_id: str, status: str) -> None:
    """No log message spans lines; every record that names this email and a status names
    the recorded one (nothing forged "status=delivered"); the outcome line itself is there,
    so the capture works."""
    claims: list[str] = []
    for record in caplog.records:
        message = record.getMessage()
        if record.name.startswith("postline"):
            assert "\n" not in message and "\r" not in message, (record.name, message)
        if record.levelno >= logging.INFO and email_id in message and "status=" in message:
            claims.append(message)
    assert claims, "the outcome was not logged: is the capture working?"
    assert all(f"status={status} " in f"{claim} " for claim in claims), (status, claims)
    assert _postline_errors(caplog) == []


def _no_engine_errors(caplog: pytest.LogCaptureFixture, evil: EvilMX) -> Callable[[], None]:
    """A check for ``first_attempt``: fail at once if the engine logged an unexpected
    error instead of an outcome (the job would wait for its lease)."""

    def check() -> None:
        assert _postline_errors(caplog) == [], (evil, _postline_errors(caplog))

    return check


async def _still_delivers(pl: PostlineUnderTest, fake_mx: FakeMX) -> None:
    assert pl.engine_task is not None and not pl.engine_task.done()
    sent = await pl.send(to="alice@dest.test", subject="after the evil MX")
    await pl.wait_for_status(sent["id"], ["delivered"], timeout=OUTCOME_DEADLINE)
    (received,) = await fake_mx.wait_for_messages(1)
    assert received.rcpt_tos == ["alice@dest.test"]


@pytest.mark.parametrize(("mode", "stage"), CASES, ids=[f"{m}@{s}" for m, s in CASES])
async def test_hostile_reply_is_bounded_clean_and_not_logged(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    caplog: pytest.LogCaptureFixture,
    mode: Mode,
    stage: Stage,
) -> None:
    caplog.set_level(logging.DEBUG, logger="postline")
    async with EvilMX(mode, stage, host="127.0.0.2", port=fake_mx.port) as evil:
        pl = await postline_routed_to(postline_factory, fake_dns, evil, "evil.test")
        sent, detail, elapsed = await timed_first_attempt(
            pl, "victim@evil.test", evil, _no_engine_errors(caplog, evil)
        )
        assert elapsed < ATTEMPT_BOUND, (elapsed, evil)
        assert evil.triggered >= 1, evil  # the client really met the misbehaviour

        (recipient,) = detail["recipients"]
        assert recipient["status"] in ("deferred", "bounced"), recipient
        assert recipient["response"], recipient
        assert [t["status"] for t in recipient["timeline"]] == [recipient["status"]]
        _assert_clean("email", detail)
        destinations = await pl.client.get("/v1/destinations", headers=pl.auth())
        assert destinations.status_code == 200, destinations.text
        _assert_clean("destinations", destinations.json())
        suppressions = await pl.client.get("/v1/suppressions", headers=pl.auth())
        assert suppressions.status_code == 200, suppressions.text
        _assert_clean("suppressions", suppressions.json())
        _assert_logs_clean(caplog, sent["id"], recipient["status"])

        await _still_delivers(pl, fake_mx)


#: EHLO answers that succeed but carry hostile keywords: the SIZE value is parsed.
EHLO_CASES: dict[str, bytes] = {
    # A 4 KB+ EHLO line: more digits than int() converts (sys.get_int_max_str_digits).
    "size_4400_digits": b"250-evil.test\r\n250-SIZE " + b"9" * 4400 + b"\r\n250 8BITMIME\r\n",
    # "\u00b2".isdigit() is True, int("\u00b2") raises ValueError.
    "size_superscript_two": b"250-evil.test\r\n250-SIZE \xc2\xb2\r\n250 8BITMIME\r\n",
    "binary_keywords": (
        b"250-evil.test\r\n250-\x00\xff\x1b[31m\r\n250-SIZE \xff\xfe\r\n250 8BITMIME\r\n"
    ),
}
EHLO_PARAMS = list(EHLO_CASES)


@pytest.mark.parametrize("ehlo", EHLO_PARAMS)
async def test_hostile_ehlo_keywords_still_get_an_outcome(
    postline_factory: Factory,
    fake_dns: FakeDNS,
    fake_mx: FakeMX,
    caplog: pytest.LogCaptureFixture,
    ehlo: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="postline")
    hostile: dict[Stage, bytes] = {"ehlo": EHLO_CASES[ehlo]}
    async with EvilMX(None, None, host="127.0.0.2", port=fake_mx.port, replies=hostile) as evil:
        pl = await postline_routed_to(postline_factory, fake_dns, evil, "evil.test")
        sent, detail, elapsed = await timed_first_attempt(
            pl, "victim@evil.test", evil, _no_engine_errors(caplog, evil)
        )
        assert elapsed < ATTEMPT_BOUND
        (recipient,) = detail["recipients"]
        # The rest of the session is well-behaved: delivering is as right as refusing.
        assert recipient["status"] in ("delivered", "deferred", "bounced"), recipient
        _assert_clean("email", detail)
        _assert_logs_clean(caplog, sent["id"], recipient["status"])
        await _still_delivers(pl, fake_mx)


async def test_extra_reply_lines_do_not_answer_the_next_transaction(
    postline_factory: Factory, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    # After the end of data: a real 250, then a line the next command must never get.
    trailing: dict[Stage, bytes] = {
        "data-end": b"250 2.0.0 queued\r\n550 5.1.1 injected for the next command\r\n"
    }
    async with EvilMX(None, None, host="127.0.0.2", port=fake_mx.port, replies=trailing) as evil:
        pl = await postline_routed_to(postline_factory, fake_dns, evil, "evil.test")
        first = await pl.send(to="first@evil.test")
        await pl.wait_for_status(first["id"], ["delivered"], timeout=OUTCOME_DEADLINE)
        second = await pl.send(to="second@evil.test")
        detail = await first_attempt(pl, second["id"], evil)
        (recipient,) = detail["recipients"]
        suppressions = await pl.client.get("/v1/suppressions", headers=pl.auth())
        assert suppressions.json()["data"] == []
        # Every reply the server gave to the second transaction was a 250.
        assert recipient["status"] == "delivered", (recipient, evil)
