"""The free disk a node keeps for its own records: bulk writes stop short of a full disk.

A node's SQLite database shares one filesystem with its WAL, its logs and its anchoring
queue. On a full disk SQLite refuses every write ("database or disk is full"), the small
ones that keep the node's promises too: a negotiation's next state, the outbox, the
retention sweep's deletions and their signed receipts, a ledger entry. What fills a disk
is bulk: ingests, and the rows providers send, which a provider can make as many of as it
likes under an agreement. So those two ask `DiskRoom` first and are refused (`DiskLow`,
RESOURCE_EXHAUSTED / 507, naming the free space and the setting) while they would leave
less than ``min_free_disk_mib`` free (1 GiB by default; 0 turns the check off), the way
Elasticsearch's disk watermarks stop writes before the disk is full: the node goes on
serving, negotiating and deleting, and an operator who makes room (or lowers the setting)
resumes the refused transfer from where it stopped.

The check is one ``statvfs`` of the database's folder per ingest or per group of received
rows (microseconds). A node on PostgreSQL writes to the server's disk, which it cannot
see: it checks nothing (the server's own monitoring must). A managed host's tenants on
SQLite share the host's disk: their admission asks it before their row and storage
quotas (`node.host.admission`). The free space is also a gauge on ``/metrics`` and a
check on the console's overview, so an operator sees it coming.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from sqlalchemy import Engine

from qdspace.node.errors import DiskLow
from qdspace.util.sizes import show_size

logger = logging.getLogger("node")

MIB = 1024 * 1024


class DiskRoom:
    """Refuses bulk writes that would leave less than ``min_free`` bytes free on the
    filesystem of ``folder`` (see the module); an `IngestAdmission` and a
    `ReceivedRoom`."""

    #: an ingest's rows are not what fills a disk: its bytes are
    counts_rows = False

    def __init__(self, folder: Path, min_free: int) -> None:
        self.folder = folder
        self.min_free = min_free

    @property
    def disk(self) -> DiskRoom:
        """Itself (`IngestAdmission.disk`)."""
        return self

    def free(self) -> int:
        """The free bytes of the disk, now."""
        return shutil.disk_usage(self.folder).free

    def check(self, size: int, brings: str) -> None:
        """Refuse a write of ``size`` bytes (what ``brings`` them, for the message)."""
        free = self.free()
        if free - size >= self.min_free:
            return
        raise DiskLow(
            f"the disk of this node's database ({self.folder}) has {show_size(free)} free "
            f"and {brings} {show_size(size)}: less than the {show_size(self.min_free)} it "
            "keeps free for its own records (setting min_free_disk_mib); nothing of it was "
            "stored"
        )

    def check_ingest(self, size: int) -> None:
        """Refuse an ingest of ``size`` bytes that does not fit (its caller is told)."""
        self.check(size, "this ingest brings")

    def check_upload(self, size: int) -> None:
        """Refuse an upload of ``size`` bytes as it arrives (`IngestAdmission`)."""
        self.check_ingest(size)

    @asynccontextmanager
    async def admit(self, rows: int, size: int) -> AsyncIterator[None]:
        """Around an ingest of ``size`` bytes (`node.context.IngestAdmission`)."""
        self.check_ingest(size)
        yield

    def check_received(self, size: int) -> None:
        """Refuse rows received from a provider (``size`` bytes) that do not fit, saying so
        in the log too (nobody asked for them: the refusal reaches no caller)."""
        try:
            self.check(size, "rows received from a provider bring")
        except DiskLow as exc:
            logger.warning("%s", exc)
            raise

    def check_kept(self, size: int, what: str) -> None:
        """Refuse ``size`` more bytes of ``what`` that do not fit (`ReceivedRoom`; and
        `IngestAdmission`, for a file the node keeps: a model version)."""
        self.check(size, f"{what} brings")

    @contextmanager
    def receive(self, rows: int, size: int) -> Iterator[None]:
        """Around the write of rows received from a provider (`ReceivedRoom`)."""
        self.check_received(size)
        yield


def disk_line(free: int, kept: int) -> str:
    """The disk's state for people: its free space against what the node keeps."""
    line = f"disk: {show_size(free)} free; keeps {show_size(kept)} for its own records"
    if free < kept:
        line += ": ingests and rows received from providers are refused (min_free_disk_mib)"
    return line


def disk_room(engine: Engine, min_free_mib: int) -> DiskRoom | None:
    """The room of a node whose database is a SQLite file (its folder's filesystem);
    None on PostgreSQL (its disk is the server's), for an in-memory database, or with the
    check off (``min_free_mib`` 0)."""
    database = engine.url.database
    if min_free_mib <= 0 or engine.dialect.name != "sqlite" or database in (None, "", ":memory:"):
        return None
    return DiskRoom(Path(database).resolve().parent, min_free_mib * MIB)
