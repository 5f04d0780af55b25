"""The ``cursor`` of the paginated lists: the id of the last item of the page before.

A list reads the items older than its cursor, so a cursor that is not an id of
that list (a typo, a truncated copy, another list's id) would silently answer
with some other page, or the first one. It is refused instead, with a 400.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Query

from postline.api.problems import Problem

#: What ``ids.new_id`` makes after its prefix: 26 lower-case Crockford base32 characters.
_ID_BODY = re.compile(r"[0-9abcdefghjkmnpqrstvwxyz]{26}")


def page_after(cursor: str | None, prefix: str) -> str | None:
    """The id a list's page starts after; None for the first page (no ``cursor``).

    ``prefix``: the prefix of that list's ids (``em_``, ``sup_``, ``whd_``).
    """
    if cursor is None:
        return None
    body = cursor.removeprefix(prefix)
    if body == cursor or not _ID_BODY.fullmatch(body):
        message = "not a cursor of this list: pass next_cursor from the previous page as it is"
        raise Problem(400, f"cursor: {message}", [{"field": "cursor", "message": message}])
    return cursor


#: The ``cursor`` parameter of a list that answers in one page (domains, keys, webhooks,
#: destinations): declared so that one sent anyway is refused, not silently ignored.
SinglePageCursor = Annotated[
    str | None,
    Query(description="This list answers in one page (`next_cursor` is always null): none"),
]


def single_page(cursor: str | None) -> None:
    """Refuse a ``cursor`` for a list whose ``next_cursor`` is always null: no cursor of
    it exists, so one sent is a mistake the client wants to hear about."""
    if cursor is not None:
        message = "this list answers in one page: it has no next page"
        raise Problem(400, f"cursor: {message}", [{"field": "cursor", "message": message}])
