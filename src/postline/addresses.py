"""Addresses as the JSON of the API and of webhook payloads shows them."""

from __future__ import annotations

import re

# RFC 5322 specials (and leading or trailing space) make a display name need quotes;
# inside them, a backslash and a double quote are escaped (as email.utils.formataddr,
# which would RFC 2047-encode a non-ASCII name: JSON carries Unicode as it is).
_NEEDS_QUOTES = re.compile(r'[][\\()<>@,:;".]|^\s|\s$')
_ESCAPE = re.compile(r'[\\"]')


def quoted_from(from_header: str, from_address: str) -> str:
    """``"Name" <address>`` with the display name quoted when it has to be, else the
    bare address.

    The send log keeps ``Name <address>`` as given, so a display name
    ``Support <ceo@victim.test>`` read like a second address in ``from``. The address
    is the one Postline checked, taken from its own column; the name is what precedes
    it, unquoted as ``email.utils.parseaddr`` gave it (rows written before this change
    are shown quoted too).
    """
    suffix = f" <{from_address}>"
    if not from_header.endswith(suffix):
        return from_address
    name = from_header[: -len(suffix)]
    if _NEEDS_QUOTES.search(name):
        name = '"' + _ESCAPE.sub(r"\\\g<0>", name) + '"'
    return f"{name}{suffix}"
