"""SMTP replies: sanitising untrusted text, parsing codes, classifying outcomes (trap 4, 9)."""

from __future__ import annotations

import types
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postline.config import Settings
from postline.delivery import engine
from postline.delivery.engine import outcome_for, retry_delay
from postline.delivery.replies import MAX_REPLY_BYTES, Reply, bounce_type, sanitize
from postline.model import BounceType, RecipientStatus

S = RecipientStatus
B = BounceType


def parse_line(line: str) -> Reply:
    """Split a reply line as a client sees it: the code, then the text aiosmtplib gives us."""
    code, _, text = line.partition(" ")
    return Reply.of(int(code), text)


# --- sanitize -------------------------------------------------------------------------------


def test_sanitize_keeps_ordinary_text() -> None:
    assert sanitize("5.1.1 User unknown") == "5.1.1 User unknown"


def test_sanitize_joins_lines_of_a_multiline_reply() -> None:
    text = "5.1.1 The account does not exist.\r\n5.1.1 Please check the address\n5.1.1 https://x"
    result = sanitize(text)
    assert "\r" not in result
    assert "\n" not in result
    assert result.startswith("5.1.1 The account does not exist.")
    assert result.endswith("5.1.1 https://x")


@pytest.mark.parametrize(
    "separator", ["\r", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029"]
)
def test_sanitize_leaves_a_single_line(separator: str) -> None:
    result = sanitize(f"first{separator}Bcc: victim@example.com")
    assert len(result.splitlines()) == 1
    assert result.startswith("first")


def test_sanitize_strips_control_characters() -> None:
    result = sanitize("ok\x00\x01\x07\x1b[31mred\x7f\x9b end")
    assert result == "ok[31mred end"


def test_sanitize_turns_tabs_into_spaces() -> None:
    assert sanitize("550\t5.1.1\tunknown") == "550 5.1.1 unknown"


def test_sanitize_strips_surrounding_whitespace() -> None:
    assert sanitize("  \r\n 4.3.0 try later \r\n") == "4.3.0 try later"


def test_sanitize_replaces_undecodable_bytes() -> None:
    # aiosmtplib decodes replies with surrogateescape: Latin-1 text arrives as lone surrogates.
    raw = "Empf\xe4nger unbekannt".encode("latin-1").decode("utf-8", "surrogateescape")
    result = sanitize(raw)
    assert result == "Empf\ufffdnger unbekannt"
    result.encode("utf-8")  # storable


def test_sanitize_truncates_ascii_to_1024() -> None:
    result = sanitize("x" * 5000)
    assert result == "x" * 1024
    assert MAX_REPLY_BYTES == 1024


@pytest.mark.parametrize("char", ["é", "€", "😀", "中"])
@pytest.mark.parametrize("lead", ["", "a", "ab", "abc"])
def test_sanitize_never_splits_a_multibyte_character(char: str, lead: str) -> None:
    text = lead + char * 2000
    result = sanitize(text)
    encoded = result.encode("utf-8")
    assert len(encoded) <= MAX_REPLY_BYTES
    assert text.startswith(result)
    # The cut is as late as possible: one more character would not fit.
    assert len(encoded) + len(char.encode("utf-8")) > MAX_REPLY_BYTES
    assert result.endswith(char)


def test_sanitize_short_multibyte_text_is_untouched() -> None:
    assert sanitize("Boîte pleine — réessayez") == "Boîte pleine — réessayez"


@given(st.text(max_size=3000))
def test_sanitize_property(text: str) -> None:
    result = sanitize(text)
    assert len(result.encode("utf-8")) <= MAX_REPLY_BYTES
    assert len(result) <= MAX_REPLY_BYTES
    assert len(result.splitlines()) <= 1
    assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in result)
    assert result == result.lstrip()


