"""Bounces and complaints crafted in the shapes the big receivers send, byte for byte as
far as the parts Postline reads go: RFC 3464 DSNs (Gmail, Microsoft 365), text-only
bounces (Gmail's old "Delivery Status Notification (Failure)", Exchange NDRs, Yahoo's
qmail-style "failure notice") and RFC 5965 ARF complaints (Yahoo CFL, Microsoft JMRP).

Each takes the return path the report is mailed to, the failed recipient and the
original's Message-ID, and gives the bytes a test sends with smtplib.
"""

from __future__ import annotations

import html
from collections.abc import Callable

#: A report builder: (return path, recipient, original Message-ID) -> the message bytes.
Builder = Callable[[str, str, str], bytes]


def _crlf(text: str) -> bytes:
    return text.replace("\r\n", "\n").replace("\n", "\r\n").encode()


def gmail_dsn(return_path: str, recipient: str, message_id: str, status: str = "5.1.1") -> bytes:
    """Gmail's multipart/report: a human part, the delivery-status part, the headers."""
    return _crlf(
        f"""Return-Path: <>
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {return_path}
Subject: Delivery Status Notification (Failure)
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; boundary="000000000000b1"; report-type=delivery-status

--000000000000b1
Content-Type: text/plain; charset="UTF-8"

** Address not found **

Your message wasn't delivered to {recipient} because the address couldn't be found.

--000000000000b1
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Arrival-Date: Sun, 06 Dec 2026 03:00:00 -0800 (PST)

Final-Recipient: rfc822; {recipient}
Action: failed
Status: {status}
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2a00:1450:400c:c0b::1a, the server for the domain.)
Diagnostic-Code: smtp; 550-{status} The email account that you tried to reach does not exist.
 Please try 550-{status} double-checking the recipient's email address for typos or
 550-{status} unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser
Last-Attempt-Date: Sun, 06 Dec 2026 03:00:01 -0800 (PST)

--000000000000b1
Content-Type: text/rfc822-headers

Return-Path: <{return_path}>
Message-ID: {message_id}
Subject: Hello
From: sender@example.test
To: {recipient}

--000000000000b1--
"""
    )


def gmail_text_bounce(return_path: str, recipient: str, message_id: str) -> bytes:
    """Gmail's older plain-text notice: no machine-readable part at all."""
    return _crlf(
        f"""From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {return_path}
Subject: Delivery Status Notification (Failure)
Content-Type: text/plain; charset=ISO-8859-1

Delivery to the following recipient failed permanently:

     {recipient}

Technical details of permanent failure:
Google tried to deliver your message, but it was rejected by the server for the
recipient domain by mx.dest.test. [127.0.0.1].

The error that the other server returned was:
550 5.1.1 <{recipient}>: Recipient address rejected: User unknown in virtual mailbox table

----- Original message -----

Message-ID: {message_id}
Subject: Hello
"""
    )


def exchange_ndr(return_path: str, recipient: str, message_id: str) -> bytes:
    """An Office 365 NDR as some relays pass it on: HTML only, no delivery-status part."""
    return _crlf(
        f"""From: Microsoft Outlook <postmaster@contoso.onmicrosoft.com>
To: {return_path}
Subject: Undeliverable: Hello
Content-Type: multipart/alternative; boundary="ndr"

--ndr
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

<html><body><p><b><font color=3D"#000066">Your message to {recipient} couldn't =
be delivered.</font></b></p>
<p>gone wasn't found at dest.test.</p>
<p>Diagnostic information for administrators:</p>
<p>Generating server: AM0PR01MB1234.eurprd01.prod.exchangelabs.com</p>
<p>{recipient}<br>Remote Server returned '550 5.1.10 RESOLVER.ADR.RecipientNotFound; =
Recipient not found by SMTP address lookup'</p>
<p>Original message headers:</p>
<pre>Message-ID: {html.escape(message_id)}</pre>
</body></html>
--ndr--
"""
    )


def exchange_legacy_ndr(return_path: str, recipient: str, message_id: str) -> bytes:
    """Exchange 2010's plain text: "Delivery has failed to these recipients or groups"."""
    return _crlf(
        f"""From: System Administrator <postmaster@dest.test>
To: {return_path}
Subject: Undeliverable: Hello
Content-Type: text/plain; charset="us-ascii"

Delivery has failed to these recipients or groups:

{recipient}
The e-mail address you entered couldn't be found. Please check the recipient's e-mail
address and try to resend the message.

Diagnostic information for administrators:

Generating server: exch01.dest.test

{recipient}
#550 5.1.1 RESOLVER.ADR.RecipNotFound; not found ##

Original message headers:

Message-ID: {message_id}
"""
    )


