"""Configuration: environment variables ``POSTLINE_*`` validated once at start.

Every setting has a safe default so ``postline serve`` runs with none of them;
a wrong value stops the process with a one-line message (exit code 2) rather
than failing later in the middle of a delivery.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import make_url

from postline.private_files import make_private_dir
from postline.store.sealing import check_key


class ConfigError(Exception):
    """A configuration problem, worded for the operator (one line, no traceback)."""


def parse_host_port(value: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raise ValueError with a clear reason."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not host:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
        if ":" in host and not _is_ipv6(host):
            raise ValueError(f"{value!r} is not host:port (write IPv6 as [addr]:port)")
    if not host:
        raise ValueError(f"{value!r} has no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{value!r} has no port (expected host:port)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r} has an invalid port")
    return host, int(port_text)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


_TLS_POLICIES = ("opportunistic", "require", "verify")


def _tls_policy(value: str) -> str:
    if value not in _TLS_POLICIES:
        raise ValueError(f"{value!r}: expected one of {', '.join(_TLS_POLICIES)}")
    return value


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _default_hostname() -> str:
    name = socket.getfqdn() or socket.gethostname()
    # An EHLO of "localhost" gets mail refused; say something that identifies us.
    return name if name and name != "localhost" else "postline.localdomain"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POSTLINE_", extra="ignore")

    data_dir: Path = Path("./postline-data")
    database_url: str = ""
    queue_url: str = "embedded"
    queue_prefix: str = "postline"
    spool_url: str = ""
    http_addr: str = "127.0.0.1:8080"
    smtp_addr: str = "127.0.0.1:2587"
    inbound_addr: str = "127.0.0.1:2525"
    # The feedback-loop address the inbound listener takes complaints at, besides the
    # return paths; empty: fbl@<POSTLINE_HOSTNAME>.
    inbound_fbl_address: str = ""
    hostname: str = ""
    dns_nameservers: str = ""
    # A name that must exist: while our resolver cannot find it, its NXDOMAIN and
    # null-MX verdicts are not believed (deferral, not bounce). Empty: no canary.
    dns_canary: str = "gmail.com"
    delivery_port: int = 25
    relay_host: str = ""
    sandbox: bool = False
    webhook_allow_private: bool = False
    # MX addresses that are not public (loopback, private, link-local, ...; netpolicy.py)
    # are refused unless this is on. The relay host and the sandbox are never filtered.
    delivery_allow_private: bool = False
    # Seals DKIM keys and webhook secrets in the database (postline.secrets); empty: the
    # key in <data dir>/secret.key, created on first run. Hosts sharing a database
    # need the same one.
    secret_key: SecretStr = SecretStr("")
    # Where tracked links, the open pixel and the unsubscribe link point (postline.tracking):
    # a base URL that reaches this API's /t/ routes; empty: http://<POSTLINE_HTTP_ADDR>.
    tracking_url: str = ""
    # The scheme of links on a domain's own tracking host (postline.tracking.hosts): https,
    # served by the operator's proxy with a certificate for the host; http only where a
    # proxy cannot hold one.
    tracking_host_scheme: str = "https"
    # The reverse proxies in front of the API (addresses or CIDRs, comma-separated): only
    # a request whose peer is one of them has its X-Forwarded-For / X-Forwarded-Proto
    # believed (postline.api.client_address). The default trusts a proxy on this host,
    # as the deployment docs/OPERATIONS.md describes; empty: no peer, headers ignored.
    trusted_proxies: str = "127.0.0.1, ::1"

    max_message_bytes: int = 25 * 1024 * 1024
    # The whole HTTP request body (a batch included), counted as it arrives; 0: derived
    # from max_message_bytes (one email base64-encoded, plus 1 MiB of JSON).
    max_request_bytes: int = 0
    # What one send request may ask to build (validation.SubmissionLimits): recipients
    # (to, cc and bcc of all its emails together), and per email the custom headers
    # (how many, and their bytes together) and attachments. Each recipient also takes a
    # rate-limit token, so a full bucket (rate_limit_burst) holds one largest request.
    max_recipients_per_request: int = 1000
    max_custom_headers: int = 50
    max_custom_header_bytes: int = 16 * 1024
    max_attachments: int = 50
    # Seconds a client has to finish sending a request's headers (slowloris), and the
    # most HTTP connections held open at once (more are answered 503 and closed).
    http_header_timeout: float = 10.0
    http_max_connections: int = 1000
    # Webhook endpoints per sending domain (and for the unscoped ones, together).
    webhooks_per_domain: int = 20
    max_age_seconds: int = 5 * 24 * 3600
    retry_schedule: str = "60,300,900,1800,3600,7200,14400,21600"
    # Deliveries in flight per process, as Postfix's default_process_limit: fewer left a
    # fast destination waiting on each outcome's commit (docs/PERFORMANCE.md, stop 34).
    # Each holds its message in memory, so the worst case is this times max_message_bytes.
    concurrency: int = 100
    # A lease is renewed while its delivery runs; a worker that stops beating for
    # heartbeat_timeout seconds has its jobs taken over (queue.base.Queue.recover_expired).
    lease_seconds: int = 30
    heartbeat_seconds: float = 5.0
    heartbeat_timeout: float = 15.0
    smtp_connect_timeout: float = 30.0
    smtp_command_timeout: float = 60.0
    smtp_max_messages_per_session: int = 100
    smtp_idle_seconds: float = 30.0
    destination_connections: int = 20
    destination_per_minute: int = 0
    destination_limits: dict[str, dict[str, int]] = {}
    tls_default: str = "opportunistic"
    tls_policies: dict[str, str] = {}
    tls_ca_file: str = ""
    # MTA-STS (RFC 8461, delivery/sts_cache.py): honour destinations' policies. The port
    # of the policy host is 443 everywhere but in labs and tests.
    mta_sts: bool = True
    mta_sts_port: int = 443
    mta_sts_fetch_timeout: float = 10.0
    # DANE (RFC 7672): "off", "trust-local": TLSA answers are believed when the
    # resolver on loopback (POSTLINE_DNS_NAMESERVERS), declared validating, sets AD, or
    # "validate": Postline checks the signatures itself from the trust anchors of
    # POSTLINE_DNSSEC_TRUST_ANCHORS (a file of DS/DNSKEY records; empty: the IANA root's).
    dnssec: str = "off"
    dnssec_trust_anchors: str = ""
    # TLS reports (RFC 8460, delivery/tlsrpt_send.py): who they say they are from, and
    # the address of a sending domain mailto: reports go out from (empty: https only).
    tlsrpt_organization: str = ""
    tlsrpt_contact: str = ""
    tlsrpt_from: str = ""
    shutdown_timeout: float = 30.0
    # ``postline serve`` delivers (engine, housekeeping) in one child process and sends
    # webhooks from another, so that accepting, delivering and the webhook POSTs each get
    # a core when they have work (postline.delivery_process).
    delivery_process: bool = True
    poll_interval: float = 0.5
    housekeeping_interval: float = 30.0
    orphan_cleanup_interval: float = 3600.0
    requeue_grace_seconds: float = 60.0
    webhook_concurrency: int = 32
    webhook_timeout: float = 15.0
    webhook_retry_schedule: str = "5,300,1800,7200,18000,36000,36000"
    webhook_disable_after_seconds: int = 5 * 24 * 3600
    log_level: str = "INFO"
    # The event loop of every process: uvloop (a dependency, through uvicorn[standard])
    # costs less CPU per socket operation; asyncio is the standard library's.
    event_loop: str = "uvloop"
    # Per API key, shared by every process on one queue (postline.ratelimit); 0 turns it off.
    # A request takes a token, an email send one per recipient.
    rate_limit_per_second: float = 50.0
    rate_limit_burst: int = 1000
    # Seconds a body stays in the spool after its email became final (for support and
    # GET /v1/emails/{id}/content); 0 removes it at the next housekeeping pass.
    body_retention_seconds: int = 0
    # Days a final email, its recipients, attempts, events and webhook deliveries are
    # kept before housekeeping purges them; 0 keeps them for ever.
    retention_days: int = 30
    # SMTP submission (postline.submission) on smtp_addr, with STARTTLS; implicit TLS
    # (port 465 style) on submission_tls_addr when set. Certificate and key as PEM files;
    # both empty: a self-signed pair generated into the data dir.
    submission_tls_addr: str = ""
    submission_tls_cert: str = ""
    submission_tls_key: str = ""
    # AUTH in plain text from loopback (a local application on the same host); off: AUTH
    # needs TLS from every client.
    submission_loopback_plaintext_auth: bool = True
    # Per connection: recipients of one message, 5xx answers before it is closed,
    # seconds of silence and seconds in all.
    submission_max_recipients: int = 1000
    submission_max_errors: int = 10
    submission_idle_timeout: float = 300.0
    submission_max_session_seconds: float = 3600.0

    @field_validator("http_addr", "smtp_addr", "inbound_addr")
    @classmethod
    def _check_addr(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("submission_tls_addr")
    @classmethod
    def _check_optional_addr(cls, value: str) -> str:
        if value:
            parse_host_port(value)
        return value

    @field_validator("inbound_fbl_address")
    @classmethod
    def _check_fbl(cls, value: str) -> str:
        local, at, domain = value.strip().rpartition("@")
        if value and (not at or not local or not domain or any(c.isspace() for c in value)):
            raise ValueError(f"expected an address like fbl@example.com, not {value!r}")
        return value.strip()

    @field_validator("event_loop")
    @classmethod
    def _check_event_loop(cls, value: str) -> str:
        if value.strip().lower() not in ("uvloop", "asyncio"):
            raise ValueError(f"expected uvloop or asyncio, not {value!r}")
        return value.strip().lower()

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value():
            check_key(value.get_secret_value())  # the message never quotes the key
        return value

    @field_validator("relay_host")
    @classmethod
    def _check_relay(cls, value: str) -> str:
        if value:
            parse_host_port(value, default_port=25)
        return value

    @field_validator("dns_nameservers")
    @classmethod
    def _check_nameservers(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            parse_host_port(item, default_port=53)
        return value

    @field_validator("tracking_host_scheme")
    @classmethod
    def _check_tracking_host_scheme(cls, value: str) -> str:
        if value.strip().lower() not in ("https", "http"):
            raise ValueError(f"expected https or http, not {value!r}")
        return value.strip().lower()

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: str) -> str:
        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (CIDR)") from None
        return value

    @field_validator("delivery_port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("must be between 1 and 65535")
        return value

    @field_validator("destination_limits")
    @classmethod
    def _check_limits(cls, value: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
        for key, limits in value.items():
            unknown = set(limits) - {"connections", "per_minute"}
            if unknown or any(v < 0 for v in limits.values()) or limits.get("connections") == 0:
                raise ValueError(
                    f"{key}: expected {{'connections': N>0, 'per_minute': N>=0}}, got {limits}"
                )
        return value

    @field_validator("tls_default")
    @classmethod
    def _check_tls_default(cls, value: str) -> str:
        return _tls_policy(value)

    @field_validator("tls_policies")
    @classmethod
    def _check_tls_policies(cls, value: dict[str, str]) -> dict[str, str]:
        return {domain.lower(): _tls_policy(policy) for domain, policy in value.items()}

    @field_validator("tls_ca_file")
    @classmethod
    def _check_tls_ca_file(cls, value: str) -> str:
        if value and not Path(value).is_file():
            raise ValueError(f"{value!r}: no such file (a PEM file of trust anchors)")
        return value

    @field_validator("dnssec")
    @classmethod
    def _check_dnssec(cls, value: str) -> str:
        if value not in ("off", "trust-local", "validate"):
            raise ValueError(f"{value!r}: expected off, trust-local or validate")
        return value

    @field_validator("dnssec_trust_anchors")
    @classmethod
    def _check_trust_anchors(cls, value: str) -> str:
        if not value:
            return value
        from postline.delivery.dnssec_validate import load_anchors  # dnspython: only here

        try:
            load_anchors(value)
        except OSError as exc:
            raise ValueError(f"{value!r}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None
        return value

    @field_validator("mta_sts_port")
    @classmethod
    def _check_mta_sts_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"{value}: not a TCP port")
        return value

    @field_validator("mta_sts_fetch_timeout")
    @classmethod
    def _check_mta_sts_fetch_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"{value}: expected seconds > 0")
        return value

    @field_validator("queue_url")
    @classmethod
    def _check_queue(cls, value: str) -> str:
        if value != "embedded" and urlsplit(value).scheme not in {"redis", "rediss"}:
            raise ValueError(f"{value!r}: expected 'embedded' or redis://host:port/db")
        return value

    @field_validator("queue_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
            raise ValueError(f"{value!r}: 1-64 letters, digits or _.:-")
        return value

    @field_validator("retry_schedule", "webhook_retry_schedule")
    @classmethod
    def _check_schedule(cls, value: str) -> str:
        try:
            delays = [float(part) for part in value.split(",") if part.strip()]
        except ValueError:
            raise ValueError("expected comma-separated seconds, e.g. 60,300,900") from None
        if not delays or any(not math.isfinite(d) or d < 0 for d in delays):
            raise ValueError("expected one or more finite, non-negative delays")
        return value

    @field_validator(
        "concurrency",
        "lease_seconds",
        "max_message_bytes",
        "max_age_seconds",
        "webhook_concurrency",
        "webhook_disable_after_seconds",
        "destination_connections",
        "smtp_max_messages_per_session",
        "housekeeping_interval",
        "orphan_cleanup_interval",
        "http_header_timeout",
        "http_max_connections",
        "webhooks_per_domain",
        "submission_max_recipients",
        "submission_max_errors",
    )
    @classmethod
    def _check_positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be positive")
        return value

    @field_validator(
        "heartbeat_seconds",
        "heartbeat_timeout",
        "submission_idle_timeout",
        "submission_max_session_seconds",
    )
    @classmethod
    def _check_seconds(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):
            raise ValueError("must be a positive number of seconds")
        return value

    @field_validator("rate_limit_per_second")
    @classmethod
    def _check_rate(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("must be a finite number of requests per second, 0 for no limit")
        return value

    @field_validator("body_retention_seconds", "retention_days", "max_request_bytes")
    @classmethod
    def _check_retention(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 or more")
        return value

    @field_validator("max_recipients_per_request", "max_custom_headers", "max_custom_header_bytes")
    @classmethod
    def _check_positive_cap(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be 1 or more")
        return value

    @field_validator("max_attachments")
    @classmethod
    def _check_attachment_cap(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 (no attachments) or more")
        return value

    @field_validator("rate_limit_burst")
    @classmethod
    def _check_burst(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be 0 (no limit) or more")
        return value

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if not self.hostname:
            self.hostname = _default_hostname()
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'postline.db').absolute()}"
        self.database_url = normalize_database_url(self.database_url)
        if not self.spool_url:
            self.spool_url = f"file://{(self.data_dir / 'spool').absolute()}"
        scheme = urlsplit(self.spool_url).scheme
        if scheme != "file" and self.spool_url != "database":
            raise ValueError(
                f"POSTLINE_SPOOL_URL {self.spool_url!r}: expected file:///path or database"
            )
        if self.spool_url == "database" and self.database_url.startswith("sqlite"):
            # Bodies are shared through the database only for hosts that share one;
            # on SQLite the spool's writes would queue behind the store's single writer.
            raise ValueError("POSTLINE_SPOOL_URL=database needs a PostgreSQL POSTLINE_DATABASE_URL")
        if bool(self.submission_tls_cert) != bool(self.submission_tls_key):
            raise ValueError(
                "POSTLINE_SUBMISSION_TLS_CERT and POSTLINE_SUBMISSION_TLS_KEY go together:"
                " set both, or neither for a self-signed pair"
            )
        if self.dnssec == "trust-local":
            remote = [host for host, _ in self.nameservers if not _is_loopback(host)]
            if remote or not self.nameservers:
                # A remote resolver's AD bit crosses a network anyone on the path may rewrite.
                named = f" (not {', '.join(remote)})" if remote else ""
                raise ValueError(
                    "POSTLINE_DNSSEC=trust-local needs POSTLINE_DNS_NAMESERVERS to name only a"
                    f" validating resolver on loopback{named}"
                )
        if self.heartbeat_timeout <= self.heartbeat_seconds:
            # A worker would look dead between two of its own heartbeats.
            raise ValueError("POSTLINE_HEARTBEAT_TIMEOUT must exceed POSTLINE_HEARTBEAT_SECONDS")
        return self

    @property
    def tracking_base(self) -> str:
        """The base URL of tracked links: POSTLINE_TRACKING_URL, else the API's own address."""
        if self.tracking_url:
            return self.tracking_url.rstrip("/")
        host, port = self.http_host_port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def trusted_proxy_networks(self) -> list[str]:
        """POSTLINE_TRUSTED_PROXIES as networks (an address is its /32 or /128)."""
        items = filter(None, (part.strip() for part in self.trusted_proxies.split(",")))
        return [str(ipaddress.ip_network(item, strict=False)) for item in items]

    @property
    def http_host_port(self) -> tuple[str, int]:
        return parse_host_port(self.http_addr)

    @property
    def inbound_host_port(self) -> tuple[str, int]:
        return parse_host_port(self.inbound_addr)

    @property
    def fbl_address(self) -> str:
        """Where feedback loops send complaints (POSTLINE_INBOUND_FBL_ADDRESS), lower-cased."""
        return (self.inbound_fbl_address or f"fbl@{self.hostname}").lower()

    @property
    def request_limit(self) -> int:
        """Bytes an HTTP request body may have: one email at the largest size, base64
        encoded (4/3, rounded up generously) plus room for its JSON, unless set."""
        return self.max_request_bytes or int(self.max_message_bytes * 1.4) + 1024 * 1024

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        items = (part.strip() for part in self.dns_nameservers.split(","))
        return [parse_host_port(item, default_port=53) for item in items if item]

    @property
    def relay(self) -> tuple[str, int] | None:
        return parse_host_port(self.relay_host, default_port=25) if self.relay_host else None

    @property
    def retry_delays(self) -> list[float]:
        return [float(part) for part in self.retry_schedule.split(",") if part.strip()]

    @property
    def webhook_retry_delays(self) -> list[float]:
        """Delays before the 2nd, 3rd, ... attempt; one more attempt than entries in all."""
        return [float(part) for part in self.webhook_retry_schedule.split(",") if part.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def spool_path(self) -> Path:
        return Path(urlsplit(self.spool_url).path)

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin-key.txt"

    @property
    def secret_key_file(self) -> Path:
        return self.data_dir / "secret.key"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None on PostgreSQL."""
        if not self.is_sqlite:
            return None
        database = make_url(self.database_url).database
        return Path(database) if database and database != ":memory:" else None


def normalize_database_url(url: str) -> str:
    """Accept the URLs operators write and pick the async driver ourselves."""
    parts = urlsplit(url)
    if parts.scheme in {"sqlite", "sqlite+aiosqlite"}:
        return "sqlite+aiosqlite" + url[len(parts.scheme) :]
    if parts.scheme in {"postgres", "postgresql", "postgresql+asyncpg"}:
        if not parts.hostname and not parts.path.strip("/"):
            raise ValueError(
                f"POSTLINE_DATABASE_URL {url!r}: expected postgresql://user@host:port/database"
            )
        return "postgresql+asyncpg" + url[len(parts.scheme) :]
    raise ValueError(
        f"POSTLINE_DATABASE_URL {url!r}: expected sqlite:///path or postgresql://host/db"
    )


def load_settings(**overrides: Any) -> Settings:
    """Read settings from the environment; raise ConfigError with one readable line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "configuration"
        message = str(first["msg"]).removeprefix("Value error, ")
        if not first["loc"] and message.startswith("POSTLINE_"):
            raise ConfigError(message) from None  # a whole-settings check names its variable
        label = f"POSTLINE_{field.upper()}" if first["loc"] else "configuration"
        raise ConfigError(f"{label}: {message}") from None


def ensure_data_dir(settings: Settings) -> None:
    """Create the data dir (and spool), 0700, or explain why it cannot be used."""
    path = settings.data_dir
    try:
        make_private_dir(path)
        if settings.spool_url.startswith("file:"):
            make_private_dir(settings.spool_path)
    except OSError as exc:
        raise ConfigError(f"POSTLINE_DATA_DIR {path}: cannot create it ({exc.strerror})") from None
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"POSTLINE_DATA_DIR {path}: not readable and writable by this user")


