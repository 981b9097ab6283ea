"""Values of a federated job's settings as JSON gives them, read strictly.

A job's terms, its strategy and its differential privacy settings arrive as parsed JSON
(from a peer, an operator, a job file). Coercing them changed what a caller asked for:
``int(2.9)`` rounds was 2, ``bool("false")`` was true, ``float("1e400")`` and JSON's
``1e400`` are infinity, and ``int()`` of that raised an ``OverflowError`` nobody
caught. Each value is checked against its field's JSON type instead: whole numbers
``int`` (not ``bool``, not 2.0), numbers finite ``float`` or ``int``, flags ``bool``,
names ``str``.

One `JsonReader` reads one document: what does not fit is listed in ``problems``
under its place (``shapes[0][1]``, ``dp.clip``) and read as a stand-in, so the rest
is still checked and one refusal names every bad value. The job reader
(`qdspace.federation.job`) and the strategy and privacy readers
(`qdspace.federation.strategies.strategy_fields`, `qdspace.federation.dp.dp_fields`)
share it, so a strategy or DP setting reads the same inside terms and alone.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

#: Most problems one refusal names (terms may hold 10**5 bad dimensions).
MAX_PROBLEMS = 8
#: Whole numbers are below this: each count in the settings has a far lower bound, and
#: one of thousands of digits would only make the message naming it that long.
MAX_WHOLE = 2**63

#: what `JsonReader.get` answers for a key that is not there
MISSING: Any = object()

T = TypeVar("T")


class JsonReader:
    """The checked values of one JSON document; ``problems`` lists what did not fit."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def refusal(self) -> str:
        """The problems found, as one message (the first `MAX_PROBLEMS`, then a count)."""
        shown = self.problems[:MAX_PROBLEMS]
        if len(self.problems) > MAX_PROBLEMS:
            shown.append(f"and {len(self.problems) - MAX_PROBLEMS} more")
        return "; ".join(shown)

    @staticmethod
    def get(data: Mapping[str, Any], key: str, default: Any = MISSING) -> Any:
        return data.get(key, default)

    def bad(self, where: str, what: str, value: Any) -> None:
        if value is MISSING:
            self.problems.append(f"{where} is missing")
        else:
            self.problems.append(f"{where} must be {what}, got {shown(value)}")

    def maybe(self, read: Callable[[str, Any], T], where: str, value: Any) -> T | None:
        return None if value is None else read(where, value)

    def whole(self, where: str, value: Any) -> int:
        if type(value) is not int:
            self.bad(where, "a whole number", value)
        elif not -MAX_WHOLE < value < MAX_WHOLE:
            self.bad(where, "a whole number below 2**63", value)
        else:
            return value
        return 0

    def real(self, where: str, value: Any) -> float:
        if type(value) is int and value.bit_length() <= 1000:  # float() of more overflows
            value = float(value)
        if type(value) is float and math.isfinite(value):
            return value
        self.bad(where, "a finite number", value)
        return 0.0

    def flag(self, where: str, value: Any) -> bool:
        if type(value) is bool:
            return value
        self.bad(where, "true or false", value)
        return False

    def text(self, where: str, value: Any) -> str:
        if type(value) is str:
            return value
        self.bad(where, "a string", value)
        return ""

    def choice(self, where: str, value: Any, allowed: tuple[str, ...]) -> str | None:
        """One of ``allowed`` (a string); ``None`` when it is not."""
        if type(value) is str and value in allowed:
            return value
        self.bad(where, "one of " + ", ".join(allowed), value)
        return None

    def sequence(self, where: str, value: Any) -> list[Any] | tuple[Any, ...]:
        if isinstance(value, list | tuple):
            return value
        self.bad(where, "a list", value)
        return []

    def mapping(self, where: str, value: Any) -> Mapping[str, Any]:
        if isinstance(value, Mapping):
            return value
        self.bad(where, "an object", value)
        return {}

    def numbers(self, where: str, value: Any) -> dict[str, float]:
        """An object of finite numbers by name (a strategy's params, training settings)."""
        return {
            str(k): self.real(f"{where}.{str(k)[:40]}", v)
            for k, v in self.mapping(where, value).items()
        }


def shown(value: Any) -> str:
    """A value as a refusal names it: short, whatever its size."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else "a number over 10**18"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return repr(value[:40]) + ("..." if len(value) > 40 else "")
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__
