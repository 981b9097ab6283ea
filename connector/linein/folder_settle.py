"""When a file in the export folder is ready to be read: it has *settled*.

An exporter writes a file over time; the folder is listed every few seconds. A file is
ready once what a write changes (its size, modification and change times, inode) stayed
the same for ``settle_s``. That alone took a file whose exporter paused mid-line (died,
or was slow past ``settle_s``, 1 s by default) and stored its cut last line as a row:
``...,800.5`` cut to ``...,8`` became 8 °C. So a file whose last byte is no newline waits
``unended_s`` (60 s by default) instead (`Settling.hold`); the folder then refuses its
last line as cut off, or stores it where the operator said the exporter never ends its
last line (``unended_last_line: store``). A complete export without a final newline is
read all the same, only ``unended_s`` late.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

#: what a file was when the scan looked: size, modification and change times, inode
Look = tuple[int, int, int, int]


def look_of(st: os.stat_result) -> Look:
    """What settling watches of a file: whatever a write, a truncate, a ``utime`` or a
    rename into place changes (the change time even when the others are set back)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class Settling:
    """Files seen and how they were when last looked at; ready once unchanged (for
    ``unended_s`` instead of ``settle_s`` once found not to end with a newline)."""

    settle_s: float
    unended_s: float = 60.0
    seen: dict[str, tuple[tuple[int, ...], float]] = field(default_factory=dict)
    #: files found settled but not ending with a newline: they wait ``unended_s``
    unended: set[str] = field(default_factory=set)

    def look(self, name: str, stat: tuple[int, ...], now: float) -> bool:
        """Whether ``name`` has kept ``stat`` for ``settle_s`` (the first look starts it;
        so a file is read at the second look at the earliest)."""
        last = self.seen.get(name)
        if last is None or last[0] != stat:
            self.seen[name] = (stat, now)
            self.unended.discard(name)
            return False
        wait = self.unended_s if name in self.unended else self.settle_s
        return now - last[1] >= max(wait, self.settle_s)

    def hold(self, name: str, stat: tuple[int, ...], since: float) -> None:
        """``name`` settled (as ``stat``, unchanged ``since``) without a final newline: it
        waits ``unended_s`` from then before it is read."""
        self.seen[name] = (stat, since)
        self.unended.add(name)

    def forget(self, name: str) -> None:
        self.seen.pop(name, None)
        self.unended.discard(name)
