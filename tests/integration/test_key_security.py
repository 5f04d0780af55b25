"""API keys: stored only as hashes, compared in constant time, refused the moment they
are revoked, on every instance that shares the database."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, update
from typer.testing import CliRunner

from postline.cli import app as cli
from postline.keys import create_key
from postline.store.schema import api_keys
from postline.store.types import utcnow
from tests.harness.postline import TEST_SECRET_KEY, Factory, PostlineUnderTest


async def _new_key(pl: PostlineUnderTest, domain: str | None = "example.test") -> Any:
    body = {"name": "app", **({"domain": domain} if domain else {})}
    response = await pl.client.post("/v1/api-keys", json=body, headers=pl.auth())
    assert response.status_code == 201, response.text
    return response.json()


async def _status(pl: PostlineUnderTest, key: str, path: str = "/v1/emails") -> int:
    return (await pl.client.get(path, headers=pl.auth(key))).status_code


async def test_keys_are_stored_only_as_sha256_hashes(postline_factory: Factory) -> None:
    pl = await postline_factory(engine=False)
    created = await _new_key(pl)
    secret: str = created["key"]
    # A long random token: a hash of it needs no salt or slow KDF to resist guessing.
    assert secret.startswith("pl_") and len(secret) >= 3 + 43, secret
    async with pl.services.db.read() as conn:
        row = (await conn.execute(select(api_keys).where(api_keys.c.id == created["id"]))).one()
    stored = {k: str(v) for k, v in row._mapping.items() if v is not None}
    assert stored["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert not [k for k, v in stored.items() if secret in v], stored
    assert len(stored["prefix"]) <= 10 and secret.startswith(stored["prefix"])
    # Nor anywhere in the database files (SQLite file and its write-ahead log).
    data = Path(pl.settings.data_dir)
    files = [p for p in data.iterdir() if p.is_file() and ".db" in p.name]
    assert files, list(data.iterdir())
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    # The listing shows the prefix, never the key or its hash.
    listing = (await pl.client.get("/v1/api-keys", headers=pl.auth())).text
    assert secret not in listing and stored["key_hash"] not in listing


async def test_presented_keys_are_compared_with_compare_digest(
    postline_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row is found by the SHA-256 of the presented key (timing there reveals bits of a
    hash, not of a key), and the final check is ``hmac.compare_digest``, never ``==``."""
    pl = await postline_factory(engine=False)
    created = await create_key(pl.services.db, "app", "example.test")
    calls: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    # postline.keys calls hmac.compare_digest through the module: the spy sees each call.
    monkeypatch.setattr(hmac, "compare_digest", spy)
    principal = await pl.services.authenticator.authenticate(created.key)
    assert principal is not None and principal.domain_name == "example.test"
    digest = hashlib.sha256(created.key.encode()).hexdigest()
    assert calls == [(digest, digest)]
    # One character off (another character than the key's own: a key ending in "A" once
    # made this check present the key itself), or the stored hash presented as a key.
    for other in "AB":
        changed = created.key[:-1] + (other if created.key[-1] != other else "C")
        assert changed != created.key
        assert await pl.services.authenticator.authenticate(changed) is None
    assert await pl.services.authenticator.authenticate(digest) is None


async def test_keys_presented_together_are_read_in_one_statement_each_with_its_own_answer(
    postline_factory: Factory, database_url: str
) -> None:
    """Concurrent requests share a key lookup (``keys.Authenticator``): one statement
    for all of them, yet each caller hears only its own key's answer, and a key revoked
    before the lookup is refused."""
    pl = await postline_factory(engine=False, database_url=database_url)
    db = pl.services.db
    scoped = await create_key(db, "scoped", "example.test")
    admin = await create_key(db, "admin")
    revoked = await create_key(db, "revoked", "example.test")
    async with db.write() as conn:
        await conn.execute(
            update(api_keys).where(api_keys.c.id == revoked.id).values(revoked_at=utcnow())
        )
    # Used just now: no last_used_at write to count among the statements.
    for created in (scoped, admin):
        assert await pl.services.authenticator.authenticate(created.key) is not None
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "api_keys" in statement:
            statements.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        presented = [scoped.key, admin.key, revoked.key, "pl_unknown", scoped.key] * 4
        found = await asyncio.gather(
            *(pl.services.authenticator.authenticate(key) for key in presented)
        )
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert len(statements) == 1, statements
    expected = {scoped.key: "scoped", admin.key: "admin", revoked.key: None, "pl_unknown": None}
    assert [p.name if p is not None else None for p in found] == [
        expected[key] for key in presented
    ]
    assert all(p.domain_name == "example.test" for p in found[::5] if p is not None)


