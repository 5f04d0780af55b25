"""Secrets at rest, as an operator's machine sees them: a real ``postline`` process.

The data dir is the user's alone (0700, files 0600, whatever the umask), the
database holds no DKIM private key or webhook secret in the clear, rows written in
the clear by an older version are sealed by the upgrade, and a key that does not
open them stops the process in one line.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from postline.dkim import dkim_dns_value
from postline.store.migrate import upgrade
from postline.store.sealing import PREFIX, new_key
from tests.acceptance.conftest import Launcher
from tests.acceptance.harness import Install, Server, auth
from tests.acceptance.test_serve import delivery_env, route_to
from tests.harness.fake_dns import FakeDNS
from tests.harness.fake_mx import FakeMX

DECRYPT_ERROR = "the secret key does not decrypt the stored secrets"


def modes(root: Path) -> dict[str, int]:
    """Every path under ``root`` (itself as "."), relative, with its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


async def start_with_umask(launch: Launcher, install: Install, umask: int, **env: str) -> Server:
    """``postline serve`` started under ``umask`` (inherited at fork), ours restored at once."""
    previous = os.umask(umask)
    try:
        return await launch(install, "serve", "--no-sandbox", **env)
    finally:
        os.umask(previous)


async def test_a_first_run_keeps_every_file_to_its_user_and_no_secret_in_the_clear(
    install: Install, launch: Launcher, fake_dns: FakeDNS, fake_mx: FakeMX
) -> None:
    route_to(fake_dns, fake_mx)
    install.extra.update(delivery_env(fake_dns, fake_mx))
    # Keep the body in the spool after delivery, so its file and shard dir are there to see.
    install.extra["POSTLINE_BODY_RETENTION_SECONDS"] = "3600"
    install.extra["POSTLINE_WEBHOOK_ALLOW_PRIVATE"] = "true"
    server = await start_with_umask(launch, install, 0o000)  # the loosest umask there is
    await server.ready()
    key = await server.admin_key()
    created = await server.client.post(
        "/v1/domains", json={"name": "example.test"}, headers=auth(key)
    )
    assert created.status_code == 201, created.text
    hook = await server.client.post(
        "/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["*"]}, headers=auth(key)
    )
    assert hook.status_code == 201, hook.text
    secret = hook.json()["secret"]
    sent = await server.send(key, to="user@dest.test")
    await server.wait_status(key, sent["id"], "delivered")
    # DKIM signing still works with the sealed key.
    [received] = fake_mx.messages_for("user@dest.test")
    assert "d=example.test" in str(received.message["DKIM-Signature"])

    data = install.data_dir
    found = modes(data)
    for name in ("postline.db", "postline.db-wal", "postline.db-shm"):
        assert name in found, found  # the WAL files exist while the server runs
    for name in ("admin-key.txt", "secret.key"):
        assert name in found, found
    assert any(name.endswith(".eml") for name in found), found
    wrong = {
        name: f"{mode:04o}"
        for name, mode in found.items()
        if mode != (0o700 if (data / name).is_dir() else 0o600)
    }
    assert wrong == {}, f"wider (or narrower) than 0700/0600: {wrong}"

    # Every byte the database keeps, WAL included: no private key, no webhook secret.
    stored = b"".join((data / name).read_bytes() for name in ("postline.db", "postline.db-wal"))
    assert b"PRIVATE KEY" not in stored
    assert secret.encode() not in stored
    with sqlite3.connect(f"file:{data / 'postline.db'}?mode=ro", uri=True) as conn:
        [dkim] = conn.execute("SELECT dkim_private_key FROM domains").fetchone()
        [sealed] = conn.execute("SELECT secret FROM webhooks").fetchone()
    assert dkim.startswith(PREFIX) and sealed.startswith(PREFIX)


