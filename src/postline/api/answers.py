"""The shapes of the API's success answers, for the OpenAPI document (the API reference in code).

The views (views.py and each router's ``view``) build plain dicts; these models only
describe them, so that ``/openapi.json`` says what every 2xx answer carries and a
client generator, or schemathesis' response checks, have something to hold the
answers to. A route names its model with ``response_model``: FastAPI then checks each dict
answer against it, and documents (without checking) the body of a route that builds
its own ``Response`` (the sends, for the idempotency replay).

Every model allows extra keys (``extra="allow"``), so an answer's JSON is exactly the
dict its view built even if a view gains a field before its model does. Times are
RFC 3339 strings (``views.rfc3339``), ``None`` where the row has none.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ApiKey",
    "ApiKeyCreated",
    "ApiKeyList",
    "BatchAccepted",
    "Deleted",
    "Destination",
    "DestinationList",
    "Domain",
    "DomainList",
    "EmailAccepted",
    "EmailDetail",
    "EmailList",
    "EventFeed",
    "Index",
    "RecipientLookup",
    "Rendered",
    "Stats",
    "Status",
    "Suppression",
    "SuppressionList",
    "Template",
    "TemplateList",
    "Webhook",
    "WebhookDelivery",
    "WebhookDeliveryList",
    "WebhookList",
    "WebhookTestSent",
    "WebhookWithSecret",
    "email_links",
    "link",
    "links",
    "replay_links",
    "webhook_links",
]


class _Answer(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class _Page(_Answer):
    object: Literal["list"]
    has_more: bool = Field(description="Whether `next_cursor` leads to more")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null: last")


# -- emails ---------------------------------------------------------------------------------


class AcceptedRecipient(_Answer):
    address: str
    status: str = Field(description="`queued`, `scheduled` or `suppressed`")


class EmailAccepted(_Answer):
    """A send was accepted: the email's id, for ``GET /v1/emails/{email_id}``."""

    id: str
    message_id: str
    recipients: list[AcceptedRecipient]


class BatchAccepted(_Answer):
    data: list[EmailAccepted]


class EmailItem(_Answer):
    object: Literal["email"]
    id: str
    message_id: str
    from_: str = Field(alias="from")
    to: list[str] = Field(description="The `to` recipients' addresses")
    subject: str
    status: str = Field(
        description="Derived from the recipients: `scheduled`, `queued`, `sending`, `deferred`"
        " (some recipient waits for a retry), `delivered`, `partially_delivered`, `bounced`,"
        " `failed`, `suppressed` or `cancelled`"
    )
    last_event: str = Field(
        description="Resend's name for `status`: `scheduled`, `queued`, `sent`,"
        " `delivery_delayed`, `delivered`, `bounced`, `complained`, `canceled` or `failed`"
    )
    source: str
    created_at: str | None
    updated_at: str | None
    scheduled_at: str | None
    recipient_count: int | None
    tags: dict[str, str]
    original_email_id: str | None = Field(description="Set on a DSN: the email it is about")


class EmailList(_Page):
    data: list[EmailItem]


class Attempt(_Answer):
    attempt: int | None
    status: str
    mx_host: str | None
    smtp_code: int | None
    enhanced_code: str | None
    response: str | None
    bounce_type: str | None = Field(
        description="The class of this attempt's failure (`hard`, `soft`, `block`,"
        " `undetermined`), a deferral's too; null for a success"
    )
    bounce_rule: str | None
    duration_ms: int | None
    tls_version: str | None = Field(
        None, description='The TLS version of the connection ("TLSv1.3"); null: plaintext or none'
    )
    tls_policy: str | None = Field(
        None,
        description="The outbound TLS policy that applied: `opportunistic` (none), `configured`"
        " (POSTLINE_TLS_POLICIES), `mta-sts`, `mta-sts-testing`, `dane`, or `none` (a relay"
        " or static route); null when no SMTP connection was involved",
    )
    tls_verified: bool | None = Field(
        None, description="Whether the server's certificate was verified (WebPKI or DANE)"
    )
    at: str | None


