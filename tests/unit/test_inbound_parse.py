"""The report parsers, on bounces and complaints in the shapes the big receivers send."""

from __future__ import annotations

import pytest

from postline.inbound.parse import parse_report
from postline.inbound.report import Kind, Unparsed
from postline.inbound.verdict import bounce_outcome, complaint_outcome
from postline.model import BounceType, RecipientStatus
from tests.harness import reports

RETURN_PATH = "bounces+em_01abcdefghjkmnpqrstvwxyz01-aaaa@bounces.example.test"
MESSAGE_ID = "<m1@example.test>"
GONE = "gone@dest.test"


@pytest.mark.parametrize(
    ("build", "shape", "code", "enhanced", "rule"),
    [
        (reports.gmail_dsn, "rfc3464", 550, "5.1.1", "code.5.1.1"),
        (reports.gmail_text_bounce, "gmail", 550, "5.1.1", "code.5.1.1"),
        (reports.exchange_ndr, "exchange", 550, "5.1.10", "exchange.recipient_not_found"),
        (reports.exchange_legacy_ndr, "exchange", 550, "5.1.1", "code.5.1.1"),
        (reports.yahoo_failure_notice, "qmail", 554, None, "yahoo.no_account"),
    ],
)
def test_a_hard_bounce_in_each_shape(
    build: reports.Builder, shape: str, code: int, enhanced: str | None, rule: str
) -> None:
    report = parse_report(build(RETURN_PATH, GONE, MESSAGE_ID))
    assert report.kind is Kind.BOUNCE
    assert report.shape == shape
    (entry,) = report.entries
    assert entry.addresses == (GONE,)
    assert entry.action == "failed"
    assert report.original_message_id == MESSAGE_ID
    outcome = bounce_outcome(entry)
    assert outcome.status is RecipientStatus.BOUNCED
    assert (outcome.smtp_code, outcome.enhanced_code) == (code, enhanced)
    assert outcome.bounce_type is BounceType.HARD
    assert outcome.bounce_rule == rule


def test_the_dsn_status_decides_over_the_phrases() -> None:
    """A mailbox-full Status is soft, whatever the quoted text says of the account."""
    report = parse_report(reports.gmail_dsn(RETURN_PATH, GONE, MESSAGE_ID, status="5.2.2"))
    outcome = bounce_outcome(report.entries[0])
    assert outcome.bounce_type is BounceType.SOFT
    assert outcome.enhanced_code == "5.2.2"


def test_a_bare_x00_status_gives_way_to_the_quoted_code() -> None:
    raw = reports.gmail_dsn(RETURN_PATH, GONE, MESSAGE_ID).replace(
        b"Status: 5.1.1", b"Status: 5.0.0"
    )
    outcome = bounce_outcome(parse_report(raw).entries[0])
    assert outcome.enhanced_code == "5.1.1"
    assert outcome.bounce_type is BounceType.HARD


def test_a_delay_warning_is_no_failure() -> None:
    report = parse_report(reports.delayed_dsn(RETURN_PATH, GONE, MESSAGE_ID))
    assert [e.action for e in report.entries] == ["delayed"]


@pytest.mark.parametrize(
    ("build", "shape"),
    [(reports.microsoft_jmrp, "arf"), (reports.microsoft_jmrp_legacy, "jmrp")],
)
def test_microsoft_complaints_name_the_recipient(build: reports.Builder, shape: str) -> None:
    report = parse_report(build(RETURN_PATH, GONE, MESSAGE_ID))
    assert report.kind is Kind.COMPLAINT
    assert report.shape == shape
    assert report.feedback_type == "abuse"
    assert report.entries[0].addresses[0] == GONE
    assert report.original_message_id == MESSAGE_ID
    assert complaint_outcome(report).status is RecipientStatus.COMPLAINED


def test_yahoo_cfl_gives_the_return_path_and_the_named_recipient() -> None:
    report = parse_report(reports.yahoo_cfl(RETURN_PATH, GONE, MESSAGE_ID))
    assert report.kind is Kind.COMPLAINT
    assert report.user_agent == "Yahoo!-Mail-Feedback/2.0"
    assert report.original_return_path == f"<{RETURN_PATH}>"
    assert report.entries[0].addresses[0] == GONE


def test_yahoo_cfl_redacted_names_no_real_recipient() -> None:
    report = parse_report(reports.yahoo_cfl(RETURN_PATH, None, MESSAGE_ID))
    assert GONE not in report.entries[0].addresses


def test_other_feedback_types_are_parsed_as_such() -> None:
    raw = reports.yahoo_cfl(RETURN_PATH, GONE, MESSAGE_ID).replace(
        b"Feedback-Type: abuse", b"Feedback-Type: not-spam"
    )
    assert parse_report(raw).feedback_type == "not-spam"


@pytest.mark.parametrize(
    "raw",
    [
        reports.not_a_report(RETURN_PATH),
        b"",
        b"\x00\xff garbage \r\n\r\n\xfe",
        b"Subject: Undeliverable\r\n\r\nno code, no address",
    ],
)
def test_what_is_no_report_is_unparsed(raw: bytes) -> None:
    with pytest.raises(Unparsed):
        parse_report(raw)
