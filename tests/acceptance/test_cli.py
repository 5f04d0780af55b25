"""The ``postline`` command as an operator runs it: configuration errors, domains, keys, queue."""

from __future__ import annotations

import base64
import re
import signal
import socket
import stat
from importlib.metadata import version
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key

from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import SHARED_SECRET_KEY, Install, clean_env, run_cli

UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/nope"
KEY_LINE = re.compile(r"^pl_[A-Za-z0-9_-]{20,}$")
ANY_KEY = re.compile(r"pl_[A-Za-z0-9_-]{20,}")


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"POSTLINE_DATABASE_URL": "mysql://x"}, "POSTLINE_DATABASE_URL"),
        ({"POSTLINE_HTTP_ADDR": "nonsense"}, "POSTLINE_HTTP_ADDR"),
        ({"POSTLINE_DATABASE_URL": UNREACHABLE_PG}, "database"),
    ],
    ids=["database-url-scheme", "http-addr", "unreachable-db"],
)
def test_serve_refuses_bad_configuration_in_one_line(
    install: Install, env: dict[str, str], fragment: str
) -> None:
    result = install.cli("serve", env=env)
    result.assert_one_line_failure(2, fragment)


def test_data_dir_that_is_a_regular_file(install: Install, tmp_path: Path) -> None:
    regular = tmp_path / "not-a-dir"
    regular.write_text("I am a file\n")
    for args in (("serve",), ("keys", "list")):
        result = install.cli(*args, env={"POSTLINE_DATA_DIR": str(regular)})
        result.assert_one_line_failure(2, "POSTLINE_DATA_DIR", str(regular))
    assert regular.read_text() == "I am a file\n"


def test_serve_refuses_a_port_that_is_taken(install: Install) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = install.cli("serve", env={"POSTLINE_HTTP_ADDR": f"127.0.0.1:{port}"})
    result.assert_one_line_failure(2, "POSTLINE_HTTP_ADDR", "cannot listen")


@pytest.mark.parametrize(
    "args",
    [("keys", "list"), ("queue", "status")],
    ids=["keys-list", "queue-status"],
)
def test_unreachable_database_is_one_line_for_client_commands(
    install: Install, args: tuple[str, ...]
) -> None:
    result = install.cli(*args, env={"POSTLINE_DATABASE_URL": UNREACHABLE_PG})
    result.assert_one_line_failure(2, "database")


def test_domains_add_prints_the_dns_records(install: Install) -> None:
    migrated = install.cli("migrate").assert_ok()
    assert "database is up to date" in migrated.stdout, migrated.describe()

    added = install.cli("domains", "add", "example.test").assert_ok()
    out = added.stdout
    assert "added example.test" in out, added.describe()
    # Every record must be printed whole: an operator copies them into the zone.
    dkim = re.search(r"\b([a-z0-9]+)\._domainkey\.example\.test\b", out)
    assert dkim is not None, added.describe()
    public = re.search(r"v=DKIM1; k=rsa; p=([A-Za-z0-9+/]+=*)", out)
    assert public is not None, added.describe()
    key = load_der_public_key(base64.b64decode(public.group(1), validate=True))
    assert isinstance(key, rsa.RSAPublicKey), added.describe()
    assert key.key_size == 2048
    for name in ("bounces.example.test", "_dmarc.example.test"):
        assert name in out, added.describe()
    assert "v=DMARC1" in out and "v=spf1" in out, added.describe()

    listed = install.cli("domains", "list").assert_ok()
    assert "example.test" in listed.stdout, listed.describe()

    again = install.cli("domains", "add", "example.test")
    again.assert_one_line_failure(1, "example.test", "already exists")
    bad = install.cli("domains", "add", "not a domain")
    bad.assert_one_line_failure(1, "not a domain")


def test_keys_create_list_revoke(install: Install) -> None:
    install.cli("domains", "add", "example.test").assert_ok()

    admin = install.cli("keys", "create", "--name", "ci").assert_ok()
    admin_keys = [line for line in admin.stdout_lines if KEY_LINE.match(line)]
    assert len(admin_keys) == 1, admin.describe()
    admin_id = re.search(r"\b(key_[a-z0-9]+)\b", admin.stdout)
    assert admin_id is not None, admin.describe()
    assert "admin" in admin.stdout, admin.describe()

    scoped = install.cli("keys", "create", "--name", "shop", "--domain", "example.test")
    scoped.assert_ok()
    scoped_keys = [line for line in scoped.stdout_lines if KEY_LINE.match(line)]
    assert len(scoped_keys) == 1, scoped.describe()
    assert "scoped to example.test" in scoped.stdout, scoped.describe()
    assert scoped_keys != admin_keys

    unknown = install.cli("keys", "create", "--name", "x", "--domain", "unknown.test")
    unknown.assert_one_line_failure(1, "unknown.test")

    listed = install.cli("keys", "list").assert_ok()
    assert admin_id.group(1) in listed.stdout, listed.describe()
    assert "shop" in listed.stdout and "example.test" in listed.stdout, listed.describe()
    for secret in (*admin_keys, *scoped_keys):
        assert secret not in listed.stdout, listed.describe()
    assert not ANY_KEY.search(listed.stdout), listed.describe()

    revoked = install.cli("keys", "revoke", admin_id.group(1)).assert_ok()
    assert f"revoked {admin_id.group(1)}" in revoked.stdout, revoked.describe()
    after = install.cli("keys", "list").assert_ok()
    assert admin_id.group(1) not in after.stdout, after.describe()
    assert "shop" in after.stdout, after.describe()
    twice = install.cli("keys", "revoke", admin_id.group(1))
    twice.assert_one_line_failure(1, admin_id.group(1))


