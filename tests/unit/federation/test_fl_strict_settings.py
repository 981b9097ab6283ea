"""A strategy's and differential privacy's settings read strictly wherever they come from,
and a job's tensors have a bounded number of dimensions.

``DPConfig.from_dict`` and ``StrategySpec.from_dict`` coerced what they were given:
``"0.5"`` was a clip, ``true`` a noise multiplier of 1, ``"1e400"`` an infinite FedProx
``mu``; settings that were no object raised an ``AttributeError`` (a list as ``dp``) or
a ``TypeError`` (a string as a strategy) that no caller expects. Each is now the
module's own error (``PrivacyError``, ``StrategyError``) naming the bad value, as job
terms name theirs (`federation.json_reader`, shared with the job's reader).

Terms could give a tensor 100,000 dimensions of size 1 (a valid 1-scalar shape each
member kept and wrote into every parameter header); a tensor has at most
``MAX_DIMENSIONS`` (the project's models have at most four).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from qdspace.federation import el_cnn, logreg, mlp
from qdspace.federation.dp import DPConfig, NoiseMode
from qdspace.federation.errors import PrivacyError, StrategyError
from qdspace.federation.job import MAX_DIMENSIONS, JobSpec, JobSpecError
from qdspace.federation.strategies import StrategyName, StrategySpec

DP = {"clip": 1.0, "noise_multiplier": 1.1}


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ([1.0, 1.1], "dp must be an object, got a list"),
        ("clip=1", "dp must be an object, got 'clip=1'"),
        ({**DP, "clip": "0.5"}, "dp.clip must be a finite number, got '0.5'"),
        ({**DP, "noise_multiplier": True}, "dp.noise_multiplier must be a finite number, got true"),
        ({**DP, "delta": "1e-5"}, "dp.delta must be a finite number, got '1e-5'"),
        ({**DP, "sample_rate": "1"}, "dp.sample_rate must be a finite number, got '1'"),
        ({**DP, "max_epsilon": "8"}, "dp.max_epsilon must be a finite number, got '8'"),
        ({**DP, "mode": 1}, "dp.mode must be one of central, distributed, got 1"),
        ({**DP, "mode": "local"}, "dp.mode must be one of central, distributed, got 'local'"),
        ({"clip": 1.0}, "dp.noise_multiplier is missing"),
    ],
    ids=lambda v: json.dumps(v)[:40] if not isinstance(v, str) or "must" not in v else None,
)
def test_dp_settings_name_the_bad_value(data: Any, named: str) -> None:
    with pytest.raises(PrivacyError, match="DP settings are not valid: ") as refused:
        DPConfig.from_dict(data)
    assert named in str(refused.value)


def test_dp_settings_in_range_are_still_checked_and_read_back() -> None:
    cfg = DPConfig(
        clip=2, noise_multiplier=1, delta=1e-6, mode=NoiseMode.CENTRAL, max_epsilon=8, sample_rate=1
    )
    assert DPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert DPConfig.from_dict({"clip": 1, "noise_multiplier": 2}).mode is NoiseMode.DISTRIBUTED
    with pytest.raises(PrivacyError, match="DP clip must be a finite number > 0"):
        DPConfig.from_dict({"clip": 0, "noise_multiplier": 1})


@pytest.mark.parametrize(
    ("data", "named"),
    [
        ("fedavg", "strategy must be an object, got 'fedavg'"),
        ([], "strategy must be an object, got a list"),
        ({}, "strategy.name is missing"),
        ({"name": 1}, "strategy.name must be one of fedavg, fedprox"),
        ({"name": "fedprox", "params": {"mu": "0.1"}}, "strategy.params.mu must be a finite"),
        ({"name": "fedprox", "params": {"mu": True}}, "strategy.params.mu must be a finite"),
        ({"name": "fedprox", "params": {"mu": "1e400"}}, "strategy.params.mu must be a finite"),
        ({"name": "fedprox", "params": [["mu", 1]]}, "strategy.params must be an object"),
    ],
    ids=lambda v: json.dumps(v)[:40] if not isinstance(v, str) or "must" not in v else None,
)
def test_strategy_settings_name_the_bad_value(data: Any, named: str) -> None:
    with pytest.raises(StrategyError, match="strategy settings are not valid: ") as refused:
        StrategySpec.from_dict(data)
    assert named in str(refused.value)


def test_strategy_settings_read_back() -> None:
    spec = StrategySpec(StrategyName.MULTI_KRUM, {"byzantine": 1, "select": 3})
    assert StrategySpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert StrategySpec.from_dict({"name": "median"}) == StrategySpec(StrategyName.MEDIAN)


def test_job_terms_name_a_bad_strategy_or_dp_setting_in_one_refusal() -> None:
    terms = {
        "job_id": "j1",
        "coordinator": "cellex",
        "model": "logreg",
        "shapes": [[4, 2], [2]],
        "rounds": 2,
        "min_members": 2,
        "members": ["cellex", "polycell", "sunarc"],
        "strategy": {"name": "fedprox", "params": {"mu": "0.1"}},
        "dp": {**DP, "mode": "local"},
    }
    with pytest.raises(JobSpecError) as refused:
        JobSpec.from_dict(terms)
    assert "strategy.params.mu must be a finite number, got '0.1'" in str(refused.value)
    assert "dp.mode must be one of central, distributed, got 'local'" in str(refused.value)


# -- dimensions ---------------------------------------------------------------------------


def terms(shapes: Any) -> dict[str, Any]:
    return {
        "job_id": "j1",
        "coordinator": "cellex",
        "model": "logreg",
        "shapes": shapes,
        "rounds": 2,
        "min_members": 2,
        "members": ["cellex", "polycell", "sunarc"],
    }


def test_a_tensor_of_100000_dimensions_is_refused_naming_it() -> None:
    with pytest.raises(JobSpecError) as refused:
        JobSpec.from_dict(terms([[4, 2], [1] * 100_000]))
    assert f"shapes[1] must have at most {MAX_DIMENSIONS} dimensions, got 100,000" in str(
        refused.value
    )


def test_a_job_made_in_code_is_held_to_the_same_bound() -> None:
    with pytest.raises(
        JobSpecError, match=f"tensor 0 has 9 dimensions: .* at most {MAX_DIMENSIONS}"
    ):
        JobSpec("j1", "cellex", "logreg", ((1,) * 9,), 2, 2, ("cellex", "polycell", "sunarc"))


def test_the_projects_models_fit_the_bound() -> None:
    for shapes in (
        logreg.model_shapes(4, 2),
        mlp.model_shapes(8, 16),
        el_cnn.cnn_shapes((el_cnn.MAX_WIDTH,) * 3),
        ((1,) * MAX_DIMENSIONS,),
    ):
        job = JobSpec.from_dict(terms([list(s) for s in shapes]))
        assert job.shapes == tuple(shapes)