# --- Reply and its codes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "enhanced"),
    [
        ("550 5.1.1 <nobody@example.com>: Recipient address rejected", "5.1.1"),
        ("451 4.3.0 Temporary lookup failure", "4.3.0"),
        ("451 4.3.0", "4.3.0"),
        ("250 2.0.0 OK", "2.0.0"),
        ("250 2.1.5 Ok", "2.1.5"),
        ("550 5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10"),
        ("550 5.7.26 Unauthenticated email is not accepted", "5.7.26"),
        ("550 5.123.456 three-digit subject and detail", "5.123.456"),
        ("550 Requested action not taken: mailbox unavailable", None),
        ("451 retry in 5 minutes", None),
        ("250 OK id=550 at 12:55:00", None),
        # Not at the start of the text: never searched for.
        ("550 Rejected, see 5.1.1 in the docs", None),
        # Class must match the basic code.
        ("451 5.1.1 user unknown", None),
        ("550 4.2.2 mailbox full", None),
        ("250 5.0.0 odd server", None),
        # Not an enhanced code at all.
        ("550 5.1 truncated", None),
        ("550 5.1.1.1 too many parts", None),
        ("550 5.1.1234 detail too long", None),
        ("550 3.1.1 no such class", None),
        ("550 5.1.1x glued", None),
    ],
)
def test_enhanced_code(line: str, enhanced: str | None) -> None:
    assert parse_line(line).enhanced_code == enhanced


def test_enhanced_code_without_reply_code_is_none() -> None:
    assert Reply.of(None, "5.1.1 not a reply").enhanced_code is None


def test_enhanced_code_of_multiline_reply_after_sanitize() -> None:
    reply = Reply.of(550, "5.1.1 The account does not exist.\r\n5.1.1 Learn more at\r\n5.1.1 x")
    assert reply.enhanced_code == "5.1.1"


def test_reply_of_sanitizes_text() -> None:
    reply = Reply.of(550, "5.1.1 bad\r\nInjected: header")
    assert "\r" not in reply.text
    assert "\n" not in reply.text


@pytest.mark.parametrize(
    ("code", "success", "permanent"),
    [
        (None, False, False),
        (220, True, False),
        (250, True, False),
        (354, False, False),
        (421, False, False),
        (451, False, False),
        (499, False, False),
        (500, False, True),
        (550, False, True),
        (554, False, True),
        (599, False, True),
    ],
)
def test_reply_success_and_permanence(code: int | None, success: bool, permanent: bool) -> None:
    reply = Reply(code, "text")
    assert reply.is_success is success
    assert reply.is_permanent is permanent


def test_reply_line() -> None:
    assert Reply(550, "5.1.1 unknown").line == "550 5.1.1 unknown"
    assert Reply(None, "TimeoutError: timed out").line == "TimeoutError: timed out"


# --- bounce_type ----------------------------------------------------------------------------


@pytest.mark.parametrize("detail", [d for d in range(11) if d not in (7, 8)])
def test_bounce_type_5_1_x_is_hard(detail: int) -> None:
    assert bounce_type(Reply(550, f"5.1.{detail} address problem")) is B.HARD


@pytest.mark.parametrize("detail", [7, 8])
def test_bounce_type_5_1_7_and_8_are_about_the_sender_so_block(detail: int) -> None:
    # RFC 3463: bad sender's mailbox address syntax / bad sender's system address.
    assert bounce_type(Reply(553, f"5.1.{detail} address problem")) is B.BLOCK


def test_bounce_type_5_2_1_disabled_mailbox_is_hard() -> None:
    assert bounce_type(Reply(550, "5.2.1 mailbox disabled")) is B.HARD


@pytest.mark.parametrize("code", [550, 552])
def test_bounce_type_5_2_2_mailbox_full_is_soft_not_hard(code: int) -> None:
    assert bounce_type(Reply(code, "5.2.2 mailbox full")) is B.SOFT


