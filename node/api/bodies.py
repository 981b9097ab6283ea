"""The base of the operator API's JSON request bodies: numbers and flags as JSON writes them.

Pydantic's default (lax) mode took ``"retention_days": true`` as 1, ``"5"`` as 5 and
``"wait": "false"`` as false: a caller's mistake, or a client sending strings, became
another request than the one it meant, where a 422 naming the field would have told it.
A body model derives from `Body` and is strict: a number must be a JSON number (an
integer field takes no 5.0), a flag ``true`` or ``false``, a string a string.

FastAPI validates a body from the parsed JSON in pydantic's Python mode, where strict
also refuses a string for the types JSON has no form of its own for (a date, a
date-time, an enum). A field of such a type is lax again (``Strict(False)``) but takes
only what JSON writes for it: `FromText` (an enum: its string), `IsoDate` and
`qdspace.node.api.models.BodyDatetime` (an ISO 8601 string; lax parsing alone also read
a number, or a string of digits, as seconds since 1970: ``"due": 0`` was 1970-01-01).
The tests send real HTTP requests (`tests/unit/node/test_api_strict_bodies.py`,
`tests/unit/node/test_api_strict_route_bodies.py`).
"""

from __future__ import annotations

import re
from datetime import date
from enum import Enum
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Strict
from pydantic_core import PydanticCustomError

T = TypeVar("T")

#: how an ISO 8601 date or date-time begins (a year of four digits, then a dash)
_ISO_START = re.compile(r"[0-9]{4}-")


class Body(BaseModel):
    """A JSON request body, validated strictly (see the module)."""

    model_config = ConfigDict(strict=True)


def string_only(value: Any) -> Any:
    """Before a lax enum field: only a string (or a member, from a Python caller) goes on
    to be parsed."""
    if isinstance(value, str | Enum):
        return value
    raise PydanticCustomError("string_type", "Input should be a valid string")


def iso_only(value: Any) -> Any:
    """Before a lax date or date-time: only an ISO 8601 string (``2030-01-01...``) or a
    date from a Python caller goes on to be parsed, never a count of seconds."""
    if isinstance(value, date) or (isinstance(value, str) and _ISO_START.match(value)):
        return value
    raise PydanticCustomError(
        "iso_8601", "Input should be an ISO 8601 string (YYYY-MM-DD, then a time if any)"
    )


#: an enum in a strict body: its member's string (``"MAJOR"``)
FromText = Annotated[T, Strict(False), BeforeValidator(string_only)]
#: a calendar date in a strict body: an ISO 8601 string (``2030-01-31``)
IsoDate = Annotated[date, Strict(False), BeforeValidator(iso_only)]
