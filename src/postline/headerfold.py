"""Header fields folded exactly as the ``email`` package folds them for ``policy.SMTP``.

The header registry parses every value into a token tree and folds it back; for a
5 KB message that was most of the time spent building it, and 6 ms for a list of 60
recipients. The values Postline writes are nearly always of a few simple shapes:
plain text, bare addresses, one display name. For those this module runs the same
folding algorithm (``email._header_value_parser._refold_parse_tree`` and
``_fold_as_ew``, Python 3.11 and 3.12) over the flat list of words the parser
would have produced, and gives the same bytes, RFC 2047 encoded words included.
Any other value, and any value whose folding would take one of that algorithm's
rarer turns, goes to the ``email`` package itself (:func:`stdlib_fold`), so the
output never differs; ``tests/unit/test_message_fast.py`` holds the two to that.

A Python whose ``email`` package folds encoded words differently (3.13 rewrote
part of it) is noticed once, on import, by folding a few probes both ways
(:data:`ENCODED_WORDS_AGREE`); there, values that need encoded words go to the
``email`` package.
"""

from __future__ import annotations

import base64
import re
from email import policy
from email.headerregistry import Address
from string import ascii_letters, digits

__all__ = [
    "ENCODED_WORDS_AGREE",
    "MAX_LINE",
    "fold_addresses",
    "fold_unstructured",
    "protected_address_field",
    "protected_unstructured_field",
    "stdlib_fold",
]

MAX_LINE = 78  # policy.SMTP.max_line_length
CRLF = "\r\n"
_WSP = " \t"
_EW_CHROME = len("=?utf-8?q??=")

_Q_SAFE = frozenset(b"-!*+/" + ascii_letters.encode() + digits.encode())
_Q_BYTE = tuple(
    "_" if byte == 0x20 else chr(byte) if byte in _Q_SAFE else f"={byte:02X}" for byte in range(256)
)

_WORDS = re.compile(r"([ \t]+)")
# Values the flat word model does not describe: encoded words to decode, or white
# space other than SP and TAB (the parser's str.lstrip() would take it as folding
# white space, and line breaks are refused by the email package).
_NOT_FLAT = re.compile(r"=\?|\?=|[^\S \t]")
# RFC 5322 dot-atom addresses, the only ones folded here (quoted local parts,
# domain literals and the like go to the email package).
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM_ADDRESS = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# Display names folded here: words of anything but RFC 5322 specials, single spaces.
_SPECIALS = frozenset(r"()<>@,:;.\"[]")  # email._header_value_parser.SPECIALS


class _Unsupported(Exception):
    """The value takes a turn of the folding algorithm not reproduced here."""


def stdlib_fold(name: str, value: object) -> str:
    """What ``msg[name] = value`` and ``BytesGenerator`` write for it under policy.SMTP."""
    header = policy.SMTP.header_store_parse(name, value)[1]
    return str(header.fold(policy=policy.SMTP))


def encoded_word(text: str) -> str:
    """``email._encoded_words.encode(text, "utf-8")``: Q unless B is 5 or more shorter."""
    data = text.encode("utf-8")
    q = "".join([_Q_BYTE[byte] for byte in data])
    if len(q) - (len(data) + 2) // 3 * 4 < 5:
        return f"=?utf-8?q?{q}?="
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


