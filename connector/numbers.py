"""The one grammar for a number delivered as text, in any column of any row.

Why one function: a measurement value, a batch quantity, a genealogy quantity and an
inspection score are all numbers a plant writes as text, and before this module each
reader had its own idea of one. ``float`` took ``1_000``, fullwidth ``\uff11\uff12`` and
Arabic-Indic ``\u0663``; the data dictionary replaced every comma by a point, so ``1,000``
mbar (a thousand, to the person who wrote it) was stored as 1.0 mbar, while the batch
reader refused the same text. A value that means one thing in one column and another
thing (or nothing) in the next is a silent error in a quality record, so every reader
of numeric text (`connector.dictionary`, `connector.validate`, `connector.column_rules`)
calls :func:`parse_number`.

The grammar (ASCII only)::

    number  = sign? ( digits ( "." digits? )? | "." digits ) exponent?
            | sign? digits "," digits exponent?          # a decimal comma
    sign    = "+" | "-"
    exponent = ( "e" | "E" ) sign? digits

* A decimal comma is read as a decimal point, except where a single comma is followed
  by exactly three digits (``1,000``, ``0,500``): that is how a thousands separator is
  written too, so the text is refused as ambiguous rather than guessed.
* No ``_``, no thousands separators, no other digits than ``0``-``9``.
* The words ``inf``, ``nan`` and ``infinity``, and a number past the range of a double
  (``1e999``), come back as the non-finite ``float`` they are: every caller refuses a
  non-finite number with its own message, as it did before.

Pure: no I/O, no import from the rest of the room but its errors.
"""

from __future__ import annotations

import re

from qdspace.connector.errors import ConnectorError

#: a number with a decimal comma (or none): ``-1,5``, ``12,25e3``
_COMMA = re.compile(r"[+-]?[0-9]+,([0-9]+)(?:[eE][+-]?[0-9]+)?")
#: a value quoted in a reason is cut to this many characters
_QUOTE = 80


class NumberTextError(ConnectorError, ValueError):
    """A text that is not a number of the grammar. ``reason`` says why without naming the
    column (the caller adds it); ``specific`` is True when the text looks like a number
    and breaks one rule of the grammar (``1,000``, ``1_000``, ``\u0661\u0662``), False when it is no
    number at all (a caller may then read it as something else, such as a grade code)."""

    def __init__(self, reason: str, *, specific: bool):
        super().__init__(reason)
        self.reason = reason
        self.specific = specific


def parse_number(text: str) -> float:
    """``text`` (stripped here) read by the grammar above; raises :class:`NumberTextError`.

    The common case costs one ``float``: on ASCII text without ``_`` or ``,``, ``float``
    reads exactly the grammar, plus ``inf`` and ``nan`` (non-finite: the caller's to
    refuse)."""
    s = text.strip()
    if s.isascii() and "_" not in s and "," not in s:
        try:
            number = float(s)
        except ValueError:
            raise NumberTextError(f"expected a number, got {_quoted(s)}", specific=False) from None
        return number
    return float(_with_point(s))


def decimal_text(text: str) -> str:
    """The plain decimal text (a point, not a comma) of a text :func:`parse_number`
    accepts: for `decimal.Decimal`, which reads neither a decimal comma nor needs a guess."""
    s = text.strip()
    return _with_point(s) if "," in s else s


def _with_point(s: str) -> str:
    """``s`` with its decimal comma as a point, or the reason it is no number."""
    if not s.isascii():
        if any(c.isdigit() for c in s):
            raise NumberTextError(
                f"{_quoted(s)} has digits other than 0-9: write the number in ASCII digits",
                specific=True,
            )
        raise NumberTextError(f"expected a number, got {_quoted(s)}", specific=False)
    if "_" in s and _looks_numeric(s):
        raise NumberTextError(
            f"{_quoted(s)} is not a number: write it without '_' (e.g. {s.replace('_', '')})",
            specific=True,
        )
    match = _COMMA.fullmatch(s)
    if match is None:
        if _looks_numeric(s) and "," in s:
            raise NumberTextError(
                f"{_quoted(s)} is not a number: one decimal point, or one decimal comma "
                "between digits; no thousands separators",
                specific=True,
            )
        raise NumberTextError(f"expected a number, got {_quoted(s)}", specific=False)
    if len(match.group(1)) == 3:
        whole, _, rest = s.partition(",")
        raise NumberTextError(
            f"{_quoted(s)} is ambiguous: a comma before exactly three digits may be a "
            f"thousands separator; write {whole}{rest} or {whole}.{rest}",
            specific=True,
        )
    return s.replace(",", ".")


def _looks_numeric(s: str) -> bool:
    """Digits, signs, separators and an exponent only: a number with a mistake in it."""
    return any(c.isdigit() for c in s) and all(c.isdigit() or c in "+-.,_eE" for c in s)


def _quoted(s: str) -> str:
    text = repr(s)
    return text if len(text) <= _QUOTE else text[: _QUOTE - 3] + "..."
