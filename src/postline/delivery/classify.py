"""What a failed SMTP reply means for the address: hard, soft, block or undetermined.

Codes first: an enhanced code (RFC 3463) that settles the question decides.
Where it does not (no enhanced code, an ``X.0.0`` detail, ``5.4.x`` routing,
``5.5.x`` protocol, ``5.6.x`` content), an ordered table of phrase rules reads
the text; the first rule that matches decides, else the reply stays
``undetermined``. The id of whatever decided ("code.5.1.1",
"gmail.user_unknown", "postfix.user_unknown", "generic.spam", ...) is kept
with the outcome, so a surprising verdict can be traced to its rule.

Definitions (the same for every rule):

- hard: the address does not exist or is invalid; the only verdict that
  suppresses (``domain_level`` ones only for a while, see outcomes.py).
- soft: temporary, or about the mailbox rather than the address: full, over
  quota, message too big, disabled for now, rate limited.
- block: a refusal of us or of the message: policy, reputation, spam, lists,
  SPF/DKIM/DMARC, relaying, sender or client checks.
- undetermined: nothing in the reply says which.

Rules match phrases, never whole lines, so that a provider's rewording still
lands; the table is ordered from specific to generic and the tiers are
commented. This runs only on failures, once per reply, over a lower-cased
text of at most 1024 bytes against precompiled patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postline.model import BounceType

HARD, SOFT, BLOCK, UND = (
    BounceType.HARD,
    BounceType.SOFT,
    BounceType.BLOCK,
    BounceType.UNDETERMINED,
)


@dataclass(frozen=True)
class Verdict:
    """A failure's bounce type, the rule that decided it, and whether it is about a domain."""

    bounce_type: BounceType
    rule: str
    domain_level: bool = False  # the whole domain (5.1.2, NXDOMAIN): suppress for a while only


@dataclass(frozen=True)
class Rule:
    """A phrase rule. ``keys``: substrings of which every match contains one; the
    pattern runs only when one is in the text (``in`` is far cheaper than a regex
    that cannot start from a literal)."""

    id: str
    pattern: re.Pattern[str]
    verdict: Verdict
    keys: tuple[str, ...] = ()

    def matches(self, lowered: str, *, prefilter: bool = True) -> bool:
        if prefilter and self.keys and not any(key in lowered for key in self.keys):
            return False
        return self.pattern.search(lowered) is not None


def _rule(
    rule_id: str,
    bounce: BounceType,
    pattern: str,
    *,
    domain: bool = False,
    keys: tuple[str, ...] = (),
) -> Rule:
    return Rule(rule_id, re.compile(pattern), Verdict(bounce, rule_id, domain), keys)


# Fragments shared by several rules (lower-case text).
_WHO = r"(?:user|recipient|mailbox|account|address|addressee|alias|local.part|e-?mail|person)"
_NOT_EXIST = r"(?:does ?n[o']t|did ?n[o']t|no longer|not|do ?n[o']t) exists?"