class RecipientDetail(_Answer):
    address: str
    kind: str
    status: str
    smtp_code: int | None
    enhanced_code: str | None
    response: str | None
    bounce_type: str | None = Field(
        description="Set on a bounced recipient only; a deferral's class is in its timeline"
    )
    bounce_rule: str | None
    attempts: int
    next_attempt_at: str | None
    updated_at: str | None
    timeline: list[Attempt]


class EmailEvent(_Answer):
    id: str
    type: str
    recipient: str | None
    sequence: int | None
    created_at: str | None


class Notification(_Answer):
    id: str
    type: str
    recipient: str | None
    status: str
    created_at: str | None
    updated_at: str | None


class EmailDetail(EmailItem):
    recipients: list[RecipientDetail]
    events: list[EmailEvent]
    notifications: list[Notification]


# -- domains and keys -----------------------------------------------------------------------


class DnsRecord(_Answer):
    type: str
    name: str
    value: str
    purpose: str
    #: Only once the record was checked (``POST .../verify``): left out before.
    status: str | None = Field(default=None, description="Absent until checked")


class DomainTracking(_Answer):
    """The domain's tracking defaults, for sends that do not say (``track``)."""

    opens: bool
    clicks: bool
    host: str | None = Field(
        description="The domain's own tracking host (its CNAME is in `dns_records`);"
        " null: links use POSTLINE_TRACKING_URL"
    )


class TrackingHost(_Answer):
    """``GET /t/tls``: the name is a domain's tracking host (a proxy may get it a
    certificate)."""

    host: str


class Domain(_Answer):
    object: Literal["domain"]
    id: str
    name: str
    dkim_selector: str | None
    dns_records: list[DnsRecord]
    records: list[DnsRecord] = Field(description="The same as `dns_records` (Resend's name)")
    verified: bool
    status: str = Field(
        description="`verified`; `not_started` before any check; `pending` while some record"
        " checks out and another not yet; `failed` when none does"
    )
    bounce_notifications: bool
    tracking: DomainTracking
    created_at: str | None


class DomainList(_Page):
    data: list[Domain]


class ApiKeyCreated(_Answer):
    object: Literal["api_key"]
    id: str
    name: str
    key: str = Field(description="The secret: shown in this answer only")
    token: str = Field(description="The same as `key` (Resend's name)")
    domain: str | None
    scopes: list[str]
    expires_at: str | None


class Deleted(_Answer):
    """A DELETE's answer to a client that asks for JSON (``Accept: application/json``)."""

    object: str = Field(description="`domain` or `api_key`")
    id: str
    deleted: Literal[True]


class ApiKey(_Answer):
    id: str
    name: str
    prefix: str
    domain: str | None
    scopes: list[str]
    expires_at: str | None
    created_at: str | None
    last_used_at: str | None


class ApiKeyList(_Page):
    data: list[ApiKey]


# -- suppressions ---------------------------------------------------------------------------


class Suppression(_Answer):
    id: str
    address: str
    domain: str | None
    reason: str
    source_email_id: str | None
    detail: str | None
    created_at: str | None
    expires_at: str | None = Field(description="Set for domain-level bounces only")


class SuppressionList(_Page):
    data: list[Suppression]


# -- recipient lookup -----------------------------------------------------------------------


class RecipientEmail(_Answer):
    email_id: str
    subject: str
    from_: str = Field(alias="from", description="The sender's address")
    created_at: str | None
    kind: str = Field(description="`to`, `cc` or `bcc`")
    status: str = Field(description="This recipient's status in that email")
    smtp_code: int | None
    enhanced_code: str | None
    response: str | None
    bounce_type: str | None
    bounce_rule: str | None
    attempts: int
    next_attempt_at: str | None
    updated_at: str | None