class _Lines:
    """The folding state of ``_refold_parse_tree``: lines so far and the last encoded word.

    ``ew_text`` is what the email package would get back by decoding the current
    line from ``last_ew`` on (it re-parses that slice to merge neighbouring encoded
    words); kept here as it is written instead.
    """

    __slots__ = ("ew_text", "last_ew", "lines")

    def __init__(self, label: str) -> None:
        self.lines = [label]
        self.last_ew: int | None = None
        self.ew_text = ""

    def room(self) -> int:
        return MAX_LINE - len(self.lines[-1])

    def steal_trailing_wsp(self) -> str:
        line = self.lines[-1]
        if line and line[-1] in _WSP:
            self.lines[-1] = line[:-1]
            return line[-1]
        return ""

    def append(self, text: str) -> None:
        self.lines[-1] += text
        if self.last_ew is not None:
            self.ew_text += text

    def fold_terminal(self, text: str, *, starts_with_fws: bool) -> None:
        """One word or run of white space, as the loop of ``_refold_parse_tree`` takes it."""
        if not text.isascii():
            self.fold_as_ew(text)
        elif len(text) <= self.room():
            self.append(text)
        elif len(text) + 1 <= MAX_LINE and (
            (newline := self.steal_trailing_wsp()) or starts_with_fws
        ):
            self.lines.append(newline + text)
            self.last_ew = None
        else:  # too long for any line: the email package encodes it to split it
            self.fold_as_ew(text)

    def fold_as_ew(self, to_encode: str) -> None:
        """``_fold_as_ew`` for a terminal (combining with the last encoded word is allowed)."""
        lines = self.lines
        last_ew = self.last_ew
        if last_ew is not None:
            to_encode = self.ew_text + to_encode
            lines[-1] = lines[-1][:last_ew]
        leading = ""
        if to_encode[0] in _WSP:
            leading, to_encode = to_encode[0], to_encode[1:]
            if len(lines[-1]) == MAX_LINE:
                if last_ew is not None:
                    raise _Unsupported("last_ew would point into another line")
                lines.append(self.steal_trailing_wsp())
            lines[-1] += leading
        if not to_encode:
            raise _Unsupported("white space alone")
        trailing = ""
        if to_encode[-1] in _WSP:
            trailing, to_encode = to_encode[-1], to_encode[:-1]
        if last_ew is None:
            new_last_ew = len(lines[-1])
            text = ""
        else:
            new_last_ew = last_ew
            text = leading
        while to_encode:
            remaining = MAX_LINE - len(lines[-1])
            text_space = remaining - _EW_CHROME
            if text_space <= 0:
                raise _Unsupported("last_ew would point into another line")
            word = to_encode[:text_space]
            ew = encoded_word(word)
            while len(ew) > remaining:
                word = word[:-1]
                ew = encoded_word(word)
            lines[-1] += ew
            text += word
            to_encode = to_encode[len(word) :]
            if to_encode:
                lines.append(" ")
                new_last_ew = 1
                text = ""
        lines[-1] += trailing
        self.last_ew = new_last_ew
        self.ew_text = text + trailing

    def result(self) -> str:
        return CRLF.join(self.lines) + CRLF


def _fast_unstructured(name: str, value: str) -> str | None:
    if len(name) > MAX_LINE - 2 or _NOT_FLAT.search(value):
        return None
    if not value:
        return name + ":" + CRLF
    state = _Lines(name + ": ")
    if value.isascii():
        if len(value) <= state.room():
            return f"{name}: {value}{CRLF}"
        if len(value) + 1 <= MAX_LINE:
            return f"{name}:{CRLF} {value}{CRLF}"
    elif not ENCODED_WORDS_AGREE:
        return None
    else:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: the email package's own error
            return None
    return _fold_words(state, value)


def _fold_words(state: _Lines, value: str) -> str | None:
    """The words and white space runs of ``value`` after the header's label, folded."""
    try:
        for word in _WORDS.split(value):
            if word:
                state.fold_terminal(word, starts_with_fws=word[0] in _WSP)
    except _Unsupported:
        return None
    return state.result()


def fold_unstructured(name: str, value: str) -> str:
    """A field of free text (Subject, X-*): ``Name: value`` folded, CRLF-terminated."""
    return (
        _fast_unstructured(name, value)
        or protected_unstructured_field(name, value)
        or stdlib_fold(name, value)
    )


def _display_name_line(display_name: str, address: str) -> str | None:
    """``display-name <address>`` folded on its own from column 0, if it takes one line.

    That is what the email package makes of a name-addr before it places it (on the
    header's first line if it fits there, else on the next).
    """
    words = display_name.split(" ")
    if (
        not all(words)
        or _NOT_FLAT.search(display_name)
        or not _SPECIALS.isdisjoint(display_name)
        or "\t" in display_name
    ):
        return None
    try:
        display_name.encode("utf-8")
    except UnicodeEncodeError:
        return None
    state = _Lines("")
    try:
        for word in words:  # each an atom: the word, then one space (CFWS)
            if word.isascii():
                if len(word) + 1 > state.room():
                    return None
                state.append(word + " ")
            else:
                state.fold_as_ew(word)
                if len(state.lines) > 1 or state.room() < 1:
                    return None
                state.append(" ")
    except _Unsupported:
        return None
    angle = f"<{address}>"
    if len(state.lines) > 1 or len(angle) > state.room():
        return None
    return state.lines[0] + angle


