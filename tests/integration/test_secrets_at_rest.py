"""The secret key against the store, on SQLite and PostgreSQL: what is written is
sealed, what is read is plaintext, and a host with another key is stopped at start."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import select

from postline.app import Services
from postline.config import ConfigError, load_settings, normalize_database_url
from postline.domains import create_domain
from postline.secrets import load_box, prepare_secrets
from postline.store import domains as domain_store
from postline.store import webhooks as webhook_store
from postline.store.db import Database
from postline.store.migrate import upgrade
from postline.store.schema import domains, webhooks
from postline.store.sealing import PREFIX, SecretBox, SecretKeyError, new_key
from postline.store.types import utcnow


@pytest_asyncio.fixture
async def url(database_url: str) -> AsyncIterator[str]:
    normalized = normalize_database_url(database_url)
    await asyncio.to_thread(upgrade, normalized)
    yield normalized


async def test_the_store_seals_what_it_writes_and_opens_what_it_reads(url: str) -> None:
    db = Database(url, SecretBox(new_key(), "test"))
    try:
        await prepare_secrets(db)
        domain = await create_domain(db, "sealed.test")
        assert domain.dkim_private_key and "BEGIN PRIVATE KEY" in domain.dkim_private_key
        now = utcnow()
        async with db.write() as conn:
            await webhook_store.insert_webhook(
                conn,
                {
                    "id": "wh_1",
                    "url": "https://hooks.example/x",
                    "events": ["*"],
                    "secret": "whsec_first",
                    "enabled": True,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            await webhook_store.update_webhook(
                conn, "wh_1", {"secret": "whsec_second", "previous_secret": "whsec_first"}
            )
        async with db.read() as conn:
            raw_key = (await conn.execute(select(domains.c.dkim_private_key))).scalar_one()
            raw = (await conn.execute(select(webhooks.c.secret, webhooks.c.previous_secret))).one()
            hook = await webhook_store.get_webhook(conn, "wh_1")
            again = await domain_store.get_domain_by_name(conn, "sealed.test")
        assert raw_key.startswith(PREFIX) and "PRIVATE KEY" not in raw_key
        assert all(v.startswith(PREFIX) and "whsec_" not in v for v in raw), raw
        assert hook is not None and (hook.secret, hook.previous_secret) == (
            "whsec_second",
            "whsec_first",
        )
        assert again is not None and again.dkim_private_key == domain.dkim_private_key
    finally:
        await db.close()


async def test_a_handle_without_a_key_writes_no_secret(url: str) -> None:
    db = Database(url)
    try:
        with pytest.raises(SecretKeyError, match="no secret key"):
            await create_domain(db, "clear.test")
        async with db.read() as conn:
            assert await domain_store.list_domains(conn) == []
    finally:
        await db.close()


async def test_a_second_host_with_another_key_is_stopped_at_start(url: str) -> None:
    first = Database(url, SecretBox(new_key(), "first host"))
    second = Database(url, SecretBox(new_key(), "POSTLINE_SECRET_KEY"))
    try:
        await prepare_secrets(first)
        # Before it has sealed anything of its own: the check row alone stops it.
        with pytest.raises(ConfigError) as excinfo:
            await prepare_secrets(second)
        assert str(excinfo.value) == (
            "the secret key does not decrypt the stored secrets (POSTLINE_SECRET_KEY)"
        )
        await create_domain(first, "first.test")
        async with second.read() as conn:
            with pytest.raises(SecretKeyError):
                await domain_store.get_domain_by_name(conn, "first.test")
    finally:
        await first.close()
        await second.close()


def test_the_key_file_is_made_once_0600_and_reused(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    box = load_box(settings)
    path = settings.secret_key_file
    assert path.stat().st_mode & 0o777 == 0o600
    sealed = box.seal("x")
    assert load_box(settings).open(sealed) == "x"  # the same key, read back
    assert box.where == f"POSTLINE_SECRET_KEY or {path}"
    # POSTLINE_SECRET_KEY wins over the file.
    other = load_box(load_settings(data_dir=tmp_path, secret_key=new_key()))
    with pytest.raises(SecretKeyError):
        other.open(sealed)


def test_a_broken_key_file_is_one_line(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    settings.secret_key_file.write_text("not a key\n")
    with pytest.raises(ConfigError, match=r"secret\.key: expected 32 bytes"):
        load_box(settings)


async def test_services_built_from_settings_seal_with_the_settings_key(tmp_path: Path) -> None:
    key = new_key()
    settings = load_settings(data_dir=tmp_path, secret_key=key)
    await asyncio.to_thread(upgrade, settings.database_url)
    services = Services.build(settings)
    try:
        domain = await create_domain(services.db, "built.test")
        async with services.db.read() as conn:
            raw = (await conn.execute(select(domains.c.dkim_private_key))).scalar_one()
        assert SecretBox(key, "test").open(raw) == domain.dkim_private_key
        assert not settings.secret_key_file.exists()
    finally:
        await services.close()