class RecipientDestination(_Answer):
    domain: str
    breaker: str = Field(description="`closed`, `open` or `half_open`")
    breaker_until: str | None


class RecipientLookup(_Answer):
    """``GET /v1/recipients/{address}``: why an address did or did not get its mail."""

    object: Literal["recipient"]
    address: str
    emails: list[RecipientEmail] = Field(description="Newest first, with the last outcome")
    suppressions: list[Suppression] = Field(description="Empty: the address is not suppressed")
    destination: RecipientDestination
    next_attempt_at: str | None = Field(description="The earliest retry of mail still waiting")


# -- inbound --------------------------------------------------------------------------------


class InboundUnmatched(_Answer):
    object: Literal["inbound_report"]
    id: str
    received_at: str | None
    mail_from: str = Field(description="The envelope sender (empty for a null sender)")
    rcpt_to: str = Field(description="The return path or feedback address it came to")
    kind: str | None = Field(description="`bounce` or `complaint`; null: it did not parse")
    shape: str | None = Field(description="Which format it was read as (`rfc3464`, `arf`...)")
    reason: str = Field(description="Why it was not applied")
    email_id: str | None = Field(description="The email it named, when it named one")
    subject: str | None
    size: int
    excerpt: str = Field(description="The message's first 8 KiB, as text")


class InboundUnmatchedList(_Page):
    data: list[InboundUnmatched]


class InboundMessage(_Answer):
    """Mail an inbound route took, in a list: read from its header."""

    object: Literal["inbound_message"]
    id: str
    route_id: str | None = Field(description="The route that took it (it may since be deleted)")
    domain: str = Field(description="The sending domain the route belongs to")
    received_at: str | None
    mail_from: str = Field(description="The envelope sender (empty for a null sender)")
    rcpt_to: str = Field(description="The routed address it came to")
    size: int = Field(description="Bytes, as received")
    from_: str | None = Field(alias="from", description="The From header's address")
    to: list[str] = Field(description="The To header's addresses")
    subject: str | None
    raw_url: str = Field(description="`GET` it with the API key: the message as received")


class InboundMessageList(_Page):
    data: list[InboundMessage]


class InboundAttachment(_Answer):
    filename: str | None
    content_type: str
    content_id: str | None
    size: int


class InboundMessageDetail(_Answer):
    """One message an inbound route took: the ``data`` of its ``email.received`` event."""

    object: Literal["inbound_message"]
    id: str
    inbound_id: str = Field(description="The same as `id` (the event's name for it)")
    route_id: str | None
    domain: str
    received_at: str | None
    mail_from: str
    rcpt_to: str
    size: int
    raw_url: str
    parsed: bool = Field(description="False: the message did not parse; only `raw_url` has it")
    from_: str | None = Field(default=None, alias="from")
    from_header: str | None = None
    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    reply_to: list[str] = Field(default_factory=list)
    subject: str | None = None
    message_id: str | None = None
    date: str | None = None
    text: str | None = None
    html: str | None = None
    truncated: bool = Field(default=False, description="`text` or `html` was cut at 256 KiB")
    attachments: list[InboundAttachment] = Field(default_factory=list)
    headers: dict[str, Any] = Field(
        default_factory=dict,
        description="Spam-relevant headers: `authentication-results`, `received-spf`,"
        " `arc-authentication-results`, `dkim_signature`, `x_spam`",
    )


# -- templates ------------------------------------------------------------------------------


class Template(_Answer):
    object: Literal["template"]
    id: str
    name: str
    domain: str | None = Field(description="The domain whose keys see it; null: admin keys only")
    version: int = Field(description="The version shown")
    latest_version: int
    subject: str
    html: str | None
    text: str | None
    created_at: str | None
    updated_at: str | None
    version_created_at: str | None


class TemplateList(_Page):
    data: list[Template]


