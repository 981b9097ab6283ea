"""Data confidence, answer bounds and the wire round trip of a trace answer."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from qdspace.connector.confidence import (
    CalibrationBook,
    Certificate,
    anchored_share,
    calibrated_share,
    completeness,
)
from qdspace.connector.genealogy import BatchInfo
from qdspace.connector.rootcause import DataConfidence, Finding, Reading, Window
from qdspace.connector.trace import (
    MAX_DEPTH,
    BatchLink,
    MissingTier,
    TierAnswer,
    TraceError,
    check_answer,
    check_batch_ids,
)
from qdspace.connector.trace_report import build_report, report_bytes
from qdspace.node.rpc.trace_serde import answer_from_proto, answer_to_proto

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def reading(batch: str, hours: int, rid: int) -> Reading:
    return Reading("PECVD-1/v", batch, T0 + timedelta(hours=hours), 1.0, f"qdm_measurement:{rid}")


def test_calibration_counts_only_readings_under_a_valid_passing_certificate() -> None:
    book = CalibrationBook(
        [
            Certificate("C1", "PECVD-1", T0, T0 + timedelta(hours=10)),
            Certificate(
                "C2", "PECVD-1", T0 + timedelta(hours=20), T0 + timedelta(hours=30), "fail"
            ),
        ]
    )
    readings = [reading("B", h, h) for h in (1, 5, 15, 25)]
    assert calibrated_share(readings, "PECVD-1", book) == 0.5
    assert calibrated_share(readings, "OTHER", book) is None  # unknown, not expired


def test_completeness_and_anchoring() -> None:
    readings = [reading("A", h, h) for h in range(4)] + [reading("B", h, 10 + h) for h in range(2)]
    assert completeness(readings, {"A", "B", "C"}) == pytest.approx((3 + 2) / (3 * 3))
    assert anchored_share(readings, {"qdm_measurement": 3}) == pytest.approx(4 / 6)
    assert anchored_share(readings, {}) == 0.0


def test_question_bounds() -> None:
    with pytest.raises(TraceError):
        check_batch_ids([])
    with pytest.raises(TraceError):
        check_batch_ids([f"B{i}" for i in range(501)])
    with pytest.raises(TraceError):
        check_batch_ids(["bad\x00id"])


def _finding() -> Finding:
    window = Window(T0, T0 + timedelta(hours=1), 3, ("CB-1",), 7.5)
    return Finding(
        "PECVD-1/v",
        "numeric",
        30,
        300,
        0.8,
        0.1,
        1e-6,
        0.0,
        1e-5,
        121.0,
        120.0,
        (100.0, 140.0),
        (window,),
        ("qdm_measurement:1",),
        DataConfidence(0.9, 0.5, None),
    )


def _answer(upstream: tuple[TierAnswer, ...] = ()) -> TierAnswer:
    link = BatchLink(
        BatchInfo("CB-1", "cell", "cell", "cellex", 1.0),
        (BatchInfo("WB-1", "wafer", "wafer", "siwafer", 1.0),),
    )
    return TierAnswer(
        "cellex",
        ("CB-1",),
        10,
        (link,),
        (_finding(),),
        upstream,
        (MissingTier("siwafer", ("WB-1",), "no answer before the deadline"),),
        12.5,
    )


def test_an_answer_survives_the_wire() -> None:
    answer = _answer()
    back = answer_from_proto(answer_to_proto(answer), "cellex")
    assert back.findings[0].confidence == answer.findings[0].confidence
    assert back.findings[0].windows == answer.findings[0].windows
    assert back.links == answer.links and back.missing == answer.missing
    with pytest.raises(TraceError):  # answered as somebody else
        answer_from_proto(answer_to_proto(answer), "polycell")


def test_hostile_answers_are_refused() -> None:
    deep = _answer()
    for _ in range(MAX_DEPTH + 1):
        deep = replace(_answer(), upstream=(deep,))
    with pytest.raises(TraceError):
        answer_from_proto(answer_to_proto(deep), "cellex")
    nan = replace(_answer(), findings=(replace(_finding(), effect=float("nan")),))
    with pytest.raises(TraceError):
        check_answer(nan)
    many = replace(_answer(), findings=(_finding(),) * 41)
    with pytest.raises(TraceError):
        check_answer(many)


def test_report_path_runs_from_the_oem_batch_to_the_wafer_batch() -> None:
    oem = TierAnswer(
        "sunarc",
        ("MB-1",),
        5,
        (
            BatchLink(
                BatchInfo("MB-1", "module", "module", "sunarc", 1.0),
                (BatchInfo("CB-1", "cell", "cell", "cellex", 1.0),),
            ),
        ),
        (),
        (_answer(),),
    )
    report = build_report("tr-1", {"batch": "MB-1"}, oem, T0, T0, {"total": 1.0})
    (cause,) = report.causes
    assert [s.level for s in cause.path] == ["module", "cell", "window", "wafer"]
    assert report.partial and report.responsibility == {"sunarc": 0.0, "cellex": 1.0}
    assert report_bytes(report) == report_bytes(report)
