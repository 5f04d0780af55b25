"""Identifiers: time-ordered, unique, fixed length; API keys and their hashes."""

from __future__ import annotations

import hashlib
import re
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from postline import ids
from postline.ids import KEY_PREFIX, hash_api_key, new_api_key, new_id

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
ID_RE = re.compile(rf"^[{ALPHABET}]{{26}}$")


def freeze_time(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    monkeypatch.setattr(ids, "time", types.SimpleNamespace(time=lambda: seconds))


def test_new_id_shape() -> None:
    value = new_id()
    assert len(value) == 26
    assert ID_RE.match(value)


@pytest.mark.parametrize("prefix", ["em_", "rcpt_", "evt_", "x"])
def test_new_id_with_prefix(prefix: str) -> None:
    value = new_id(prefix)
    assert value.startswith(prefix)
    assert len(value) == len(prefix) + 26
    assert ID_RE.match(value.removeprefix(prefix))


def test_alphabet_is_crockford_and_sorted() -> None:
    # Lexicographic order of ids equals numeric order only if the alphabet is ascending.
    assert "".join(sorted(ALPHABET)) == ALPHABET
    assert not set("ilou") & set(ALPHABET)


def test_new_id_is_time_ordered_across_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    freeze_time(monkeypatch, 1_700_000_000.000)
    earlier = [new_id("em_") for _ in range(200)]
    freeze_time(monkeypatch, 1_700_000_000.001)
    later = [new_id("em_") for _ in range(200)]
    assert max(earlier) < min(later)


@given(
    st.floats(min_value=0, max_value=8_000_000_000, allow_nan=False),
    st.integers(min_value=1, max_value=10**9),
)
def test_new_id_order_follows_time(start: float, delta_ms: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        freeze_time(monkeypatch, start)
        first = new_id()
        freeze_time(monkeypatch, start + delta_ms / 1000 + 0.001)
        second = new_id()
    assert first < second


def test_new_id_encodes_the_millisecond_timestamp(monkeypatch: pytest.MonkeyPatch) -> None:
    freeze_time(monkeypatch, 1_717_171_717.123)
    value = new_id()
    number = 0
    for char in value:
        number = number * 32 + ALPHABET.index(char)
    assert number >> 80 == 1_717_171_717_123


def test_new_id_same_millisecond_still_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    freeze_time(monkeypatch, 1_700_000_000.5)
    batch = [new_id() for _ in range(1000)]
    assert len(set(batch)) == len(batch)
    prefixes = {value[:10] for value in batch}
    assert len(prefixes) == 1  # 48 bits of time = the first 10 characters


def test_new_id_unique_in_a_batch_of_10k() -> None:
    batch = [new_id("em_") for _ in range(10_000)]
    assert len(set(batch)) == 10_000


def test_hash_api_key_is_stable_sha256_hex() -> None:
    key = "pl_example-key"
    digest = hash_api_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert digest == hash_api_key(key)
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    assert hash_api_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_hash_api_key_differs_per_key() -> None:
    assert hash_api_key("pl_a") != hash_api_key("pl_b")
    assert hash_api_key("pl_a") != "pl_a"


def test_new_api_key() -> None:
    key = new_api_key()
    assert KEY_PREFIX == "pl_"
    assert key.startswith("pl_")
    assert re.fullmatch(r"pl_[A-Za-z0-9_-]{43}", key)  # 32 random bytes, url-safe base64


def test_new_api_keys_are_unique() -> None:
    keys = {new_api_key() for _ in range(1000)}
    assert len(keys) == 1000


def _digits(value: int) -> str:
    """The encoding spelt out, digit by digit: what ``ids._encode`` must equal."""
    chars = []
    for _ in range(26):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@given(st.integers(min_value=0, max_value=2**130 - 1))
def test_the_encoding_is_26_crockford_digits_of_the_value(value: int) -> None:
    assert ids._encode(value) == _digits(value)


@pytest.mark.parametrize("value", [0, 1, 31, 32, 2**80 - 1, 2**128 - 1, 2**130 - 1])
def test_the_encoding_at_its_edges(value: int) -> None:
    assert ids._encode(value) == _digits(value)
