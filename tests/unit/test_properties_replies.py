"""Properties of the SMTP reply classifier on arbitrary replies (delivery/replies.py).

test_replies.py and test_classification_table.py pin real reply lines, and
test_replies.py has the property of ``sanitize`` alone. Here the whole path
from a reply as aiosmtplib hands it over (a code, and text decoded from any
bytes with surrogateescape) to the stored outcome is driven with generated
replies. The rules checked are the module's own:

* the basic code alone decides: 2xx delivered, 5xx bounced (permanent),
  anything else (4xx, no reply, a code out of range) deferred, whatever the
  text says: "retry in 5 minutes" or "5.1.1" in a 4xx never make it permanent;
* an enhanced code counts only at the start of the text and only when its
  class matches the basic code's; where it settles the question (5.1.1, 5.1.2,
  5.2.1, 5.7.x, ...) it decides whatever the text says; elsewhere the first
  phrase rule that matches decides, and without one a fallback by code;
* a bounce suppresses if and only if it is hard; never a block (5.7.x), a
  full mailbox, a 4xx or a success;
* what is stored is single-line, free of control characters, valid UTF-8 and
  at most 1024 bytes, and it is the real reply whenever that already was so.
"""

from __future__ import annotations

import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st

from postline.delivery.classify import match_text
from postline.delivery.engine import outcome_for
from postline.delivery.replies import MAX_REPLY_BYTES, Reply, bounce_type
from postline.model import BounceType, RecipientStatus
from postline.outcomes import suppression_reason

PROPERTIES = settings(derandomize=True, deadline=None, max_examples=400)
S = RecipientStatus
B = BounceType

#: Text as aiosmtplib gives it: any bytes, decoded with surrogateescape.
RAW_TEXT = st.binary(max_size=1500).map(lambda raw: raw.decode("utf-8", "surrogateescape"))
#: Tokens that fooled substring classifiers (trap 4), mixed with arbitrary text.
TRICKY = st.lists(
    st.sampled_from(
        ["5.1.1", "550", " 5", "4.2.2", "2.0.0", "5.7.1", "retry in 5 minutes", "\r\n", "\t"]
    )
    | st.text(max_size=20),
    max_size=6,
).map(" ".join)
TEXT = st.one_of(TRICKY, RAW_TEXT, st.text(st.characters(exclude_categories=()), max_size=300))
CODES = st.one_of(
    st.none(),
    st.sampled_from([250, 251, 421, 450, 451, 452, 550, 551, 552, 553, 554]),
    st.integers(min_value=-2, max_value=1000),
)
SUBJECT = st.integers(min_value=0, max_value=999)


def expected_status(code: int | None) -> RecipientStatus:
    if code is not None and 200 <= code <= 299:
        return S.DELIVERED
    if code is not None and 500 <= code <= 599:
        return S.BOUNCED
    return S.DEFERRED


def settled_type(subject: str, detail: str) -> BounceType | None:
    """The enhanced codes that decide alone (RFC 3463), written out by hand."""
    if subject == "1" and detail in ("1", "2", "3", "6"):
        return B.HARD
    if subject == "1" and detail in ("7", "8"):
        return B.BLOCK  # about the sender
    if (subject, detail) == ("2", "1"):
        return B.HARD
    if subject in ("2", "3") and detail != "0":
        return B.SOFT
    if subject == "7" and detail != "0":
        return B.BLOCK
    return None


def expected_permanent_type(
    subject: str | None, detail: str | None, code: int, text: str
) -> BounceType:
    """Settled codes decide; else the first phrase rule; else a fallback by code."""
    if subject is not None and detail is not None:
        settled = settled_type(subject, detail)
        if settled is not None:
            return settled
    verdict = match_text(text)
    if verdict is not None:
        return verdict.bounce_type
    if subject is None:
        return {551: B.HARD, 552: B.SOFT}.get(code, B.UNDETERMINED)
    return {"1": B.HARD, "2": B.SOFT, "3": B.SOFT, "7": B.BLOCK}.get(subject, B.UNDETERMINED)


def assert_storable_line(text: str) -> None:
    assert len(text.encode("utf-8")) <= MAX_REPLY_BYTES
    assert len(text.splitlines()) <= 1
    assert not any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)
    assert "\u2028" not in text and "\u2029" not in text