#: Ordered: the first match wins. Tiers, from specific to generic:
#: 1. provider and MTA texts whose generic reading would be wrong;
#: 2. refusals of the sender or the client (their "unknown"/"not found" is not the recipient's);
#: 3. the destination domain does not exist (hard, domain-level);
#: 4. the address does not exist (hard);
#: 5. mailbox-level problems: full, over quota, too big (soft);
#: 6. policy, reputation, spam, lists, authentication (block);
#: 7. temporary conditions and rate limits in a permanent reply (soft);
#: 8. weak hints that the address is dead (hard).
RULES: tuple[Rule, ...] = (
    # --- 1. provider and MTA specifics
    # GMX / web.de answer "mailbox unavailable" when OUR domain's DNS is wrong.
    _rule("gmx.sender_dns", BLOCK, r"invalid dns (?:mx|ptr|a/aaaa)|bad dns ptr", keys=("dns",)),
    _rule("gmx.policy", BLOCK, r"reject due to policy restrictions|nemesis esmtp service not"),
    # Exchange (on premises and Online) name the component that refused: RESOLVER, STOREDRV.
    # Microsoft 365 Directory-Based Edge Blocking: the tenant has no such recipient.
    _rule(
        "microsoft.dbeb_access_denied",
        HARD,
        r"recipient address rejected: access denied\. as\(201806281\)|"
        r"5\.4\.1 .{0,80}?recipient address rejected: access denied",
    ),
    _rule("exchange.recipient_not_found", HARD, r"resolver\.adr\.recip(?:ient)?notfound"),
    _rule("microsoft.nonexistent_domain", HARD, r"dns\.nonexistentdomain", domain=True),
    _rule("exchange.auth_required", BLOCK, r"resolver\.rst\.|authrequired"),
    _rule("exchange.quota", SOFT, r"quotaexceeded|mailboxfull|storedrv\.deliver.*quota"),
    _rule("microsoft.blocklist", BLOCK, r"part of their network is on our block list|\(s3150\)"),
    # Yahoo / AOL prefix their texts with "dd"; the bracketed TSSxx codes are throttles.
    _rule("yahoo.no_account", HARD, r"(?:does ?n[o']t|does not) have an? (?:\S+ )?account"),
    _rule("yahoo.mailbox_disabled", HARD, r"this mailbox is disabled|\(554\.30\)"),
    _rule("yahoo.tss", BLOCK, r"\[ts[s]?0\d\]|permanently deferred|\bvs\d+-[a-z]+\d*\b"),
    _rule("icloud.bad_alias", HARD, r"unknown or illegal alias"),
    _rule("icloud.policy", BLOCK, r"\[cs0\d\]|\[hm0\d\]"),
    _rule("mimecast.invalid_recipient", HARD, r"invalid recipient - https?://\S*mimecast"),
    _rule("mimecast.policy", BLOCK, r"mimecast|envelope blocked|anti-spoofing"),
    _rule("proofpoint.block", BLOCK, r"proofpoint|pphosted|ipcheck"),
    _rule(
        "barracuda.block", BLOCK, r"barracuda|\bbrts\b|\bbrbl\b", keys=("barracuda", "brts", "brbl")
    ),
    _rule(
        "cpanel.may_not_exist",
        HARD,
        r"account or domain may not exist",
    ),
    _rule("zoho.unusual_activity", BLOCK, r"unusual sending activity"),
    _rule("proton.unknown", HARD, r"address does not exist|recipient address not found"),
    # Too many of something is a rate or a count, whatever else the line says.
    _rule(
        "generic.too_many",
        SOFT,
        r"too many (?:bad |invalid |unknown )?(?:recipients|messages|connections|mails|"
        r"e-?mails|concurrent|errors|rcpt)",
    ),
    _rule("generic.mail_loop", UND, r"mail loop|routing loop|hop count|too many hops"),
    # Protocol and format errors say nothing about the address nor about us.
    _rule(
        "generic.protocol",
        UND,
        r"malformed|unrecogni[sz]ed command|command not (?:recogni[sz]ed|implemented)|"
        r"bad sequence of commands|line too long|bare (?:lf|<lf>)|need (?:mail|rcpt)",
    ),
    # Sendmail: "<addr>... User unknown" (sendmail/parseaddr.c, the stock mailer texts).
    _rule(
        "sendmail.user_unknown",
        HARD,
        r"\.\.\. (?:user unknown|no such user|addressee unknown)",
        keys=("...",),
    ),
    # --- 2. the sender or the connecting client refused (not about the recipient)
    _rule("exim.sender_verify", BLOCK, r"sender verify failed|callout verification failed"),
    _rule("postfix.relay_access_denied", BLOCK, r"relay access denied"),
    _rule(
        "generic.sender_rejected",
        BLOCK,
        r"\bsender\b.{0,80}?(?:rejected|denied|refused|unknown|not found|"
        + _NOT_EXIST
        + r"|invalid|not allowed|not permitted|verif|blocked|mismatch|not owned|must|no mx)|"
        r"(?:rejected|denied|refused|blocked|invalid)\s+sender|"
        r"callout verification|from address|mail from.{0,40}?(?:rejected|denied|refused)",
        keys=("sender", "from", "callout"),
    ),
    _rule(
        "postfix.client_rejected",
        BLOCK,
        r"helo command rejected|ehlo|\bhelo\b|client host rejected|client host .{0,40}blocked|"
        r"cannot find your (?:reverse )?hostname|reverse (?:dns|hostname|lookup)|\bptr\b|\brdns\b",
        keys=("helo", "ehlo", "client", "hostname", "reverse", "ptr", "rdns"),
    ),
    _rule(
        "generic.relay_denied",
        BLOCK,
        r"relay(?:ing)? (?:access )?(?:denied|disallowed|not permitted|not allowed|prohibited)|"
        r"unable to relay|allowed rcpthosts|we do not relay|not permitted to relay",
    ),
    # --- 3. the destination domain does not exist
    _rule("rfc7505.null_mx", HARD, r"null mx", domain=True),
    _rule(
        "generic.domain_not_found",
        HARD,
        r"(?:domain|host)(?: name)?\b.{0,40}?(?:not found|"
        + _NOT_EXIST
        + r"|unknown)|no such domain|(?:unknown|non-?existent|invalid|unrouteable) domain|"
        r"host unknown|no mx (?:or a |record)|we weren.t able to find the recipient domain",
        domain=True,
        keys=("domain", "host", "mx"),
    ),
    # --- 4. the address does not exist
    _rule(
        "gmail.user_unknown",
        HARD,
        r"account that you tried to reach (?:does not exist|is disabled)",
    ),
    _rule("postfix.user_unknown", HARD, r"user unknown in (?:local|virtual|relay)"),
    _rule("qmail.no_mailbox", HARD, r"no mailbox here by that name"),
    _rule("exim.unrouteable", HARD, r"unrouteable address"),
    _rule(
        "generic.user_unknown",
        HARD,
        r"user ?(?:name )?unknown|"
        r"unknown (?:user|recipient|mailbox|address|local.part|alias|addressee)"
        r"|addressee unknown|no such (?:user|mailbox|recipient|account|address|person|local user)"
        r"|(?:address|recipient|mailbox) unknown|user not local|not our customer"
        r"|recipient not recogni[sz]ed|mailbox name not allowed|validrcptto",
        keys=(
            "unknown",
            "no such",
            "not local",
            "customer",
            "recogni",
            "not allowed",
            "validrcptto",
        ),
    ),
    _rule(
        "generic.does_not_exist",
        HARD,
        _WHO + r".{0,40}?" + _NOT_EXIST + r"|" + _WHO + r"\S*\s+(?:was )?not found",
        keys=("exist", "found"),
    ),
    _rule(
        "generic.invalid_address",
        HARD,
        r"invalid (?:recipient|mailbox|user|address|e-?mail|account|local.part)|"
        r"(?:not|isn.t) a valid (?:recipient|mailbox|user|address|e-?mail|account)|"
        r"(?:recipient|mailbox|address|user)(?: address)? (?:is )?(?:invalid|not valid)|"
        r"undeliverable address|bad (?:recipient|destination mailbox|address)",
        keys=("valid", "undeliverable", "bad "),
    ),
    _rule(
        "generic.account_closed",
        HARD,
        r"(?:account|mailbox|address|user)\b.{0,30}?(?:has been |was |is )?"
        r"(?:closed|deleted|terminated|removed|discontinued|deactivated|expired)\b"
        r"|no longer (?:active|valid|in service|available|in use|used)"
        r"|has moved|no forwarding address",
        keys=(
            "closed",
            "deleted",
            "terminated",
            "removed",
            "discontinued",
            "deactivated",
            "expired",
            "no longer",
            "moved",
            "forwarding",
        ),
    ),
    # --- 5. the mailbox cannot take it now (soft)
    _rule(
        "generic.mailbox_full",
        SOFT,
        r"(?:mailbox|inbox|mail ?box|account|user|disk|storage|mail folder)\b.{0,30}?\bfull\b|"
        r"over ?quota|quota (?:exceeded|exceeds|full|limit)|"
        r"exceed(?:s|ed)? (?:the |its |his |her )?(?:storage|quota|disk)|exceeded storage|"
        r"insufficient (?:system )?storage|"
        r"out of (?:storage|space|disk)|storage (?:space|allocation)",
        keys=("full", "quota", "exceed", "storage", "space", "out of"),
    ),
    _rule(
        "generic.message_too_big",
        SOFT,
        r"(?:message|mail|size)\b.{0,30}?(?:too (?:big|large)|exceed)|too (?:big|large)|"
        r"size limit|exceeds? (?:the )?(?:fixed |maximum |max )?(?:message |mail )?size",
        keys=("big", "large", "exceed", "size"),
    ),
    _rule(
        "generic.expired",
        SOFT,
        r"message expired|delivery time expired|expired after|queue lifetime",
    ),
    # --- 6. refused for policy, reputation or content
    _rule("generic.dmarc", BLOCK, r"dmarc"),
    _rule("generic.spf", BLOCK, r"\bspf\b|not (?:permitted|authorized|allowed) to send"),
    _rule("generic.dkim", BLOCK, r"dkim|unauthenticated|authenticat|\bauth\b"),
    _rule(
        "generic.blocklist",
        BLOCK,
        r"black ?list|block ?list|deny ?list|\brbl\b|dnsbl|spamhaus|spamcop|sorbs|\blisted\b|"
        r"blocked using",
        keys=("list", "rbl", "dnsbl", "spamhaus", "spamcop", "sorbs", "blocked using"),
    ),
    _rule(
        "generic.spam",
        BLOCK,
        r"spam|junk|unsolicited|\bbulk\b|\bube\b|\buce\b|virus|malware|phish|suspicious|fraud|"
        r"security (?:issue|reasons|polic)",
        keys=(
            "spam",
            "junk",
            "unsolicited",
            "bulk",
            "ube",
            "uce",
            "virus",
            "malware",
            "phish",
            "suspicious",
            "fraud",
            "security",
        ),
    ),
    _rule("generic.reputation", BLOCK, r"reputation|complaints|abuse"),
    _rule(
        "generic.not_permitted",
        BLOCK,
        r"relay|not (?:hosted|handled) here|not permitted|not allowed|forbidden",
    ),
    _rule(
        "generic.policy",
        BLOCK,
        r"polic(?:y|ies)|restrict|administrative(?:ly)? prohibit|prohibited|\bbanned\b|\bblocked\b|"
        r"\bdenied\b|refused|not accepted|not authori[sz]ed|unauthori[sz]ed|rejected for|"
        r"content (?:rejected|filter)|(?:unacceptable|prohibited|objectionable) content|"
        r"tls (?:is )?required|encryption required",
        keys=(
            "polic",
            "restrict",
            "prohibit",
            "banned",
            "blocked",
            "denied",
            "refused",
            "not accepted",
            "authori",
            "rejected for",
            "content",
            "tls",
            "encryption",
        ),
    ),
    # --- 7. temporary conditions, though the code is permanent
    _rule(
        "generic.temporary",
        SOFT,
        r"temporar|try (?:again )?later|retry later|rate.?limit|too many (?:messages|connections|"
        r"recipients|mails|e-?mails|concurrent)|too quickly|at a rate|greylist|expired|"
        r"timed? ?out|dns (?:query )?fail|sending (?:quota|limit)|out of memory|resources",
        keys=(
            "temporar",
            "too many",
            "later",
            "rate",
            "too quickly",
            "greylist",
            "expired",
            "time",
            "dns",
            "sending",
            "memory",
            "resources",
        ),
    ),
    # --- 8. weak hints that the address is gone
    _rule(
        "generic.mailbox_unavailable",
        HARD,
        r"mailbox (?:is )?(?:unavailable|not available)|"
        r"(?:account|user|mailbox)\b.{0,20}?\b(?:disabled|inactive|suspended)|"
        r"(?:recipient|rcpt|address) rejected|"
        r"mailbox unavailable",
        keys=("mailbox", "account", "user", "rejected"),
    ),
)

