"""Right operands as typed literals: xsd:string, integer, decimal, dateTime, duration.

A peer's literal is parsed into a Python value once, at the edge, with bounds
(length, magnitude, no NaN), so the evaluator compares plain values and a
hostile number never reaches arithmetic. ``xsd:duration`` keeps months apart
from seconds: "P1M" and "P30D" cannot be ordered, so comparing them is reported
as unevaluable rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from qdspace.policies.canonical import format_datetime, parse_datetime
from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.odrl.vocab import XSD, ValueKind

MAX_TEXT = 1024
MAX_INTEGER = 2**53  # what every JSON implementation still reads exactly
MAX_DURATION_DAYS = 366 * 1000
_DURATION = re.compile(
    r"P(?!$)(?:(\d{1,6})Y)?(?:(\d{1,7})M)?(?:(\d{1,7})D)?"
    r"(?:T(?=\d)(?:(\d{1,8})H)?(?:(\d{1,10})M)?(?:(\d{1,12})S)?)?"
)


@dataclass(frozen=True, order=False)
class Duration:
    """An xsd:duration as (months, seconds); only same-shaped durations are ordered."""

    months: int
    seconds: int

    @classmethod
    def of_days(cls, days: int) -> Duration:
        return cls(0, days * 86400)

    def comparable(self, other: Duration) -> bool:
        return (self.months == 0 and other.months == 0) or (
            self.seconds == 0 and other.seconds == 0
        )

    def key(self) -> int:
        return self.seconds if self.months == 0 else self.months

    @property
    def days(self) -> int | None:
        """Whole days, when the duration is a whole number of days without months."""
        if self.months or self.seconds % 86400:
            return None
        return self.seconds // 86400

    def __str__(self) -> str:
        if self.months == 0 and self.seconds == 0:
            return "PT0S"
        out = "P"
        if self.months:
            years, months = divmod(self.months, 12)
            out += (f"{years}Y" if years else "") + (f"{months}M" if months else "")
        days, rest = divmod(self.seconds, 86400)
        out += f"{days}D" if days else ""
        if rest:
            hours, rest = divmod(rest, 3600)
            minutes, seconds = divmod(rest, 60)
            out += "T" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
            out += f"{seconds}S" if seconds else ""
        return out


Value = str | int | Decimal | datetime | Duration


def parse_duration(text: str, path: str) -> Duration:
    match = _DURATION.fullmatch(text)
    if match is None:
        raise PolicySyntaxError(path, f"{text[:40]!r} is not an xsd:duration like P180D")
    y, mo, d, h, mi, s = (int(g) if g else 0 for g in match.groups())
    duration = Duration(y * 12 + mo, ((d * 24 + h) * 60 + mi) * 60 + s)
    if duration.months > MAX_DURATION_DAYS // 30 or duration.seconds > MAX_DURATION_DAYS * 86400:
        raise PolicySyntaxError(path, f"duration {text!r} is longer than 1000 years")
    return duration


def _integer(text: str, path: str) -> int:
    if not re.fullmatch(r"[+-]?\d{1,17}", text):
        raise PolicySyntaxError(path, f"{text[:40]!r} is not an xsd:integer")
    value = int(text)
    if abs(value) > MAX_INTEGER:
        raise PolicySyntaxError(path, f"integer {text} is out of range (|n| <= 2**53)")
    return value


def _decimal(text: str, path: str) -> Decimal:
    if not re.fullmatch(r"[+-]?\d{1,17}(\.\d{1,17})?", text):
        raise PolicySyntaxError(path, f"{text[:40]!r} is not a finite xsd:decimal")
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid text
        raise PolicySyntaxError(path, f"{text!r} is not a decimal") from None


def parse_literal(raw: object, kind: ValueKind, datatype: str | None, path: str) -> Value:
    """Read one right-operand literal as `kind`; `datatype` is its xsd IRI when typed."""
    if datatype is not None and datatype not in (XSD + kind.value[4:], XSD + "string"):
        raise PolicySyntaxError(path, f"a {kind} operand cannot be typed {datatype}")
    if isinstance(raw, bool):
        raise PolicySyntaxError(path, f"expected a {kind} literal, got a boolean")
    if isinstance(raw, int) and kind in (ValueKind.INTEGER, ValueKind.DECIMAL):
        raw = str(raw)
    if isinstance(raw, float):
        raise PolicySyntaxError(path, "floating-point operands are refused (use xsd:decimal text)")
    if not isinstance(raw, str):
        raise PolicySyntaxError(path, f"expected a {kind} literal, got {type(raw).__name__}")
    if not raw or len(raw) > MAX_TEXT:
        raise PolicySyntaxError(path, f"a literal has 1 to {MAX_TEXT} characters")
    match kind:
        case ValueKind.STRING:
            return raw
        case ValueKind.INTEGER:
            return _integer(raw, path)
        case ValueKind.DECIMAL:
            return _decimal(raw, path)
        case ValueKind.DURATION:
            return parse_duration(raw, path)
        case ValueKind.DATETIME:
            try:
                return parse_datetime(raw)
            except ValueError as exc:
                raise PolicySyntaxError(path, str(exc)) from None


def literal_text(value: Value) -> str:
    """The lexical form of a parsed literal (inverse of `parse_literal`)."""
    if isinstance(value, datetime):
        return format_datetime(value)
    return str(value)
