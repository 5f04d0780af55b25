"""Statuses, events and the recipient state machine shared by every layer.

The state machine lives here, in one function, so that no code path can move a
recipient by writing its status directly: a late or duplicate outcome is
refused instead of overwriting a final one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class RecipientStatus(StrEnum):
    """Where one recipient of one email stands."""

    SCHEDULED = "scheduled"  # accepted with scheduled_at in the future
    QUEUED = "queued"  # waiting for its first delivery attempt
    DEFERRED = "deferred"  # a temporary failure; will be retried
    DELIVERED = "delivered"  # the destination MX accepted it (2xx after DATA)
    BOUNCED = "bounced"  # permanently refused
    FAILED = "failed"  # given up: expired, or could not be attempted at all
    SUPPRESSED = "suppressed"  # on the suppression list at accept; never sent
    COMPLAINED = "complained"  # delivered, then reported as spam
    CANCELLED = "cancelled"  # cancelled through the API while still waiting


class EmailStatus(StrEnum):
    """An email's status, derived from its recipients (never set on its own)."""

    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"  # some recipient is final, another still waits for its first attempt
    DEFERRED = "deferred"  # some recipient waits for a retry after a temporary failure
    DELIVERED = "delivered"
    PARTIALLY_DELIVERED = "partially_delivered"
    BOUNCED = "bounced"
    FAILED = "failed"
    SUPPRESSED = "suppressed"
    CANCELLED = "cancelled"


class EmailSource(StrEnum):
    """Where an email came from."""

    API = "api"  # POST /v1/emails
    SMTP = "smtp"  # the submission port
    DSN = "dsn"  # a delivery status notification Postline wrote about a bounce
    TLSRPT = "tlsrpt"  # a TLS report (RFC 8460) Postline sent to a destination


#: Mail Postline writes itself: not the customer's, so never in the send log by
#: default and never the subject of an ``email.*`` event.
OWN_SOURCES = frozenset({EmailSource.DSN, EmailSource.TLSRPT})


class BounceType(StrEnum):
    HARD = "hard"
    SOFT = "soft"
    BLOCK = "block"
    UNDETERMINED = "undetermined"


class EventType(StrEnum):
    QUEUED = "email.queued"
    SCHEDULED = "email.scheduled"
    DEFERRED = "email.deferred"
    DELIVERED = "email.delivered"
    BOUNCED = "email.bounced"
    FAILED = "email.failed"
    SUPPRESSED = "email.suppressed"
    COMPLAINED = "email.complained"
    CANCELLED = "email.cancelled"
    #: Mail to an inbound route (postline.inbound.routed): about no email Postline sent.
    RECEIVED = "email.received"
    # Tracking (postline.tracking): recorded beside the delivery events, never moving
    # a recipient's status.
    OPENED = "email.opened"
    CLICKED = "email.clicked"
    UNSUBSCRIBED = "email.unsubscribed"


EVENT_FOR_STATUS: dict[RecipientStatus, EventType] = {
    RecipientStatus.SCHEDULED: EventType.SCHEDULED,
    RecipientStatus.QUEUED: EventType.QUEUED,
    RecipientStatus.DEFERRED: EventType.DEFERRED,
    RecipientStatus.DELIVERED: EventType.DELIVERED,
    RecipientStatus.BOUNCED: EventType.BOUNCED,
    RecipientStatus.FAILED: EventType.FAILED,
    RecipientStatus.SUPPRESSED: EventType.SUPPRESSED,
    RecipientStatus.COMPLAINED: EventType.COMPLAINED,
    RecipientStatus.CANCELLED: EventType.CANCELLED,
}

_S = RecipientStatus
_ALLOWED: dict[RecipientStatus, frozenset[RecipientStatus]] = {
    _S.SCHEDULED: frozenset({_S.QUEUED, _S.CANCELLED}),
    _S.QUEUED: frozenset(
        {_S.DEFERRED, _S.DELIVERED, _S.BOUNCED, _S.FAILED, _S.SUPPRESSED, _S.CANCELLED}
    ),
    # deferred -> deferred is a further failed attempt: a new timeline row, same state.
    # deferred -> suppressed: the address was suppressed while its retry waited.
    _S.DEFERRED: frozenset(
        {_S.DEFERRED, _S.DELIVERED, _S.BOUNCED, _S.FAILED, _S.SUPPRESSED, _S.CANCELLED}
    ),
    # An asynchronous DSN or a feedback report are the only ways out of a final state.
    _S.DELIVERED: frozenset({_S.BOUNCED, _S.COMPLAINED}),
    _S.BOUNCED: frozenset(),
    _S.FAILED: frozenset(),
    _S.SUPPRESSED: frozenset(),
    _S.COMPLAINED: frozenset(),
    _S.CANCELLED: frozenset(),
}

FINAL_STATUSES = frozenset(
    {_S.DELIVERED, _S.BOUNCED, _S.FAILED, _S.SUPPRESSED, _S.COMPLAINED, _S.CANCELLED}
)
PENDING_STATUSES = frozenset({_S.SCHEDULED, _S.QUEUED, _S.DEFERRED})

