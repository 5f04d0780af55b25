"""The complaint the simulator files: an RFC 5965 ARF report, shaped as Yahoo's CFL sends it.

Mailed to the original's return path at the inbound listener, over real SMTP, so the
whole loop (feedback report, listener, token check, parse, ``complained``, webhook,
suppression) runs in ``make run`` without the internet.
"""

from __future__ import annotations

import asyncio
import logging
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import aiosmtplib

from postline.domains import SIMULATOR_DOMAIN
from postline.store.types import utcnow

log = logging.getLogger("postline.sandbox")
#: How long a complaint answered 4xx is offered again (seconds of waiting in all).
_RETRY_FOR = 60.0

REPORTER = f"feedback@{SIMULATOR_DOMAIN}"
_HEADERS_ONLY = 64 * 1024


def build_arf(return_path: str, complainant: str, original: bytes) -> bytes:
    """An abuse report about ``original`` (its headers enclosed), from ``complainant``."""
    now = utcnow()
    report = EmailMessage(policy=policy.SMTP)
    report["From"] = f"Simulated feedback loop <{REPORTER}>"
    report["To"] = return_path
    report["Subject"] = "Abuse report (simulated)"
    report["Date"] = format_datetime(now)
    report["Message-ID"] = make_msgid(domain=SIMULATOR_DOMAIN)
    report["Auto-Submitted"] = "auto-generated"
    report.set_type("multipart/report")
    report.set_param("report-type", "feedback-report")
    note = EmailMessage(policy=policy.SMTP)
    note.set_content(
        "This is an email abuse report for an email message received from the simulator.\n"
    )
    fields = EmailMessage(policy=policy.SMTP)
    fields.set_payload(
        "Feedback-Type: abuse\r\n"
        "User-Agent: Postline-Simulator/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Mail-From: <{return_path}>\r\n"
        f"Original-Rcpt-To: <{complainant}>\r\n"
        f"Arrival-Date: {format_datetime(now)}\r\n"
        f"Reported-Domain: {SIMULATOR_DOMAIN}\r\n",
    )
    fields["Content-Type"] = "message/feedback-report"
    head = original[:_HEADERS_ONLY].replace(b"\r\n", b"\n").split(b"\n\n", 1)[0]
    enclosed = EmailMessage(policy=policy.SMTP)
    enclosed["Content-Type"] = "text/rfc822-headers"
    enclosed.set_payload(head.decode("ascii", errors="replace").replace("\n", "\r\n") + "\r\n")
    report.attach(note)
    report.attach(fields)
    report.attach(enclosed)
    return report.as_bytes()


async def file_complaint(
    inbound: tuple[str, int], return_path: str, complainant: str, original: bytes
) -> None:
    """Mail the report to the inbound listener, as a provider's loop would (null sender),
    and, as its MTA would, again after a 4xx: the simulator files it the moment it
    accepts the message, which may be before Postline has recorded that delivery."""
    report = build_arf(return_path, complainant, original)
    delay, waited = 0.1, 0.0
    while True:
        client = aiosmtplib.SMTP(
            hostname=inbound[0], port=inbound[1], timeout=30, start_tls=False, use_tls=False
        )
        try:
            async with client:
                await client.sendmail("", [return_path], report)
            return
        except aiosmtplib.SMTPResponseException as exc:
            if not 400 <= exc.code < 500 or waited >= _RETRY_FOR:
                log.warning("simulated complaint refused by the inbound listener: %d", exc.code)
                return
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning(
                "simulated complaint not delivered to the inbound listener: %s",
                type(exc).__name__,
            )
            return
        await asyncio.sleep(delay)  # a retry's wait, as an MTA's queue would
        waited += delay
        delay = min(delay * 2, 5.0)
