"""Texts people write that travel between members: printable but for line breaks.

A case's notes, a notice's texts, a termination's reason are written by people, so they
may run over lines; anything else that is not printable (a carriage return, an escape
sequence, a NUL) forges lines in logs and terminals, so a peer's text with it is refused
(`printable_lines`) and our own is cleaned before it leaves (`to_printable_lines`: a tab an
operator typed is a space). One rule in one place: the receiving side checks what the
sending side cleaned.
"""

from __future__ import annotations


def printable_lines(value: str) -> bool:
    """Whether `value` is printable but for line breaks (``\\n``)."""
    return value.replace("\n", " ").isprintable()


def to_printable_lines(value: str) -> str:
    """`value` with every character that `printable_lines` refuses made a space."""
    return "".join(c if c == "\n" or c.isprintable() else " " for c in value)