# -- inbound routes -------------------------------------------------------------------------


class InboundRoute(_Answer):
    object: Literal["inbound_route"]
    id: str
    match: str = Field(description="An address, or `*@domain` for every address of a domain")
    domain: str = Field(description="The sending domain the route belongs to")
    events: bool = Field(description="Whether mail it takes fires `email.received`")
    mx: DnsRecord = Field(description="The MX record to publish for the match's domain")
    created_at: str | None


class InboundRouteList(_Page):
    data: list[InboundRoute]


class Rendered(_Answer):
    object: Literal["rendered_template"]
    id: str
    version: int
    subject: str
    html: str | None
    text: str | None


# -- the event feed -------------------------------------------------------------------------


class FeedEvent(_Answer):
    object: Literal["event"]
    id: str = Field(description="The event's id, the webhook-id its webhooks carried")
    cursor: str = Field(description="Its place in the feed: `after` this reads what follows")
    type: str
    created_at: str | None
    email_id: str | None
    data: dict[str, Any] = Field(description="The `data` of its webhook body")


class EventFeed(_Answer):
    object: Literal["list"]
    data: list[FeedEvent]
    has_more: bool = Field(description="Whether more events wait now beyond this page")
    next_cursor: str = Field(description="Pass as `after` for what follows; never null")


# -- statistics -----------------------------------------------------------------------------


class StatsFigures(_Answer):
    accepted: int = Field(description="Recipients accepted (queued, or suppressed at once)")
    delivered: int
    deferred: int = Field(description="Deferral events (one per opening of a breaker)")
    bounced: int
    bounced_hard: int
    bounced_soft: int
    bounced_block: int
    bounced_undetermined: int
    complained: int
    failed: int
    suppressed: int
    cancelled: int
    opened: int
    clicked: int
    unsubscribed: int
    received: int = Field(description="Messages taken for an inbound route")
    delivery_rate: float | None = Field(description="delivered / (delivered + bounced + failed)")
    bounce_rate: float | None = Field(description="bounced / (delivered + bounced)")
    complaint_rate: float | None = Field(description="complained / delivered")


class StatsBucket(StatsFigures):
    start: str


class Stats(_Answer):
    object: Literal["stats"]
    domain: str | None
    from_: str = Field(alias="from")
    to: str
    bucket: Literal["hour", "day"]
    totals: StatsFigures
    data: list[StatsBucket]


# -- webhooks -------------------------------------------------------------------------------


class Webhook(_Answer):
    id: str
    url: str
    events: list[str]
    domain: str | None
    enabled: bool
    disabled_reason: str | None
    created_at: str | None
    updated_at: str | None


class WebhookWithSecret(Webhook):
    secret: str = Field(description="The signing secret: shown in this answer only")


class WebhookList(_Page):
    data: list[Webhook]


class WebhookTestSent(_Answer):
    event_id: str
    delivery_id: str


class WebhookDelivery(_Answer):
    id: str
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: str | None
    response_code: int | None
    response_body: str | None
    updated_at: str | None


class WebhookDeliveryList(_Page):
    data: list[WebhookDelivery]


# -- operations -----------------------------------------------------------------------------


class Destination(_Answer):
    domain: str
    queued: int
    deferred: int
    in_flight: int
    breaker: str = Field(description="`closed`, `open` or `half_open`")
    breaker_until: str | None
    consecutive_failures: int
    last_error: str | None


class MtaStsPolicy(_Answer):
    policy_id: str
    mode: str = Field(description="`enforce`, `testing` or `none`")
    mx: list[str]
    max_age: int
    fetched_at: str | None
    expires_at: str | None
    last_error: str | None = Field(
        description="Why the last refresh failed (the policy was kept); null after a success"
    )