@pytest.mark.parametrize("enhanced", ["5.2.3", "5.3.0", "5.3.4"])
def test_bounce_type_system_and_size_problems_are_soft(enhanced: str) -> None:
    assert bounce_type(Reply(552, f"{enhanced} too big or system full")) is B.SOFT


@pytest.mark.parametrize("detail", [0, 1, 9, 23, 25, 26])
@pytest.mark.parametrize("code", [550, 553, 554])
def test_bounce_type_5_7_x_is_block_never_hard(detail: int, code: int) -> None:
    assert bounce_type(Reply(code, f"5.7.{detail} policy rejection")) is B.BLOCK


def test_bounce_type_552_without_enhanced_code_is_not_hard() -> None:
    # 552 is "exceeded storage allocation": a valid recipient must not be suppressed (trap 4).
    result = bounce_type(Reply(552, "Requested mail action aborted: exceeded storage allocation"))
    assert result is not B.HARD
    assert result is B.SOFT  # a full mailbox (RFC 5321 4.2.2), like 5.2.2


@pytest.mark.parametrize("code", [550, 551, 553])
def test_bounce_type_recipient_codes_without_enhanced_are_hard(code: int) -> None:
    assert bounce_type(Reply(code, "Requested action not taken: mailbox unavailable")) is B.HARD


@pytest.mark.parametrize("code", [500, 501, 554])
def test_bounce_type_other_5xx_without_enhanced_undetermined(code: int) -> None:
    assert bounce_type(Reply(code, "Transaction failed")) is B.UNDETERMINED


@pytest.mark.parametrize("enhanced", ["5.0.0", "5.4.1", "5.5.1", "5.6.0"])
def test_bounce_type_other_enhanced_undetermined(enhanced: str) -> None:
    assert bounce_type(Reply(550, f"{enhanced} something")) is B.UNDETERMINED


@pytest.mark.parametrize(
    "reply",
    [
        Reply(421, "4.7.0 try later"),
        Reply(450, "4.2.1 too fast"),
        Reply(452, "4.2.2 over quota"),
        Reply(451, "retry in 5 minutes"),
        Reply(451, "5.1.1 looks permanent, is not"),
        Reply(None, "TimeoutError"),
        Reply(None, "ConnectionRefusedError: [Errno 111] Connect call failed"),
    ],
)
def test_bounce_type_temporary_is_soft(reply: Reply) -> None:
    assert bounce_type(reply) is B.SOFT


@pytest.mark.parametrize("reply", [Reply(250, "2.0.0 OK"), Reply(250, "OK id=550")])
def test_bounce_type_success_is_none(reply: Reply) -> None:
    assert bounce_type(reply) is None


# --- realistic reply lines, classified end to end --------------------------------------------