@pytest.mark.parametrize(
    "args",
    [("queue", "status"), ("keys", "list")],
    ids=["queue-status", "keys-list"],
)
def test_read_commands_on_a_fresh_install(install: Install, args: tuple[str, ...]) -> None:
    result = install.cli(*args).assert_ok()
    if args == ("queue", "status"):
        assert "the queue is empty" in result.stdout, result.describe()


async def test_admin_key_is_created_once_with_mode_0600(install: Install, launch: Launcher) -> None:
    first = await launch(install, "serve")
    key = await first.admin_key()
    await first.ready()
    path = install.admin_key_file
    assert path.is_file(), first.describe()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    assert path.read_text().strip() == key
    assert any(str(path) in line for line in first.stdout), first.describe()
    response = await first.client.get("/v1/domains", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(15) == 0, first.describe()

    second = await launch(install, "serve")
    await second.ready()
    await second.wait_for_line(rf"written on first run to {re.escape(str(path))}")
    second.signal(signal.SIGTERM)
    assert await second.wait_exit(15) == 0, second.describe()
    assert not any(ANY_KEY.search(line) for line in second.stdout), second.describe()
    assert path.read_text().strip() == key, "the key file must not be rewritten"


# --- finding the installation ------------------------------------------------------------


def tree(directory: Path) -> list[str]:
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*"))


@pytest.mark.parametrize(
    "args",
    [
        ("keys", "list"),
        ("keys", "create", "--name", "ci"),
        ("keys", "revoke", "key_x"),
        ("domains", "add", "example.test"),
        ("domains", "list"),
        ("queue", "status"),
    ],
    ids=["keys-list", "keys-create", "keys-revoke", "domains-add", "domains-list", "queue-status"],
)
def test_client_commands_refuse_a_directory_without_an_installation(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_cli(*args, env=clean_env(), cwd=elsewhere)
    line = result.assert_one_line_failure(2, "--data-dir", "POSTLINE_DATA_DIR")
    assert str(elsewhere / "postline-data") in line, result.describe()
    assert tree(elsewhere) == [], "a refused command must create nothing"


def test_cli_finds_the_installation_here_or_where_it_is_named(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    run_cli("migrate", env=clean_env(), cwd=home).assert_ok()  # migrate may create
    data_dir = home / "postline-data"
    assert (data_dir / "postline.db").is_file()

    created = run_cli("keys", "create", "--name", "found", env=clean_env(), cwd=home).assert_ok()
    key_id = re.search(r"\b(key_[a-z0-9]+)\b", created.stdout)
    assert key_id is not None, created.describe()

    by_option = run_cli("--data-dir", str(data_dir), "keys", "list", env=clean_env(), cwd=elsewhere)
    assert key_id.group(1) in by_option.assert_ok().stdout, by_option.describe()
    by_env = run_cli("keys", "list", env=clean_env(POSTLINE_DATA_DIR=str(data_dir)), cwd=elsewhere)
    assert key_id.group(1) in by_env.assert_ok().stdout, by_env.describe()
    assert tree(elsewhere) == []

    # A named data dir is the operator's word: a client command may start it.
    fresh = tmp_path / "fresh"
    run_cli("--data-dir", str(fresh), "queue", "status", env=clean_env(), cwd=elsewhere).assert_ok()
    assert (fresh / "postline.db").is_file()


@pytest.mark.postgres
async def test_a_named_postgresql_database_still_needs_the_servers_secret_key(
    tmp_path: Path, postgres_url: str
) -> None:
    # The database is named, so it is the right one; a key minted in a stray
    # ./postline-data would not be the servers' key.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = clean_env(POSTLINE_DATABASE_URL=postgres_url)
    refused = run_cli("keys", "list", env=env, cwd=elsewhere)
    line = refused.assert_one_line_failure(2, "POSTLINE_SECRET_KEY", "--data-dir")
    assert str(elsewhere / "postline-data" / "secret.key") in line, refused.describe()
    assert tree(elsewhere) == []

    keyed = {**env, "POSTLINE_SECRET_KEY": SHARED_SECRET_KEY}
    server_home = tmp_path / "server"
    server_home.mkdir()
    run_cli("migrate", env=keyed, cwd=server_home).assert_ok()
    run_cli("keys", "create", "--name", "pg", env=keyed, cwd=elsewhere).assert_ok()
    listed = run_cli("keys", "list", env=keyed, cwd=elsewhere).assert_ok()
    assert "pg" in listed.stdout, listed.describe()
    assert tree(elsewhere) == [], "a named database and key need no data dir here"


def test_version_is_the_package_version(tmp_path: Path) -> None:
    result = run_cli("--version", env=clean_env(), cwd=tmp_path).assert_ok()
    assert result.stdout.strip() == f"postline {version('postline')}", result.describe()
    assert tree(tmp_path) == []


# --- keys list and revoke ----------------------------------------------------------------


def test_keys_list_shows_whole_ids_and_domains_at_80_columns(install: Install) -> None:
    domain = "a-long-subdomain.of-a-long-sending-domain.example.test"
    install.cli("domains", "add", domain).assert_ok()
    long_name = "the key of the nightly invoice run, which has a rather long label"
    install.cli("keys", "create", "--name", long_name, "--domain", domain).assert_ok()
    install.cli("keys", "create", "--name", "short").assert_ok()
    listed = install.cli("keys", "list", env={"COLUMNS": "80"}).assert_ok()
    header, *rows = listed.stdout_lines
    assert header.split() == ["id", "prefix", "domain", "name"], listed.describe()
    assert len(rows) == 2, listed.describe()
    # One whole line per key, the id first: what `keys revoke` takes, never cut.
    ids = [row.split()[0] for row in rows]
    assert all(re.fullmatch(r"key_[a-z0-9]{26}", key_id) for key_id in ids), listed.describe()
    scoped = next(row for row in rows if f" {domain} " in row)
    assert scoped.endswith(long_name), listed.describe()
    assert any(row.split()[2:] == ["(all)", "short"] for row in rows), listed.describe()


def key_ids(install: Install) -> list[str]:
    """The ids of the active keys, in the order `keys list` prints them."""
    listed = install.cli("keys", "list").assert_ok()
    return re.findall(r"^(key_[a-z0-9]{26}) ", listed.stdout, re.MULTILINE)


def test_keys_revoke_takes_an_unambiguous_prefix(install: Install) -> None:
    install.cli("migrate").assert_ok()
    for name in ("one", "two", "three"):
        install.cli("keys", "create", "--name", name).assert_ok()
    ids = key_ids(install)
    assert len(ids) == 3

    ambiguous = install.cli("keys", "revoke", "key_")
    ambiguous.assert_one_line_failure(1, "key_", "3 active keys")
    assert key_ids(install) == ids, "an ambiguous prefix revokes nothing"

    unknown = install.cli("keys", "revoke", "key_zzzz")
    unknown.assert_one_line_failure(1, "key_zzzz")
    wildcard = install.cli("keys", "revoke", "%")  # taken literally, not as SQL LIKE's
    wildcard.assert_one_line_failure(1, "no active key")

    target = ids[1]
    others = [key_id for key_id in ids if key_id != target]
    prefix = next(
        target[:n]
        for n in range(5, len(target))
        if not any(other.startswith(target[:n]) for other in others)
    )
    revoked = install.cli("keys", "revoke", prefix).assert_ok()
    assert revoked.stdout.strip() == f"revoked {target}", revoked.describe()
    assert key_ids(install) == others

    again = install.cli("keys", "revoke", prefix)
    again.assert_one_line_failure(1, prefix)


def test_keys_create_with_scopes_and_an_expiry(tmp_path: Path) -> None:
    env = clean_env()
    run_cli("--data-dir", str(tmp_path / "d"), "migrate", env=env, cwd=tmp_path).assert_ok()
    made = run_cli(
        "--data-dir",
        str(tmp_path / "d"),
        "keys",
        "create",
        "--name",
        "web",
        "--scope",
        "send",
        "--scope",
        "read",
        "--expires-in-days",
        "90",
        env=env,
        cwd=tmp_path,
    ).assert_ok()
    assert "may: send, read, expires " in made.stdout
    bad = run_cli(
        "--data-dir",
        str(tmp_path / "d"),
        "keys",
        "create",
        "--name",
        "x",
        "--scope",
        "sendd",
        env=env,
        cwd=tmp_path,
    )
    bad.assert_one_line_failure(1, "unknown scope 'sendd'")
