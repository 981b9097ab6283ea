"""The export-folder connector: which files are ours, when one has settled, and what a file
that cannot be read becomes (failed/ with its errors, never the end of the watcher)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from qdspace.connector.linein import folder as folder_module
from qdspace.connector.linein.config import FolderConfig
from qdspace.connector.linein.folder import (
    ERRORS_SUFFIX,
    LEDGER,
    NAME_MAX,
    FolderConnector,
    Ledger,
    Settling,
    free_name,
    kind_of,
)
from qdspace.connector.linein.folder_files import Folder
from qdspace.connector.storage import open_store

CONFIG = FolderConfig.model_validate(
    {
        "watch": "/x",
        "files": [
            {"pattern": "iv-*", "kind": "inspection"},
            {"pattern": "*", "kind": "measurement"},
        ],
    }
)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("iv-2025.csv", "inspection"),
        ("furnace.JSONL", "measurement"),
        ("furnace.ndjson", "measurement"),
        ("iv-2025.csv.part", None),
        ("iv-2025.csv.tmp", None),
        (".iv-2025.csv", None),
        ("iv-2025.csv.errors.csv", None),
        ("iv-2025.xlsx", None),
        ("furnace.csv~", None),
    ],
)
def test_kind_of(name: str, kind: str | None) -> None:
    assert kind_of(CONFIG, name) == kind


def test_a_file_settles_only_when_unchanged_for_settle_s() -> None:
    s = Settling(1.0)
    assert not s.look("a.csv", (10, 1), now=0.0)  # first sight
    assert not s.look("a.csv", (10, 1), now=0.5)
    assert not s.look("a.csv", (20, 2), now=1.2)  # grew: starts again
    assert not s.look("a.csv", (20, 2), now=2.1)
    assert s.look("a.csv", (20, 2), now=2.2)
    zero = Settling(0.0)
    assert not zero.look("b.csv", (1, 1), now=0.0)  # never at the first look
    assert zero.look("b.csv", (1, 1), now=0.0)


def test_long_names_are_cut_so_the_errors_file_fits_name_max(tmp_path: Path) -> None:
    held = Folder.open(tmp_path)
    try:
        name = "x" * 240 + ".jsonl"
        target = tmp_path / free_name(held, name, "ab" * 32)
        assert target.suffix == ".jsonl" and target.name.startswith("x" * 100)
        assert len(os.fsencode(target.name + ERRORS_SUFFIX + ".tmp")) <= NAME_MAX
        assert free_name(held, "y" * 240 + ".jsonl", "ab" * 32) != target.name
        target.write_text("")  # taken: the content hash goes in, still within the limit
        again = free_name(held, name, "cd" * 32)
        assert again != target.name
        assert len(os.fsencode(again + ERRORS_SUFFIX + ".tmp")) <= NAME_MAX
        assert free_name(held, "short.csv", "ab" * 32) == "short.csv"
    finally:
        held.close()


POISON_FILES = {
    "year1.jsonl": '{"equipment":"f1","parameter":"firing_peak_temperature","value":5,'
    '"unit":"°C","measured_at":"0001-01-01T00:00:00+01:00"}\n',
    "bigint.jsonl": '{"equipment":"f1","parameter":"firing_peak_temperature","value":'
    + "9" * 400
    + ',"unit":"°C","measured_at":"2024-01-01T00:00:00Z"}\n',
    "surrogate.jsonl": '{"equipment":"f1","parameter":"firing_peak_temperature","value":5,'
    '"unit":"°C","measured_at":"2024-01-01T00:00:00Z","batch_id":"\\ud800"}\n',
    "huge.jsonl": '{"equipment":"f1","parameter":"firing_peak_temperature","value":'
    + "9" * 5000
    + ',"unit":"°C","measured_at":"2024-01-01T00:00:00Z"}\n',
    "y" * 240 + ".jsonl": '{"equipment":"f1","parameter":"firing_peak_temperature",'
    '"value":"bad","unit":"°C","measured_at":"2024-01-01T00:00:00Z"}\n',
    "year1.csv": "equipment,parameter,value,unit,measured_at\n"
    "f1,firing_peak_temperature,5,°C,0001-01-01T00:00:00+01:00\n",
    "good.csv": "equipment,parameter,value,unit,measured_at\n"
    "f1,firing_peak_temperature,5,°C,2024-01-01T00:00:00Z\n",
}


def test_poison_files_go_to_failed_with_their_errors_and_the_scan_goes_on(
    tmp_path: Path,
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    for name, body in POISON_FILES.items():
        (watch / name).write_text(body, encoding="utf-8")
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    config = FolderConfig(watch=watch, files=[{"pattern": "*", "kind": "measurement"}], settle_s=0)
    folder = FolderConnector(config, store)
    folder.done.mkdir()
    folder.failed.mkdir()
    ledger = Ledger(watch / LEDGER)
    try:
        folder.scan(ledger)  # first look
        folder.scan(ledger)  # settled: taken
    finally:
        ledger.close()
        store.close()
    assert [p.name for p in watch.iterdir() if p.is_file() and p.name != LEDGER] == []
    assert folder.totals.done == 1 and folder.totals.failed == len(POISON_FILES) - 1
    errors = sorted(p for p in folder.failed.iterdir() if p.name.endswith(ERRORS_SUFFIX))
    assert len(errors) == len(POISON_FILES) - 1
    text = "".join(p.read_text(encoding="utf-8") for p in errors)
    for reason in ("out of range in UTC", "integer of 400 digits", "lone surrogate",
                   "more than 4300 digits", "neither a number nor a grade code"):  # fmt: skip
        assert reason in text


def test_a_file_that_breaks_the_ingest_goes_to_failed_not_the_watcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    (watch / "a.csv").write_text(POISON_FILES["good.csv"], encoding="utf-8")
    store = open_store(f"sqlite:///{tmp_path}/q.db")

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("unforeseen")

    monkeypatch.setattr(folder_module, "read_export", broken)
    config = FolderConfig(watch=watch, files=[{"pattern": "*", "kind": "measurement"}], settle_s=0)
    folder = FolderConnector(config, store)
    folder.done.mkdir()
    folder.failed.mkdir()
    ledger = Ledger(watch / LEDGER)
    try:
        folder.scan(ledger)
        folder.scan(ledger)
    finally:
        ledger.close()
        store.close()
    assert not (watch / "a.csv").exists() and (folder.failed / "a.csv").exists()
    errors = (folder.failed / ("a.csv" + ERRORS_SUFFIX)).read_text(encoding="utf-8")
    assert "RuntimeError: unforeseen" in errors


def test_content_that_failed_is_read_again_when_dropped_again(tmp_path: Path) -> None:
    """An export that went to failed/ and is dropped back unchanged (its operator fixed
    what refused it) was set aside unread as "ingested before"; it is read again, and
    the rows stored the first time are not stored twice."""
    watch = tmp_path / "watch"
    watch.mkdir()
    body = POISON_FILES["good.csv"] + POISON_FILES["good.csv"].splitlines()[1] + ",x\n"
    store = open_store(f"sqlite:///{tmp_path}/q.db")
    config = FolderConfig(watch=watch, files=[{"pattern": "*", "kind": "measurement"}], settle_s=0)
    folder = FolderConnector(config, store)
    folder.done.mkdir()
    folder.failed.mkdir()
    ledger = Ledger(watch / LEDGER)
    try:
        for name in ("a.csv", "again.csv"):
            (watch / name).write_text(body, encoding="utf-8")
            folder.scan(ledger)
            folder.scan(ledger)
    finally:
        ledger.close()
        store.close()
    assert (folder.totals.failed, folder.totals.duplicates) == (2, 0)  # read both times
    assert folder.totals.rows == 1  # the good row, stored the first time only
    assert (folder.failed / ("again.csv" + ERRORS_SUFFIX)).exists()
