"""Whole numbers written as text by someone else: a peer's ids and positions, a header.

``str.isdigit`` is true for ``"²"``, ``"١٢"`` and other Unicode digits; ``int`` refuses
the first (``ValueError``) and reads the second as 12. A check of ``isdigit`` before
``int`` therefore let such text through to an exception no caller could mend, or to a
number the sender never wrote in ASCII. `decimal` is the one check: ASCII digits, and
no more of them than a bound (``int`` of a long text costs quadratic time, and Python
refuses over 4,300 digits).
"""

from __future__ import annotations


def decimal(text: str, max_digits: int = 19) -> int | None:
    """The number ``text`` writes in ASCII decimal digits (no sign, no spaces), None for
    any other text or more than ``max_digits`` digits."""
    if not text or len(text) > max_digits or not (text.isascii() and text.isdigit()):
        return None
    return int(text)