@PROPERTIES
@given(CODES, TEXT)
def test_any_reply_classifies_and_stores_safely(code: int | None, text: str) -> None:
    reply = Reply.of(code, text)
    assert reply.code is None or 200 <= reply.code <= 599
    outcome = outcome_for(reply)
    assert outcome.status is expected_status(reply.code)
    assert outcome.smtp_code == reply.code
    assert outcome.response is not None
    assert_storable_line(outcome.response)
    assert_storable_line(reply.text)
    if outcome.status is S.DELIVERED:
        assert outcome.bounce_type is None
        assert suppression_reason(outcome) is None
    elif outcome.status is S.DEFERRED:
        # Temporary: soft, never a reason to suppress, whatever the text claims.
        assert outcome.bounce_type is B.SOFT
        assert suppression_reason(outcome) is None
    else:
        assert outcome.bounce_type is not None


@PROPERTIES
@given(st.integers(min_value=200, max_value=599), SUBJECT, SUBJECT, st.integers(2, 5), TEXT)
def test_enhanced_code_counts_only_when_its_class_matches(
    code: int, subject: int, detail: int, klass: int, rest: str
) -> None:
    enhanced = f"{klass}.{subject}.{detail}"
    reply = Reply.of(code, f"{enhanced} {rest}")
    if klass == code // 100 and klass != 3:
        assert reply.enhanced_code == enhanced
    else:
        assert reply.enhanced_code is None
    # Anywhere but at the start, it is just text.
    assert Reply.of(code, f"x {enhanced} {rest}").enhanced_code is None


@PROPERTIES
@given(st.integers(min_value=500, max_value=599), st.one_of(st.none(), SUBJECT), SUBJECT, TEXT)
def test_permanent_bounce_type_follows_the_table(
    code: int, subject: int | None, detail: int, rest: str
) -> None:
    text = rest if subject is None else f"5.{subject}.{detail} {rest}"
    reply = Reply.of(code, text)
    if subject is None and reply.enhanced_code is not None:
        # The arbitrary text itself began with an enhanced code: that one counts.
        _, got_subject, got_detail = reply.enhanced_code.split(".")
        expected = expected_permanent_type(got_subject, got_detail, code, reply.text)
    elif subject is None:
        expected = expected_permanent_type(None, None, code, reply.text)
    else:
        expected = expected_permanent_type(str(subject), str(detail), code, reply.text)
    assert bounce_type(reply) is expected
    outcome = outcome_for(reply)
    assert outcome.status is S.BOUNCED
    assert outcome.bounce_type is expected


@PROPERTIES
@given(CODES, TEXT)
def test_a_bounce_suppresses_if_and_only_if_it_is_hard(code: int | None, text: str) -> None:
    outcome = outcome_for(Reply.of(code, text))
    reason = suppression_reason(outcome)
    hard = outcome.status is S.BOUNCED and outcome.bounce_type is B.HARD
    assert (reason == "hard_bounce") is hard
    assert reason in (None, "hard_bounce")
    assert hard is (outcome.bounce_rule is not None and outcome.bounce_type is B.HARD)
    enhanced = outcome.enhanced_code
    if enhanced is not None and enhanced.startswith("5.7.") and not enhanced.endswith(".0"):
        assert outcome.bounce_type is B.BLOCK and reason is None
    if outcome.smtp_code == 552 and enhanced is None and match_text(outcome.response or "") is None:
        assert outcome.bounce_type is B.SOFT and reason is None


@PROPERTIES
@given(
    st.sampled_from([250, 451, 550, 552, 554]),
    st.text(st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp", "Z")), min_size=1),
)
def test_a_clean_reply_is_stored_as_it_was_sent(code: int, text: str) -> None:
    # Trap 9: the real reply, never a made-up "250 OK".
    if len(f"{code} {text}".encode()) > MAX_REPLY_BYTES:
        return
    assert outcome_for(Reply.of(code, text)).response == f"{code} {text}"


@PROPERTIES
@given(st.sampled_from([421, 451, 550, 554]), st.lists(TEXT, min_size=2, max_size=5))
def test_multiline_reply_is_classified_by_its_first_line(code: int, lines: list[str]) -> None:
    enhanced = f"{code // 100}.1.1"
    reply = Reply.of(code, "\n".join([f"{enhanced} first", *lines]))
    assert reply.enhanced_code == enhanced
    assert_storable_line(reply.line)