class TlsDay(_Answer):
    day: str = Field(description="The UTC day, YYYY-MM-DD")
    policy_type: str = Field(
        description="`sts` (MTA-STS), `tlsa` (DANE), or `no-policy-found` (a policy"
        " fetch that failed while none was in force)"
    )
    successful: int = Field(description="Connections that met the policy")
    failed: int
    failures: dict[str, int] = Field(
        description="Failed connections by RFC 8460 result type"
        " (`certificate-host-mismatch`, `starttls-not-supported`, `tlsa-invalid`, ...)"
    )
    reported: bool = Field(description="The day's TLS report was sent (or claimed)")


class TlsFigures(_Answer):
    mta_sts: MtaStsPolicy | None = Field(description="The MTA-STS policy stored; null: none")
    days: list[TlsDay] = Field(description="The last 7 days with connections under a policy")


class DestinationDetail(Destination):
    tls: TlsFigures


class DestinationList(_Page):
    data: list[Destination]


class Status(_Answer):
    status: str


class Index(_Answer):
    """``GET /v1``: what answers here, and where its documentation is."""

    object: Literal["index"]
    name: str = Field(description="`Postline`")
    version: str = Field(description="The version of the running server")
    docs: str = Field(description="Interactive API documentation (Swagger UI)")
    redoc: str = Field(description="The same reference, rendered by Redoc")
    openapi: str = Field(description="The OpenAPI document both are made from")


# -- links: where an answer leads (OpenAPI 3 links) -----------------------------------------


def link(method: str, path: str, **parameters: str) -> dict[str, Any]:
    """An OpenAPI link to the operation ``method path``, its parameters taken from the
    answer (``$response.body#/id``) or the request (``$request.path.webhook_id``)."""
    pointer = path.replace("~", "~0").replace("/", "~1")
    return {"operationRef": f"#/paths/{pointer}/{method}", "parameters": parameters}


def links(status: int, **named: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose ``status`` answer leads to other operations.

    Clients read them as documentation; schemathesis' stateful runs
    (tests/fuzz/test_openapi.py) follow them, from a created resource to its uses.
    """
    return {"responses": {str(status): {"links": named}}}


_EMAIL = "/v1/emails/{email_id}"
_WEBHOOK = "/v1/webhooks/{webhook_id}"


def email_links(status: int, id_pointer: str) -> dict[str, Any]:
    """Links from an answer that names an email (at ``id_pointer``) to what it allows."""
    email_id = f"$response.body#{id_pointer}"
    return links(
        status,
        GetEmail=link("get", _EMAIL, email_id=email_id),
        GetEmailContent=link("get", f"{_EMAIL}/content", email_id=email_id),
        CancelEmail=link("post", f"{_EMAIL}/cancel", email_id=email_id),
        RescheduleEmail=link("patch", _EMAIL, email_id=email_id),
    )


def webhook_links(status: int) -> dict[str, Any]:
    """Links from an answer that is a webhook endpoint to what may be done with it."""
    webhook_id = "$response.body#/id"
    return links(
        status,
        GetWebhook=link("get", _WEBHOOK, webhook_id=webhook_id),
        PatchWebhook=link("patch", _WEBHOOK, webhook_id=webhook_id),
        DeleteWebhook=link("delete", _WEBHOOK, webhook_id=webhook_id),
        RotateSecret=link("post", f"{_WEBHOOK}/rotate-secret", webhook_id=webhook_id),
        SendTest=link("post", f"{_WEBHOOK}/test", webhook_id=webhook_id),
        ListDeliveries=link("get", f"{_WEBHOOK}/deliveries", webhook_id=webhook_id),
    )


def replay_links(status: int) -> dict[str, Any]:
    """From a test event sent to an endpoint to a replay of its delivery."""
    return links(
        status,
        ReplayDelivery=link(
            "post",
            f"{_WEBHOOK}/deliveries/{{delivery_id}}/replay",
            webhook_id="$request.path.webhook_id",
            delivery_id="$response.body#/delivery_id",
        ),
    )
