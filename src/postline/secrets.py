"""The secret key: where it comes from, and the start-up step that checks it.

``POSTLINE_SECRET_KEY`` when set (every host sharing a PostgreSQL database must set
the same one), else ``<data dir>/secret.key``, created 0600 on first run. It seals
DKIM private keys and webhook secrets in the database (postline.store.sealing); it
is not in the database, so back it up with the database, and separately.

After migrating, every ``postline`` process checks the key against the database and
seals any secret still stored in the clear: one write transaction, idempotent,
quick when there is nothing to do. A key that does not open what is stored stops
the process with one line (exit 2) instead of failing at the first signature.
"""

from __future__ import annotations

import logging

from postline.config import ConfigError, Settings
from postline.private_files import write_once
from postline.store import secrets as secret_store
from postline.store.db import Database
from postline.store.sealing import SecretBox, SecretKeyError, new_key

log = logging.getLogger("postline.secrets")


def load_box(settings: Settings) -> SecretBox:
    """The box for the configured key, creating the key file on first run."""
    key = settings.secret_key.get_secret_value()
    if key:
        return SecretBox(key, "POSTLINE_SECRET_KEY")
    path = settings.secret_key_file
    where = f"POSTLINE_SECRET_KEY or {path}"
    try:
        text = path.read_text() if path.exists() else write_once(path, new_key() + "\n")
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read or create the secret key ({exc.strerror})"
        ) from None
    try:
        return SecretBox(text, where)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


async def prepare_secrets(db: Database) -> int:
    """Check the key against the database and seal plaintext secrets; return how
    many were sealed. ConfigError (one line) when the key does not fit."""
    box = db.secrets
    if box is None:
        raise ConfigError("no secret key")
    try:
        async with db.write() as conn:
            await secret_store.verify_key(conn, box)
            sealed = await secret_store.seal_plaintext(conn, box)
    except SecretKeyError as exc:
        raise ConfigError(str(exc)) from None
    if sealed:
        log.info("sealed %d secrets stored in the clear by an older version", sealed)
    return sealed


def shared_database_without_key(settings: Settings) -> bool:
    """PostgreSQL without POSTLINE_SECRET_KEY: a key file per host would differ."""
    return not settings.is_sqlite and not settings.secret_key.get_secret_value()
