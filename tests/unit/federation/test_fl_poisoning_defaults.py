"""Plain terms protect the model: one member cannot set it, and no NaN is ever published.

With the terms an operator gets by default (FedAvg, no clip, no cap on claimed
examples) a member that sent 3e38 everywhere and claimed 10**12 examples made the
signed version 1 its own ``[3e38, ...]``. Now such a job clips every change to
``DEFAULT_UPDATE_CLIP`` and, unless the terms bound the claim, takes the plain mean
(``JobSpec.aggregator``); an explicit term the operator sets still wins.

And where the global model already sits near float32's limit (an operator's initial
model), norm bounding and plain rounds under DP measured a member's change in float32:
it overflowed, the clip made ``inf * 0 = NaN``, and the NaN model was signed and
published. The change is measured in float64 now, and an aggregate that is still not
finite ends the round's attempt with that reason instead of being published.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation.dp import DPConfig, NoiseMode
from qdspace.federation.host import JobHost
from qdspace.federation.job import DEFAULT_UPDATE_CLIP, JobSpec, JobSpecError
from qdspace.federation.params import params_from_bytes, params_to_bytes
from qdspace.federation.round_status import Phase
from qdspace.federation.rounds import Coordinator
from qdspace.federation.strategies import (
    AggregateNotFinite,
    ClientUpdate,
    FedAvg,
    FedProx,
    StrategyName,
    StrategySpec,
)

from .conftest import logreg_job

SHAPES = ((4,),)
MEMBERS = ("cellex", "polycell", "sunarc")
KEY = SigningKey(bytes(range(32)))
HUGE = np.float32(3e38)


def terms(**overrides: object) -> JobSpec:
    return logreg_job(SHAPES, MEMBERS, **overrides)


def full(value: float) -> list[np.ndarray]:
    return [np.full(4, value, np.float32)]


# --- P1: one member and plain FedAvg terms --------------------------------------------


def test_a_hostile_member_cannot_set_a_default_fedavg_model(tmp_path: Path) -> None:
    """The whole path a coordinator runs: the update checked, the round closed, the
    version signed and published. Version 1 moves by at most the default clip."""
    host = JobHost.create(tmp_path, terms(), [np.zeros(4, np.float32)], KEY, now=0.0)
    host.submit_update("cellex", 1, params_to_bytes(full(0.01)), 1000, now=1.0)
    host.submit_update("polycell", 1, params_to_bytes(full(0.01)), 1000, now=1.0)
    host.submit_update("sunarc", 1, params_to_bytes(full(float(HUGE))), 10**12, now=1.0)
    published = host.latest
    assert published.version.version == 1
    (model,) = params_from_bytes(b"".join(published.pieces), SHAPES)
    assert np.isfinite(model).all()
    assert float(np.linalg.norm(model)) <= DEFAULT_UPDATE_CLIP * 1.0001
    assert host.history[0].bounded == ("sunarc",)


def test_plain_mean_terms_get_the_default_clip_and_explicit_terms_win() -> None:
    assert terms().clip == DEFAULT_UPDATE_CLIP
    assert terms(strategy=StrategySpec(StrategyName.FEDPROX, {"mu": 0.1})).clip == (
        DEFAULT_UPDATE_CLIP
    )
    assert terms(update_clip=2.5).clip == 2.5
    assert terms(update_clip=1e6).clip == 1e6  # the operator may ask for a looser one
    bounding = StrategySpec(StrategyName.NORM_BOUNDING, {"bound": 0.5})
    assert terms(strategy=bounding).clip == 0.5
    assert terms(dp=DPConfig(clip=0.3, noise_multiplier=1.0)).clip == 0.3
    # robust strategies need no clip; the terms (and their digest) stay as written
    assert terms(strategy=StrategySpec(StrategyName.MEDIAN)).clip is None
    assert terms().to_dict()["update_clip"] is None
    assert JobSpec.from_dict(terms().to_dict()).digest() == terms().digest()
    # secure aggregation still needs a clip the members chose, not the default
    with pytest.raises(JobSpecError, match="secure aggregation needs a clipping bound"):
        terms(secure_aggregation=True)


def test_honest_changes_pass_the_default_clip_as_sent() -> None:
    coord = Coordinator.start(terms(), np.zeros(4, np.float32), 0.0)
    for member in MEMBERS:
        coord.submit_update(member, 1, full(1.0), 10, 1.0)
    assert coord.version == 1 and coord.history[0].bounded == ()
    np.testing.assert_array_equal(coord.global_vector, full(1.0)[0])


def test_claimed_examples_buy_weight_only_where_the_terms_bound_them() -> None:
    base = np.zeros(4, np.float32)
    updates = [
        ClientUpdate("cellex", np.full(4, 1.0, np.float32), 100),
        ClientUpdate("polycell", np.full(4, 1.0, np.float32), 100),
        ClientUpdate("sunarc", np.full(4, 7.0, np.float32), 10**12),
    ]
    plain = terms().aggregator()
    assert plain == FedAvg(weighted=False)
    np.testing.assert_allclose(plain.aggregate(base, updates).vector, np.full(4, 3.0))
    prox = terms(strategy=StrategySpec(StrategyName.FEDPROX, {"mu": 0.1})).aggregator()
    assert prox == FedProx(mu=0.1, weighted=False)
    capped = terms(max_examples_per_member=1000)
    assert capped.weighs_examples and capped.aggregator() == FedAvg(weighted=True)
    unweighted = StrategySpec(StrategyName.FEDAVG, {"weighted": 0.0})
    assert not terms(strategy=unweighted, max_examples_per_member=1000).weighs_examples


def test_a_weighted_mean_without_a_bound_on_claims_is_refused() -> None:
    weighted = StrategySpec(StrategyName.FEDAVG, {"weighted": 1.0})
    with pytest.raises(JobSpecError, match="needs max_examples_per_member"):
        terms(strategy=weighted)
    bounding = StrategySpec(StrategyName.NORM_BOUNDING, {"bound": 1.0, "weighted": 1.0})
    with pytest.raises(JobSpecError, match="needs max_examples_per_member"):
        terms(strategy=bounding)
    assert terms(strategy=weighted, max_examples_per_member=500).weighs_examples


# --- P2: a model near float32's limit ---------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy": StrategySpec(StrategyName.NORM_BOUNDING, {"bound": 1.0})},
        {"dp": DPConfig(clip=1.0, noise_multiplier=1e-9)},
        {"update_clip": 1.0},
    ],
    ids=["norm_bounding", "dp", "update_clip"],
)
def test_a_change_past_float32s_range_is_bounded_not_nan(overrides: dict[str, object]) -> None:
    """The global model at -3e38, one member at +3e38: the change (6e38) is past
    float32's range. It is clipped in float64 (it was ``inf * 0 = NaN``)."""
    initial = np.zeros(4, np.float32)
    initial[0] = -HUGE
    far = initial.copy()
    far[0] = HUGE
    coord = Coordinator.start(terms(**overrides), initial, 0.0, seed=1)
    coord.submit_update("cellex", 1, [initial.copy()], 1, 1.0)
    coord.submit_update("polycell", 1, [far], 1, 1.0)
    coord.submit_update("sunarc", 1, [initial.copy()], 1, 1.0)
    assert coord.version == 1
    assert np.isfinite(coord.global_vector).all(), coord.global_vector
    # a step of at most the clip: below float32's resolution at 3e38, nothing elsewhere
    np.testing.assert_allclose(coord.global_vector, initial, rtol=1e-6, atol=1.0)