#: Enhanced codes (subject, detail) that settle the question; None matches any detail.
#: The most specific row wins. Codes missing here (X.0.0, 5.4.x, 5.5.x, 5.6.x, 5.x.0
#: details) go to the phrase rules, with the fallback in ``_UNSETTLED``.
SETTLED: dict[tuple[str, str | None], Verdict] = {
    ("1", "1"): Verdict(HARD, "code.5.1.1"),  # bad destination mailbox address
    ("1", "2"): Verdict(HARD, "code.5.1.2", domain_level=True),  # bad destination system
    ("1", "3"): Verdict(HARD, "code.5.1.3"),  # bad destination mailbox address syntax
    ("1", "6"): Verdict(HARD, "code.5.1.6"),  # mailbox has moved
    ("1", "7"): Verdict(BLOCK, "code.5.1.7"),  # bad SENDER mailbox syntax
    ("1", "8"): Verdict(BLOCK, "code.5.1.8"),  # bad SENDER system address
    ("2", "1"): Verdict(HARD, "code.5.2.1"),  # mailbox disabled, not accepting messages
    ("2", None): Verdict(SOFT, "code.5.2.x"),  # full (2.2), message too big for it (2.3)
    ("3", None): Verdict(SOFT, "code.5.3.x"),  # mail system full, not accepting, too big
    ("7", None): Verdict(BLOCK, "code.5.7.x"),  # security and policy
}