def _address_text(display_name: str, address: str) -> str:
    """``str(headerregistry.Address(...))`` for an unquoted dot-atom address."""
    if not display_name:
        return address
    if not _SPECIALS.isdisjoint(display_name):
        escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
        display_name = f'"{escaped}"'
    return f"{display_name} <{address}>"


def _fast_addresses(name: str, mailboxes: list[tuple[str, str]]) -> str | None:
    if not mailboxes or len(name) > MAX_LINE - 2:
        return None
    for display_name, address in mailboxes:
        if _NOT_FLAT.search(display_name):
            return None
        if not address.isascii() or not _DOT_ATOM_ADDRESS.fullmatch(address) or "=?" in address:
            return None
    if len(mailboxes) == 1 and mailboxes[0][0] and not mailboxes[0][0].isascii():
        if not ENCODED_WORDS_AGREE:
            return None
        line = _display_name_line(*mailboxes[0])
        if line is None:
            return None
        if len(line) > MAX_LINE - len(name) - 2:
            return f"{name}:{CRLF} {line}{CRLF}"
        return f"{name}: {line}{CRLF}"
    texts = [_address_text(display, address) for display, address in mailboxes]
    if not all(text.isascii() for text in texts):
        return None
    whole = ", ".join(texts)
    if len(whole) <= MAX_LINE - len(name) - 2:
        return f"{name}: {whole}{CRLF}"
    if len(whole) + 1 <= MAX_LINE:
        return f"{name}:{CRLF} {whole}{CRLF}"
    if any(display for display, _ in mailboxes):
        return None  # names, quoted strings and the like split at more places
    lines = [f"{name}: "]
    for index, text in enumerate(texts):
        if index:
            lines[-1] += ","  # even past the limit: the email package cannot wrap it
            text = " " + text
        if len(text) <= MAX_LINE - len(lines[-1]):
            lines[-1] += text
        elif len(text) + 1 <= MAX_LINE:
            if not index:  # the first address leaves the header's own space behind
                lines[-1] = lines[-1][:-1]
                text = " " + text
            lines.append(text)
        else:
            return None
    return CRLF.join(lines) + CRLF


_EW_MAX = 75  # RFC 2047 section 2: an encoded word is at most 75 characters


def _risky_name(display_name: str) -> bool:
    """A name the email package quotes (specials) or decodes (encoded-word lookalikes).

    Python 3.11 to 3.13 drop the quotes of a quoted-string they fold, and write the
    decoded text of an encoded word raw: either way a name such as ``"Acme, <ceo@bank>"``
    came out as more than one address, one of them chosen by the client (a spoof).
    """
    return "=?" in display_name or not _SPECIALS.isdisjoint(display_name)


def _encoded_words(text: str, first_max: int = _EW_MAX) -> list[str]:
    """``text`` as encoded words of at most 75 characters (the first at most
    ``first_max``), split between characters."""
    words: list[str] = []
    chunk = ""
    for char in text:
        limit = first_max if not words else _EW_MAX
        if chunk and len(encoded_word(chunk + char)) > limit:
            words.append(encoded_word(chunk))
            chunk = ""
        chunk += char
    words.append(encoded_word(chunk))
    return words


def _name_tokens(display_name: str) -> list[str]:
    """The display name as words to join with single spaces (each space may become FWS).

    An ASCII name is one quoted-string: RFC 5322 allows folding white space inside it
    and unfolding gives the name back exactly. Other names (and encoded-word
    lookalikes) are RFC 2047 encoded words, which no reader parses inside.
    """
    if display_name.isascii() and "=?" not in display_name:
        escaped = display_name.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'.split(" ")
    return _encoded_words(display_name)