REAL_REPLIES: list[tuple[str, RecipientStatus, str | None, BounceType | None]] = [
    (
        "250 2.0.0 OK  1717171717 d9443c01a7336-1f6d4e8c0a1si2345678 - gsmtp",
        S.DELIVERED,
        "2.0.0",
        None,
    ),
    (
        "250 2.6.0 <01HZX@mail.example.com> [InternalId=1234567, Hostname=AM0PR01MB] Queued mail "
        "for delivery",
        S.DELIVERED,
        "2.6.0",
        None,
    ),
    ("250 ok dirdel", S.DELIVERED, None, None),
    ("250 OK id=550 at 12:55:00", S.DELIVERED, None, None),
    ("250 2.0.0 Ok: queued as 550A1B2C3D at 15:50:55", S.DELIVERED, "2.0.0", None),
    (
        "550 5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. - gsmtp",
        S.BOUNCED,
        "5.1.1",
        B.HARD,
    ),
    (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        S.BOUNCED,
        "5.1.10",
        B.HARD,
    ),
    (
        "553 5.1.3 The recipient address <bad address@example.com> is not a valid RFC 5321 "
        "address.",
        S.BOUNCED,
        "5.1.3",
        B.HARD,
    ),
    (
        "550 5.2.1 The email account that you tried to reach is disabled.",
        S.BOUNCED,
        "5.2.1",
        B.HARD,
    ),
    ("551 User not local; please try <someone@elsewhere.example>", S.BOUNCED, None, B.HARD),
    ("550 Requested action not taken: mailbox unavailable", S.BOUNCED, None, B.HARD),
    # Trap 4: the "5.1.1" in the text is no enhanced code, and "rejected" alone says nothing.
    ("550 Message rejected: see 5.1.1 in our documentation", S.BOUNCED, None, B.UNDETERMINED),
    (
        "552 5.2.2 The recipient's inbox is out of storage space. Please direct the recipient "
        "to https://support.example/mail",
        S.BOUNCED,
        "5.2.2",
        B.SOFT,
    ),
    (
        "552 Requested mail action aborted: exceeded storage allocation",
        S.BOUNCED,
        None,
        B.SOFT,
    ),
    ("552 5.3.4 Message size exceeds fixed maximum message size", S.BOUNCED, "5.3.4", B.SOFT),
    (
        "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.example.org",
        S.BOUNCED,
        "5.7.1",
        B.BLOCK,
    ),
    (
        "550 5.7.26 This mail has been blocked because the sender is unauthenticated.",
        S.BOUNCED,
        "5.7.26",
        B.BLOCK,
    ),
    (
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150).",
        S.BOUNCED,
        "5.7.1",
        B.BLOCK,
    ),
    (
        "553 5.7.1 <news@example.com>: Sender address rejected: not owned by user",
        S.BOUNCED,
        "5.7.1",
        B.BLOCK,
    ),
    (
        "554 30 Sorry, your message to someone@mail.example cannot be delivered. This mailbox is "
        "disabled (554.30).",
        S.BOUNCED,
        None,
        B.HARD,
    ),
    (
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281)",
        S.BOUNCED,
        "5.4.1",
        B.HARD,  # Microsoft 365 Directory-Based Edge Blocking: no such recipient
    ),
    ("500 5.5.1 Unrecognized command", S.BOUNCED, "5.5.1", B.UNDETERMINED),
    ("554 5.0.0 Service unavailable", S.BOUNCED, "5.0.0", B.UNDETERMINED),
    (
        "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected "
        "volume or user complaints - 4.16.55.1",
        S.DEFERRED,
        "4.7.0",
        B.SOFT,
    ),
    (
        "421 4.7.28 Gmail has detected an unusual rate of unsolicited mail from your IP.",
        S.DEFERRED,
        "4.7.28",
        B.SOFT,
    ),
    (
        "452 4.2.2 The email account that you tried to reach is over quota.",
        S.DEFERRED,
        "4.2.2",
        B.SOFT,
    ),
    (
        "450 4.2.1 The user you are trying to contact is receiving mail too quickly.",
        S.DEFERRED,
        "4.2.1",
        B.SOFT,
    ),
    ("451 4.3.0 Temporary server error. Please try again later", S.DEFERRED, "4.3.0", B.SOFT),
    ("451 retry in 5 minutes", S.DEFERRED, None, B.SOFT),
    ("451 Temporary local problem - please try later at 15:50:55", S.DEFERRED, None, B.SOFT),
    ("421 Service not available, closing transmission channel", S.DEFERRED, None, B.SOFT),
    ("421 4.4.2 mx.example.net Error: timeout exceeded", S.DEFERRED, "4.4.2", B.SOFT),
    ("454 4.7.0 TLS not available due to local problem", S.DEFERRED, "4.7.0", B.SOFT),
    ("451 5.1.1 user unknown (says the text, but the code is temporary)", S.DEFERRED, None, B.SOFT),
]


