"""Every table of Postline, as SQLAlchemy Core metadata.

Migrations under ``store/migrations`` create exactly this; a test compares the
two so they cannot drift apart.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

from postline.store.types import UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# An auto-increment integer key that is BIGINT on PostgreSQL and the rowid on SQLite.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

domains = Table(
    "domains",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(253), nullable=False, unique=True),
    Column("dkim_selector", String(63), nullable=False),
    Column("dkim_private_key", Text, nullable=True),
    Column("verified", Boolean, nullable=False, default=False),
    Column("verification", JSON, nullable=True),
    Column("bounce_notifications", Boolean, nullable=False, default=True),
    # Open and click tracking for its mail unless a send says otherwise (off by default).
    Column("track_opens", Boolean, nullable=False, server_default=false()),
    Column("track_clicks", Boolean, nullable=False, server_default=false()),
    # Its own host for tracked links (a CNAME under it, ``track.example.com``); NULL:
    # POSTLINE_TRACKING_URL. Unique: a host names one domain.
    Column("tracking_host", String(253), nullable=True, index=True, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("prefix", String(16), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("domain_id", String(32), ForeignKey("domains.id", ondelete="CASCADE"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    # What the key may do (postline.keys.SCOPES); NULL: everything, as before scopes.
    Column("scopes", JSON, nullable=True),
    # After this the key is refused as a revoked one is; NULL: never.
    Column("expires_at", UTCDateTime, nullable=True),
)

sent_emails = Table(
    "sent_emails",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("domain_id", String(32), ForeignKey("domains.id"), nullable=False, index=True),
    Column("source", String(8), nullable=False),
    Column("message_id", String(255), nullable=False, unique=True),
    Column("from_header", String(1000), nullable=False),
    Column("from_address", String(320), nullable=False),
    Column("envelope_from", String(320), nullable=False),
    Column("subject", String(1000), nullable=False),
    Column("size", Integer, nullable=False),
    Column("body_ref", String(64), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("status", String(24), nullable=False, index=True),
    Column("scheduled_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # Mail Postline writes about another email (a DSN): that email's id, so its
    # detail can show the notification. No foreign key: purging either email
    # must not depend on the other.
    Column("original_email_id", String(32), nullable=True, index=True),
    # When housekeeping removed the body from the spool (store/retention.py); NULL while
    # it is kept: the email still waits, or is final but inside the body retention.
    Column("body_purged_at", UTCDateTime, nullable=True),
    # How many bodies the spool holds for it: 1, one for every recipient (untracked mail);
    # n > 1, one per recipient position (tracked mail to several: postline.spool.base).
    Column("bodies", Integer, nullable=False, server_default=text("1")),
    # The body sweep seeks (NULL, each final status) and reads only those final long
    # enough: neither waiting mail nor bodies inside their retention are scanned.
    Index(
        "ix_sent_emails_body_purged_at_status_updated_at",
        "body_purged_at",
        "status",
        "updated_at",
    ),
    # The retention purge seeks each final status and reads only emails past the cutoff.
    Index("ix_sent_emails_status_updated_at", "status", "updated_at"),
)

email_recipients = Table(
    "email_recipients",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "email_id",
        String(32),
        ForeignKey("sent_emails.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("position", Integer, nullable=False),
    Column("address", String(320), nullable=False, index=True),
    Column("destination", String(253), nullable=False),
    Column("kind", String(3), nullable=False),
    Column("status", String(16), nullable=False),
    Column("smtp_code", Integer, nullable=True),
    Column("enhanced_code", String(16), nullable=True),
    Column("response", Text, nullable=True),
    Column("bounce_type", String(16), nullable=True),
    # The classification rule that decided bounce_type (delivery/classify.py).
    Column("bounce_rule", String(64), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # The send log's ``recipient_status`` filter seeks the emails with a recipient in
    # one status (a few deferred among millions delivered) without reading the others.
    Index("ix_email_recipients_status_email_id", "status", "email_id"),
)

delivery_attempts = Table(
    "delivery_attempts",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("email_id", String(32), ForeignKey("sent_emails.id", ondelete="CASCADE"), index=True),
    Column(
        "recipient_id",
        String(32),
        ForeignKey("email_recipients.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # All rows written for one SMTP transaction share it: the breaker warm-up
    # counts message attempts, not recipient rows.
    Column("attempt_id", String(32), nullable=False),
    Column("destination", String(253), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    # What the outcome is about, a model.AttemptScope: "transaction" (the whole SMTP
    # transaction: connect, greeting, MAIL, DATA, timeout; what a circuit breaker
    # counts), "recipient" (one RCPT), "local" (decided here), "breaker" (a wait).
    Column("scope", String(12), nullable=False),
    Column("mx_host", String(253), nullable=True),
    Column("smtp_code", Integer, nullable=True),
    Column("enhanced_code", String(16), nullable=True),
    Column("response", Text, nullable=True),
    # The class of this attempt's failure (model.BounceType): a deferral's is kept
    # here only, as the recipient's own bounce_type is set for a bounce alone.
    Column("bounce_type", String(16), nullable=True),
    Column("bounce_rule", String(64), nullable=True),
    Column("duration_ms", Integer, nullable=False, default=0),
    # The connection's TLS: version ("TLSv1.3"; NULL: plaintext or no connection),
    # the policy that applied (model.TlsPolicySource), whether the certificate was verified.
    Column("tls_version", String(16), nullable=True),
    Column("tls_policy", String(16), nullable=True),
    Column("tls_verified", Boolean, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_delivery_attempts_destination_created_at", "destination", "created_at"),
)

# MTA-STS policies as fetched (delivery/sts_cache.py): one per destination domain,
# shared by every worker, used until expires_at (max_age after the fetch).
mta_sts_policies = Table(
    "mta_sts_policies",
    metadata,
    Column("domain", String(253), primary_key=True),
    Column("policy_id", String(32), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("mx", Text, nullable=False),  # JSON list of the mx patterns
    Column("max_age", Integer, nullable=False),
    Column("fetched_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("last_error", Text, nullable=True),  # the last failed refresh, kept policy
)

# TLS sessions under a destination's policy (MTA-STS, DANE), counted per UTC day for
# the daily TLS reports (RFC 8460, delivery/tlsrpt.py); result is "success" or a
# failure's result type. reported_at: when that day's report for the domain was sent.
tls_report_counts = Table(
    "tls_report_counts",
    metadata,
    Column("day", String(10), primary_key=True),  # YYYY-MM-DD, UTC
    Column("domain", String(253), primary_key=True),
    Column("policy_type", String(16), primary_key=True),  # "sts", "tlsa", "no-policy-found"
    Column("result", String(40), primary_key=True),
    Column("mx_host", String(253), primary_key=True),  # "" when none was connected to
    Column("count", Integer, nullable=False),
    Column("reported_at", UTCDateTime, nullable=True),
)

suppressions = Table(
    "suppressions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("domain_id", String(32), ForeignKey("domains.id", ondelete="CASCADE"), nullable=False),
    Column("address", String(320), nullable=False),
    Column("reason", String(16), nullable=False),
    Column("source_email_id", String(32), nullable=True),
    Column("detail", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    UniqueConstraint("domain_id", "address"),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("url", String(2048), nullable=False),
    Column("events", JSON, nullable=False),
    # Sealed (store.sealing): "enc:v1:" and a Fernet token, longer than the secret.
    Column("secret", Text, nullable=False),
    Column("previous_secret", Text, nullable=True),
    Column("secret_rotated_at", UTCDateTime, nullable=True),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("disabled_reason", Text, nullable=True),
    Column("failing_since", UTCDateTime, nullable=True),
    Column("domain_id", String(32), ForeignKey("domains.id", ondelete="CASCADE"), nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# One row: a known text sealed with the key of the first process that started, so a
# host started later with another key fails at start, not at its first secret.
secret_check = Table(
    "secret_check",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("token", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

events = Table(
    "events",
    metadata,
    # Time-ordered; it is also the webhook-id receivers deduplicate on.
    Column("id", String(32), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("email_id", String(32), ForeignKey("sent_emails.id", ondelete="CASCADE"), index=True),
    Column("recipient_id", String(32), nullable=True),
    Column("domain_id", String(32), nullable=True),
    # Per-email order, so receivers can sort what arrives out of order.
    Column("sequence", Integer, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("dispatched_at", UTCDateTime, nullable=True, index=True),
    # The event's place in GET /v1/events, given after it committed (store.event_feed):
    # ids are made before their transaction commits, so id order can lose an event that
    # commits late to a reader already past it; the feed's positions cannot.
    Column("feed_position", BigInteger, nullable=True, unique=True, index=True),
)

# The last position handed out to the event feed, in one row: it survives the
# retention of old events, so a reader's cursor never points into reused numbers.
event_feed = Table(
    "event_feed",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_position", BigInteger, nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("event_id", String(32), ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column(
        "webhook_id",
        String(32),
        ForeignKey("webhooks.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=True, index=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("response_code", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("event_id", "webhook_id"),
)

webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column(
        "delivery_id",
        String(32),
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("response_code", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("error", Text, nullable=True),
    Column("duration_ms", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# The embedded queue: one row per (email, destination domain) job.
queue_jobs = Table(
    "queue_jobs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("email_id", String(32), nullable=False, index=True),
    Column("destination", String(253), nullable=False),
    Column("recipient_ids", JSON, nullable=False),
    Column("body_ref", String(64), nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("due_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    # Set by a park (an open breaker): the job waits until then, unless released sooner.
    Column("parked_until", UTCDateTime, nullable=True),
    Index("ix_queue_jobs_due_at", "due_at"),
    # Leasing takes each destination's earliest jobs in turn (queue/embedded.py).
    Index("ix_queue_jobs_destination_due_at", "destination", "due_at"),
    # Freeing the jobs of a worker whose heartbeat stopped reads only the leased ones.
    Index("ix_queue_jobs_lease_owner", "lease_owner"),
)

# The embedded queue's worker heartbeats (queue/embedded.py): a worker process is
# alive until alive_until, and a job leased by one that is not is free again.
worker_heartbeats = Table(
    "worker_heartbeats",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("alive_until", UTCDateTime, nullable=False),
)

# The database spool: message bodies for installations spread over hosts.
spool_bodies = Table(
    "spool_bodies",
    metadata,
    Column("ref", String(64), primary_key=True),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("scope", String(32), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("state", String(8), nullable=False),
    Column("response", JSON, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

# Breakers opened or closed by hand, as commands every worker process applies in order.
breaker_commands = Table(
    "breaker_commands",
    metadata,
    Column("id", AutoId, primary_key=True, autoincrement=True),
    Column("domain", String(253), nullable=False),
    Column("action", String(8), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Token buckets of the per-key rate limits, for the embedded queue (queue/embedded.py):
# tokens left as of updated_at, in epoch seconds of the database's (or host's) clock.
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("bucket", String(100), primary_key=True),
    Column("tokens", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Mail that reached the inbound listener (postline.inbound) and could not be applied:
# not a report Postline can read, or about no email or recipient it knows (a purged
# email included). Kept for the operator (GET /v1/inbound/reports), never dropped silently.
inbound_unmatched = Table(
    "inbound_unmatched",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("received_at", UTCDateTime, nullable=False),
    Column("mail_from", String(320), nullable=False),
    Column("rcpt_to", String(320), nullable=False),
    # "bounce" or "complaint" when it parsed; NULL when it did not.
    Column("kind", String(16), nullable=True),
    Column("shape", String(16), nullable=True),
    Column("reason", String(200), nullable=False),
    # The email the return path or the report named, when it named one.
    Column("email_id", String(32), nullable=True),
    Column("subject", String(1000), nullable=True),
    Column("size", Integer, nullable=False),
    # The message's first bytes, for the operator to see what it was.
    Column("excerpt", Text, nullable=False),
)

# Email templates (postline.templates): a template's versions are kept, never changed,
# so that a send naming version 2 renders what version 2 said whatever came after.
templates = Table(
    "templates",
    metadata,
    Column("id", String(32), primary_key=True),
    # The domain whose keys see it; NULL: admin keys only.
    Column("domain_id", String(32), ForeignKey("domains.id", ondelete="CASCADE"), nullable=True),
    Column("name", String(200), nullable=False),
    Column("latest_version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

template_versions = Table(
    "template_versions",
    metadata,
    Column(
        "template_id",
        String(32),
        ForeignKey("templates.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("version", Integer, primary_key=True),
    Column("subject", Text, nullable=False),
    Column("html", Text, nullable=True),
    Column("text", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

# Event counts per sending domain, hour and name (``email.delivered`` as ``delivered``,
# bounces also by type), for GET /v1/stats: added to when the event feed numbers the
# events (store.event_feed), so each event counts once and no read scans the send log.
event_counts = Table(
    "event_counts",
    metadata,
    Column("domain_id", String(32), primary_key=True),
    Column("hour", UTCDateTime, primary_key=True),
    Column("name", String(40), primary_key=True),
    Column("count", BigInteger, nullable=False),
)

# Inbound routes (postline.inbound.routed): which addresses the inbound listener takes
# mail for, besides return paths; ``match`` is an address or ``*@domain``, lower-cased.
inbound_routes = Table(
    "inbound_routes",
    metadata,
    Column("id", String(32), primary_key=True),
    Column(
        "domain_id",
        String(32),
        ForeignKey("domains.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("match", String(320), nullable=False, unique=True),
    Column("events", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

# Mail an inbound route took: the raw bytes are kept in the row, written in the
# transaction of its ``email.received`` event, so the event never names a lost body.
inbound_messages = Table(
    "inbound_messages",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("route_id", String(32), nullable=True),
    Column(
        "domain_id",
        String(32),
        ForeignKey("domains.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("received_at", UTCDateTime, nullable=False, index=True),
    Column("mail_from", String(320), nullable=False),
    Column("rcpt_to", String(320), nullable=False),
    Column("size", Integer, nullable=False),
    Column("raw", LargeBinary, nullable=False),
)

# Signed-in dashboard sessions (postline.dashboard). The cookie holds a random token;
# only its SHA-256 is stored, so a copy of the database signs nobody in. The expiry is
# checked here, on the server, whatever the browser does with the cookie.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("key_id", String(32), ForeignKey("api_keys.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False, index=True),
)