def protected_address_field(name: str, mailboxes: list[tuple[str, str]]) -> str | None:
    """The field written so that no display name can change meaning, or None if no risk.

    A field whose names all go unquoted rules out the email package's bug; so does an
    ASCII one that fits on one line (both builders write it unchanged). Otherwise the
    field is written here, folded only at spaces: inside a quoted-string, between
    encoded words, or between mailboxes.
    """
    if not any(display and _risky_name(display) for display, _ in mailboxes):
        return None
    addresses: list[Address] = []
    for display_name, text in mailboxes:
        local, _, domain = text.rpartition("@")
        addresses.append(Address(display_name=display_name, username=local, domain=domain))
    one_line = f"{name}: " + ", ".join(str(address) for address in addresses)
    if one_line.isascii() and "=?" not in one_line and len(one_line) <= MAX_LINE:
        return None
    tokens: list[str] = []
    for index, address in enumerate(addresses):
        if address.display_name:
            tokens += _name_tokens(address.display_name)
            tokens.append(f"<{address.addr_spec}>")
        else:
            tokens.append(address.addr_spec)
        if index < len(addresses) - 1:
            tokens[-1] += ","
    # The first token stays on the label's line (as the raw field of the fallback
    # builder is written); an empty token is a second space in a row, kept on its
    # line so that no line is white space alone.
    lines = [f"{name}: {tokens[0]}"]
    for token in tokens[1:]:
        if not token or len(lines[-1]) + 1 + len(token) <= MAX_LINE:
            lines[-1] += " " + token
        else:
            lines.append(" " + token)
    return CRLF.join(lines) + CRLF


def protected_unstructured_field(name: str, value: str) -> str | None:
    """The field as RFC 2047 encoded words if the email package would change its text.

    The email package decodes whatever in a free-text value reads as an encoded word,
    and drops a malformed one: ``=??Q??= and =?utf-8?q?hi?=`` went out as ``Subject:
    and hi``. Such a value is written here as encoded words of the whole text, which
    every reader decodes back to exactly what the client gave. Other values (no
    ``=?``, or one the email package keeps as it is) get None and are folded as before.
    """
    if "=?" not in value or name.lower() in _STRUCTURED_NAMES:
        return None
    if str(policy.SMTP.header_store_parse(name, value)[1]) == value:
        return None
    # Adjacent encoded words decode with the white space between them dropped, so the
    # spaces of the text travel inside them; the first word fits on the label's line.
    words = _encoded_words(value, first_max=max(MAX_LINE - len(name) - 2, 16))
    return f"{name}: " + f"{CRLF} ".join(words) + CRLF


#: Fields the email package parses by their own grammar (addresses, dates, ids): never
#: free text to write as encoded words. Subject is free text.
_STRUCTURED_NAMES = frozenset(policy.SMTP.header_factory.registry) - {"subject"}  # type: ignore[attr-defined]


def fold_addresses(name: str, mailboxes: list[tuple[str, str]]) -> str:
    """An address field from (display name, address) pairs, as ``msg[name] = [Address]``.

    Except a field :func:`protected_address_field` writes: there the email package
    could make one display name into several addresses.
    """
    folded = protected_address_field(name, mailboxes) or _fast_addresses(name, mailboxes)
    if folded is not None:
        return folded
    values = []
    for display_name, address in mailboxes:
        local, _, domain = address.rpartition("@")
        values.append(Address(display_name=display_name, username=local, domain=domain))
    return stdlib_fold(name, values)


def _probe() -> bool:
    """Whether this Python's email package folds encoded words as this module does."""
    probes = [
        ("Subject", "Ihre Rechnung für März " * 5),
        ("Subject", "Ihre Rechnung für März " * 6),
        ("Subject", "Votre commande n° 42 est expédiée ✓ " * 4),
        ("Subject", "注文確認のお知らせ " * 6 + "end"),
        ("Subject", "x" * 70 + " Grüße aus München " + "y" * 90),
        ("X-Note", "plain words then ünïcödé words and " + "a" * 80 + " more"),
    ]
    for name, value in probes:
        folded = _fold_words(_Lines(name + ": "), value)
        if folded is not None and folded != stdlib_fold(name, value):
            return False
    line = _display_name_line("Zoë van Ålund", "zoe@example.com")
    return f"From: {line}{CRLF}" == stdlib_fold(
        "From", [Address("Zoë van Ålund", "zoe", "example.com")]
    )


#: Derived once from the Python running, like a compiled pattern; never changes after.
ENCODED_WORDS_AGREE: bool = _probe()