async def test_requests_sharing_a_lookup_record_the_keys_use_once(
    postline_factory: Factory, database_url: str
) -> None:
    """The callers of one shared lookup all read the same stale ``last_used_at``: one of
    them records the use, the others do not queue the same write behind it."""
    pl = await postline_factory(engine=False, database_url=database_url)
    db = pl.services.db
    created = await create_key(db, "app", "example.test")
    writes: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE API_KEYS"):
            writes.append(statement)

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        found = await asyncio.gather(
            *(pl.services.authenticator.authenticate(created.key) for _ in range(10))
        )
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", seen)
    assert all(principal is not None for principal in found)
    assert len(writes) == 1, writes
    async with db.read() as conn:
        used = (
            await conn.execute(select(api_keys.c.last_used_at).where(api_keys.c.id == created.id))
        ).scalar_one()
    assert used is not None


def _cli_revoke(pl: PostlineUnderTest, key_id: str) -> str:
    env = {
        "POSTLINE_DATA_DIR": str(pl.settings.data_dir),
        "POSTLINE_DATABASE_URL": pl.settings.database_url,
        "POSTLINE_SECRET_KEY": TEST_SECRET_KEY,
    }
    result = CliRunner().invoke(cli, ["keys", "revoke", key_id], env=env)
    assert result.exit_code == 0, result.output
    return result.output


async def test_a_revoked_key_is_refused_at_once_on_every_instance(
    postline_factory: Factory,
) -> None:
    first = await postline_factory(engine=False)
    # A second API process of the same installation: same database, nothing else shared.
    second = await postline_factory(
        engine=False, domains=(), database_url=first.settings.database_url
    )
    by_api, by_cli = await _new_key(first), await _new_key(first)
    for key in (by_api["key"], by_cli["key"]):
        for instance in (first, second):  # warm whatever either instance might remember
            assert await _status(instance, key) == 200
            assert await _status(instance, key) == 200

    revoked = await first.client.delete(f"/v1/api-keys/{by_api['id']}", headers=first.auth())
    assert revoked.status_code == 204, revoked.text
    # The very next request, on either instance: no grace period, no cache window.
    assert await _status(second, by_api["key"]) == 401
    assert await _status(first, by_api["key"]) == 401

    output = await asyncio.to_thread(_cli_revoke, first, by_cli["id"])
    assert by_cli["id"] in output
    assert await _status(first, by_cli["key"]) == 401
    assert await _status(second, by_cli["key"]) == 401
    # Other keys are untouched.
    assert await _status(second, first.admin_key, "/v1/api-keys") == 200


async def test_deleting_a_domain_ends_its_keys_and_never_widens_them(
    postline_factory: Factory,
) -> None:
    """A scoped key whose domain is gone must not turn into an unscoped (admin) key."""
    pl = await postline_factory(engine=False)
    created = await pl.client.post("/v1/domains", json={"name": "gone.test"}, headers=pl.auth())
    assert created.status_code == 201, created.text
    scoped = await _new_key(pl, "gone.test")
    assert await _status(pl, scoped["key"]) == 200
    assert await _status(pl, scoped["key"], "/v1/api-keys") == 403
    deleted = await pl.client.delete(f"/v1/domains/{created.json()['id']}", headers=pl.auth())
    assert deleted.status_code == 204, deleted.text
    assert await _status(pl, scoped["key"]) == 401
    assert await _status(pl, scoped["key"], "/v1/api-keys") == 401


async def test_a_key_records_when_it_was_last_used_once_a_minute_at_most(
    postline_factory: Factory,
) -> None:
    pl = await postline_factory(engine=False)
    created = await _new_key(pl)

    async def listed() -> dict[str, Any]:
        response = await pl.client.get("/v1/api-keys", headers=pl.auth())
        assert response.status_code == 200, response.text
        (row,) = [k for k in response.json()["data"] if k["id"] == created["id"]]
        return dict(row)

    assert (await listed())["last_used_at"] is None  # created, never presented
    assert await _status(pl, created["key"]) == 200
    first = (await listed())["last_used_at"]
    assert first is not None
    used_at = datetime.fromisoformat(first.replace("Z", "+00:00"))
    assert abs(utcnow() - used_at) < timedelta(minutes=1), first
    # Within the minute, another request writes nothing more.
    assert await _status(pl, created["key"]) == 200
    assert (await listed())["last_used_at"] == first
    # A minute later (as the database sees it), the next request records again.
    async with pl.services.db.write() as conn:
        earlier = used_at - timedelta(minutes=2)
        await conn.execute(
            update(api_keys).where(api_keys.c.id == created["id"]).values(last_used_at=earlier)
        )
    assert await _status(pl, created["key"]) == 200
    again = datetime.fromisoformat((await listed())["last_used_at"].replace("Z", "+00:00"))
    assert again > earlier + timedelta(minutes=1), again
