"""What the store hands out: frozen records, never SQLAlchemy rows.

A ``Row[Any]`` lets any caller read any column under any type, so mypy checks
nothing past the query. Each store module declares the record its callers may
rely on, as a frozen dataclass built by :meth:`Record.from_row`; rows never
travel past the store.

``from_row`` reads exactly the record's fields from the row (by name, so a
column added to the table later changes nothing until a record asks for it)
and turns a value into the field's enum when the field is one, so a record
holds ``WebhookDeliveryStatus.PENDING``, not whatever string the database had.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from collections.abc import Callable, Mapping
from typing import Any, Self

from sqlalchemy.engine import Row, RowMapping

#: A result row of any shape (SQLAlchemy types rows by their columns' types).
AnyRow = Row[*tuple[Any, ...]]


class Record:
    """Base of every store record (a frozen, slotted dataclass)."""

    __slots__ = ()

    @classmethod
    def from_row(cls, row: AnyRow) -> Self:
        return cls.from_mapping(row._mapping)

    @classmethod
    def from_optional(cls, row: AnyRow | None) -> Self | None:
        """``from_row`` for a query's ``.first()``: no row, no record."""
        return None if row is None else cls.from_row(row)

    @classmethod
    def from_mapping(cls, values: RowMapping | Mapping[str, Any]) -> Self:
        converted = {
            name: values[name] if convert is None or values[name] is None else convert(values[name])
            for name, convert in _fields(cls).items()
        }
        # Every subclass is a dataclass: its generated __init__ takes these keywords.
        made: Self = cls(**converted)
        return made


_Converters = dict[str, Callable[[Any], Any] | None]
_FIELDS: dict[type[Record], _Converters] = {}


def _fields(cls: type[Record]) -> _Converters:
    """Each field's name and, for an enum field (``E`` or ``E | None``), its enum;
    worked out once per record class."""
    found = _FIELDS.get(cls)
    if found is None:
        assert dataclasses.is_dataclass(cls), f"{cls.__name__} must be a dataclass"
        hints = typing.get_type_hints(cls)
        found = {field.name: _enum_of(hints[field.name]) for field in dataclasses.fields(cls)}
        _FIELDS[cls] = found
    return found


def _enum_of(hint: Any) -> Callable[[Any], Any] | None:
    candidates = typing.get_args(hint) or (hint,)
    for candidate in candidates:
        if isinstance(candidate, type) and issubclass(candidate, enum.Enum):
            return candidate
    return None
