"""One entry point for every report: try the surest shape first, never guess.

ARF before DSN (a feedback report is a ``multipart/report`` too), the RFC 3464 part
before the human text, and the text parsers last. Pure and synchronous: the listener
runs it in a thread, off the event loop.
"""

from __future__ import annotations

import dataclasses

from postline.inbound.arf import parse_arf
from postline.inbound.dsn import parse_dsn
from postline.inbound.mime import enclosed_original, header, parse_message
from postline.inbound.report import Report, Unparsed
from postline.inbound.textbounce import parse_text_bounce


def parse_report(raw: bytes) -> Report:
    """The report ``raw`` holds; :class:`Unparsed` (with the reason) when it holds none."""
    try:
        message = parse_message(raw)
    except Exception as exc:  # the lenient parser hardly ever raises; never let it escape
        raise Unparsed(f"not a parsable message ({type(exc).__name__})") from None
    report = parse_arf(message) or parse_dsn(message) or parse_text_bounce(message)
    if report is None:
        raise Unparsed("not a delivery report or a feedback report")
    if report.original_message_id is None or report.original_return_path is None:
        original = enclosed_original(message)
        if original is not None:
            report = dataclasses.replace(
                report,
                original_message_id=report.original_message_id or header(original, "Message-ID"),
                original_return_path=report.original_return_path or header(original, "Return-Path"),
            )
    return report
