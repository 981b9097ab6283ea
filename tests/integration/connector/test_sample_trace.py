"""The sample data's defect story holds: a trace over the three tiers' own QDMs finds the
planted PECVD excursion first, not the decoy, and the wafer maker clean.

The demo runs this trace over real nodes (tests/integration/test_demo.py); here the same
per-member computation (`trace_data.local_tier`, what each node runs for its part) runs
over SQLite files holding each member's sample files as ingested, so a change to the
sample data that breaks the story fails in seconds, not after the whole demo. The
planted truth comes from the generators (`sample_pecvd.EXCURSION`), not from the report.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from qdspace.connector.ingest import ingest_file
from qdspace.connector.sample import (
    EXCURSION_BATCH,
    cracked_module_batch,
    oem_inspection_window,
    wafer_batches,
    write_sample_files,
)
from qdspace.connector.sample_cellex import FURNACE
from qdspace.connector.sample_pecvd import (
    BASE_PA,
    EXCURSION,
    GLITCH_PA,
    SHIFT,
    TOOLS,
    batch_start,
    pecvd_readings,
)
from qdspace.connector.storage import QualityStore, open_store
from qdspace.connector.trace import TierAnswer
from qdspace.connector.trace_data import failed_batches, local_tier, shift_of
from qdspace.connector.trace_report import build_report, report_to_json

MEMBERS = {"sunarc": "oem", "cellex": "supplier", "siliwafer": "supplier"}


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, QualityStore]]:
    folder = tmp_path_factory.mktemp("sample-trace")
    opened = {m: open_store(f"sqlite:///{folder / m}.db") for m in MEMBERS}
    try:
        for member, role in MEMBERS.items():
            files = write_sample_files(folder / member, member, role, bad_rows=True)
            for kind, path in files.items():
                ingest_file(opened[member], Path(path), kind)
        yield opened
    finally:
        for store in opened.values():
            store.close()


def _tiers(stores: dict[str, QualityStore]) -> tuple[TierAnswer, TierAnswer, TierAnswer]:
    since, until = oem_inspection_window()
    ids = failed_batches(
        stores["sunarc"].engine, since=since, until=until, defect_class="microcrack"
    )
    oem, bought = local_tier(stores["sunarc"].engine, ids, "sunarc", {})
    cells, bought_cells = local_tier(
        stores["cellex"].engine, frozenset(bought["cellex"]), "cellex", {}
    )
    wafers, _ = local_tier(
        stores["siliwafer"].engine, frozenset(bought_cells["siliwafer"]), "siliwafer", {}
    )
    return oem, cells, wafers


def test_the_planted_excursion_is_one_tool_one_shift_one_window() -> None:
    assert shift_of(EXCURSION.start) == shift_of(EXCURSION.end) == EXCURSION.shift == "late"
    start = batch_start(EXCURSION_BATCH)
    assert start <= EXCURSION.start < EXCURSION.end < start + SHIFT
    rows = pecvd_readings()
    vacuum = [r for r in rows if r["parameter"] == "pecvd_chamber_vacuum"]
    for r in vacuum:
        pa = r["value"] * (100 if r["unit"] == "mbar" else 1)
        at = datetime.fromisoformat(r["measured_at"])
        in_leak = r["equipment"] == EXCURSION.tool and EXCURSION.start <= at <= EXCURSION.end
        if in_leak:
            assert pa > BASE_PA[r["equipment"]] + 8, r  # the leak's ramps and plateau
        else:  # elsewhere noise, and a glitch of single readings at most
            assert abs(pa - BASE_PA[r["equipment"]]) < GLITCH_PA + 6, r
    # both tools coated every cell batch; the other tool ran through the leak unharmed
    assert {(r["equipment"], r["batch_id"]) for r in vacuum} == {
        (t, b) for t in TOOLS for b in {r["batch_id"] for r in vacuum}
    }
    with pytest.raises(ValueError, match="cellex only"):
        pecvd_readings("polycell")


def test_sunarc_sees_the_cluster_in_the_module_batch_of_the_excursion_cells(
    stores: dict[str, QualityStore],
) -> None:
    oem, cells, wafers = _tiers(stores)
    assert oem.implicated == (cracked_module_batch(),)
    assert cells.implicated == (EXCURSION.batch,)
    behind = tuple(wafer_batches("cellex")[2 * (EXCURSION_BATCH - 1) : 2 * EXCURSION_BATCH])
    assert wafers.implicated == behind


def test_a_trace_over_the_sample_ranks_the_planted_cause_first(
    stores: dict[str, QualityStore],
) -> None:
    oem, cells, wafers = _tiers(stores)
    root = replace(oem, upstream=(replace(cells, upstream=(wafers,)),))
    now = datetime.now(UTC)
    report = report_to_json(build_report("tr-sample", {}, root, now, now, {}))
    top = report["causes"][0]
    assert (top["member"], top["key"], top["significant"]) == (
        EXCURSION.member,
        EXCURSION.key,
        True,
    )
    (window,) = [s for s in top["path"] if s["level"] == "window"]
    assert datetime.fromisoformat(window["start"]) == EXCURSION.start
    assert datetime.fromisoformat(window["end"]) == EXCURSION.end
    assert top["confidence"]["calibrated"] == 1.0  # PECVD-2's certificate was valid
    assert [s["level"] for s in top["path"]] == ["module", "cell", "window", "wafer"]
    # the decoy and everything else: not significant; the wafer maker: clean
    assert [c["key"] for c in report["causes"] if c["significant"]] == [EXCURSION.key]
    decoy = next(f for f in cells.findings if f.key == f"{FURNACE}/firing_peak_temperature")
    assert decoy.implicated_center is not None and decoy.comparable_center is not None
    assert decoy.implicated_center > decoy.comparable_center + 3  # it did run hot
    assert decoy.confidence.calibrated == 0.0  # its certificate had expired
    assert not any(f.significant() for f in wafers.findings + oem.findings)
    assert report["responsibility"] == {"sunarc": 0.0, "cellex": 1.0, "siliwafer": 0.0}
