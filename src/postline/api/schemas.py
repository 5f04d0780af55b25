"""Request bodies of the emails API, validated field by field (docs/API.md)."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import re
from datetime import datetime
from functools import cache
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from postline.store.types import utcnow
from postline.validation import (
    check_attachment_type,
    check_custom_header,
    check_header_text,
    parse_mailbox,
)
from postline.when import parse_natural

MAX_RECIPIENTS = 1000


def _as_list(value: Any) -> Any:
    if value is None:
        return []
    return [value] if isinstance(value, str) else value


def _mailbox_address(value: str) -> str:
    return parse_mailbox(value)[1]


def _no_crlf(value: str) -> str:
    check_header_text(value)
    return value


def _unicode(value: str) -> str:
    """Refuse text that cannot be encoded (JSON allows lone surrogates such as \\ud800)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


Address = Annotated[str, AfterValidator(_mailbox_address)]
# One address or a list of them; the OpenAPI document says so too.
AddressList = Annotated[
    list[Address],
    BeforeValidator(_as_list),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
HeaderText = Annotated[str, AfterValidator(_no_crlf)]
UnicodeText = Annotated[str, AfterValidator(_unicode)]

# Times in the API are RFC 3339. Pydantic alone also reads 0.5 or "1700000000" as Unix time.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
    r"([Zz]|[+-][0-9]{2}:?[0-9]{2})?"
)


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time such as 2025-01-31T12:00:00Z")
    return value


Timestamp = Annotated[datetime, BeforeValidator(_rfc3339)]


def _when(value: Any) -> Any:
    """RFC 3339 as everywhere, or one of Resend's phrases ("in 10 min", postline.when)."""
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        return parse_natural(value, utcnow())
    return _rfc3339(value)


#: ``scheduled_at``: a date-time, or a phrase such as "tomorrow at 9am" (UTC).
ScheduleTime = Annotated[
    datetime,
    BeforeValidator(_when),
    WithJsonSchema(
        {
            "type": "string",
            "description": "RFC 3339 (`2025-01-31T12:00:00Z`) or, in UTC, `in 10 min`,"
            " `in 2 hours`, `today at 5pm`, `tomorrow at 9:30am`, `next monday at 10am`",
        }
    ),
]
# \Z, not $: $ also matches before a final newline, so the tag "a\n" and the content
# type "text/plain\n" (which ended its MIME part early) passed (tests/unit/test_properties_*).
_TAG_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
_MIME_TYPE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}\Z"
)

_CONTENT_ID = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.@-]{1,253}\Z")


def _tag_map(value: Any) -> Any:
    """Resend's ``[{"name": ..., "value": ...}]`` as Postline's ``{name: value}``."""
    if not isinstance(value, list):
        return value
    tags: dict[Any, Any] = {}
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"name", "value"}:
            raise ValueError(f'[{index}] must be an object {{"name": ..., "value": ...}}')
        name, text = item["name"], item["value"]
        if not isinstance(name, str) or not isinstance(text, str):
            raise ValueError(f"[{index}]: name and value must be strings")
        if name in tags:
            raise ValueError(f"tag name {name!r} is given twice")
        tags[name] = text
    return tags


#: A map of tag names to values, or Resend's list of ``{"name", "value"}`` objects.
Tags = Annotated[
    dict[str, str],
    BeforeValidator(_tag_map),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "object", "additionalProperties": {"type": "string"}},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "value"],
                        "properties": {"name": {"type": "string"}, "value": {"type": "string"}},
                    },
                },
            ]
        }
    ),
]


def _base64_content(value: Any) -> Any:
    """Resend's byte array (``list(file_bytes)``) as the base64 Postline keeps."""
    if not isinstance(value, list):
        return value
    if not all(type(octet) is int and 0 <= octet <= 255 for octet in value):
        raise ValueError("must be base64 text, or an array of byte values 0 to 255")
    return base64.b64encode(bytes(value)).decode("ascii")


#: base64 text or an array of byte values; kept as base64 either way.
Content = Annotated[
    str,
    BeforeValidator(_base64_content),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "description": "base64"},
                {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
            ]
        }
    ),
]


@cache
def _types() -> mimetypes.MimeTypes:
    """Python's own table of types, not the host's /etc/mime.types: one answer everywhere."""
    return mimetypes.MimeTypes()


def guess_content_type(filename: str) -> str:
    """The type of an attachment sent without one, from its file name."""
    guessed = _types().guess_type(filename, strict=False)[0]
    if guessed is None or guessed.startswith(("multipart/", "message/")):
        return "application/octet-stream"
    return guessed


