"""The base of the operator API's JSON request bodies: numbers and flags as JSON writes them.

Pydantic's default (lax) mode took ``"retention_days": true`` as 1, ``"5"`` as 5 and
``"wait": "false"`` as false: a caller's mistake, or a client sending strings, became
another request than the one it meant, where a 422 naming the field would have told it.
A body model derives from `Body` and is strict: a number must be a JSON number (an
integer field takes no 5.0), a flag ``true`` or ``false``, a string a string.

FastAPI validates a body from the parsed JSON in pydantic's Python mode, where strict
also refuses a string for the types JSON has no form of its own for (a datetime, an
enum, a path). A field of such a type says ``Strict(False)`` where its type is declared
(`qdspace.node.api.models.UtcDatetime`: an ISO 8601 string), and the tests send real
HTTP requests (`tests/unit/node/test_api_strict_bodies.py`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Body(BaseModel):
    """A JSON request body, validated strictly (see the module)."""

    model_config = ConfigDict(strict=True)
