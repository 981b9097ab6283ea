"""The export-folder connector with a real watchdog observer and a real SQLite QDM:
files arriving while it runs are ingested once and moved to done/; a file still being
written (growing, or named .part) is not read early; a file dropped twice is not read
again; bad rows are reported beside the file in failed/; a second watcher is refused;
``qdspace connect folder`` runs the same until SIGTERM."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("watchdog", reason="the connect extra (watchdog) is not installed")
from sqlalchemy import text

from qdspace.connector.linein.config import FolderConfig
from qdspace.connector.linein.folder import LEDGER, FolderBusy, FolderConnector
from qdspace.connector.storage import QualityStore, open_store

pytestmark = pytest.mark.integration
HEADER = "equipment,parameter,value,unit,measured_at,batch_id\n"


def rows(start: int, n: int, equipment: str = "FURNACE-1") -> str:
    line = "{},firing_peak_temperature,{},°C,2025-03-01T08:{:02d}:{:02d}Z,B-1\n"
    return "".join(
        line.format(equipment, 800 + i, i // 60, i % 60) for i in range(start, start + n)
    )


def count(store: QualityStore) -> int:
    with store.engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM qdm_measurement")).scalar_one())


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QualityStore]:
    s = open_store(f"sqlite:///{tmp_path}/qdm.db")
    yield s
    s.close()


def folder_config(watch: Path, settle_s: float = 0.6) -> FolderConfig:
    return FolderConfig.model_validate(
        {
            "watch": str(watch),
            "settle_s": settle_s,
            "files": [
                {"pattern": "furnace-*", "kind": "measurement"},
                {"pattern": "env-*", "kind": "environment"},
            ],
        }
    )


async def test_files_arriving_ingested_once_bad_rows_beside_the_file(
    store: QualityStore, tmp_path: Path
) -> None:
    watch = tmp_path / "exports"
    watch.mkdir()
    (watch / "furnace-0.csv").write_text(HEADER + rows(0, 3))  # there before the start
    (watch / "notes.txt").write_text("not an export")
    connector = FolderConnector(folder_config(watch), store)
    stop = asyncio.Event()
    task = asyncio.create_task(connector.run(stop))
    try:
        await until(lambda: (watch / "done" / "furnace-0.csv").exists())
        assert count(store) == 3

        # a second watcher on the same folder is refused
        with pytest.raises(FolderBusy, match="another watcher"):
            await FolderConnector(folder_config(watch), store).run(asyncio.Event())

        # an export written slowly under its final name: not read before it settles
        growing = watch / "furnace-1.csv"
        with growing.open("w") as out:
            out.write(HEADER + rows(3, 5))
            out.flush()
            for i in range(4):
                await asyncio.sleep(0.3)  # < settle_s between writes
                assert count(store) == 3, "read while still being written"
                out.write(rows(8 + i * 5, 5))
                out.flush()
        # one written as .part and renamed when complete
        part = watch / "furnace-2.csv.part"
        part.write_text(HEADER + rows(100, 4))
        await until(lambda: (watch / "done" / "furnace-1.csv").exists())
        assert count(store) == 3 + 25
        assert part.exists() and not (watch / "done" / part.name).exists()
        part.rename(watch / "furnace-2.csv")
        await until(lambda: (watch / "done" / "furnace-2.csv").exists())
        assert count(store) == 3 + 25 + 4

        # the same export dropped again (another name): not read again
        shutil.copy(watch / "done" / "furnace-1.csv", watch / "furnace-1-resent.csv")
        os.utime(watch / "furnace-1-resent.csv")
        await until(lambda: (watch / "done" / "furnace-1-resent.csv").exists())
        assert connector.totals.duplicates == 1
        assert count(store) == 32

        # bad rows: the good ones stored, the file and its errors in failed/
        bad = watch / "furnace-3.csv"
        bad.write_text(
            HEADER
            + rows(200, 1)
            + "FURNACE-1,firing_peak_temperature,850,furlong,2025-03-01T09:00:00Z,B-1\n"
            + "FURNACE-1,no_such_element,1,°C,2025-03-01T09:00:01Z,B-1\n"
            + "FURNACE-1,firing_peak_temperature,NaN,°C,2025-03-01T09:00:02Z,B-1\n"
            + rows(201, 1)
        )
        await until(lambda: (watch / "failed" / "furnace-3.csv").exists())
        assert count(store) == 34
        with (watch / "failed" / "furnace-3.csv.errors.csv").open() as f:
            errors = list(csv.DictReader(f))
        assert [(e["line"], e["field"]) for e in errors] == [
            ("3", "unit"),
            ("4", "parameter"),
            ("5", "value"),
        ]
        assert "furlong" in errors[0]["reason"]

        # a file that is no export at all: failed, with why
        (watch / "env-1.csv").write_text("this,is,no\nheader,at,all\n")
        await until(lambda: (watch / "failed" / "env-1.csv").exists())
        assert (watch / "failed" / "env-1.csv.errors.csv").read_text().count("\n") == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert (watch / "notes.txt").exists()  # matches no rule: left alone
    assert sorted(p.name for p in watch.iterdir()) == [LEDGER, "done", "failed", "notes.txt"]
    assert connector.totals.done == 4 and connector.totals.failed == 2

    # a restart knows what was ingested: the same content dropped again is not read
    shutil.copy(watch / "done" / "furnace-0.csv", watch / "furnace-0.csv")
    again = FolderConnector(folder_config(watch), store)
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    try:
        await until(lambda: again.totals.duplicates == 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert count(store) == 34
    assert (watch / "done" / "furnace-0.csv").exists()
    assert len(list((watch / "done").glob("furnace-0*.csv"))) == 2  # a second name, kept
    ledger = [json.loads(line) for line in (watch / LEDGER).read_text().splitlines()]
    assert [e["name"] for e in ledger] == [
        "furnace-0.csv", "furnace-1.csv", "furnace-2.csv", "furnace-3.csv", "env-1.csv",
    ]  # fmt: skip


def test_cli_watches_until_sigterm(tmp_path: Path) -> None:
    node = tmp_path / "furnace"
    node.mkdir()
    (node / "node.json").write_text(
        json.dumps({"name": "furnace", "role": "supplier", "member_id": "furnace"})
    )
    watch = tmp_path / "exports"
    watch.mkdir()
    conf = tmp_path / "folder.yaml"
    conf.write_text(
        "watch: exports\nsettle_s: 0.3\nfiles:\n  - {pattern: 'furnace-*', kind: measurement}\n"
    )
    worktree = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(worktree)}
    log = tmp_path / "connector.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qdspace", "connect", "folder", "--dir", str(node),
             "--config", str(conf)],
            stderr=out, stdout=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "watching" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        (watch / "furnace-9.jsonl").write_text(
            json.dumps(
                {"equipment": "FURNACE-2", "parameter": "firing_peak_temperature",
                 "value": 1500, "unit": "°F", "measured_at": "2025-03-01T08:00:00Z"}
            ) + "\n"
        )  # fmt: skip
        while not (watch / "done" / "furnace-9.jsonl").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert proc.returncode == 0, log.read_text()
    assert "1 files done, 0 failed" in " ".join(log.read_text().split())  # rich wraps
    store = open_store(f"sqlite:///{node}/node.db")
    try:
        with store.engine.connect() as c:
            value, unit = c.execute(text("SELECT value, unit FROM qdm_measurement")).one()
    finally:
        store.close()
    assert (value, unit) == (pytest.approx((1500 - 32) / 1.8), "°C")
