"""Sparkplug B: a metric's value by the data type its BIRTH declared, and its time.

A Sparkplug metric carries its value in one of a few protobuf fields (``int_value``
and ``long_value`` unsigned, ``float_value``, ``double_value``, ``string_value``, ...)
and says what it *is* only by its data type. So a value is read by its data type, and
what that type cannot be is refused with the metric's reason, never read as it came:

- a signed integer travels as two's complement (in the field's 32 or 64 bits, or in
  the type's own width: encoders differ); one that fits neither (an Int8 of 300) is
  refused (masked to the type's bits it was stored as 44);
- an unsigned one out of its type's range (a UInt8 of 300) is refused;
- a value in a field its type does not use (an Int32 in ``double_value``) is refused;
- a type that is no measurement (DateTime, UUID, DataSet, Template, Bytes, File,
  arrays, the 0 of "Unknown", a number no specification gives) is refused: before,
  a value of one of those was stored as whatever number it carried (a DateTime as
  its milliseconds, a data type 99 or a Boolean sent as a double as the double);
- a text must be UTF-8 (protobuf hands a proto2 string that is not as bytes).

Why a timestamp of 0 is none: the Sparkplug timestamps are uint64 and 0 is what an
encoder that never set one writes; stored, every such reading of an equipment has
the one natural key 1970-01-01 (the first stored, the rest duplicates or refused as
changes of it). A metric's 0 gives way to the payload's time; a payload's 0 is no
time. One of 10^14 ms and more (a negative time in two's complement, the year 5138)
is refused as no time since 1970; a time ahead of the clock is refused later, by
`mapping.refused_source`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from qdspace.protocols.sparkplug.sparkplug_b_pb2 import DataType

#: Sparkplug B integer data types (the specification's numbers) -> bits
SIGNED = {1: 8, 2: 16, 3: 32, 4: 64}  # Int8, Int16, Int32, Int64
UNSIGNED = {5: 8, 6: 16, 7: 32, 8: 64}  # UInt8, UInt16, UInt32, UInt64
FLOAT, DOUBLE, BOOLEAN, STRING, TEXT = 9, 10, 11, 12, 14
#: the bits of the protobuf field an integer came in
WIDTH = {"int_value": 32, "long_value": 64}
#: a timestamp this large (ms) is no time since 1970 (the year 5138)
MAX_MS = 10**14
NO_TIME = "no timestamp (a redelivery would be stored twice)"


def type_name(datatype: int) -> str:
    """The specification's name of a data type (or its number when none)."""
    try:
        return str(DataType.Name(datatype))
    except ValueError:
        return f"{datatype} (none this connector knows)"


def metric_value(metric: Any, datatype: int) -> Any | str:
    """The metric's value as a number or text by ``datatype``, else why not (a text
    starting with '!')."""
    which = metric.WhichOneof("value")
    if metric.is_null or which is None:
        return "!null value"
    if which in ("boolean_value", "bytes_value"):
        return f"!a {which.removesuffix('_value')} value is no measurement"
    raw = getattr(metric, which)
    kind = type_name(datatype)
    if datatype in SIGNED or datatype in UNSIGNED:
        if which not in WIDTH:
            return f"!{kind} metric sent as {which}: refused, not guessed"
        return _integer(raw, datatype, WIDTH[which], kind)
    if datatype in (FLOAT, DOUBLE):
        if which not in ("float_value", "double_value"):
            return f"!{kind} metric sent as {which}: refused, not guessed"
        return raw
    if datatype in (STRING, TEXT):
        if which != "string_value":
            return f"!{kind} metric sent as {which}: refused, not guessed"
        if not isinstance(raw, str):  # upb hands a proto2 string that is not UTF-8 as bytes
            return f"!{kind} value is not UTF-8 text"
        return raw
    return f"!a value of type {kind} is no measurement"


def _integer(raw: int, datatype: int, width: int, kind: str) -> int | str:
    if datatype in UNSIGNED:
        bits = UNSIGNED[datatype]
        return raw if raw < 1 << bits else f"!{raw} is out of the range of {kind}"
    bits = SIGNED[datatype]
    half = 1 << (bits - 1)
    if raw < half:
        return raw
    if raw >= (1 << width) - half:  # two's complement in the field's bits
        return raw - (1 << width)
    if bits < width and raw < 1 << bits:  # two's complement in the type's own bits
        return raw - (1 << bits)
    return f"!{raw} is no {kind} (two's complement in {bits} or {width} bits)"


def taken_at(metric: Any, payload: Any) -> datetime | str:
    """When the metric was taken (its own timestamp, else the payload's), else why not."""
    ms = metric.timestamp if metric.HasField("timestamp") else 0
    if not ms and payload.HasField("timestamp"):
        ms = payload.timestamp
    if not ms:
        if metric.HasField("timestamp") or payload.HasField("timestamp"):
            return "timestamp 0 (1970-01-01) is no time a reading was taken"
        return NO_TIME
    if ms >= MAX_MS:
        return f"timestamp {ms} is not milliseconds since 1970"
    return datetime.fromtimestamp(ms / 1000.0, UTC)
