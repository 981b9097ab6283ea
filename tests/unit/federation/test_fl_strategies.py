"""Aggregation strategies, including a poisoned member on a synthetic task."""

from __future__ import annotations

import numpy as np
import pytest

from qdspace.federation import logreg
from qdspace.federation.errors import StrategyError
from qdspace.federation.params import Vector, flatten, unflatten
from qdspace.federation.strategies import (
    SUM_BASED,
    ClientUpdate,
    FedAvg,
    FedProx,
    Krum,
    Median,
    NormBounding,
    Strategy,
    StrategyName,
    StrategySpec,
    TrimmedMean,
    build_strategy,
    clip_in_place,
    clip_to_norm,
    krum_scores,
    proximal_gradient,
    proximal_term,
)


def vec(*values: float) -> Vector:
    return np.array(values, dtype=np.float32)


def updates(*rows: tuple[float, ...], examples: tuple[int, ...] = ()) -> list[ClientUpdate]:
    counts = examples or tuple(1 for _ in rows)
    pairs = enumerate(zip(rows, counts, strict=True))
    return [ClientUpdate(f"m{i}", vec(*r), n) for i, (r, n) in pairs]


ZERO2 = vec(0.0, 0.0)


def test_fedavg_weights_by_examples() -> None:
    agg = FedAvg().aggregate(ZERO2, updates((1, 0), (4, 3), examples=(3, 1)))
    np.testing.assert_allclose(agg.vector, [1.75, 0.75])
    assert agg.used == ("m0", "m1")
    unweighted = FedAvg(weighted=False).aggregate(ZERO2, updates((1, 0), (4, 3), examples=(3, 1)))
    np.testing.assert_allclose(unweighted.vector, [2.5, 1.5])


def test_fedprox_aggregates_like_fedavg_and_its_term_pulls_towards_global() -> None:
    ups = updates((1, 0), (4, 3), examples=(3, 1))
    np.testing.assert_array_equal(
        FedProx(mu=0.5).aggregate(ZERO2, ups).vector, FedAvg().aggregate(ZERO2, ups).vector
    )
    local, glob = vec(3.0, -1.0), vec(1.0, 1.0)
    assert proximal_term(local, glob, 0.5) == pytest.approx(0.25 * (4 + 4))
    np.testing.assert_allclose(proximal_gradient(local, glob, 0.5), [1.0, -1.0])
    with pytest.raises(StrategyError, match="mu"):
        FedProx(mu=-1)


def test_median_and_trimmed_mean_ignore_one_outlier_per_coordinate() -> None:
    ups = updates((1, 10), (2, 20), (3, 30), (4, 40), (1000, -1000))
    np.testing.assert_allclose(Median().aggregate(ZERO2, ups).vector, [3, 20])
    np.testing.assert_allclose(TrimmedMean(trim=0.2).aggregate(ZERO2, ups).vector, [3, 20])
    np.testing.assert_allclose(TrimmedMean(trim=0.0).aggregate(ZERO2, ups).vector, [202, -180])
    with pytest.raises(StrategyError, match="fraction"):
        TrimmedMean(trim=0.5)


def test_krum_scores_and_selection() -> None:
    ups = updates((0, 0), (1, 0), (0, 1), (1, 1), (50, 50))
    scores = krum_scores(np.stack([u.vector for u in ups]), byzantine=1)
    # n - f - 2 = 2 nearest: (0,0) -> 1 + 1; (50,50) -> far from everyone.
    assert scores[0] == pytest.approx(2.0)
    assert int(np.argmax(scores)) == 4
    krum = Krum(byzantine=1).aggregate(ZERO2, ups)
    assert len(krum.used) == 1 and "m4" not in krum.used
    multi = Krum(byzantine=1, select=4).aggregate(ZERO2, ups)
    assert sorted(multi.used) == ["m0", "m1", "m2", "m3"]
    np.testing.assert_allclose(multi.vector, [0.5, 0.5])
    with pytest.raises(StrategyError, match="at least 5"):
        Krum(byzantine=1).aggregate(ZERO2, ups[:4])


def test_norm_bounding_clips_only_long_updates() -> None:
    glob = vec(1.0, 1.0)
    ups = [ClientUpdate("a", vec(1.3, 1.4), 1), ClientUpdate("b", vec(31.0, 41.0), 1)]
    agg = NormBounding(bound=1.0).aggregate(glob, ups)
    assert agg.bounded == ("b",)
    expected = [1.0 + (0.3 + 0.6) / 2, 1.0 + (0.4 + 0.8) / 2]
    np.testing.assert_allclose(agg.vector, expected, rtol=1e-6)


