"""What the OPC UA connector keeps of a server's data value, screened where it arrives.

What a server sends is checked as a peer's bytes are (a PLC gateway can be compromised, a
server misconfigured), and before it waits anywhere: the subscription's handler, a history
page and a context read all pass each data value through `screened` first.

- Only a number, a text of at most ``MAX_TEXT`` characters or nothing is kept of a value;
  an array, a byte string, a structure or a longer text is replaced by why not (a
  1,000,000-element array waited in the connector's queue whole, a 2 MB batch text was
  kept in the context history, up to its cap of changes).
- A value whose status is not Good is refused with the status' name: a historian's Bad
  sample kept its value and was stored as a good reading, and an Uncertain one was
  stored as if certain (a measurement row has no quality to say so). A refusal is
  counted and logged by the sink with its node, so a line whose sensor reports
  Uncertain is seen, not silently stored as measured.
- OPC UA's null time (1601-01-01, a DateTime of 0) is no time (it was stored as taken in
  1601). A reading without a source time is refused by the connector, unless its node
  allows the server's time (`opcua_marks`: every re-subscription brings a new one).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from qdspace.connector.errors import ConnectorError

#: a text longer than this is no number, grade code or id (an id has 64 characters at most)
MAX_TEXT = 64
#: OPC UA's null time (a DateTime of 0, or before it): no time at all
NULL_TIME = datetime(1601, 1, 1, tzinfo=UTC)


class OpcuaServerError(ConnectorError):
    """What an OPC UA server sent cannot be used (an answer of another kind than asked
    for, more data changes than are stored in time): said with the node it concerns."""


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _time(at: Any) -> datetime | None:
    """A data value's timestamp in UTC; None where it has none, or OPC UA's null time."""
    if not isinstance(at, datetime):
        return None
    at = _utc(at)
    return None if at <= NULL_TIME else at


@dataclass(frozen=True, slots=True)
class Reading:
    """What the connector keeps of a data value: the value where it can be a reading or an
    id (else None, and ``refused`` says why), and its source and server times in UTC."""

    value: Any
    source: datetime | None
    server: datetime | None
    refused: str | None = None

    @property
    def taken(self) -> datetime | None:
        """When it was taken: its source time, else the server's."""
        return self.source or self.server


def screened(dv: Any) -> Reading:
    """A data value as the connector keeps it (see the module's docstring): its value only
    where it is a number, a short text or nothing, and only where its status is Good."""
    source, server = _time(dv.SourceTimestamp), _time(dv.ServerTimestamp)
    status = getattr(dv, "StatusCode", None)
    if status is not None and not status.is_good():
        bad = f"status {status.name}: the server says the value is not good"
        return Reading(None, source, server, bad)
    value = dv.Value.Value if dv.Value is not None else None
    why = _unfit(value)
    return Reading(None if why else value, source, server, why)


def _unfit(value: Any) -> str | None:
    """Why ``value`` is no reading and no id, without converting it (None: it may be)."""
    if value is None or isinstance(value, int | float):
        return None
    if isinstance(value, str):
        if len(value) <= MAX_TEXT:
            return None
        return (
            f"a text of {len(value)} characters "
            f"(a number, a grade code or an id has at most {MAX_TEXT})"
        )
    if isinstance(value, list | tuple):
        return f"an array of {len(value)} elements, not one value"
    if isinstance(value, bytes | bytearray):
        return f"a byte string of {len(value)} bytes, not a number or a text"
    return f"a value of type {type(value).__name__}, not a number or a text"


def no_value(dv: Any) -> bool:
    """A history entry that holds no value (no bound there, no data in the interval)."""
    from asyncua.ua.status_codes import StatusCodes

    status = getattr(dv, "StatusCode", None)
    code = (status.value if status is not None else 0) & 0xFFFF0000
    return code in (StatusCodes.BadBoundNotFound, StatusCodes.BadNoData)
