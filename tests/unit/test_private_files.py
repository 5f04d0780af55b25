"""Sealing and the data dir's modes, without a database."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from postline.private_files import make_private_dir, permission_warnings, too_open, write_once
from postline.store.sealing import PREFIX, SecretBox, SecretKeyError, check_key, new_key


def test_a_sealed_value_opens_with_its_key_only() -> None:
    box = SecretBox(new_key(), "here")
    sealed = box.seal("whsec_abc")
    assert sealed.startswith(PREFIX) and "whsec_abc" not in sealed
    assert box.open(sealed) == "whsec_abc"
    assert box.seal(sealed) == sealed  # never sealed twice
    assert box.open("whsec_plain") == "whsec_plain"  # a row from before sealing
    with pytest.raises(SecretKeyError, match=r"^the secret key does not decrypt .* \(here\)$"):
        SecretBox(new_key(), "here").open(sealed)
    with pytest.raises(SecretKeyError):
        box.open(sealed[:-4] + "AAAA")  # tampered


@pytest.mark.parametrize(
    "text",
    ["", "short", "a" * 44, new_key()[:-4], "é" * 44],
    ids=["empty", "short", "44-a", "truncated-key", "non-ascii"],
)
def test_only_32_bytes_of_urlsafe_base64_are_a_key(text: str) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        check_key(text)


def test_dirs_are_made_0700_and_files_0600_under_any_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        make_private_dir(tmp_path / "data" / "spool")
        write_once(tmp_path / "data" / "key", "k\n")
    finally:
        os.umask(previous)
    assert (tmp_path / "data" / "spool").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data" / "key").stat().st_mode & 0o777 == 0o600


def test_write_once_keeps_the_first_content_when_processes_race(tmp_path: Path) -> None:
    path = tmp_path / "secret.key"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: write_once(path, f"key {i}\n"), range(32)))
    assert len(set(results)) == 1 and results[0] == path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]  # no temporary left


def test_wider_modes_are_reported_one_line_per_path(tmp_path: Path) -> None:
    data = tmp_path / "data"
    spool = data / "spool"
    (spool / "ab").mkdir(parents=True)
    for path in (data, spool):
        path.chmod(0o700)
    (spool / "ab").chmod(0o755)
    (data / "postline.db").write_text("")
    (data / "postline.db").chmod(0o644)
    (data / "secret.key").write_text("")
    (data / "secret.key").chmod(0o600)
    elsewhere = tmp_path / "other.db"
    elsewhere.write_text("")
    elsewhere.chmod(0o604)
    lines = permission_warnings(data, [elsewhere, tmp_path / "missing-wal"], spool)
    assert lines == [
        f"{data / 'postline.db'} is mode 0644: other users can reach what it holds; "
        f"run chmod 600 {data / 'postline.db'}",
        f"{elsewhere} is mode 0604: other users can reach what it holds; run chmod 600 {elsewhere}",
        f"1 entries under the spool {spool} are readable by other users "
        f"(first: {spool / 'ab'}); run chmod -R go-rwx {spool}",
    ]
    assert too_open(data / "secret.key") is None
