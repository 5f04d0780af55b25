"""Permanent reply lines as real receivers send them, and what each must mean.

Every line carries a comment naming where that wording is documented or
reported: a provider's postmaster pages, an RFC, or the MTA's source (Postfix
smtpd_check.c / local(8), Exim's routers and ACLs, Sendmail's
sendmail.cf / parseaddr.c messages, Exchange's NDR reference). Addresses and IPs
are replaced by documentation values. The rules are phrases, not these lines
(delivery/classify.py), so the table is a check that they generalise, and the
invariant is asserted on every line: ``hard`` if and only if suppressed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postline.delivery.classify import match_text
from postline.delivery.engine import outcome_for
from postline.delivery.replies import Reply
from postline.model import BounceType, RecipientStatus
from postline.outcomes import Outcome, suppression_expiry, suppression_reason
from postline.store.types import utcnow

HARD, SOFT, BLOCK, UND = "hard", "soft", "block", "undetermined"

GMAIL = "Google, 'Gmail SMTP errors and codes' (support.google.com/a/answer/3726730)"
MS = "Microsoft Learn, 'NDRs in Exchange Online' (learn.microsoft.com ... non-delivery-reports)"
YAHOO = "Yahoo Sender Hub, 'SMTP error codes' (senders.yahooinc.com/smtp-error-codes)"
YAHOO_HELP = "Yahoo Help SLN3444 'Email sent to Yahoo Mail addresses is rejected'"
AOL = "AOL Postmaster, 'SMTP error codes' (postmaster.aol.com, now Yahoo Sender Hub)"
ICLOUD = "Apple, 'iCloud mail server errors' (support.apple.com/102322)"
PROTON = "Proton, 'Troubleshooting email delivery' (proton.me/support) / reported bounces"
ZOHO = "Zoho Mail help, 'Email bounce error codes' (zoho.com/mail/help)"
GMX = "GMX / WEB.DE Postmaster, 'Fehlermeldungen' (postmaster.gmx.net, postmaster.web.de)"
MIMECAST = "Mimecast, 'SMTP error codes' (community.mimecast.com DOC-1369)"
PROOFPOINT = "Proofpoint, 'Essentials error codes' / ipcheck.proofpoint.com"
BARRACUDA = "Barracuda Campus, 'Email Security Gateway SMTP replies' (campus.barracuda.com)"
POSTFIX = "Postfix src/smtpd/smtpd_check.c"
POSTFIX_LOCAL = "Postfix src/local/ and src/virtual/ (mailbox delivery)"
EXIM = "Exim spec, ACL and router chapters (exim.org/exim-html-current/doc)"
CPANEL = "cPanel Exim default ACL (cpanel docs, 'Exim Configuration Manager')"
SENDMAIL = "Sendmail cf/README and sendmail/parseaddr.c, srvrsmtp.c"
EXCHANGE = "Microsoft Exchange Server NDR reference (learn.microsoft.com)"
RFC5321 = "RFC 5321 section 4.2.2 / 4.2.3 reply texts"
RFC7505 = "RFC 7505 section 4.2 (null MX)"
RFC7504 = "RFC 7504 (SMTP 521 and 556 reply codes)"
SPAMHAUS = "Spamhaus, 'DNSBL usage' rejection examples (spamhaus.org/faq)"
QMAIL = "qmail qmail-smtpd.c / vpopmail texts"
COMCAST = "Comcast postmaster, 'Error codes' (postmaster.comcast.net)"
ATT = "AT&T postmaster, 'Error codes' (att.net postmaster)"
REPORTED = "reported bounce, collected in bounce-parsing projects (e.g. sisimai test set)"

CORPUS: list[tuple[str, str, str]] = [
    # ---------------------------------------------------------------- Gmail
    (
        "550 5.1.1 The email account that you tried to reach does not exist. Please try "
        "double-checking the recipient's email address for typos or unnecessary spaces. "
        "https://support.google.com/mail/?p=NoSuchUser x1si - gsmtp",
        HARD,
        GMAIL,
    ),
    (
        "550 5.2.1 The email account that you tried to reach is disabled. "
        "https://support.google.com/mail/?p=DisabledUser - gsmtp",
        HARD,
        GMAIL,
    ),
    (
        "552 5.2.2 The recipient's inbox is out of storage space and inactive. Please direct "
        "the recipient to https://support.google.com/mail/?p=OverQuotaPerm - gsmtp",
        SOFT,
        GMAIL,
    ),
    (
        "552 5.3.4 Your message exceeded Google's message size limits. "
        "https://support.google.com/mail/?p=MaxSizeError - gsmtp",
        SOFT,
        GMAIL,
    ),
    (
        "550 5.7.1 [203.0.113.7] Our system has detected that this message is likely unsolicited "
        "mail. To reduce the amount of spam sent to Gmail, this message has been blocked. - gsmtp",
        BLOCK,
        GMAIL,
    ),
    (
        "550 5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail "
        "requires all senders to authenticate with either SPF or DKIM. - gsmtp",
        BLOCK,
        GMAIL,
    ),
    (
        "550 5.7.26 Unauthenticated email from example.test is not accepted due to domain's "
        "DMARC policy. - gsmtp",
        BLOCK,
        GMAIL,
    ),
    (
        "550 5.7.25 [203.0.113.7] The IP address sending this message does not have a PTR "
        "record setup, or the corresponding forward DNS entry does not point to the sending "
        "IP. - gsmtp",
        BLOCK,
        GMAIL,
    ),
    (
        "550 5.7.28 [203.0.113.7] Our system has detected an unusual rate of unsolicited mail "
        "originating from your IP address. - gsmtp",
        BLOCK,
        GMAIL,
    ),
    (
        "552 5.7.0 This message was blocked because its content presents a potential security "
        "issue. - gsmtp",
        BLOCK,
        GMAIL,
    ),
    ("554 5.6.0 Mail message is malformed. Not accepted. - gsmtp", UND, GMAIL),
    (
        "553 5.1.2 We weren't able to find the recipient domain. Please check for any spelling "
        "errors. - gsmtp",
        HARD,
        GMAIL,
    ),
    ("550 5.4.5 Daily user sending quota exceeded. - gsmtp", SOFT, GMAIL),
    ("550 5.7.1 This message violates example.test email policy. - gcdp - gsmtp", BLOCK, GMAIL),
    (
        "553 5.1.3 The recipient address <bad address@example.test> is not a valid RFC-5321 "
        "address. - gsmtp",
        HARD,
        GMAIL,
    ),
    (
        "550 5.7.350 Remote server returned message detected as spam -> 554 5.7.1 rejected",
        BLOCK,
        GMAIL,
    ),
    (
        "550 5.7.32 Your email has been rejected because the From header does not match the "
        "authenticated sender - gsmtp",
        BLOCK,
        GMAIL,
    ),
    ("555 5.5.2 Syntax error, cannot decode response. - gsmtp", UND, GMAIL),
    # ---------------------------------------------------- Microsoft 365 / Outlook
    (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        HARD,
        MS,
    ),
    ("550 5.1.1 RESOLVER.ADR.RecipNotFound; not found", HARD, MS),
    (
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) "
        "[BN8NAM11FT012.eop-nam11.prod.protection.outlook.com]",
        HARD,
        MS,
    ),
    (
        "550 5.4.1 Recipient address rejected: Access denied. For more information see "
        "https://aka.ms/EXOSmtpErrors",
        HARD,
        MS,
    ),
    (
        "550 5.7.1 Unfortunately, messages from [203.0.113.7] weren't sent. Please contact your "
        "Internet service provider since part of their network is on our block list (S3150).",
        BLOCK,
        MS,
    ),
    (
        "550 5.7.606 Access denied, banned sending IP [203.0.113.7]. To request removal from "
        "this list please visit https://sender.office.com/",
        BLOCK,
        MS,
    ),
    (
        "550 5.7.509 Access denied, sending domain example.test does not pass DMARC "
        "verification and has a DMARC policy of reject.",
        BLOCK,
        MS,
    ),
    (
        "550 5.7.708 Service unavailable. Access denied, traffic not accepted from this IP.",
        BLOCK,
        MS,
    ),
    ("550 5.7.520 Access denied, Your organization does not allow external forwarding.", BLOCK, MS),
    ("550 5.7.1 RESOLVER.RST.AuthRequired; authentication required", BLOCK, MS),
    ("554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", SOFT, MS),
    ("550 5.2.2 Submission quota exceeded", SOFT, MS),
    ("550 5.4.310 DNS domain example.test does not exist", HARD, MS),
    ("550 5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain", HARD, MS),
    ("550 5.4.300 Message expired", SOFT, MS),
    ("554 5.4.14 Hop count exceeded - possible mail loop ATTR34", UND, MS),
    ("550 5.5.0 Requested action not taken: mailbox unavailable (S2017062302)", HARD, MS),
    (
        "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains.",
        BLOCK,
        MS,
    ),
    ("550 5.7.133 RESOLVER.RST.SenderNotAuthenticatedForGroup; authentication required", BLOCK, MS),
    ("550 5.7.501 Service unavailable. Spam abuse detected from IP range.", BLOCK, MS),
    ("550 5.7.511 Access denied, banned sender[203.0.113.7]", BLOCK, MS),
    ("550 5.1.8 Access denied, bad outbound sender", BLOCK, MS),
    ("552 5.3.4 Message size exceeds fixed maximum message size", SOFT, MS),
    ("550 5.2.1 Mailbox cannot be accessed", HARD, MS),
    ("550 5.1.0 Sender denied as sender's email address is on SenderFilterConfig list", BLOCK, MS),
    ("550 5.4.316 Message expired, connection refused(Socket error code 10061)", SOFT, MS),
    ("550 5.4.312 Message expired, DNS query failed", SOFT, MS),
    (
        "550 SC-001 (BAY0-MC1-F21) Unfortunately, messages from 203.0.113.7 weren't sent. "
        "Please contact your Internet service provider.",
        UND,
        MS,
    ),
    ("550 OU-002 Mail rejected by Windows Live Hotmail for policy reasons.", BLOCK, MS),
    ("550 Requested action not taken: mailbox unavailable (2606b1a4...)", HARD, MS),
    # ------------------------------------------------------------ Yahoo / AOL
    (
        "554 delivery error: dd This user doesn't have a yahoo.com account "
        "(someone@yahoo.test) [0] - mta1018.mail.gq1.yahoo.com",
        HARD,
        YAHOO_HELP,
    ),
    ("554 delivery error: dd This user doesn't have an account", HARD, YAHOO_HELP),
    (
        "554 delivery error: dd Sorry, your message to someone@yahoo.test cannot be delivered. "
        "This account is over quota. [-5] - mta1234.mail.ne1.yahoo.com",
        SOFT,
        YAHOO_HELP,
    ),
    (
        "554 30 Sorry, your message to someone@yahoo.test cannot be delivered. This mailbox is "
        "disabled (554.30).",
        HARD,
        YAHOO,
    ),
    (
        "554 delivery error: dd Sorry, your message to someone@yahoo.test cannot be delivered. "
        "This mailbox is disabled (554.30). - mta4.mail.bf1.yahoo.com",
        HARD,
        YAHOO,
    ),
    (
        "553 5.7.2 [TSS09] All messages from 203.0.113.7 will be permanently deferred; Retrying "
        "will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
        BLOCK,
        YAHOO,
    ),
    (
        "554 5.7.9 Message not accepted for policy reasons. See "
        "https://postmaster.yahooinc.com/error-codes",
        BLOCK,
        YAHOO,
    ),
    (
        "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo "
        "requires all senders to authenticate with either SPF or DKIM.",
        BLOCK,
        YAHOO,
    ),
    ("553 VS99-IP1 deferred", BLOCK, YAHOO_HELP),
    ("552 1 Requested mail action aborted, mailbox not found", HARD, REPORTED),
    ("554 Message not allowed - [PH01] Email not accepted for policy reasons.", BLOCK, YAHOO),
    (
        "554 5.7.1 [BL21] Connections will not be accepted from 203.0.113.7, because the ip is "
        "in Spamhaus's list",
        BLOCK,
        YAHOO,
    ),
    ("550 5.1.1 <someone@aol.test>: Recipient address rejected: aol.test", HARD, AOL),
    ("554 Transaction failed : 5.7.1 : Blocked by Cloudmark rules", BLOCK, AOL),
    ("521 5.2.1 : AOL will not accept delivery of this message.", HARD, AOL),
    ("554 RLY:B1 http://postmaster.info.aol.com/errors/554rlyb1.html", UND, AOL),
    ("550 MAILBOX NOT FOUND", HARD, AOL),
    # ----------------------------------------------------------------- iCloud
    ("550 5.1.1 <someone@icloud.test>: user does not exist", HARD, ICLOUD),
    ("550 5.1.1 unknown or illegal alias: someone@icloud.test", HARD, ICLOUD),
    (
        "554 5.7.1 [CS01] Message rejected due to local policy. Please visit "
        "https://support.apple.com/en-us/HT204137",
        BLOCK,
        ICLOUD,
    ),
    ("554 5.7.1 [HM08] Message rejected due to local policy.", BLOCK, ICLOUD),
    ("552 5.2.2 <someone@icloud.test>: user is over quota", SOFT, ICLOUD),
    (
        "550 5.7.0 Blocked - see https://support.proofpoint.com/dnsbl-lookup.cgi?ip=203.0.113.7",
        BLOCK,
        ICLOUD,
    ),
    (
        "554 5.7.1 [CS01] Message rejected due to local policy. (in reply to end of DATA command)",
        BLOCK,
        ICLOUD,
    ),
    # ----------------------------------------------------------------- Proton
    (
        "550 5.1.1 <someone@proton.test>: Recipient address rejected: Address does not exist",
        HARD,
        PROTON,
    ),
    ("550 5.1.1 Recipient address not found", HARD, PROTON),
    ("554 5.7.1 <someone@proton.test>: Message rejected due to spam content", BLOCK, PROTON),
    ("550 5.7.1 Message rejected: Email from example.test failed DMARC check", BLOCK, PROTON),
    ("552 5.2.2 Mailbox is full / Blocks limit exceeded / Inode limit exceeded", SOFT, PROTON),
    # ------------------------------------------------------------------- Zoho
    ("550 5.1.1 User does not exist - <someone@zoho.test>", HARD, ZOHO),
    ("552 5.2.2 Mailbox size limit exceeded", SOFT, ZOHO),
    ("554 5.7.1 : Relay access denied", BLOCK, ZOHO),
    ("550 5.4.6 Unusual sending activity detected. Please try after sometime.", BLOCK, ZOHO),
    ("553 Relaying disallowed. Invalid Domain - example.test", BLOCK, ZOHO),
    ("550 5.7.1 Email rejected per DMARC policy for example.test", BLOCK, ZOHO),
    ("554 5.7.7 Email policy violation detected", BLOCK, ZOHO),
    ("550 5.5.1 Mail rejected: the mailbox is disabled", HARD, ZOHO),
    # ---------------------------------------------------------- GMX / web.de
    ("550 Requested action not taken: mailbox unavailable", HARD, GMX),
    (
        "550-Requested action not taken: mailbox unavailable 550 invalid DNS MX or A/AAAA "
        "resource record",
        BLOCK,
        GMX,
    ),
    (
        "554-Transaction failed 554-Reject due to policy restrictions. 554 For explanation visit "
        "https://postmaster.gmx.net/en/case?c=r0701",
        BLOCK,
        GMX,
    ),
    (
        "554-gmx.net (mxgmx014) Nemesis ESMTP Service not available 554-No SMTP service "
        "554-Bad DNS PTR resource record.",
        BLOCK,
        GMX,
    ),
    ("552 Mailbox quota exceeded", SOFT, GMX),
    (
        "554 IP address is block listed. For explanation visit "
        "https://postmaster.web.de/en/case?c=r0304",
        BLOCK,
        GMX,
    ),
    ("554-Transaction failed 554-Reject due to content restrictions", BLOCK, GMX),
    # --------------------------------------------------------------- Mimecast
    (
        "550 Invalid Recipient - https://community.mimecast.com/docs/DOC-1369#550 [abcdefg.uk1]",
        HARD,
        MIMECAST,
    ),
    (
        "550 Rejected by header based Anti-Spoofing policy: someone@example.test - "
        "https://community.mimecast.com/docs/DOC-1369#550",
        BLOCK,
        MIMECAST,
    ),
    (
        "550 Envelope blocked - User Entry - https://community.mimecast.com/docs/DOC-1369#550",
        BLOCK,
        MIMECAST,
    ),
    (
        "550 Administrative prohibition - envelope blocked - "
        "https://community.mimecast.com/docs/DOC-1369#550",
        BLOCK,
        MIMECAST,
    ),
    (
        "550 Message rejected because it was identified as spam - "
        "https://community.mimecast.com/docs/DOC-1369#550",
        BLOCK,
        MIMECAST,
    ),
    (
        "554 Email rejected due to security policies - "
        "https://community.mimecast.com/docs/DOC-1369#554",
        BLOCK,
        MIMECAST,
    ),
    # ------------------------------------------------------------- Proofpoint
    ("550 5.1.1 User Unknown", HARD, PROOFPOINT),
    ("554 5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=203.0.113.7", BLOCK, PROOFPOINT),
    ("553 5.0.0 Message rejected by policy. Contact your administrator", BLOCK, PROOFPOINT),
    (
        "550 5.7.1 Connection refused - https://www.spamhaus.org/query/ip/203.0.113.7",
        BLOCK,
        PROOFPOINT,
    ),
    (
        "554 5.7.1 Rejected by pphosted.com - message content matched a spam signature",
        BLOCK,
        PROOFPOINT,
    ),
    ("550 No such user - psmtp", HARD, PROOFPOINT),
    # -------------------------------------------------------------- Barracuda
    (
        "554 Service unavailable; Client host [203.0.113.7] blocked using Barracuda Reputation; "
        "http://www.barracudanetworks.com/reputation/?r=1&ip=203.0.113.7",
        BLOCK,
        BARRACUDA,
    ),
    (
        "550 permanent failure for one or more recipients (someone@example.test:blocked)",
        BLOCK,
        BARRACUDA,
    ),
    ("550 No such user (someone@example.test)", HARD, BARRACUDA),
    ("554 5.7.1 Message blocked by content filter (BRTS)", BLOCK, BARRACUDA),
    # Exim ACL "deny message = ... unacceptable content" as reported in bounce threads
    ("550 Message rejected because of unacceptable content", BLOCK, EXIM),
    (
        "550 permanent failure for one or more recipients (someone@example.test:550 5.1.1 "
        "<someone@example.test>... User unknown)",
        HARD,
        BARRACUDA,
    ),
    # ---------------------------------------------------------------- Postfix
    (
        "550 5.1.1 <someone@example.test>: Recipient address rejected: User unknown in local "
        "recipient table",
        HARD,
        POSTFIX,
    ),
    (
        "550 5.1.1 <someone@example.test>: Recipient address rejected: User unknown in virtual "
        "mailbox table",
        HARD,
        POSTFIX,
    ),
    (
        "550 5.1.1 <someone@example.test>: Recipient address rejected: User unknown in virtual "
        "alias table",
        HARD,
        POSTFIX,
    ),
    (
        "550 5.1.1 <someone@example.test>: Recipient address rejected: User unknown in relay "
        "recipient table",
        HARD,
        POSTFIX,
    ),
    ("554 5.7.1 <someone@example.test>: Relay access denied", BLOCK, POSTFIX),
    (
        "554 5.7.1 Service unavailable; Client host [203.0.113.7] blocked using zen.spamhaus.org; "
        "https://www.spamhaus.org/query/ip/203.0.113.7",
        BLOCK,
        POSTFIX,
    ),
    ("554 5.7.1 <someone@example.test>: Recipient address rejected: Access denied", BLOCK, POSTFIX),
    (
        "550 5.1.1 <someone@example.test>: Recipient address rejected: undeliverable address: "
        "host mx.example.test said: 550 5.1.1 user unknown",
        HARD,
        POSTFIX,
    ),
    (
        "550 5.1.0 <news@example.test>: Sender address rejected: User unknown in local recipient "
        "table",
        BLOCK,
        POSTFIX,
    ),
    (
        "553 5.7.1 <news@example.test>: Sender address rejected: not owned by user "
        "someone@example.test",
        BLOCK,
        POSTFIX,
    ),
    ("550 5.7.1 <mail.example.test>: Helo command rejected: Host not found", BLOCK, POSTFIX),
    (
        "550 5.7.1 Client host rejected: cannot find your reverse hostname, [203.0.113.7]",
        BLOCK,
        POSTFIX,
    ),
    ("554 5.7.1 <unknown[203.0.113.7]>: Client host rejected: Access denied", BLOCK, POSTFIX),
    (
        "550 5.1.2 <someone@nosuch.test>: Recipient address rejected: Domain not found",
        HARD,
        POSTFIX,
    ),
    ("554 5.5.1 Error: no valid recipients", UND, POSTFIX),
    ("552 5.3.4 Message size exceeds fixed limit", SOFT, POSTFIX),
    (
        "550 5.7.1 <someone@example.test>: Recipient address rejected: SPF fail - not authorized",
        BLOCK,
        POSTFIX,
    ),
    ("550 5.5.0 <someone@example.test>: Recipient address rejected: User unknown", HARD, POSTFIX),
    ("554 5.7.1 <news@example.test>: Sender address rejected: Access denied", BLOCK, POSTFIX),
    ("550 5.1.8 <news@example.test>: Sender address rejected: Domain not found", BLOCK, POSTFIX),
    ("554 5.7.1 Rejected: message content rejected, header check", BLOCK, POSTFIX),
    ("552 5.2.2 <someone@example.test>: mailbox full", SOFT, POSTFIX_LOCAL),
    (
        "550 5.2.2 cannot update mailbox /var/mail/someone for user someone. error writing "
        "message: File too large",
        SOFT,
        POSTFIX_LOCAL,
    ),
    ("552 5.2.2 Over quota", SOFT, POSTFIX_LOCAL),
    ("550 5.5.1 Protocol error", UND, POSTFIX),
    (
        "556 5.1.10 <someone@nomail.test>: Recipient address rejected: Domain nomail.test does "
        "not accept mail (nullMX)",
        HARD,
        RFC7505,
    ),
    # ------------------------------------------------------------------- Exim
    ("550 Unrouteable address", HARD, EXIM),
    ("550 Unknown user", HARD, EXIM),
    (
        "550-Verification failed for <news@example.test> 550-Unrouteable address 550 Sender "
        "verify failed",
        BLOCK,
        EXIM,
    ),
    ("550 Administrative prohibition", BLOCK, EXIM),
    ("550 relay not permitted", BLOCK, EXIM),
    ("550 Rejected because 203.0.113.7 is in a black list at zen.spamhaus.org", BLOCK, EXIM),
    ("550 No Such User Here", HARD, CPANEL),
    ("550 Mailbox quota exceeded", SOFT, EXIM),
    ("552 Message size exceeds maximum permitted", SOFT, EXIM),
    (
        "550 The mail server could not deliver mail to someone@example.test. The account or "
        "domain may not exist, they may be blacklisted, or missing the proper dns entries.",
        HARD,
        CPANEL,
    ),
    ("550 Host 203.0.113.7 is not permitted to send mail for example.test (SPF)", BLOCK, EXIM),
    (
        "550 This message contains a virus or other harmful content (Eicar-Test-Signature)",
        BLOCK,
        EXIM,
    ),
    ("550-Callout verification failed: 550 550 Unrouteable address", BLOCK, EXIM),
    ("550 Your message was rejected because it appears to be spam", BLOCK, EXIM),
    ("550 Access denied - Invalid HELO name (See RFC2821 4.1.1.1)", BLOCK, EXIM),
    ("550 5.1.1 <someone@example.test>: Recipient address rejected", HARD, EXIM),
    ("550 Recipient not found", HARD, EXIM),
    (
        "550-Mailbox unknown. Either there is no mailbox associated with this 550-name or you "
        "do not have authorization to see it. 550 5.1.1 User unknown",
        HARD,
        EXIM,
    ),
    ("550 Message rejected as spam by Content Filtering.", BLOCK, EXIM),
    ("550 SMTP AUTH is required for message submission on port 587", BLOCK, EXIM),
    ("550 Too many bad recipients", SOFT, EXIM),
    # --------------------------------------------------------------- Sendmail
    ("550 5.1.1 <someone@example.test>... User unknown", HARD, SENDMAIL),
    (
        "553 5.1.8 <news@example.test>... Domain of sender address news@example.test does not "
        "exist",
        BLOCK,
        SENDMAIL,
    ),
    ("550 5.7.1 <someone@example.test>... Relaying denied", BLOCK, SENDMAIL),
    (
        "554 5.7.1 <someone@example.test>... Relaying denied. IP name lookup failed [203.0.113.7]",
        BLOCK,
        SENDMAIL,
    ),
    ("552 5.2.2 <someone@example.test>... Mailbox full", SOFT, SENDMAIL),
    ("550 5.0.0 <someone@example.test>... User unknown", HARD, SENDMAIL),
    (
        "553 5.0.0 <someone@nosuch.test>... Host unknown (Name server: nosuch.test: host not "
        "found)",
        HARD,
        SENDMAIL,
    ),
    (
        "550 5.7.1 <someone@example.test>... Rejected: 203.0.113.7 listed at bl.spamcop.net",
        BLOCK,
        SENDMAIL,
    ),
    ("553 5.3.0 <someone@example.test>... Addressee unknown, relay=[203.0.113.7]", HARD, SENDMAIL),
    ("554 5.0.0 Service unavailable", UND, SENDMAIL),
    ("550 5.2.1 <someone@example.test>... Mailbox disabled for this recipient", HARD, SENDMAIL),
    ("552 5.3.4 Message is too large; 10485760 bytes max", SOFT, SENDMAIL),
    ("553 5.1.3 <someone@@example.test>... Invalid route address", HARD, SENDMAIL),
    ("550 5.7.0 Your message could not be sent. A policy violation was detected.", BLOCK, SENDMAIL),
    ("550 5.1.1 <someone@example.test>... No such user here", HARD, SENDMAIL),
    ("553 5.3.0 <someone@example.test>... No such user here", HARD, SENDMAIL),
    ("550 5.7.1 Mail from 203.0.113.7 refused - see http://dsbl.example/", BLOCK, SENDMAIL),
    (
        "554 5.3.2 <someone@example.test>... Service unavailable (mail system is not accepting "
        "messages)",
        SOFT,
        SENDMAIL,
    ),
    # --------------------------------------------------------------- Exchange
    ("550 5.1.1 User unknown", HARD, EXCHANGE),
    ("550 5.2.1 The mailbox is disabled", HARD, EXCHANGE),
    ("550 5.7.1 Client does not have permissions to send as this sender", BLOCK, EXCHANGE),
    ("550 5.7.1 Delivery not authorized, message refused", BLOCK, EXCHANGE),
    ("552 5.2.3 Message exceeds local size limit", SOFT, EXCHANGE),
    ("550 5.4.1 Relay Access Denied", BLOCK, EXCHANGE),
    ("554 5.6.0 STOREDRV.Deliver; Corrupt message content", UND, EXCHANGE),
    ("550 5.3.5 System incorrectly configured", SOFT, EXCHANGE),
    ("554 5.4.6 Hop count exceeded - possible mail loop", UND, EXCHANGE),
    (
        "550 5.7.57 SMTP; Client was not authenticated to send anonymous mail during MAIL FROM",
        BLOCK,
        EXCHANGE,
    ),
    ("550 5.1.0 Address rejected", HARD, EXCHANGE),
    ("550 5.1.6 Recipient mailbox has moved; no forwarding address", HARD, EXCHANGE),
    # ------------------------------------------------- other large receivers
    ("550 5.1.1 <someone@comcast.test> Not our Customer", HARD, COMCAST),
    (
        "554 5.7.1 203.0.113.7 Comcast block for spam. Please see "
        "http://postmaster.comcast.net/smtp-error-codes.php#BL000000",
        BLOCK,
        COMCAST,
    ),
    ("553 5.1.2 <someone@comcast.test> DNS lookup failed for recipient domain", HARD, COMCAST),
    ("550 5.2.1 <someone@att.test>... Addressee unknown, relay=[203.0.113.7]", HARD, ATT),
    (
        "553 5.3.0 flpd575 DNSBL:RBL 521< 203.0.113.7 >_is_blocked.For assistance forward this "
        "error to abuse_rbl@abuse-att.net",
        BLOCK,
        ATT,
    ),
    ("550 sorry, no mailbox here by that name. (#5.1.1 - chkuser)", HARD, QMAIL),
    ("553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", BLOCK, QMAIL),
    ("552 sorry, the recipient's mailbox is full (#5.2.2 - chkuser)", SOFT, QMAIL),
    ("550 sorry, your envelope sender domain must exist (#5.7.1)", BLOCK, QMAIL),
    ("511 sorry, no mailbox here by that name (#5.1.1 - chkuser)", HARD, QMAIL),
    ("556 5.1.10 Recipient address has null MX", HARD, RFC7505),
    ("521 5.3.2 mx.example.test does not accept mail", SOFT, RFC7504),
    (
        "550 Requested action not taken: mailbox unavailable [E.g., mailbox not found, no access]",
        HARD,
        RFC5321,
    ),
    ("551 User not local; please try <someone@elsewhere.test>", HARD, RFC5321),
    ("552 Requested mail action aborted: exceeded storage allocation", SOFT, RFC5321),
    ("553 Requested action not taken: mailbox name not allowed", HARD, RFC5321),
    ("554 Transaction failed", UND, RFC5321),
    ("550 Rejected", UND, "issue 13 (a bare rejection says nothing about the address)"),
    (
        "554 5.7.1 Service unavailable; Client host [203.0.113.7] blocked using "
        "b.barracudacentral.org",
        BLOCK,
        SPAMHAUS,
    ),
    ("550 5.7.1 Message rejected due to SPF policy of the sender domain", BLOCK, REPORTED),
    ("550 5.7.1 Email rejected due to DKIM signature verification failure", BLOCK, REPORTED),
    ("550 Account inactive", HARD, REPORTED),
    ("550 user has moved with no forwarding address", HARD, REPORTED),
    ("550 Invalid mailbox: someone@example.test", HARD, REPORTED),
    ("550 Address unknown", HARD, REPORTED),
    ("550 This account has been temporarily suspended", SOFT, REPORTED),
    ("550 Mailbox temporarily unavailable, try again later", SOFT, REPORTED),
    ("554 Message refused: too many recipients", SOFT, REPORTED),
    ("550 Rate limit exceeded, please try again later", SOFT, REPORTED),
    ("550 5.0.0 Recipient address does not exist", HARD, REPORTED),
    ("550 This account is no longer active", HARD, REPORTED),
    ("550 Account has been deleted", HARD, REPORTED),
    ("553 Sorry, that address is not a valid recipient", HARD, REPORTED),
    ("550 Your IP 203.0.113.7 has a poor reputation", BLOCK, REPORTED),
    ("550 Message rejected: your domain has no SPF record", BLOCK, REPORTED),
    ("550 5.0.0 Mail rejected. Too many complaints from your domain", BLOCK, REPORTED),
    (
        "554 Your access to this mail system has been rejected due to the sending MTA's poor "
        "reputation.",
        BLOCK,
        REPORTED,
    ),
    ("550 5.7.1 TLS required for this recipient", BLOCK, REPORTED),
    ("550 unknown local part someone in <someone@example.test>", HARD, REPORTED),
    ("550 User's mailbox is full", SOFT, REPORTED),
    ("552 Message too big", SOFT, REPORTED),
    ("550 Message content rejected, UBE, id=12345-01", BLOCK, REPORTED),
    ("550 5.5.4 Invalid arguments", UND, REPORTED),
    ("554 5.4.7 Delivery time expired", SOFT, REPORTED),
    ("500 5.5.1 Unrecognized command", UND, RFC5321),
    ("503 5.5.1 Error: need RCPT command", UND, POSTFIX),
    (
        "553 sorry, this recipient is not in my validrcptto list (#5.7.1)",
        HARD,
        "qmail validrcptto patch (qmail-smtpd.c, John Simpson)",
    ),
    (
        "550 5.4.1 [someone@example.test]: Recipient address rejected: Access denied. "
        "AS(201806281)",
        HARD,
        MS,
    ),
    ("550 this account has been suspended", HARD, REPORTED),
    ("550 Address rejected", HARD, REPORTED),
    ("550 Message rejected: sender domain has no MX", BLOCK, REPORTED),
    ("550 Recipient address rejected: User does not exist", HARD, REPORTED),
    (
        "550 Message was not accepted -- invalid mailbox. Local mailbox someone@example.test is "
        "unavailable: user not found",
        HARD,
        REPORTED,
    ),
]


def _outcome(line: str) -> Outcome:
    """As the client sees the line: the code, then the text (multi-line replies joined)."""
    return outcome_for(Reply.of(int(line[:3]), line[4:]))


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 150
    assert len({line for line, _, _ in CORPUS}) == len(CORPUS)  # no line counted twice


@pytest.mark.parametrize(("line", "expected", "source"), CORPUS, ids=[c[0][:60] for c in CORPUS])
def test_corpus_line(line: str, expected: str, source: str) -> None:
    outcome = _outcome(line)
    assert outcome.status is RecipientStatus.BOUNCED
    assert str(outcome.bounce_type) == expected, f"{line!r} ({source}) by {outcome.bounce_rule}"
    assert outcome.bounce_rule  # whatever decided is named
    # The invariant: hard if and only if the address is suppressed.
    assert (suppression_reason(outcome) == "hard_bounce") is (
        outcome.bounce_type is BounceType.HARD
    )


@pytest.mark.parametrize(
    "line",
    [
        "550 5.1.2 Host unknown: the domain name does not exist",
        "553 5.1.2 We weren't able to find the recipient domain.",
        "556 5.1.10 Recipient address has null MX",
        "550 5.4.4 SMTPSEND.DNS.NonExistentDomain; nonexistent domain",
    ],
)
def test_domain_level_bounces_suppress_for_a_while_only(line: str) -> None:
    outcome = _outcome(line)
    now = utcnow()
    assert outcome.bounce_type is BounceType.HARD and outcome.domain_level
    expiry = suppression_expiry(outcome, now)
    assert expiry is not None and now < expiry


def test_address_level_hard_bounces_suppress_for_good() -> None:
    outcome = outcome_for(Reply.of(550, "5.1.1 User unknown"))
    assert suppression_expiry(outcome, utcnow()) is None


#: Words the rules are made of, to build texts that come close to many rules at once.
_SENTENCE = (
    "user unknown no such mailbox account address recipient sender domain host does not "
    "exist found invalid valid full quota exceeded storage size too big large spam blocked "
    "listed dnsbl rbl policy denied refused relay helo client ptr temporarily try again later "
    "rate limit disabled inactive closed moved rejected access mx null dns authentication "
    "dmarc spf dkim expired too many recipients of from mail callout verification bad"
)
_WORDS = _SENTENCE.split()


@settings(derandomize=True, deadline=None, max_examples=500)
@given(st.lists(st.sampled_from(_WORDS) | st.text(max_size=8), max_size=12).map(" ".join))
def test_the_prefilter_never_changes_a_verdict(text: str) -> None:
    """The keys only skip patterns that cannot match: same verdict with or without them."""
    assert match_text(text) == match_text(text, prefilter=False)


def test_the_prefilter_never_changes_a_verdict_on_the_corpus() -> None:
    for line, _, _ in CORPUS:
        assert match_text(line) == match_text(line, prefilter=False), line


@pytest.mark.parametrize(
    ("code", "text", "rule"),
    [
        (554, "delivery error: dd This user doesn't have an account", "yahoo.no_account"),
        (550, "5.0.0 <someone@example.test>... User unknown", "sendmail.user_unknown"),
        (
            550,
            "5.5.0 <someone@example.test>: Recipient address rejected: User unknown in "
            "local recipient table",
            "postfix.user_unknown",
        ),
        (550, "Requested action not taken: mailbox unavailable", "generic.mailbox_unavailable"),
        (550, "5.1.1 anything at all", "code.5.1.1"),  # a settling code: the text is not read
        (550, "Rejected", "undetermined"),
        (451, "4.7.1 greylisted", "temporary"),
        (None, "SMTPServerDisconnected: Connection lost", "no_reply"),
    ],
)
def test_the_deciding_rule_is_named(code: int | None, text: str, rule: str) -> None:
    assert outcome_for(Reply.of(code, text)).bounce_rule == rule