#: What an unsettled enhanced code means when no phrase rule matches. (5.1.10 is
#: unsettled on purpose: RFC 7505's null MX, a domain, and Microsoft's "recipient
#: not found", an address; the text tells them apart.)
_UNSETTLED: dict[str, Verdict] = {
    "1": Verdict(HARD, "code.5.1.x"),  # other address status: still about the address
    "2": Verdict(SOFT, "code.5.2.x"),
    "3": Verdict(SOFT, "code.5.3.x"),
    "7": Verdict(BLOCK, "code.5.7.x"),
}

#: Permanent replies without an enhanced code, when no phrase rule matches (RFC 5321 4.2.2).
BASIC: dict[int, Verdict] = {
    551: Verdict(HARD, "code.551"),  # user not local: the address moved
    552: Verdict(SOFT, "code.552"),  # storage allocation exceeded
}

UNDETERMINED = Verdict(UND, "undetermined")


def match_text(text: str, *, prefilter: bool = True) -> Verdict | None:
    """The first phrase rule matching ``text``, if any (``prefilter``: off only in tests)."""
    lowered = text.lower()
    for rule in RULES:
        if rule.matches(lowered, prefilter=prefilter):
            return rule.verdict
    return None


def classify_permanent(code: int, enhanced: str | None, text: str) -> Verdict:
    """A permanent (5xx) failure, by its enhanced code when it settles it, else by its text."""
    if enhanced is not None:
        _, subject, detail = enhanced.split(".")
        settled = SETTLED.get((subject, detail))
        if settled is None and detail != "0":
            settled = SETTLED.get((subject, None))
        if settled is not None:
            return settled
        return match_text(text) or _UNSETTLED.get(subject, UNDETERMINED)
    return match_text(text) or BASIC.get(code, UNDETERMINED)