def _check_base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be base64-encoded") from None
    return value


def _absent_as_empty(value: Any) -> Any:
    return "" if value is None else value


class AttachmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: HeaderText = Field(min_length=1, max_length=255)
    content: Content
    # After filename, so that the guess sees it. Absent, null or empty: guessed from it.
    content_type: Annotated[str, BeforeValidator(_absent_as_empty)] = Field(
        default="", validate_default=True
    )
    content_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Makes the attachment inline: the HTML refers to it as cid:<content_id>",
    )

    @field_validator("content_id")
    @classmethod
    def _cid(cls, value: str | None) -> str | None:
        """Stored without the angle brackets the header puts around it; what may stand
        inside them is a msg-id's left side (RFC 2392), so no folding or quoting."""
        if value is None:
            return None
        bare = value.removeprefix("<").removesuffix(">")
        if not _CONTENT_ID.match(bare):
            raise ValueError("must be letters, digits and !#$%&'*+-/=?^_`{|}~.@ only")
        return bare

    @field_validator("content")
    @classmethod
    def _base64(cls, value: str) -> str:
        return _check_base64(value)

    @field_validator("content_type")
    @classmethod
    def _mime(cls, value: str, info: ValidationInfo) -> str:
        if not value:
            return guess_content_type(info.data.get("filename") or "")
        if not _MIME_TYPE.match(value):
            raise ValueError("must be a MIME type such as application/pdf")
        check_attachment_type(value)
        return value.lower()

    @property
    def data(self) -> bytes:
        return base64.b64decode(self.content)


#: The highest template version a request may name (the column is a 32-bit integer).
MAX_VERSION = 2**31 - 1


class TemplateRef(BaseModel):
    """A send's ``template``: which one, which version (none: the latest), and the
    variables it is rendered with."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    version: int | None = Field(default=None, ge=1, le=MAX_VERSION)
    variables: dict[str, Any] = Field(default_factory=dict)


class TrackIn(BaseModel):
    """Open and click tracking (docs/API.md, "Tracking"); a member left out takes the
    domain's default, which is off unless ``PATCH /v1/domains/{id}`` turned it on."""

    model_config = ConfigDict(extra="forbid")
    opens: bool | None = None
    clicks: bool | None = None


class EmailIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: HeaderText = Field(alias="from", min_length=3, max_length=1000)
    to: AddressList
    cc: AddressList = Field(default_factory=list)
    bcc: AddressList = Field(default_factory=list)
    reply_to: AddressList = Field(default_factory=list)
    # Before subject, html and text, whose checks look at it.
    template: TemplateRef | None = None
    subject: HeaderText | None = Field(default=None, max_length=998, validate_default=True)
    html: UnicodeText | None = None
    # After html, so that its check sees both and the error names "text".
    text: UnicodeText | None = Field(default=None, validate_default=True)
    headers: dict[str, str] = Field(default_factory=dict)
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=100)
    tags: Tags = Field(default_factory=dict)
    scheduled_at: ScheduleTime | None = None
    track: TrackIn | None = None
    #: List-Unsubscribe and List-Unsubscribe-Post (RFC 8058) with a one-click endpoint.
    unsubscribe: bool = False

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        parse_mailbox(value)
        return value

    @field_validator("to")
    @classmethod
    def _some_recipient(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one recipient")
        return value

    @field_validator("subject")
    @classmethod
    def _subject_or_template(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("template") is None and "template" in info.data:
            raise ValueError("required (or name a 'template')")
        return value

    @field_validator("text")
    @classmethod
    def _some_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("template") is not None:
            return value
        if value is None and "html" in info.data and info.data["html"] is None:
            raise ValueError("give 'text' or 'html' (or both)")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            check_custom_header(name, text)
            _unicode(text)
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 20:
            raise ValueError("at most 20 tags")
        for name, text in value.items():
            if not _TAG_NAME.match(name):
                raise ValueError(f"tag name {name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
            if len(text) > 256 or any(ord(c) < 32 for c in text):
                raise ValueError(f"tag {name!r}: value must be at most 256 printable characters")
            _unicode(text)
        return value

    @field_validator("scheduled_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a time zone offset (RFC 3339), e.g. ...Z")
        return value

    @model_validator(mode="after")
    def _whole(self) -> EmailIn:
        if self.template is not None and (self.subject, self.html, self.text) != (None,) * 3:
            raise ValueError("give either 'template' or 'subject' with 'text'/'html', not both")
        if len(self.to) + len(self.cc) + len(self.bcc) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients in to, cc and bcc together")
        return self


class RawEmailIn(BaseModel):
    """``POST /v1/emails/raw``: a message built by the client, sent as it is."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_: Address = Field(
        alias="from",
        min_length=3,
        max_length=1000,
        description="The envelope sender: an address in a domain the key may send from",
    )
    to: AddressList = Field(description="The envelope recipients (Bcc: any not in To or Cc)")
    raw: str = Field(
        min_length=1, description="The RFC 5322 message, base64; every line ends with CRLF"
    )
    tags: Tags = Field(default_factory=dict)

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("needs at least one recipient")
        if len(value) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients")
        return list(dict.fromkeys(value))

    @field_validator("raw")
    @classmethod
    def _base64(cls, value: str) -> str:
        return _check_base64(value)

    @property
    def message(self) -> bytes:
        return base64.b64decode(self.raw)


#: Most emails in one batch request.
MAX_BATCH = 500


def _deferred(value: Any) -> Any:
    return value


#: The body of ``POST /v1/emails``: documented as an EmailIn, taken as parsed JSON and
#: validated in a worker thread (``api.emails.validated``). Pydantic validates a body in
#: one call, addresses and headers in Python: for the largest request the caps allow that
#: held the event loop 100-200 ms, over the 100 ms /healthz may take (issue 20).
EmailBody = Annotated[Any, PlainValidator(_deferred, json_schema_input_type=EmailIn)]
#: The body of ``POST /v1/emails/batch``, the same way.
Batch = Annotated[list[EmailIn], Field(min_length=1, max_length=MAX_BATCH)]
BatchBody = Annotated[Any, PlainValidator(_deferred, json_schema_input_type=Batch)]


class RescheduleIn(BaseModel):
    """``PATCH /v1/emails/{email_id}``. ``id``: the Resend SDKs send the email's id in the
    body too; if given, it must be the path's."""

    model_config = ConfigDict(extra="forbid")
    scheduled_at: ScheduleTime
    id: str | None = None

    @field_validator("scheduled_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("must include a time zone offset (RFC 3339), e.g. ...Z")
        return value


class DomainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=253)


class DomainTrackingIn(TrackIn):
    """A domain's tracking defaults, and its own tracking host (``host``: a name under
    the domain, ``track.example.com``; null: none, POSTLINE_TRACKING_URL). A member left
    out stays as it is."""

    host: str | None = Field(
        default=None,
        max_length=253,
        description="A host name under the domain, published as a CNAME (`dns_records`);"
        " null removes it",
    )


class DomainPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bounce_notifications: bool | None = None
    tracking: DomainTrackingIn | None = None


#: An API key's scopes (``postline.keys.SCOPES``).
Scope = Literal["send", "read", "templates", "webhooks", "suppressions", "stats", "admin"]


class KeyIn(BaseModel):
    """``domain`` (a name) scopes the key to that domain. Resend's ``domain_id`` does the
    same by id, and its ``permission`` is read as far as Postline's keys go: a
    ``sending_access`` key is scoped to one domain, a ``full_access`` key to none."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    domain: str | None = None
    domain_id: str | None = None
    permission: Literal["full_access", "sending_access"] | None = None
    scopes: list[Scope] | None = Field(
        default=None,
        min_length=1,
        description="What the key may do; none given: every scope (a sending_access key: send)",
    )
    expires_at: datetime | None = Field(
        default=None, description="RFC 3339; after it the key is refused; none: never"
    )

    @model_validator(mode="after")
    def _scope(self) -> KeyIn:
        if self.domain is not None and self.domain_id is not None:
            raise ValueError("give domain or domain_id, not both")
        scoped = self.domain is not None or self.domain_id is not None
        if self.permission == "sending_access" and not scoped:
            raise ValueError(
                "a sending_access key is scoped to one domain in Postline: give domain_id"
                " (or domain); without one the key is full_access"
            )
        if self.permission == "full_access" and scoped:
            raise ValueError("a full_access key has no domain; use sending_access with one")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at must include a time zone offset (RFC 3339), e.g. ...Z")
        return self

    @property
    def wanted_scopes(self) -> list[str] | None:
        """The scopes asked for: Resend's ``sending_access`` is a key that only sends."""
        if self.scopes is None and self.permission == "sending_access":
            return ["send"]
        return None if self.scopes is None else list(self.scopes)
