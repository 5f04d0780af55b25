"""Reply classification against a table of real-world-style reply lines.

Each line gives the expected recipient status, enhanced code, bounce type and
whether it suppresses the address: hard if and only if suppressed. The texts
imitate what large providers send (written for this test, not copied). Codes are
parsed, never matched as substrings (" 5" in "retry in 5 minutes" is not a 5xx), and
blocks or full mailboxes never suppress.
"""

from __future__ import annotations

import pytest

from postline.delivery.engine import outcome_for
from postline.delivery.replies import Reply
from postline.model import BounceType, RecipientStatus
from postline.outcomes import suppression_reason

D, B, F = RecipientStatus.DELIVERED, RecipientStatus.BOUNCED, RecipientStatus.DEFERRED
HARD, SOFT, BLOCK, UND = BounceType.HARD, BounceType.SOFT, BounceType.BLOCK, BounceType.UNDETERMINED

TABLE: list[tuple[int | None, str, RecipientStatus, str | None, BounceType | None, bool]] = [
    # --- accepted
    (250, "2.0.0 OK  1718000000 x12si345678qkb.123 - gsmtp", D, "2.0.0", None, False),
    (
        250,
        "2.6.0 <id@example.test> [InternalId=123] Queued mail for delivery",
        D,
        "2.6.0",
        None,
        False,
    ),
    (250, "ok dirdel", D, None, None, False),
    (250, "OK id=1qXYZ-0005Ab-9Z at 12:55:00 550 in queue", D, None, None, False),
    (251, "2.1.5 User not local; will forward", D, "2.1.5", None, False),
    # --- recipient does not exist: hard, suppresses
    (
        550,
        "5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos - gsmtp",
        B,
        "5.1.1",
        HARD,
        True,
    ),
    (
        550,
        "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        B,
        "5.1.10",
        HARD,
        True,
    ),
    (554, "5.1.1 <x@yahoo.test>: Recipient address rejected: User unknown", B, "5.1.1", HARD, True),
    (550, "5.1.2 Host unknown: the domain name does not exist", B, "5.1.2", HARD, True),
    (
        553,
        "5.1.3 The recipient address <bad@@example> is not a valid RFC 5321 address",
        B,
        "5.1.3",
        HARD,
        True,
    ),
    (550, "5.1.6 Recipient mailbox has moved; no forwarding address", B, "5.1.6", HARD, True),
    (
        550,
        "5.2.1 The email account that you tried to reach is disabled. - gsmtp",
        B,
        "5.2.1",
        HARD,
        True,
    ),
    (
        550,
        "5.2.1 Mailbox unavailable: this account has been disabled or discontinued",
        B,
        "5.2.1",
        HARD,
        True,
    ),
    (550, "Requested action not taken: mailbox unavailable", B, None, HARD, True),
    (551, "User not local; please try <forward@example.test>", B, None, HARD, True),
    # --- full mailboxes and size: soft, never suppress
    (
        552,
        "5.2.2 The email account that you tried to reach is over quota. - gsmtp",
        B,
        "5.2.2",
        SOFT,
        False,
    ),
    (
        452,
        "4.2.2 The email account that you tried to reach is over quota and inactive.",
        F,
        "4.2.2",
        SOFT,
        False,
    ),
    (552, "5.3.4 Message size exceeds fixed maximum message size", B, "5.3.4", SOFT, False),
    (552, "Requested mail action aborted: exceeded storage allocation", B, None, SOFT, False),
    (552, "5.2.3 Message exceeds local size limit", B, "5.2.3", SOFT, False),
    # --- policy blocks: block, never suppress
    (
        550,
        "5.7.1 [203.0.113.7] Our system has detected that this message is likely "
        "unsolicited mail. - gsmtp",
        B,
        "5.7.1",
        BLOCK,
        False,
    ),
    (
        554,
        "5.7.1 Service unavailable; Client host [203.0.113.7] blocked using Spamhaus",
        B,
        "5.7.1",
        BLOCK,
        False,
    ),
    (
        550,
        "5.7.26 This mail has been blocked because the sender is unauthenticated. "
        "Gmail requires all senders to authenticate with either SPF or DKIM.",
        B,
        "5.7.26",
        BLOCK,
        False,
    ),
    (
        550,
        "5.7.509 Access denied, sending domain example.test does not pass DMARC verification",
        B,
        "5.7.509",
        BLOCK,
        False,
    ),
    (553, "5.7.1 Sender address rejected: not owned by user", B, "5.7.1", BLOCK, False),
    (554, "5.7.9 Message not accepted for policy reasons.", B, "5.7.9", BLOCK, False),
    (550, "5.7.606 Access denied, banned sending IP [203.0.113.7]", B, "5.7.606", BLOCK, False),
    # --- temporary: deferred, soft
    (
        421,
        "4.7.0 [203.0.113.7] Our system has detected an unusual rate of unsolicited mail. "
        "To protect our users from spam, mail sent from your IP address has been temporarily "
        "rate limited. - gsmtp",
        F,
        "4.7.0",
        SOFT,
        False,
    ),
    (
        421,
        "4.7.28 Gmail has detected an unusual rate of mail originating from your SPF domain",
        F,
        "4.7.28",
        SOFT,
        False,
    ),
    (451, "4.7.1 Greylisting in action, please come back in 5 minutes", F, "4.7.1", SOFT, False),
    (451, "4.3.0 Temporary server error. Please try again later", F, "4.3.0", SOFT, False),
    (
        450,
        "4.2.1 The user you are trying to contact is receiving mail too quickly.",
        F,
        "4.2.1",
        SOFT,
        False,
    ),
    (451, "retry in 5 minutes", F, None, SOFT, False),  # trap 4: " 5" is not a 5xx
    (
        421,
        "mx.example.test Service not available, closing transmission channel",
        F,
        None,
        SOFT,
        False,
    ),
    (
        450,
        "4.4.316 Connection refused [Message=Socket error code 10061]",
        F,
        "4.4.316",
        SOFT,
        False,
    ),
    (452, "4.5.3 Too many recipients", F, "4.5.3", SOFT, False),
    (421, "4.4.5 Server busy, try again later. TSS04", F, "4.4.5", SOFT, False),
    # --- other permanent failures: undetermined, never suppress
    (554, "Transaction failed", B, None, UND, False),
    (550, "Rejected", B, None, UND, False),  # no longer "hard" yet unsuppressed (issue 13)
    (
        554,
        "delivery error: dd This user doesn't have an account on yahoo.test",
        B,
        None,
        HARD,
        True,
    ),
    (550, "5.4.1 Recipient address rejected: Access denied. AS(201806281)", B, "5.4.1", HARD, True),
    (554, "5.6.0 Message content rejected: malformed MIME", B, "5.6.0", UND, False),
    (500, "5.5.1 Unrecognized command", B, "5.5.1", UND, False),
    # --- a 4xx whose text carries a 5.x.x: the code decides, the text does not
    (451, "5.1.1 looks permanent but the reply code is temporary", F, None, SOFT, False),
    # --- no reply at all: connection-level errors are temporary
    (
        None,
        "SMTPConnectError: Error connecting to 192.0.2.1 on port 25: Connection refused",
        F,
        None,
        SOFT,
        False,
    ),
    (
        None,
        "SMTPConnectTimeoutError: Timed out connecting to 192.0.2.1 on port 25",
        F,
        None,
        SOFT,
        False,
    ),
    (None, "SMTPReadTimeoutError: Timed out waiting for server response", F, None, SOFT, False),
    (None, "SMTPServerDisconnected: Unexpected EOF received", F, None, SOFT, False),
    (None, "SSLError: [SSL: WRONG_VERSION_NUMBER] wrong version number", F, None, SOFT, False),
]


def test_the_table_is_large_enough() -> None:
    assert len(TABLE) >= 40


@pytest.mark.parametrize(
    ("code", "text", "status", "enhanced", "bounce", "suppresses"),
    TABLE,
    ids=[f"{c} {t[:40]}" for c, t, *_ in TABLE],
)
def test_classification(
    code: int | None,
    text: str,
    status: RecipientStatus,
    enhanced: str | None,
    bounce: BounceType | None,
    suppresses: bool,
) -> None:
    outcome = outcome_for(Reply.of(code, text))
    assert outcome.status is status
    assert outcome.enhanced_code == enhanced
    assert outcome.bounce_type is bounce
    assert (suppression_reason(outcome) == "hard_bounce") is suppresses
    assert suppresses is (bounce is HARD)  # the invariant, checked on the table itself
    assert outcome.response is not None and text[:20] in outcome.response  # the real reply
