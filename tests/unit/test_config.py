"""Settings: safe defaults, and one readable line naming the variable for every bad value."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from postline.config import (
    ConfigError,
    Settings,
    check_installation,
    check_port_free,
    ensure_data_dir,
    load_settings,
    named_in_environment,
    normalize_database_url,
    parse_host_port,
)
from tests.harness.capability import missing


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No POSTLINE_* from the developer's shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("POSTLINE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("POSTLINE_HOSTNAME", "mx.example.test")
    yield


def one_line_error(excinfo: pytest.ExceptionInfo[ConfigError], variable: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    assert "\r" not in message
    assert variable in message
    assert "Traceback" not in message
    assert "validation error" not in message  # pydantic's multi-line report is not shown
    # Raised "from None": the operator sees one line, not a chained traceback.
    assert excinfo.value.__suppress_context__
    return message


# --- defaults -------------------------------------------------------------------------------


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    data = (tmp_path / "postline-data").absolute()
    assert settings.data_dir == Path("postline-data")
    assert settings.database_url == f"sqlite+aiosqlite:///{data / 'postline.db'}"
    assert settings.is_sqlite
    assert settings.queue_url == "embedded"
    assert settings.spool_url == f"file://{data / 'spool'}"
    assert settings.spool_path == data / "spool"
    assert settings.http_addr == "127.0.0.1:8080"
    assert settings.http_host_port == ("127.0.0.1", 8080)
    assert settings.smtp_addr == "127.0.0.1:2587"
    assert settings.inbound_addr == "127.0.0.1:2525"
    assert settings.hostname == "mx.example.test"
    assert settings.dns_nameservers == ""
    assert settings.nameservers == []
    assert settings.delivery_port == 25
    assert settings.relay is None
    assert settings.sandbox is False
    assert settings.webhook_allow_private is False
    assert settings.delivery_allow_private is False
    assert settings.max_age_seconds == 5 * 24 * 3600
    assert settings.retry_delays == [60, 300, 900, 1800, 3600, 7200, 14400, 21600]
    assert settings.lease_seconds == 30
    assert (settings.heartbeat_seconds, settings.heartbeat_timeout) == (5.0, 15.0)
    assert settings.admin_key_file == Path("postline-data") / "admin-key.txt"
    # Nothing is created by merely loading settings.
    assert not (tmp_path / "postline-data").exists()


def test_default_hostname_never_localhost(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTLINE_HOSTNAME")
    monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    assert load_settings().hostname == "postline.localdomain"
    monkeypatch.setattr(socket, "getfqdn", lambda: "mail1.example.net")
    assert load_settings().hostname == "mail1.example.net"


def test_env_values_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POSTLINE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("POSTLINE_DELIVERY_PORT", "2526")
    monkeypatch.setenv("POSTLINE_DNS_NAMESERVERS", "127.0.0.1:5353, [::1]:53,10.0.0.1,::1")
    monkeypatch.setenv("POSTLINE_RELAY_HOST", "smtp.example.net")
    monkeypatch.setenv("POSTLINE_SANDBOX", "true")
    monkeypatch.setenv("POSTLINE_WEBHOOK_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("POSTLINE_DELIVERY_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("POSTLINE_QUEUE_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("POSTLINE_RETRY_SCHEDULE", "10, 20,30,")
    monkeypatch.setenv("POSTLINE_HTTP_ADDR", "[::1]:8081")
    settings = load_settings()
    assert settings.data_dir == tmp_path / "data"
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'postline.db'}"
    assert settings.delivery_port == 2526
    assert settings.nameservers == [("127.0.0.1", 5353), ("::1", 53), ("10.0.0.1", 53), ("::1", 53)]
    assert settings.relay == ("smtp.example.net", 25)
    assert settings.sandbox is True
    assert settings.webhook_allow_private is True
    assert settings.delivery_allow_private is True
    assert settings.queue_url == "redis://127.0.0.1:6379/0"
    assert settings.retry_delays == [10.0, 20.0, 30.0]
    assert settings.http_host_port == ("::1", 8081)


def test_postgres_url_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTLINE_DATABASE_URL", "postgres://postline:secret@db:5432/postline")
    monkeypatch.setenv("POSTLINE_SPOOL_URL", "database")
    settings = load_settings()
    assert settings.database_url == "postgresql+asyncpg://postline:secret@db:5432/postline"
    assert not settings.is_sqlite
    assert settings.spool_url == "database"


def test_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTLINE_DELIVERY_PORT", "2526")
    assert load_settings(delivery_port=2527).delivery_port == 2527


def test_relay_host_with_port() -> None:
    assert load_settings(relay_host="[smtp.example.net]:587").relay == ("smtp.example.net", 587)


def test_a_lease_shorter_than_the_smtp_timeouts_is_accepted() -> None:
    """The lease is renewed while a delivery runs: the SMTP timeouts need not fit in it."""
    settings = load_settings(lease_seconds=10, smtp_connect_timeout=30, smtp_command_timeout=60)
    assert settings.lease_seconds == 10


# --- load_settings errors -------------------------------------------------------------------

BAD_ENV: list[tuple[str, str]] = [
    ("POSTLINE_DATABASE_URL", "mysql://x"),
    ("POSTLINE_DATABASE_URL", "postgresql://"),
    ("POSTLINE_DATABASE_URL", "not a url"),
    ("POSTLINE_DATABASE_URL", "http://db.example/postline"),
    ("POSTLINE_HTTP_ADDR", "nope"),
    ("POSTLINE_HTTP_ADDR", "host:99999"),
    ("POSTLINE_HTTP_ADDR", "127.0.0.1:http"),
    ("POSTLINE_HTTP_ADDR", ":8080"),
    ("POSTLINE_HTTP_ADDR", "[::1"),
    ("POSTLINE_HTTP_ADDR", "[::1]8080"),
    ("POSTLINE_SMTP_ADDR", "localhost"),
    ("POSTLINE_INBOUND_ADDR", "127.0.0.1:-1"),
    ("POSTLINE_EVENT_LOOP", "trio"),
    ("POSTLINE_DNS_NAMESERVERS", "8.8.8.8:abc"),
    ("POSTLINE_DNS_NAMESERVERS", "1.1.1.1,[::1]:99999"),
    ("POSTLINE_DNS_NAMESERVERS", "dns.example:53:53"),
    ("POSTLINE_DNS_NAMESERVERS", "[]"),
    ("POSTLINE_QUEUE_URL", "amqp://rabbit/"),
    ("POSTLINE_QUEUE_URL", "redis"),
    ("POSTLINE_QUEUE_URL", "postgresql://db/queue"),
    ("POSTLINE_RETRY_SCHEDULE", "1m,5m"),
    ("POSTLINE_RETRY_SCHEDULE", ""),
    ("POSTLINE_RETRY_SCHEDULE", ",,"),
    ("POSTLINE_RETRY_SCHEDULE", "60,-5"),
    ("POSTLINE_RETRY_SCHEDULE", "60,nan"),
    ("POSTLINE_RETRY_SCHEDULE", "inf"),
    ("POSTLINE_LEASE_SECONDS", "0"),
    ("POSTLINE_LEASE_SECONDS", "-30"),
    ("POSTLINE_HEARTBEAT_SECONDS", "0"),
    ("POSTLINE_HEARTBEAT_SECONDS", "nan"),
    ("POSTLINE_HEARTBEAT_TIMEOUT", "-1"),
    ("POSTLINE_DELIVERY_PORT", "0"),
    ("POSTLINE_DELIVERY_PORT", "70000"),
    ("POSTLINE_DELIVERY_PORT", "smtp"),
    ("POSTLINE_RELAY_HOST", "smtp.example.net:port"),
    ("POSTLINE_SPOOL_URL", "s3://bucket/spool"),
    ("POSTLINE_CONCURRENCY", "0"),
    ("POSTLINE_MAX_AGE_SECONDS", "-1"),
    ("POSTLINE_SANDBOX", "maybe"),
    ("POSTLINE_TRUSTED_PROXIES", "10.0.0.0/8, proxy.example"),
    ("POSTLINE_TRUSTED_PROXIES", "10.0.0.0/33"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_ENV)
def test_bad_env_value_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    one_line_error(excinfo, variable)


def test_bad_url_error_quotes_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTLINE_DATABASE_URL", "mysql://x")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert "'mysql://x'" in one_line_error(excinfo, "POSTLINE_DATABASE_URL")


def test_heartbeat_timeout_within_one_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTLINE_HEARTBEAT_SECONDS", "20")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    one_line_error(excinfo, "POSTLINE_HEARTBEAT_TIMEOUT")


def test_bad_override_is_reported_like_env() -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings(http_addr="host:99999")
    message = one_line_error(excinfo, "POSTLINE_HTTP_ADDR")
    assert message.startswith("POSTLINE_HTTP_ADDR: ")
    assert "invalid port" in message


def test_value_with_newline_stays_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTLINE_QUEUE_URL", "amqp://x\nsecond line")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    one_line_error(excinfo, "POSTLINE_QUEUE_URL")


# --- normalize_database_url -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///relative.db", "sqlite+aiosqlite:///relative.db"),
        (
            "sqlite:////var/lib/postline/postline.db",
            "sqlite+aiosqlite:////var/lib/postline/postline.db",
        ),
        ("sqlite://", "sqlite+aiosqlite://"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@db:5432/postline", "postgresql+asyncpg://u:p@db:5432/postline"),
        ("postgres://u@db/postline", "postgresql+asyncpg://u@db/postline"),
        ("postgresql://db", "postgresql+asyncpg://db"),
        ("postgresql:///postline", "postgresql+asyncpg:///postline"),
        ("postgresql+asyncpg://db/postline", "postgresql+asyncpg://db/postline"),
        (
            "postgresql://u@db/postline?sslmode=require",
            "postgresql+asyncpg://u@db/postline?sslmode=require",
        ),
    ],
)
def test_normalize_database_url(url: str, expected: str) -> None:
    assert normalize_database_url(url) == expected


@pytest.mark.parametrize(
    "url", ["", "mysql://x", "postgresql://", "postgres:///", "db.sqlite", "mongodb://db/x"]
)
def test_normalize_database_url_refuses(url: str) -> None:
    with pytest.raises(ValueError, match="POSTLINE_DATABASE_URL"):
        normalize_database_url(url)


# --- parse_host_port ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "default", "expected"),
    [
        ("127.0.0.1:8080", None, ("127.0.0.1", 8080)),
        ("localhost:25", None, ("localhost", 25)),
        (" mx.example.net:2525 ", None, ("mx.example.net", 2525)),
        ("[::1]:53", None, ("::1", 53)),
        ("[2001:db8::1]:5353", None, ("2001:db8::1", 5353)),
        ("[::1]", 53, ("::1", 53)),
        ("::1", 53, ("::1", 53)),
        ("2001:db8::53", 53, ("2001:db8::53", 53)),
        ("8.8.8.8", 53, ("8.8.8.8", 53)),
        ("smtp.example.net", 25, ("smtp.example.net", 25)),
        ("smtp.example.net:587", 25, ("smtp.example.net", 587)),
        ("host:0", None, ("host", 0)),
        ("host:65535", None, ("host", 65535)),
    ],
)
def test_parse_host_port(value: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_host_port(value, default_port=default) == expected


@pytest.mark.parametrize(
    ("value", "default"),
    [
        ("nope", None),
        ("host:99999", None),
        ("host:65536", None),
        ("host:-1", None),
        ("host:http", None),
        ("host: 25", None),
        (":8080", None),
        (":", 53),
        ("", 53),
        ("[]", 53),
        ("[]:53", None),
        ("[::1", 53),
        ("[::1]8080", None),
        ("[::1]:", None),
        ("::1", None),
        ("a:b:c", 53),
        ("[::1]:99999", None),
    ],
)
def test_parse_host_port_refuses(value: str, default: int | None) -> None:
    with pytest.raises(ValueError):
        parse_host_port(value, default_port=default)


# --- ensure_data_dir ------------------------------------------------------------------------


def test_ensure_data_dir_creates_data_and_spool(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "a" / "b")
    ensure_data_dir(settings)
    assert (tmp_path / "a" / "b").is_dir()
    assert settings.spool_path.is_dir()
    ensure_data_dir(settings)  # idempotent


def test_ensure_data_dir_on_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "postline-data"
    path.write_text("not a directory")
    settings = load_settings(data_dir=path)
    with pytest.raises(ConfigError) as excinfo:
        ensure_data_dir(settings)
    message = one_line_error(excinfo, "POSTLINE_DATA_DIR")
    assert str(path) in message
    assert path.read_text() == "not a directory"


def test_ensure_data_dir_below_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    settings = load_settings(data_dir=tmp_path / "file" / "data")
    with pytest.raises(ConfigError) as excinfo:
        ensure_data_dir(settings)
    one_line_error(excinfo, "POSTLINE_DATA_DIR")


def test_ensure_data_dir_database_spool_creates_no_spool(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "d",
        spool_url="database",
        database_url="postgresql://postgres@127.0.0.1:5432/postline",
    )
    ensure_data_dir(settings)
    assert (tmp_path / "d").is_dir()
    assert not (tmp_path / "d" / "spool").exists()


def test_database_spool_on_sqlite_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="POSTLINE_SPOOL_URL=database needs a PostgreSQL"):
        load_settings(data_dir=tmp_path, spool_url="database")


@pytest.mark.parametrize("prefix", ["", "has space", "x" * 65, "a{b}"])
def test_bad_queue_prefix_is_refused(tmp_path: Path, prefix: str) -> None:
    with pytest.raises(ConfigError, match="POSTLINE_QUEUE_PREFIX"):
        load_settings(data_dir=tmp_path, queue_prefix=prefix)


def test_retention_defaults_and_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert (settings.body_retention_seconds, settings.retention_days) == (0, 30)
    monkeypatch.setenv("POSTLINE_BODY_RETENTION_SECONDS", "86400")
    monkeypatch.setenv("POSTLINE_RETENTION_DAYS", "0")
    settings = load_settings(data_dir=tmp_path)
    assert (settings.body_retention_seconds, settings.retention_days) == (86400, 0)
    for name in ("POSTLINE_BODY_RETENTION_SECONDS", "POSTLINE_RETENTION_DAYS"):
        monkeypatch.setenv(name, "-1")
        with pytest.raises(ConfigError, match=name):
            load_settings(data_dir=tmp_path)
        monkeypatch.setenv(name, "0")


def test_http_limits_defaults_and_bounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert (settings.http_header_timeout, settings.http_max_connections) == (10.0, 1000)
    assert settings.webhooks_per_domain == 20
    # The whole request (a batch too): one largest email, base64, plus 1 MiB of JSON.
    assert settings.request_limit == int(25 * 1024 * 1024 * 1.4) + 1024 * 1024
    monkeypatch.setenv("POSTLINE_MAX_REQUEST_BYTES", "5000000")
    assert load_settings(data_dir=tmp_path).request_limit == 5_000_000
    for name in (
        "POSTLINE_HTTP_HEADER_TIMEOUT",
        "POSTLINE_HTTP_MAX_CONNECTIONS",
        "POSTLINE_WEBHOOKS_PER_DOMAIN",
        "POSTLINE_MAX_REQUEST_BYTES",
    ):
        monkeypatch.setenv(name, "-1")
        with pytest.raises(ConfigError, match=name):
            load_settings(data_dir=tmp_path)
        monkeypatch.delenv(name)


# --- check_port_free ------------------------------------------------------------------------


def test_check_port_free_on_a_port_in_use() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ConfigError) as excinfo:
            check_port_free(f"127.0.0.1:{port}", "POSTLINE_HTTP_ADDR")
    message = one_line_error(excinfo, "POSTLINE_HTTP_ADDR")
    assert f"127.0.0.1:{port}" in message


def test_check_port_free_on_ipv6_port_in_use() -> None:
    if not socket.has_ipv6:
        missing("IPv6", "no IPv6 on this machine")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        try:
            listener.bind(("::1", 0))
        except OSError as exc:
            missing("IPv6 loopback", str(exc))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(ConfigError) as excinfo:
            check_port_free(f"[::1]:{port}", "POSTLINE_SMTP_ADDR")
    one_line_error(excinfo, "POSTLINE_SMTP_ADDR")


def test_check_port_free_on_a_free_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check_port_free(f"127.0.0.1:{port}", "POSTLINE_HTTP_ADDR")


def test_settings_is_the_class_load_settings_returns() -> None:
    assert isinstance(load_settings(), Settings)


# --- check_installation ---------------------------------------------------------------------

KEY = "c2NhbGUtb3V0LXRlc3RzLXNoYXJlZC1zZWNyZXRrZXk="


def refusal(excinfo: pytest.ExceptionInfo[ConfigError], variable: str) -> str:
    """One line naming ``variable`` (a check, not a failed conversion: no context)."""
    message = str(excinfo.value)
    assert "\n" not in message and variable in message, message
    return message


def test_no_database_in_the_default_data_dir_is_refused_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as excinfo:
        check_installation(load_settings(), data_dir_named=False, database_named=False)
    message = refusal(excinfo, "POSTLINE_DATA_DIR")
    assert str(tmp_path / "postline-data" / "postline.db") in message
    assert "--data-dir" in message
    assert list(tmp_path.iterdir()) == []


def test_an_existing_database_or_a_named_data_dir_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    check_installation(load_settings(), data_dir_named=True, database_named=False)
    data = tmp_path / "postline-data"
    data.mkdir()
    (data / "postline.db").write_bytes(b"")
    (data / "secret.key").write_text(KEY + "\n")
    check_installation(load_settings(), data_dir_named=False, database_named=False)


def test_a_database_there_without_its_secret_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "postline-data"
    data.mkdir()
    (data / "postline.db").write_bytes(b"")
    with pytest.raises(ConfigError) as excinfo:
        check_installation(load_settings(), data_dir_named=False, database_named=False)
    assert str(data / "secret.key") in refusal(excinfo, "POSTLINE_SECRET_KEY")
    check_installation(load_settings(secret_key=KEY), data_dir_named=False, database_named=False)


def test_a_named_sqlite_file_must_exist(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    settings = load_settings(database_url=url, secret_key=KEY)
    with pytest.raises(ConfigError) as excinfo:
        check_installation(settings, data_dir_named=False, database_named=True)
    assert str(tmp_path / "typo.db") in refusal(excinfo, "POSTLINE_DATABASE_URL")


def test_a_named_postgresql_database_needs_the_key_not_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "postgresql://postgres@127.0.0.1/postline"
    with pytest.raises(ConfigError) as excinfo:
        check_installation(
            load_settings(database_url=url), data_dir_named=False, database_named=True
        )
    refusal(excinfo, "POSTLINE_SECRET_KEY")
    check_installation(
        load_settings(database_url=url, secret_key=KEY), data_dir_named=False, database_named=True
    )
    assert list(tmp_path.iterdir()) == []


def test_named_in_environment_reads_as_the_settings_do(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not named_in_environment("POSTLINE_DATA_DIR")
    monkeypatch.setenv("postline_data_dir", "/srv/postline")
    assert named_in_environment("POSTLINE_DATA_DIR")
    monkeypatch.setenv("postline_data_dir", "  ")
    assert not named_in_environment("POSTLINE_DATA_DIR")


def test_trusted_proxies_are_networks() -> None:
    settings = load_settings(trusted_proxies=" 10.1.2.3, 192.168.0.0/16,,::1 ")
    assert settings.trusted_proxy_networks == ["10.1.2.3/32", "192.168.0.0/16", "::1/128"]
    assert load_settings().trusted_proxy_networks == ["127.0.0.1/32", "::1/128"]
    assert load_settings(trusted_proxies="").trusted_proxy_networks == []
