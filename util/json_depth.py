"""JSON from outside the process, read only once its nesting is known to be shallow.

Why a check before ``json.loads`` at all: the decoder recurses in C once per level of
nesting, and in a process whose recursion limit a library raised (py_ecc sets 100,000,
see `util.recursion`), a few hundred kilobytes of ``[`` overflow the C stack and kill the
process instead of raising. A node's peers, its callers and a managed host's tenants all
send JSON; nothing any of them sends needs more than a few dozen levels. `loads` refuses
deeper text with `JsonTooDeep`, a `ValueError`, so every reader's existing handling of
malformed JSON refuses it in its own words.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: a QDM row is a flat object; a policy, an agreement, a proof is a few levels deep
MAX_JSON_DEPTH = 32
#: a string, or an unterminated one to the end of the text (a lone backslash there
#: too): every match succeeds once begun, so a text of many quotes and no closing one
#: is one pass (a pattern that had to close each string rescanned the rest of the text
#: from every quote: quadratic, 13 s of the event loop for 64 kB of ``"\\"\\"...``);
#: the brackets after an unterminated quote are inside a string to the JSON decoder too
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


class JsonTooDeep(ValueError):
    """JSON nested deeper than the reader allows."""


def json_too_deep(text: str | bytes | bytearray, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests arrays/objects deeper than ``limit`` (strings ignored; bytes
    are read as Latin-1, which keeps every bracket and quote of UTF-8 where it is)."""
    if not isinstance(text, str):
        text = bytes(text).decode("latin-1")
    depth = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub("", text)):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def loads(data: str | bytes | bytearray, *, limit: int = MAX_JSON_DEPTH, **options: Any) -> Any:
    """``json.loads(data, **options)``, refused with `JsonTooDeep` when nested deeper than
    ``limit``."""
    if json_too_deep(data, limit):
        raise JsonTooDeep(f"JSON nested deeper than {limit} levels")
    return json.loads(data, **options)
