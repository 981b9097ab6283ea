"""Local findings of a root-cause trace: the planted cause ranks first among decoys."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from qdspace.connector.rootcause import (
    DataConfidence,
    Observation,
    Reading,
    RootCauseError,
    holm,
    local_findings,
    numeric_finding,
    responsibility,
)

T0 = datetime(2026, 10, 1, tzinfo=UTC)
PARAMETERS = [
    "PECVD-2/pecvd_chamber_vacuum",
    "PECVD-2/rf_power",
    "PECVD-1/pecvd_chamber_vacuum",
    "FURNACE-1/peak_temperature",
    "PRINTER-3/squeegee_pressure",
    "CLEANROOM-A/humidity_rh",
    "CLEANROOM-A/temperature_c",
    "TEXTURE-1/bath_concentration",
]


def generate_case(
    rng: random.Random, batches: int = 12, per_batch: int = 48
) -> tuple[list[Reading], list[Observation], frozenset[str], frozenset[str], str]:
    """A producer's process data with one planted cause and decoys.

    Every parameter has its own level, short-term noise and batch-to-batch offsets;
    one drifts over the whole period; one has a short excursion in a comparable batch;
    one runs higher in a random half of all batches. The planted cause: an excursion
    of 3-8 short-term sigmas over 10-50 % of the readings of every implicated batch.
    """
    ids = [f"CB-{n:03d}" for n in range(batches)]
    implicated = frozenset(rng.sample(ids, rng.randint(1, 3)))
    comparable = frozenset(ids) - implicated
    planted, spike, level = rng.sample(PARAMETERS, 3)
    drift = rng.choice([p for p in PARAMETERS if p not in (planted, spike, level)])
    half = set(rng.sample(ids, batches // 2))
    readings: list[Reading] = []
    for p_index, key in enumerate(PARAMETERS):
        mu, sigma = rng.uniform(10, 200), rng.uniform(0.5, 5)
        offsets = {b: rng.gauss(0, sigma * rng.uniform(0, 1.5)) for b in ids}
        spiked = rng.choice(sorted(comparable))
        for b_index, batch in enumerate(ids):
            window = rng.uniform(0.1, 0.5)
            start = rng.randint(0, int(per_batch * (1 - window)))
            for i in range(per_batch):
                at = T0 + timedelta(hours=8 * b_index, minutes=10 * i)
                value = mu + offsets[batch] + rng.gauss(0, sigma)
                if key == drift:
                    value += 3 * sigma * (b_index * per_batch + i) / (batches * per_batch)
                if key == level and batch in half:
                    value += 2 * sigma
                if key == spike and batch == spiked and 10 <= i < 14:
                    value += 8 * sigma
                excursion = start <= i < start + int(window * per_batch)
                if key == planted and batch in implicated and excursion:
                    value += rng.choice([-1, 1]) * rng.uniform(3, 8) * sigma
                evidence = f"qdm_measurement:{p_index}-{b_index}-{i}"
                readings.append(Reading(key, batch, at, value, evidence))
    observations = [
        Observation("shift", b, rng.choice(["early", "late", "night"]), f"qdm_operator_log:{b}")
        for b in ids
    ]
    return readings, observations, implicated, comparable, planted


def test_the_planted_cause_ranks_first_in_at_least_95_percent_of_cases() -> None:
    rng = random.Random(20261202)
    cases, first = 120, 0
    for _ in range(cases):
        readings, observations, implicated, comparable, planted = generate_case(rng)
        ranked = local_findings(readings, implicated, comparable, observations=observations)
        first += ranked[0].key == planted
    accuracy = first / cases
    print(f"planted cause ranked first: {accuracy:.3f} of {cases} cases")
    assert accuracy >= 0.95


def test_a_finding_names_its_window_limits_and_evidence() -> None:
    readings, observations, implicated, comparable, planted = generate_case(random.Random(7))
    top = local_findings(readings, implicated, comparable, observations=observations)[0]
    assert top.key == planted and top.significant()
    assert top.windows and set(top.windows[0].batches) <= implicated
    assert top.evidence and all(e.startswith("qdm_measurement:") for e in top.evidence)
    low, high = top.limits or (0.0, 0.0)
    assert low < (top.comparable_center or 0.0) < high


def test_nothing_is_significant_when_nothing_was_planted() -> None:
    rng = random.Random(3)
    significant = 0
    for _ in range(20):
        readings, _, implicated, comparable, planted = generate_case(rng)
        clean = [r for r in readings if r.key != planted]
        findings = local_findings(clean, implicated, comparable)
        significant += sum(f.significant() and f.excess_out_of_control > 0.1 for f in findings)
    assert significant <= 1  # excursions do not appear out of noise, level decoys aside


def test_confidence_weighs_in_between_equal_signals() -> None:
    readings, _, implicated, comparable, planted = generate_case(random.Random(11))
    trusted = DataConfidence(completeness=1.0, anchored=1.0, calibrated=1.0)
    doubtful = DataConfidence(completeness=0.4, anchored=0.0, calibrated=0.0)
    ranked = local_findings(readings, implicated, comparable, confidence={planted: doubtful})
    weighted = local_findings(readings, implicated, comparable, confidence={planted: trusted})
    top_doubt = next(f for f in ranked if f.key == planted)
    top_trust = next(f for f in weighted if f.key == planted)
    assert top_trust.score > 2 * top_doubt.score
    assert top_doubt.strength == top_trust.strength


def test_small_samples_and_hostile_values() -> None:
    few = [Reading("k", "A", T0, 1.0, "e1"), Reading("k", "B", T0, 2.0, "e2")]
    finding = numeric_finding("k", few[:1], few[1:])
    assert finding.p_value == 1.0 and "too few readings" in finding.note
    bad = Reading("k", "A", T0, math.nan, "qdm_measurement:9")
    with pytest.raises(RootCauseError, match="qdm_measurement:9"):
        numeric_finding("k", [bad] * 3, [bad] * 3)
    with pytest.raises(RootCauseError, match="no implicated batch"):
        local_findings([], frozenset(), frozenset({"B"}))
    with pytest.raises(RootCauseError, match="both implicated and comparable: A"):
        local_findings([], frozenset({"A"}), frozenset({"A"}))
    with pytest.raises(RootCauseError, match="completeness"):
        DataConfidence(completeness=float("nan"))


def test_holm_and_responsibility() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    readings, _, implicated, comparable, planted = generate_case(random.Random(5))
    cellex = local_findings(readings, implicated, comparable)
    clean = [r for r in readings if r.key != planted]
    wafer = [f for f in local_findings(clean, implicated, comparable) if f.key != planted]
    shares = responsibility({"cellex": cellex, "siliwafer": wafer[:0]})
    assert shares == {"cellex": 1.0, "siliwafer": 0.0}
