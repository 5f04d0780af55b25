"""The outcome a report means for one recipient, by the rules the engine applies to replies.

A late bounce is classified exactly as an SMTP refusal would be (delivery/classify.py):
the report's Status where it settles the question, else the quoted reply's phrases, so
the same words bounce the same way whether the remote said them at RCPT or a day later.
"""

from __future__ import annotations

import re

from postline.delivery.classify import Verdict, classify_permanent
from postline.delivery.replies import sanitize
from postline.inbound.report import Entry, Report
from postline.model import BounceType, RecipientStatus
from postline.outcomes import Outcome

#: The remote gave up after temporary failures (4.4.7 and the like): it never arrived,
#: but nothing says the address is bad.
GAVE_UP = Verdict(BounceType.SOFT, "report.gave_up")
#: An enhanced code near the start of a quoted reply ("550-5.1.1 ...", "#550 5.1.1").
_QUOTED = re.compile(r"(?<![\w.])([245]\.\d{1,3}\.\d{1,3})(?![\w.])")
_QUOTE_WINDOW = 40


def _enhanced(entry: Entry) -> str | None:
    """The report's Status, unless it is a bare ``X.0.0`` and the quoted reply says more."""
    found = _QUOTED.search(entry.diagnostic[:_QUOTE_WINDOW]) if entry.diagnostic else None
    quoted = found.group(1) if found else None
    status = entry.status
    if status is None or (status.endswith(".0.0") and quoted is not None):
        return quoted or status
    return status


def bounce_outcome(entry: Entry) -> Outcome:
    enhanced = _enhanced(entry)
    text = sanitize(entry.diagnostic or "")
    first = (enhanced or str(entry.smtp_code or 5))[0]
    if first == "4":
        verdict = GAVE_UP
    else:
        verdict = classify_permanent(entry.smtp_code or 550, enhanced, text)
    return Outcome(
        status=RecipientStatus.BOUNCED,
        smtp_code=entry.smtp_code,
        enhanced_code=enhanced,
        response=text or None,
        bounce_type=verdict.bounce_type,
        bounce_rule=verdict.rule,
        domain_level=verdict.domain_level,
    )


def complaint_outcome(report: Report) -> Outcome:
    agent = f" from {sanitize(report.user_agent)[:100]}" if report.user_agent else ""
    return Outcome(
        status=RecipientStatus.COMPLAINED,
        response=f"spam complaint (feedback-type {report.feedback_type or 'abuse'}){agent}",
    )