def test_a_model_pushed_past_float32s_limit_is_not_published(tmp_path: Path) -> None:
    """A model at float32's limit and central noise of about 1e38 (a clip of 1e38 that
    the terms allow): the noisy step overflows. The attempt ends saying why, version 0
    stays the latest, and the round is tried again."""
    top = np.full(64, np.finfo(np.float32).max, np.float32)
    dp = DPConfig(clip=1e38, noise_multiplier=1.0, mode=NoiseMode.CENTRAL)
    job = logreg_job(((64,),), MEMBERS, dp=dp, rounds=1)
    host = JobHost.create(tmp_path, job, [top], KEY, now=0.0, seed=3)
    for member in MEMBERS:
        host.submit_update(member, 1, params_to_bytes([top]), 1, now=1.0)
    status = host.status(1.0)
    assert host.latest.version.version == 0
    assert (status.round, status.attempt, status.phase) == (1, 2, Phase.TRAINING)
    assert "infinite or NaN" in status.detail and "not published" in status.detail


def test_a_strategy_refuses_a_non_finite_aggregate() -> None:
    inf = np.full(4, np.inf, np.float32)
    with pytest.raises(AggregateNotFinite, match="fedavg aggregate has 4 infinite or NaN"):
        FedAvg().aggregate(np.zeros(4, np.float32), [ClientUpdate("cellex", inf, 1)])