def yahoo_failure_notice(return_path: str, recipient: str, message_id: str) -> bytes:
    """Yahoo's qmail-style "failure notice": the address on its own line, then the reply."""
    host = "mta1234.mail.gq1.yahoo.com"
    return _crlf(
        f"""From: MAILER-DAEMON@yahoo.com
To: {return_path}
Subject: Failure Notice
Content-Type: text/plain

Sorry, we were unable to deliver your message to the following address.

<{recipient}>:
554: delivery error: dd This user doesn't have a yahoo.com account ({recipient}) [0] - {host}

--- Below this line is a copy of the message.

Message-ID: {message_id}
Subject: Hello
"""
    )


def delayed_dsn(return_path: str, recipient: str, message_id: str) -> bytes:
    """A delay warning: RFC 3464 with ``Action: delayed``; nothing to apply."""
    return _crlf(
        f"""From: MAILER-DAEMON@mx.dest.test
To: {return_path}
Subject: Delayed Mail (still being retried)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="d1"

--d1
Content-Type: text/plain

Your message is delayed.

--d1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.dest.test

Final-Recipient: rfc822; {recipient}
Action: delayed
Status: 4.4.1
Diagnostic-Code: smtp; 421 4.4.1 connection timed out

--d1
Content-Type: text/rfc822-headers

Message-ID: {message_id}

--d1--
"""
    )


def yahoo_cfl(return_path: str, recipient: str | None, message_id: str) -> bytes:
    """Yahoo's complaint feedback loop: ARF, the recipient redacted when ``None``."""
    rcpt_field = f"Original-Rcpt-To: {recipient}\n" if recipient else ""
    to_header = recipient or "redacted@yahoo.com"
    return _crlf(
        f"""From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>
To: fbl@postline.example.test
Subject: FW: Hello
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="cfl"

--cfl
Content-Type: text/plain; charset="us-ascii"

This is an email abuse report for an email message received from IP 127.0.0.2 on
Sun, 06 Dec 2026 03:00:00 +0000.

--cfl
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Yahoo!-Mail-Feedback/2.0
Version: 0.1
Original-Mail-From: <{return_path}>
{rcpt_field}Arrival-Date: Sun, 06 Dec 2026 03:00:00 +0000
Reported-Domain: example.test
Authentication-Results: mta1.mail.yahoo.com  from=example.test; domainkeys=neutral; dkim=pass

--cfl
Content-Type: message/rfc822

Return-Path: <{return_path}>
Message-ID: {message_id}
From: sender@example.test
To: {to_header}
Subject: Hello

Hello from Postline
--cfl--
"""
    )


def microsoft_jmrp(return_path: str, recipient: str, message_id: str) -> bytes:
    """Microsoft's JMRP: ARF whose enclosed original names the recipient in
    ``X-HmXmrOriginalRecipient`` (and a redacted To)."""
    return _crlf(
        f"""From: staff@hotmail.com
To: {return_path}
Subject: complaint about message from 127.0.0.2
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="jmrp"

--jmrp
Content-Type: text/plain

This is an email abuse report for an email message received from IP 127.0.0.2.

--jmrp
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Hotmail FBL
Version: 1

--jmrp
Content-Type: message/rfc822
Content-Disposition: inline

X-HmXmrOriginalRecipient: <{recipient}>
Return-Path: <{return_path}>
Message-ID: {message_id}
From: sender@example.test
To: <redacted@hotmail.com>
Subject: Hello

Hello from Postline
--jmrp--
"""
    )


def microsoft_jmrp_legacy(return_path: str, recipient: str, message_id: str) -> bytes:
    """JMRP's older form: no feedback-report part, the original attached with the header."""
    return _crlf(
        f"""From: staff@hotmail.com
To: {return_path}
Subject: complaint about message from 127.0.0.2
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="old"

--old
Content-Type: text/plain

This is a Junk Mail Reporting Program message.

--old
Content-Type: message/rfc822

X-HmXmrOriginalRecipient: <{recipient}>
Message-ID: {message_id}
From: sender@example.test
Subject: Hello

Hello from Postline
--old--
"""
    )


def not_a_report(return_path: str) -> bytes:
    """An out-of-office reply sent to the return path: no report at all."""
    return _crlf(
        f"""From: someone@dest.test
To: {return_path}
Subject: Out of office
Content-Type: text/plain

I am away until Monday.
"""
    )
