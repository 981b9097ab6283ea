"""Canonical JSON: one byte string per value, so that signatures and digests agree.

Both parties of an agreement, and a regulator years later, must derive the same
bytes from the same content. The encoding is RFC 8785-like: UTF-8, object keys
sorted, no insignificant whitespace, no NaN or infinity. Datetimes are written
as ISO 8601 in UTC with a ``Z`` suffix (naive datetimes are refused, because a
timestamp whose zone is a guess cannot be compared across companies).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from qdspace.policies.errors import PolicyError
from qdspace.util.instants import OutsideUtc, in_utc


class CanonicalEncodingError(PolicyError, TypeError):
    """A value has no canonical JSON form (a naive datetime, NaN, an unknown type)."""


def format_datetime(value: datetime) -> str:
    """The one text form of an instant: UTC, microseconds only when present, ``Z``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise CanonicalEncodingError(f"datetime {value.isoformat()} has no time zone")
    u = value if value.tzinfo is UTC else value.astimezone(UTC)
    text = f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}"
    if u.microsecond:
        text += f".{u.microsecond:06d}"
    return text + "Z"


def parse_datetime(text: str) -> datetime:
    """Parse an ISO 8601 instant that carries a zone; the result is in UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an ISO 8601 date-time") from exc
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{text!r} has no time zone (add Z or an offset)")
    try:
        return in_utc(value)
    except OutsideUtc as exc:
        raise ValueError(f"{text!r} is {exc}") from None


_PLAIN_TYPES = frozenset({str, int, bool, type(None)})


def _flat_row(value: dict[Any, Any]) -> dict[str, Any] | None:
    """The fast path for the common case, a flat row of plain values; None otherwise."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        kind = type(item)
        if type(key) is not str:
            return None
        if kind in _PLAIN_TYPES:
            out[key] = item
        elif kind is datetime:
            out[key] = format_datetime(item)
        elif kind is float and item - item == 0.0:  # finite (NaN and infinities fail)
            out[key] = item
        else:
            return None
    return out


def to_jsonable(value: Any) -> Any:
    """Turn datetimes, enums, tuples, sets and bytes into plain JSON values."""
    if type(value) is dict:
        flat = _flat_row(value)
        if flat is not None:
            return flat
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CanonicalEncodingError(f"float {value!r} has no JSON form")
        return value
    if isinstance(value, Enum):
        return to_jsonable(value.value)
    if isinstance(value, datetime):
        return format_datetime(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalEncodingError(f"object key {key!r} is not a string")
            out[key] = to_jsonable(item)
        return out
    if isinstance(value, frozenset | set):
        items = [to_jsonable(item) for item in value]
        try:
            return sorted(items)
        except TypeError as exc:
            raise CanonicalEncodingError("a set mixes types that cannot be ordered") from exc
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    raise CanonicalEncodingError(f"{type(value).__name__} has no canonical JSON form")


# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(value: Any) -> bytes:
    """The canonical UTF-8 bytes of `value` (see the module docstring)."""
    return _ENCODER.encode(to_jsonable(value)).encode("utf-8")


def canonical_json_plain(value: Any) -> bytes:
    """`canonical_json` of a value made of JSON types only: dicts with string keys, lists,
    strings, ints, bools, None and finite floats (what `policy_to_dict` returns).

    The same bytes without `to_jsonable`'s walk, which on a policy costs about three times
    the encoding itself (an agreement's canonical bytes, an offer's JSON; bench/
    PROFILE-negotiation.md, round 3). A datetime, set, bytes or NaN in `value` raises
    (TypeError, ValueError) rather than encode; string keys are the caller's promise."""
    return _ENCODER.encode(value).encode("utf-8")
