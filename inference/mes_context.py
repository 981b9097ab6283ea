"""Which unit a station had in front of it, from the MES: station and time to serial,
order and batch.

Many EL cameras name images after nothing useful and write no sidecar; the MES knows
which order and batch (and often which serial) ran at which station when. Its export
(a CSV or JSON file of entries ``station, start, end, serial, order_id, batch_id``)
is read here once, checked whole, and asked per verdict: the entry of that station
whose ``[start, end)`` holds the moment the frame was captured (an entry without
``end`` lasts until the station's next entry). What the frame itself says (its name
or sidecar) wins; the MES fills what it leaves open.

Checked on load, so a bad export stops the line before it starts instead of tying
verdicts to the wrong batch: every time must name its zone (a naive time from another
system is a guess), ids follow the QDM's limits (printable, at most 64 characters),
an entry must end after it starts, and two entries of one station must not overlap.
"""

from __future__ import annotations

import bisect
import csv
import io
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from qdspace.inference.errors import InferenceError
from qdspace.inference.frame_context import MAX_ID_CHARS, ProductionContext

#: an MES export larger than this is not a context file
MAX_FILE_BYTES = 64 << 20
#: entries read at most
MAX_ENTRIES = 500_000
FIELDS = ("station", "start", "end", "serial", "order_id", "batch_id")
_IDS = ("serial", "order_id", "batch_id")


class MesContextError(InferenceError, ValueError):
    """An MES context file that cannot be used: which file, which entry, why."""


@dataclass(frozen=True)
class MesEntry:
    station: str
    start: datetime
    end: datetime | None
    context: ProductionContext


class MesContext:
    """Entries per station, by start time; :meth:`at` answers a station and a moment."""

    def __init__(self, entries: Iterable[MesEntry], source: str = "MES context") -> None:
        by_station: dict[str, list[MesEntry]] = {}
        for entry in entries:
            by_station.setdefault(entry.station, []).append(entry)
        for station, items in by_station.items():
            items.sort(key=lambda e: e.start)
            for before, after in itertools.pairwise(items):
                if before.start == after.start or (
                    before.end is not None and before.end > after.start
                ):
                    raise MesContextError(
                        f"{source}: station {station}: the entry from {before.start.isoformat()} "
                        f"overlaps the one from {after.start.isoformat()}"
                    )
        self._entries = by_station
        self._starts = {s: [e.start for e in items] for s, items in by_station.items()}

    @property
    def stations(self) -> list[str]:
        return sorted(self._entries)

    def at(self, station: str, when: datetime) -> ProductionContext | None:
        """What ran at ``station`` at ``when`` (zone-aware), or None when nothing did."""
        starts = self._starts.get(station)
        if not starts:
            return None
        i = bisect.bisect_right(starts, when) - 1
        if i < 0:
            return None
        entry = self._entries[station][i]
        if entry.end is not None and when >= entry.end:
            return None
        return entry.context


def _time(where: str, key: str, value: Any) -> datetime:
    if isinstance(value, datetime):
        at = value
    else:
        try:
            at = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise MesContextError(
                f"{where}: {key} {str(value)[:40]!r} is not an ISO 8601 time"
            ) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise MesContextError(f"{where}: {key} {at.isoformat()} names no zone (add Z or +01:00)")
    return at


def _id(where: str, key: str, value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise MesContextError(f"{where}: {key} must be a text")
    text = value.strip()
    if len(text) > MAX_ID_CHARS or not text.isprintable():
        raise MesContextError(
            f"{where}: {key} must be printable and at most {MAX_ID_CHARS} characters"
        )
    return text


def entry_from(where: str, raw: Mapping[str, Any]) -> MesEntry:
    """One entry from a row of the export; a `MesContextError` naming ``where`` if bad."""
    unknown = set(raw) - set(FIELDS)
    if unknown:
        raise MesContextError(f"{where}: unknown fields {sorted(unknown)}; use {list(FIELDS)}")
    station = _id(where, "station", raw.get("station"))
    if station is None:
        raise MesContextError(f"{where}: station is missing")
    if raw.get("start") in (None, ""):
        raise MesContextError(f"{where}: start is missing")
    start = _time(where, "start", raw["start"])
    end = None if raw.get("end") in (None, "") else _time(where, "end", raw["end"])
    if end is not None and end <= start:
        raise MesContextError(f"{where}: end must be after start")
    ids = {k: _id(where, k, raw.get(k)) for k in _IDS}
    if not any(ids.values()):
        raise MesContextError(f"{where}: names no serial, order_id or batch_id")
    return MesEntry(station, start, end, ProductionContext(**ids))


def _rows(path: Path, text: str) -> Iterable[tuple[str, Mapping[str, Any]]]:
    if path.suffix.lower() == ".json":
        try:
            body = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise MesContextError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(body, list) or not all(isinstance(r, dict) for r in body):
            raise MesContextError(f"{path}: must be a JSON list of objects")
        return ((f"{path}: entry {i}", r) for i, r in enumerate(body, 1))
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None:
        raise MesContextError(f"{path}: empty")
    return ((f"{path}:{i}", r) for i, r in enumerate(reader, 2))


def read_mes_context(path: Path) -> MesContext:
    """The MES context in ``path`` (``.json``: a list of objects; else CSV with a header)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise MesContextError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise MesContextError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MesContextError(f"{path}: not UTF-8: {exc}") from None
    entries = []
    for where, row in _rows(path, text):
        if None in row:  # csv: more cells than the header names
            raise MesContextError(f"{where}: more cells than the header has columns")
        entries.append(entry_from(where, row))
        if len(entries) > MAX_ENTRIES:
            raise MesContextError(f"{path}: more than {MAX_ENTRIES} entries")
    if not entries:
        raise MesContextError(f"{path}: no entries")
    return MesContext(entries, str(path))