#: Emails some recipient of which still waits for delivery (one of PENDING_STATUSES):
#: their jobs must exist and their bodies are live. The one place this set is spelled.
WAITING_EMAIL_STATUSES = frozenset(
    {EmailStatus.SCHEDULED, EmailStatus.QUEUED, EmailStatus.SENDING, EmailStatus.DEFERRED}
)
#: Email statuses whose recipients are all final: what retention may free and purge.
FINAL_EMAIL_STATUSES = frozenset(EmailStatus) - WAITING_EMAIL_STATUSES


class AttemptScope(StrEnum):
    """What one ``delivery_attempts`` row's outcome is about, so a circuit breaker
    (live or warming up) counts only what says something about the destination."""

    # The reply decided the whole SMTP transaction: connect, greeting, MAIL or DATA
    # failed, timed out, or the DATA reply. The only scope a breaker counts.
    TRANSACTION = "transaction"
    # A per-recipient RCPT reply: about one mailbox, not the destination.
    RECIPIENT = "recipient"
    # Decided here without a conversation worth counting (message over the server's
    # SIZE, SMTPUTF8 not offered, lease lost): neither a success nor a failure.
    LOCAL = "local"
    # Deferred without connecting because the destination's breaker was open.
    BREAKER = "breaker"
    # A late bounce or a complaint mailed back to the return path (postline.inbound):
    # about one mailbox, after the destination accepted; never counted by a breaker.
    REPORT = "report"


class TlsPolicySource(StrEnum):
    """The outbound TLS policy that applied to an attempt, as its timeline row names it."""

    NONE = "none"  # nothing was asked of TLS (an operator's relay or static route)
    OPPORTUNISTIC = "opportunistic"  # no policy: STARTTLS when offered
    CONFIGURED = "configured"  # the operator's POSTLINE_TLS_POLICIES / POSTLINE_TLS_DEFAULT
    MTA_STS = "mta-sts"  # an MTA-STS policy in enforce mode
    MTA_STS_TESTING = "mta-sts-testing"  # MTA-STS in testing mode: failures reported only
    DANE = "dane"  # TLSA records from a DNSSEC-validated answer


@dataclass(frozen=True)
class TlsInfo:
    """What TLS an attempt's connection had: the timeline row's TLS fields."""

    policy: TlsPolicySource
    version: str | None = None  # "TLSv1.3"; None: plaintext (or no connection)
    verified: bool = False  # the certificate was checked (WebPKI or DANE) and passed
    #: Why the policy was not met, as an RFC 8460 result type ("certificate-host-mismatch");
    #: None: it was (or there was none to meet).
    failure: str | None = None


class WebhookDeliveryStatus(StrEnum):
    """Where one (event, endpoint) webhook delivery stands."""

    PENDING = "pending"  # waiting for its next attempt (or never tried yet)
    SUCCEEDED = "succeeded"  # the endpoint answered 2xx
    FAILED = "failed"  # given up: 410 Gone, or the retry schedule ran out


def can_transition(current: RecipientStatus, new: RecipientStatus) -> bool:
    """Whether a recipient may move from ``current`` to ``new``.

    Every write of a recipient status goes through this check (and the store
    repeats it in the UPDATE's WHERE clause), so a duplicate delivery report or
    a stale worker can never turn ``bounced`` back into ``delivered``.
    """
    return new in _ALLOWED[current]


def allowed_sources(new: RecipientStatus) -> frozenset[RecipientStatus]:
    """The statuses from which ``new`` may be reached: the guard the store writes into SQL."""
    return frozenset(cur for cur, targets in _ALLOWED.items() if new in targets)


def derive_email_status(statuses: Iterable[RecipientStatus]) -> EmailStatus:
    """The email's status from its recipients' statuses (the table in docs/API.md, "Statuses")."""
    present = set(statuses)
    if not present:
        return EmailStatus.QUEUED
    pending = present & PENDING_STATUSES
    if _S.DEFERRED in pending:
        # Waiting for a retry reads so, whatever the other recipients do: "sending"
        # would hide that a destination refused it for now.
        return EmailStatus.DEFERRED
    if pending:
        if not (present - pending) <= {_S.SUPPRESSED, _S.CANCELLED}:
            return EmailStatus.SENDING
        if pending == {_S.SCHEDULED}:
            return EmailStatus.SCHEDULED
        return EmailStatus.QUEUED
    delivered = present & {_S.DELIVERED, _S.COMPLAINED}
    if delivered:
        if present <= {_S.DELIVERED, _S.COMPLAINED}:
            return EmailStatus.DELIVERED
        return EmailStatus.PARTIALLY_DELIVERED
    if _S.BOUNCED in present:
        return EmailStatus.BOUNCED
    if _S.FAILED in present:
        return EmailStatus.FAILED
    if present == {_S.SUPPRESSED}:
        return EmailStatus.SUPPRESSED
    if present == {_S.CANCELLED}:
        return EmailStatus.CANCELLED
    # A mix of only suppressed and cancelled recipients: nothing was or will be sent.
    return EmailStatus.CANCELLED if _S.CANCELLED in present else EmailStatus.SUPPRESSED
