"""What the OPC UA connector remembers of each node: how far it stored, what it sent last.

Why a watermark of its own: the backfill after an outage starts after the newest reading
*this connector* stored of a node. It started after the newest stored reading of the
node's equipment and element from *any* source: an MES export stored a reading a minute
ago, and the 59 minutes of the tool's history before it, written while the connector was
away, were never read. The measurement table says nothing of which source a row came
from, so the connector keeps the mark itself: the sink's `MeasurementSink.newest` while
it runs, and the JSON file ``state_file`` (when configured) across restarts, written
after each backfill, at most every ``SAVE_S`` while readings flow, and when a session
ends. A mark older than the truth (a crash before the write) only reads history again
(stored once: the natural key). The start is the older of the mark and the newest
stored reading of any source (a database restored from an older backup has lost what
the mark says was stored). Without a mark (a first start, or no ``state_file`` after a
restart) the backfill reads ``backfill_max_s`` back (or from the newest stored reading,
where that is older): what another source stored since cannot hide the gap then either.

Why readings without a source time are refused: a value's server time is when the
server answered, not when it was taken, and every (re)subscription's first value carries
a fresh one: five reconnects stored one reading five times. So a reading without a
source time is refused, counted and logged once per node (`Untimed`), unless the node's
``server_time`` says the server's time is to be used; then a subscription's first value
equal to the last value stored of that node is taken as the one seen before, and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("qdspace.connector.linein.opcua")

#: the state file is written at most this often while readings flow
SAVE_S = 10.0


def source_of(node_id: str) -> str:
    """The sink's source name of a node's readings."""
    return f"opcua:{node_id}"


def backfill_start(
    mark: datetime | None, latest: datetime | None, floor: datetime
) -> tuple[datetime, bool]:
    """Where a node's backfill starts, and whether after a stored reading (strictly then):
    ``mark`` is what the connector stored of it, ``latest`` the newest stored reading of
    its parameter from any source, ``floor`` as far back as a backfill reads unmarked."""
    if latest is None:
        return floor, False
    if mark is not None:
        return min(mark, latest), True
    return (latest, True) if latest < floor else (floor, False)


class Watermarks:
    """Per node id: the newest reading time stored, kept in ``path`` (None: in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.marks: dict[str, datetime] = {}
        self._saved: dict[str, datetime] = {}
        self._at = 0.0
        if path is not None:
            self.marks = self._load(path)
            self._saved = dict(self.marks)

    @staticmethod
    def _load(path: Path) -> dict[str, datetime]:
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("opcua state %s: not read (%s); backfills read unmarked", path, exc)
            return {}
        marks: dict[str, datetime] = {}
        for node_id, at in (data.get("stored_until", {}) if isinstance(data, dict) else {}).items():
            try:
                marks[str(node_id)] = datetime.fromisoformat(str(at))
            except ValueError:
                log.error("opcua state %s: %s: %r is no time; ignored", path, node_id, at)
        return marks

    def of(self, node_id: str, newest: Mapping[str, datetime]) -> datetime | None:
        """The mark of ``node_id``: the newer of the file's and the sink's ``newest``."""
        found = [t for t in (self.marks.get(node_id), newest.get(source_of(node_id))) if t]
        return max(found) if found else None

    def update(self, node_ids: list[str], newest: Mapping[str, datetime], force: bool) -> None:
        """Take the sink's marks; write the file if they moved (``force``: now, else at
        most every ``SAVE_S``)."""
        for node_id in node_ids:
            mark = self.of(node_id, newest)
            if mark is not None:
                self.marks[node_id] = mark
        if self.path is None or self.marks == self._saved:
            return
        if not force and time.monotonic() - self._at < SAVE_S:
            return
        self._at = time.monotonic()
        body = {"stored_until": {k: v.isoformat() for k, v in sorted(self.marks.items())}}
        part = self.path.with_name(self.path.name + ".part")
        try:
            part.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
            os.replace(part, self.path)
        except OSError as exc:
            log.error("opcua state %s: not written: %s", self.path, exc)
            return
        self._saved = dict(self.marks)


class Untimed:
    """Readings without a source time: counted, and logged once, per node; and the last
    value handed on of each node (a server-time node's repeated first value is skipped)."""

    def __init__(self) -> None:
        self.refused: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.last: dict[str, Any] = {}

    def refuse(self, node_id: str) -> None:
        if node_id not in self.refused:
            log.warning(
                "opcua %s: a reading without a source time is refused (a re-subscription "
                "would store it again under a new server time); set the node's "
                "server_time to store it with the server's; such readings are counted, "
                "not logged again",
                node_id,
            )
        self.refused[node_id] = self.refused.get(node_id, 0) + 1

    def repeated(self, node_id: str, value: Any) -> bool:
        """Whether a subscription's first value ``value`` (server time) is the last one
        handed on of ``node_id``: counted and skipped."""
        if node_id not in self.last or self.last[node_id] != value:
            return False
        self.skipped[node_id] = self.skipped.get(node_id, 0) + 1
        return True


def floor_of(now: datetime, backfill_max_s: float) -> datetime:
    return now - timedelta(seconds=backfill_max_s)