@pytest.mark.parametrize(("line", "status", "enhanced", "kind"), REAL_REPLIES)
def test_real_reply_lines(
    line: str, status: RecipientStatus, enhanced: str | None, kind: BounceType | None
) -> None:
    reply = parse_line(line)
    outcome = outcome_for(reply)
    assert outcome.status is status
    assert outcome.enhanced_code == enhanced
    assert outcome.bounce_type is kind
    assert outcome.smtp_code == int(line[:3])
    # The real reply is stored, not a fake "250 OK" (trap 9).
    assert outcome.response == line


def test_real_reply_table_is_large_enough() -> None:
    assert len(REAL_REPLIES) >= 25
    assert {status for _, status, _, _ in REAL_REPLIES} == {S.DELIVERED, S.BOUNCED, S.DEFERRED}


# --- outcome_for ----------------------------------------------------------------------------


def test_outcome_for_no_reply_is_deferred() -> None:
    outcome = outcome_for(Reply.of(None, "TimeoutError: timed out after 60s"))
    assert outcome.status is S.DEFERRED
    assert outcome.smtp_code is None
    assert outcome.enhanced_code is None
    assert outcome.bounce_type is B.SOFT
    assert outcome.response == "TimeoutError: timed out after 60s"


def test_outcome_for_success_has_no_bounce_type() -> None:
    outcome = outcome_for(Reply.of(250, "2.0.0 Ok: queued as ABC"))
    assert outcome.status is S.DELIVERED
    assert outcome.bounce_type is None
    assert outcome.reason is None


@pytest.mark.parametrize("code", [300, 354, 600, 999])
def test_outcome_for_unexpected_codes_are_retried(code: int) -> None:
    assert outcome_for(Reply(code, "odd")).status is S.DEFERRED


def test_outcome_for_stores_sanitized_response() -> None:
    outcome = outcome_for(Reply.of(550, "5.1.1 no\r\nX-Injected: yes"))
    assert outcome.response is not None
    assert "\n" not in outcome.response
    assert outcome.response.startswith("550 5.1.1 no")


# --- retry_delay ----------------------------------------------------------------------------

SCHEDULE = [60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 21600.0]


@pytest.mark.parametrize("attempt", range(12))
def test_retry_delay_within_ten_percent(attempt: int) -> None:
    base = SCHEDULE[min(attempt, len(SCHEDULE) - 1)]
    for _ in range(50):
        delay = retry_delay(SCHEDULE, attempt)
        assert base * 0.9 <= delay <= base * 1.1


def test_retry_delay_bounds_are_exactly_ten_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "random", types.SimpleNamespace(uniform=lambda a, b: a))
    assert retry_delay(SCHEDULE, 0) == pytest.approx(54.0)
    monkeypatch.setattr(engine, "random", types.SimpleNamespace(uniform=lambda a, b: b))
    assert retry_delay(SCHEDULE, 0) == pytest.approx(66.0)


def test_retry_delay_last_delay_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "random", types.SimpleNamespace(uniform=lambda a, b: 1.0))
    assert [retry_delay(SCHEDULE, n) for n in range(len(SCHEDULE))] == SCHEDULE
    for attempt in (len(SCHEDULE), len(SCHEDULE) + 1, 100, 10_000):
        assert retry_delay(SCHEDULE, attempt) == SCHEDULE[-1]


def test_retry_delay_single_entry_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "random", types.SimpleNamespace(uniform=lambda a, b: 1.0))
    assert [retry_delay([30.0], n) for n in range(4)] == [30.0] * 4


def test_retry_delay_is_jittered() -> None:
    delays = {retry_delay(SCHEDULE, 3) for _ in range(200)}
    assert len(delays) > 1


def test_default_schedule_matches_design() -> None:
    # About 1m, 5m, 15m, 30m, 1h, 2h, 4h, then every 6h.
    settings = Settings(hostname="mx.example.test")
    assert settings.retry_delays == SCHEDULE


def test_stored_line_with_its_code_stays_within_the_bound() -> None:
    reply = Reply.of(550, "x" * 5000)
    assert reply.line.startswith("550 ")
    assert len(reply.line.encode()) <= MAX_REPLY_BYTES
