"""Live streams are woken by commits that insert into the watched table, not by polling."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert

from qdspace.node.runtime.table_watch import TableWatch


def _tables(tmp_path: Path) -> tuple[object, Table, Table]:
    engine = create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    meta = MetaData()
    watched = Table("qdm_inspection", meta, Column("id", Integer, primary_key=True))
    other = Table("qdm_other", meta, Column("id", Integer, primary_key=True), Column("v", String))
    meta.create_all(engine)
    return engine, watched, other


async def test_a_commit_from_another_thread_wakes_the_waiter(tmp_path: Path) -> None:
    engine, watched, other = _tables(tmp_path)
    watch = TableWatch(engine, "qdm_inspection")  # type: ignore[arg-type]
    seen = watch.generation

    def write(table: Table) -> None:
        with engine.begin() as connection:  # type: ignore[attr-defined]
            connection.execute(insert(table).values())

    writer = threading.Thread(target=write, args=(other,))
    writer.start()
    writer.join()
    assert await watch.wait(seen, timeout=0.2) == seen  # another table: nobody woken
    loop = asyncio.get_running_loop()
    started = loop.time()
    waiter = asyncio.ensure_future(watch.wait(seen, timeout=10))
    await asyncio.sleep(0.05)
    threading.Thread(target=write, args=(watched,)).start()
    assert await waiter == seen + 1
    assert loop.time() - started < 2  # woken, not timed out
    assert await watch.wait(seen, timeout=10) == seen + 1  # already changed: no wait