async def test_an_upgrade_seals_the_secrets_an_older_version_stored_in_the_clear(
    install: Install, launch: Launcher
) -> None:
    install.data_dir.mkdir(mode=0o700)
    database = install.data_dir / "postline.db"
    await asyncio.to_thread(upgrade, f"sqlite+aiosqlite:///{database}", "0009")
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    with sqlite3.connect(database) as conn:
        conn.execute(
            "INSERT INTO domains (id, name, dkim_selector, dkim_private_key, verified, "
            "bounce_notifications, created_at, updated_at) "
            "VALUES ('dom_old', 'old.test', 'pl1', ?, 0, 1, '2026-01-01', '2026-01-01')",
            (pem,),
        )
        conn.execute(
            "INSERT INTO webhooks (id, url, events, secret, previous_secret, enabled, "
            "created_at, updated_at) VALUES ('wh_old', 'https://hooks.example/x', '[\"*\"]', "
            "'whsec_legacycurrent', 'whsec_legacyprevious', 1, '2026-01-01', '2026-01-01')"
        )
    assert "database is up to date" in install.cli("migrate").assert_ok().stdout
    with sqlite3.connect(database) as conn:
        values = [
            *conn.execute("SELECT dkim_private_key FROM domains").fetchone(),
            *conn.execute("SELECT secret, previous_secret FROM webhooks").fetchone(),
        ]
    assert all(v.startswith(PREFIX) for v in values), values
    assert b"whsec_legacy" not in database.read_bytes()
    # Idempotent: a second run changes nothing.
    install.cli("migrate").assert_ok()
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT dkim_private_key FROM domains").fetchone()[0] == values[0]

    # ... and what was sealed opens again: the DKIM record published is the old key's.
    server = await launch(install, "serve", "--no-sandbox")
    await server.ready()
    key = await server.admin_key()
    listed = await server.client.get("/v1/domains", headers=auth(key))
    assert listed.status_code == 200, listed.text
    [domain] = [d for d in listed.json()["data"] if d["name"] == "old.test"]
    dkim = [r["value"] for r in domain["dns_records"] if r["purpose"] == "dkim"]
    assert dkim == [dkim_dns_value(pem)], domain


async def test_a_key_that_does_not_open_the_secrets_stops_the_process_in_one_line(
    install: Install,
) -> None:
    install.cli("domains", "add", "example.test").assert_ok()
    assert (install.data_dir / "secret.key").exists()
    other = new_key()
    result = install.cli("migrate", env={"POSTLINE_SECRET_KEY": other})
    result.assert_one_line_failure(2, DECRYPT_ERROR, "POSTLINE_SECRET_KEY")
    # serve logs its migration first; its last word is the same line, and no traceback.
    result = install.cli("serve", env={"POSTLINE_SECRET_KEY": other})
    assert result.returncode == 2, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert result.stderr_lines[-1].startswith(f"postline: {DECRYPT_ERROR}"), result.describe()
    install.cli("domains", "list", env={"POSTLINE_SECRET_KEY": other}).assert_one_line_failure(
        2, DECRYPT_ERROR
    )
    # A key file replaced by another key: the same, naming the file.
    (install.data_dir / "secret.key").write_text(other + "\n")
    result = install.cli("migrate")
    result.assert_one_line_failure(2, DECRYPT_ERROR, str(install.data_dir / "secret.key"))
    # Not a key at all: refused as a setting, without echoing it.
    result = install.cli("migrate", env={"POSTLINE_SECRET_KEY": "hunter2"})
    line = result.assert_one_line_failure(2, "POSTLINE_SECRET_KEY")
    assert "hunter2" not in line


async def test_serve_warns_about_files_other_users_can_read_and_leaves_them(
    install: Install, launch: Launcher
) -> None:
    install.cli("migrate").assert_ok()
    data = install.data_dir
    data.chmod(0o755)
    (data / "postline.db").chmod(0o644)
    (data / "secret.key").chmod(0o640)
    server = await launch(install, "serve", "--no-sandbox")
    await server.ready()
    for path, mode in (
        (data, "0755"),
        (data / "postline.db", "0644"),
        (data / "secret.key", "0640"),
    ):
        await server.wait_for_line(
            rf"WARNING .*{path} is mode {mode}: other users can reach", stream="stderr"
        )
    assert not [line for line in server.stderr if "admin-key.txt is mode" in line]
    # Reported, not changed behind the operator's back.
    assert stat.S_IMODE(data.stat().st_mode) == 0o755
    assert stat.S_IMODE((data / "postline.db").stat().st_mode) == 0o644
    assert server.running, server.describe()
