"""MTA-STS (RFC 8461): the TXT record, the policy file, and MX pattern matching.

Pure parsing: nothing here does I/O. A policy that does not parse is no policy
(RFC 8461 3.2): the caller keeps whatever it had before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

#: RFC 8461 3.2: max_age is at most 31557600 seconds (a year).
MAX_AGE_LIMIT = 31_557_600
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


class StsMode(StrEnum):
    ENFORCE = "enforce"  # deliver only to matching MX hosts with a verified certificate
    TESTING = "testing"  # deliver as before; report failures (TLSRPT)
    NONE = "none"  # the domain withdrew its policy


class StsError(ValueError):
    """A TXT record or a policy file that does not follow RFC 8461."""


@dataclass(frozen=True)
class StsPolicy:
    """One domain's policy, as fetched (``policy_id`` is the TXT id it was fetched for)."""

    policy_id: str
    mode: StsMode
    patterns: tuple[str, ...]
    max_age: int

    @property
    def enforcing(self) -> bool:
        return self.mode is StsMode.ENFORCE

    @property
    def testing(self) -> bool:
        return self.mode is StsMode.TESTING

    def allows(self, mx: str) -> bool:
        return any(mx_matches(pattern, mx) for pattern in self.patterns)


def parse_txt(texts: list[str]) -> str | None:
    """The policy id of the one ``v=STSv1`` TXT record; None when there is not exactly one.

    RFC 8461 3.1: records not starting with ``v=STSv1;`` are ignored; more than
    one STS record means no policy.
    """
    ids: list[str | None] = []
    for text in texts:
        fields = [f.strip() for f in text.split(";")]
        if not fields or fields[0].replace(" ", "") != "v=STSv1":
            continue
        found = None
        for item in fields[1:]:
            key, _, value = item.partition("=")
            if key.strip() == "id" and _ID.match(value.strip()):
                found = value.strip()
        ids.append(found)
    if len(ids) != 1:
        return None
    return ids[0]


def parse_policy(text: str, policy_id: str) -> StsPolicy:
    """The policy file's fields (RFC 8461 3.2); raises :class:`StsError` if it is not one."""
    values: dict[str, str] = {}
    patterns: list[str] = []
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if not line:
            continue
        key, colon, value = line.partition(":")
        if not colon:
            raise StsError(f"not a 'key: value' line: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            patterns.append(value.lower().rstrip("."))
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise StsError("version is not STSv1")
    try:
        mode = StsMode(values.get("mode", ""))
    except ValueError:
        raise StsError(f"unknown mode {values.get('mode')!r}") from None
    age = values.get("max_age", "")
    if not (age.isascii() and age.isdigit() and len(age) <= 10):
        raise StsError(f"max_age {age!r} is not a number of seconds")
    if mode is not StsMode.NONE and not patterns:
        raise StsError(f"mode {mode} without any mx pattern")
    return StsPolicy(policy_id, mode, tuple(patterns), min(int(age), MAX_AGE_LIMIT))


def mx_matches(pattern: str, mx: str) -> bool:
    """RFC 8461 4.1: a name matches itself; ``*.example.com`` matches one label more."""
    host = mx.lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if pattern.startswith("*."):
        head, dot, rest = host.partition(".")
        return bool(head) and bool(dot) and rest == pattern[2:]
    return host == pattern
