"""A TLS report as an email (RFC 8460 5.3), queued through Postline's own acceptor.

``multipart/report; report-type=tlsrpt`` with the gzipped JSON attached, from
``POSTLINE_TLSRPT_FROM`` (an address of a sending domain, whose DKIM key signs
it), with the null return path so nothing bounces back to it. It is Postline's
own mail (source ``tlsrpt``): no ``email.*`` event, not in the customer's log.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate

from postline.accept import Acceptor, Recipient, Submission
from postline.keys import Principal
from postline.message import Content
from postline.model import EmailSource

#: The acceptor's caller for Postline's own reports: unscoped, like an admin key.
_REPORTER = Principal(key_id="", name="tls reports", domain_id=None, domain_name=None)


def build_message(
    *, sender: str, to: str, domain: str, organization: str, report_id: str, body: bytes
) -> bytes:
    message = EmailMessage(policy=SMTP)
    message["From"] = sender
    message["To"] = to
    message["Date"] = formatdate(usegmt=True)
    message["Subject"] = (
        f"Report Domain: {domain} Submitter: {organization} Report-ID: <{report_id}>"
    )
    message["TLS-Report-Domain"] = domain
    message["TLS-Report-Submitter"] = organization
    message.set_content(
        f"This is an aggregate TLS report from {organization} about {domain} (RFC 8460).\n"
    )
    message.add_attachment(
        body,
        maintype="application",
        subtype="tlsrpt+gzip",
        filename=f"{organization}!{domain}!{report_id.split('.')[0]}.json.gz",
    )
    message.set_type("multipart/report")  # keeps the boundary
    message.set_param("report-type", "tlsrpt")
    return message.as_bytes()


class MailedReports:
    def __init__(self, acceptor: Acceptor, sender: str, organization: str) -> None:
        self.acceptor = acceptor
        self.sender = sender
        self.organization = organization

    async def send(self, domain: str, to: str, report_id: str, body: bytes) -> None:
        raw = build_message(
            sender=self.sender,
            to=to,
            domain=domain,
            organization=self.organization,
            report_id=report_id,
            body=body,
        )
        submission = Submission(
            content=Content(from_name="", from_address=self.sender, to=[to]),
            recipients=[Recipient(to, "to")],
            source=EmailSource.TLSRPT,
            raw=raw,
            envelope_from="",
        )
        await self.acceptor.accept([submission], _REPORTER)