def named_in_environment(variable: str) -> bool:
    """Whether ``variable`` (``POSTLINE_...``) is set to something, as the settings read it
    (case-insensitively)."""
    wanted = variable.upper()
    return any(name.upper() == wanted and value.strip() for name, value in os.environ.items())


_POINT_AT_IT = (
    "run it from the directory where `postline serve` runs, "
    "or pass --data-dir DIR (or set POSTLINE_DATA_DIR)"
)


def check_installation(settings: Settings, *, data_dir_named: bool, database_named: bool) -> None:
    """Refuse, in one line, a command that would start a new installation nobody asked for.

    Run from another directory, a client command (keys, domains, queue) would otherwise
    create an empty ./postline-data and work on it: an empty key list, a domain added to
    a database no server reads. Only ``serve``, ``api``, ``worker`` and ``migrate`` may
    create; every other command uses a data dir the operator named, or one that already
    holds the database. A named database (PostgreSQL, or a SQLite file elsewhere) is the
    right one by definition; what a wrong directory would still invent there is the
    secret key, and a fresh key either fails against the database's or, on a fresh
    database, becomes its key behind the servers' backs.
    """
    if data_dir_named:
        return
    db_file = settings.sqlite_path
    if db_file is not None and not db_file.is_file():
        if database_named:
            raise ConfigError(f"POSTLINE_DATABASE_URL: no database file {db_file}")
        raise ConfigError(f"no Postline database at {db_file}: {_POINT_AT_IT}")
    if settings.secret_key.get_secret_value() or settings.secret_key_file.is_file():
        return
    raise ConfigError(
        f"no secret key: POSTLINE_SECRET_KEY is not set and "
        f"{settings.secret_key_file.absolute()} does not exist; set the key `postline serve` "
        f"uses, or pass --data-dir DIR (or set POSTLINE_DATA_DIR)"
    )


def check_port_free(addr: str, label: str) -> None:
    """Fail at start, in one line, when a listening address is already taken."""
    host, port = parse_host_port(addr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"{label} {addr}: cannot listen ({exc.strerror})") from None


def redact_url(url: str) -> str:
    """A URL fit for logs and banners: any password replaced by ***."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