def test_updates_that_do_not_fit_are_refused() -> None:
    with pytest.raises(StrategyError, match="shape"):
        FedAvg().aggregate(ZERO2, [ClientUpdate("a", vec(1.0, 2.0, 3.0), 1)])
    with pytest.raises(StrategyError, match="same member"):
        FedAvg().aggregate(ZERO2, [ClientUpdate("a", ZERO2, 1), ClientUpdate("a", ZERO2, 1)])
    with pytest.raises(StrategyError, match="at least 1"):
        Median().aggregate(ZERO2, [])
    with pytest.raises(StrategyError, match="examples"):
        ClientUpdate("a", ZERO2, -1)


def test_spec_round_trip_and_unknown_settings() -> None:
    spec = StrategySpec(StrategyName.MULTI_KRUM, {"byzantine": 1, "select": 3})
    again = StrategySpec.from_dict(spec.to_dict())
    assert again == spec
    assert build_strategy(again) == Krum(byzantine=1, select=3)
    assert build_strategy(StrategySpec()) == FedAvg()
    with pytest.raises(StrategyError, match="no setting"):
        build_strategy(StrategySpec(StrategyName.MEDIAN, {"trim": 0.1}))
    with pytest.raises(StrategyError, match=r"strategy\.name must be one of fedavg"):
        StrategySpec.from_dict({"name": "mean-ish"})
    with pytest.raises(StrategyError, match="whole number"):
        build_strategy(StrategySpec(StrategyName.KRUM, {"byzantine": 1.5}))
    assert StrategyName.NORM_BOUNDING in SUM_BASED and StrategyName.MEDIAN not in SUM_BASED


# --- a poisoned member on a synthetic task -------------------------------------------

DIMS, CLASSES, MEMBERS, ROUNDS = 20, 4, 5, 8
_DATA = logreg.make_blobs(2500, DIMS, CLASSES, seed=1, spread=1.5)
TRAIN = logreg.Dataset(_DATA.x[:2000], _DATA.y[:2000])
TEST = logreg.Dataset(_DATA.x[2000:], _DATA.y[2000:])
SHARDS = logreg.split(TRAIN, MEMBERS)
SHAPES = logreg.model_shapes(DIMS, CLASSES)


def federate(strategy: Strategy, attack: float | None = None) -> tuple[float, Vector]:
    """Run ROUNDS rounds; member 4, if ``attack`` is set, sends ``global + attack * delta``."""
    glob = flatten(logreg.init_params(DIMS, CLASSES))
    for rnd in range(ROUNDS):
        ups = []
        for i, shard in enumerate(SHARDS):
            params, n = logreg.train_local(unflatten(glob, SHAPES), shard, seed=rnd * 10 + i)
            v = flatten(params)
            if attack is not None and i == MEMBERS - 1:
                v = glob + np.float32(attack) * (v - glob)
            ups.append(ClientUpdate(f"m{i}", v, n))
        glob = strategy.aggregate(glob, ups).vector
    return logreg.accuracy(unflatten(glob, SHAPES), TEST), glob


CLEAN_ACC, CLEAN_GLOBAL = federate(FedAvg())

ROBUST = [
    Median(),
    TrimmedMean(trim=0.2),
    Krum(byzantine=1),
    Krum(byzantine=1, select=3),
    NormBounding(bound=0.5),
]


def test_clean_run_learns_the_task() -> None:
    assert CLEAN_ACC > 0.85


@pytest.mark.parametrize("attack", [100.0, -1.0, -10.0], ids=["x100", "sign-flip", "flip-x10"])
@pytest.mark.parametrize("strategy", ROBUST, ids=lambda s: type(s).__name__)
def test_robust_strategy_stays_within_two_points(strategy: Strategy, attack: float) -> None:
    acc, _ = federate(strategy, attack)
    assert acc >= CLEAN_ACC - 0.02, f"{strategy} under attack x{attack}: {acc} vs clean {CLEAN_ACC}"


def test_fedavg_is_not_robust_so_the_attack_test_can_fail() -> None:
    flipped, _ = federate(FedAvg(), -10.0)
    assert flipped < CLEAN_ACC - 0.3
    _, scaled = federate(FedAvg(), 100.0)
    distance = np.linalg.norm(scaled - CLEAN_GLOBAL) / np.linalg.norm(CLEAN_GLOBAL)
    assert distance > 5.0
    _, median = federate(Median(), 100.0)
    assert np.linalg.norm(median - CLEAN_GLOBAL) / np.linalg.norm(CLEAN_GLOBAL) < 0.5


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_clipping_in_place_gives_exactly_the_clipped_copy(scale: float) -> None:
    delta = np.random.default_rng(5).normal(0, 1, 1001).astype(np.float32)
    delta *= np.float32(scale / np.linalg.norm(delta))
    expect, was = clip_to_norm(delta, 1.0)
    mine = delta.copy()
    assert clip_in_place(mine, 1.0) is was is (scale > 1)
    assert mine.dtype == np.float32 and np.array_equal(mine, expect)
