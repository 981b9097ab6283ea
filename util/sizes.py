"""Sizes in bytes written for people (a quota's limit, a disk's free space)."""

from __future__ import annotations


def show_size(size: int | None) -> str:
    """Bytes for people: ``2.0 GiB``, ``512 B``; ``unlimited`` for None."""
    if size is None:
        return "unlimited"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
