"""The free disk a node keeps (`node.disk_room`), against this machine's real filesystem."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from qdspace.node import faults
from qdspace.node.disk_room import MIB, DiskRoom, disk_room
from qdspace.node.errors import DiskLow


def test_a_write_that_would_leave_less_than_the_kept_free_disk_is_refused(tmp_path: Path) -> None:
    free = shutil.disk_usage(tmp_path).free
    with DiskRoom(tmp_path, MIB).receive(10, MIB):  # this machine has more than 2 MiB free
        pass
    tight = DiskRoom(tmp_path, free + 100 * MIB)
    with pytest.raises(DiskLow, match=r"rows received from a provider bring 1.0 MiB: less than"):
        tight.check_received(MIB)

    async def ingest() -> None:
        async with tight.admit(5, 2 * MIB):
            raise AssertionError("admitted")

    with pytest.raises(DiskLow, match=r"this ingest brings 2.0 MiB.*min_free_disk_mib"):
        asyncio.run(ingest())
    # nothing is left when the write itself would take the rest
    with pytest.raises(DiskLow):
        DiskRoom(tmp_path, 0).check_received(free + 100 * MIB)
    assert faults.http_status(DiskLow("x")) == 507
    assert faults.grpc_status_name(DiskLow("x")) == "RESOURCE_EXHAUSTED"


def test_only_a_sqlite_file_s_disk_is_checked_and_zero_turns_it_off(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    room = disk_room(engine, 1024)
    assert room is not None and room.folder == tmp_path.resolve()
    assert room.min_free == 1024 * MIB and not room.counts_rows
    assert disk_room(engine, 0) is None
    assert disk_room(create_engine("sqlite://"), 1024) is None  # in memory
    pg = create_engine("postgresql+psycopg://u:p@127.0.0.1:1/db")  # never connected
    assert disk_room(pg, 1024) is None
