"""The wafer maker's sample data: every row valid, its wafer batches the very parents of
Cellex's genealogy (so the demo's hop from Cellex is answered), and clean.

"Clean" is what a later trace from Cellex's drifting cell batch must find at SiliWafer:
every process value of the wafers behind that batch lies within the spread of all of
SiliWafer's wafers, and the sorter's failure rate there is the usual one.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from sqlalchemy import select

from qdspace.connector.genealogy import NotYourBatch, upstream
from qdspace.connector.ingest import ingest_file
from qdspace.connector.qdm import GenealogyEdge, Inspection, ProcessMeasurement
from qdspace.connector.sample import (
    EXCURSION_BATCH,
    cell_batch,
    wafer_batches,
    write_sample_files,
)
from qdspace.connector.sample_wafers import wafer_order
from qdspace.connector.storage import QualityStore, open_store


def _ingest(store: QualityStore, folder: Path, member: str) -> None:
    for kind, path in write_sample_files(folder, member, "supplier").items():
        report = ingest_file(store, path, kind)
        assert report.rejected == [] and report.corrected == 0 and report.duplicates == 0, (
            kind,
            report.rejected[:3],
            report.corrected,
            report.duplicates,
        )
        assert report.accepted > 0, kind


def test_siliwafer_sold_cellex_the_wafers_cellex_names_and_answers_only_cellex(
    store: QualityStore, tmp_path: Path
) -> None:
    _ingest(store, tmp_path / "siliwafer", "siliwafer")
    cellex = open_store(f"sqlite:///{tmp_path / 'cellex.db'}")
    try:
        _ingest(cellex, tmp_path / "cellex", "cellex")
        with cellex.engine.connect() as db:
            parents = set(db.scalars(select(GenealogyEdge.parent_batch_id)))
    finally:
        cellex.close()
    assert parents == set(wafer_batches("cellex"))
    for wafer in sorted(parents):
        batch, ingots = upstream(store.engine, wafer, customer="cellex")
        assert (batch.producer, batch.kind) == ("siliwafer", "wafer")
        assert [(i.producer, i.kind) for i in ingots] == [("siliwafer", "ingot")]
    try:
        upstream(store.engine, wafer_batches("cellex")[0], customer="polycell")
    except NotYourBatch:
        pass
    else:
        raise AssertionError("siliwafer answered polycell about cellex's wafers")


def test_siliwafer_data_are_clean_behind_cellex_excursion(
    store: QualityStore, tmp_path: Path
) -> None:
    _ingest(store, tmp_path / "siliwafer", "siliwafer")
    cellex = open_store(f"sqlite:///{tmp_path / 'cellex.db'}")
    try:
        _ingest(cellex, tmp_path / "cellex", "cellex")
        with cellex.engine.connect() as db:
            rows = db.execute(
                select(GenealogyEdge.parent_batch_id).where(
                    GenealogyEdge.child_batch_id == cell_batch("cellex", EXCURSION_BATCH)
                )
            )
            behind = {r[0] for r in rows}
    finally:
        cellex.close()
    assert len(behind) == 2
    with store.engine.connect() as db:
        measured = db.execute(
            select(
                ProcessMeasurement.parameter,
                ProcessMeasurement.batch_id,
                ProcessMeasurement.value,
                ProcessMeasurement.order_id,
            )
        ).all()
        verdicts = db.execute(select(Inspection.batch_id, Inspection.verdict)).all()
    by_parameter: dict[str, list[float]] = {}
    for parameter, _batch, value, _order in measured:
        by_parameter.setdefault(parameter, []).append(value)
    assert set(by_parameter) == {
        "crystal_pull_rate",
        "ingot_resistivity",
        "minority_carrier_lifetime",
        "wire_saw_tension",
        "wafer_thickness",
        "total_thickness_variation",
    }
    # normalised by the dictionary: mm and ms arrived too, all stored in one unit
    thickness = by_parameter["wafer_thickness"]
    assert min(thickness) > 140 and max(thickness) < 160
    lifetime = by_parameter["minority_carrier_lifetime"]
    assert min(lifetime) > 250 and max(lifetime) < 600
    for parameter, values in by_parameter.items():
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        for _p, batch, value, order in measured:
            if _p == parameter and batch in behind:
                assert abs(value - mean) <= 4 * sd, (parameter, batch, value, mean, sd)
                assert order == wafer_order("siliwafer")
    failed = [b for b, v in verdicts if v == "fail"]
    assert len(failed) / len(verdicts) < 0.03
    assert sum(b in behind for b in failed) <= 1
