"""The VERP return path: made with a token, checked in constant time, forged ones refused."""

from __future__ import annotations

from postline.ids import new_id
from postline.inbound.returnpath import ReturnPaths
from postline.store.sealing import SecretBox, new_key


def _paths() -> ReturnPaths:
    return ReturnPaths.of(SecretBox(new_key(), "test"))


def test_a_return_path_checks_and_names_its_email() -> None:
    paths = _paths()
    email_id = new_id("em_")
    address = paths.address(email_id, "example.test")
    assert address.startswith(f"bounces+{email_id}-")
    assert address.endswith("@bounces.example.test")
    checked = paths.check(address)
    assert checked is not None
    assert (checked.email_id, checked.domain) == (email_id, "example.test")
    # Servers on the way may change the case of the whole address, or bracket it.
    assert paths.check(f"<{address.upper()}>") == checked


def test_a_forged_or_moved_token_does_not_check() -> None:
    paths = _paths()
    email_id = new_id("em_")
    address = paths.address(email_id, "example.test")
    local, _, _ = address.partition("@")
    other_id = new_id("em_")
    assert paths.check(address.replace(email_id, other_id)) is None  # another email's id
    assert paths.check(f"{local}@bounces.other.test") is None  # another domain
    assert (
        paths.check(local[:-1] + ("a" if local[-1] != "a" else "b") + "@bounces.example.test")
        is None
    )
    assert paths.check(f"bounces+{email_id}@bounces.example.test") is None  # no token
    # A token of non-ASCII characters (an SMTPUTF8 RCPT) is a no, not an error.
    assert paths.check(f"bounces+{email_id}-\u00e9\u00e9@bounces.example.test") is None
    assert paths.looks_like(f"bounces+{email_id}-x@bounces.example.test")
    assert not paths.looks_like("postmaster@example.test")


def test_another_key_does_not_check_it() -> None:
    address = _paths().address(new_id("em_"), "example.test")
    assert _paths().check(address) is None


def test_without_a_key_nothing_checks() -> None:
    paths = ReturnPaths(None)
    email_id = new_id("em_")
    assert paths.address(email_id, "example.test") == f"bounces+{email_id}@bounces.example.test"
    assert paths.check(paths.address(email_id, "example.test")) is None
