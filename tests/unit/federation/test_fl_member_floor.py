"""A member's floor on a job's terms: what its own settings accept, whatever the coordinator wrote.

Before the floor a member joined any job its agreement's asset named: one with DP off,
with noise of 1e-6, without secure aggregation, or of 10,000 rounds. The floor counts
only noise that protects the member's update from the coordinator
(`member_floor.protecting_noise`), epsilon at the member's own delta and with no
sampling the member does not do.
"""

from __future__ import annotations

import dataclasses

import pytest

from qdspace.federation.dp import DPConfig, NoiseMode
from qdspace.federation.el_cnn import cnn_shapes
from qdspace.federation.job import JobSpec
from qdspace.federation.member_floor import MemberFloor, floor_problems, protecting_noise
from qdspace.node.config import FederationFloorSetting

MEMBERS = ("cellex", "polycell", "sunarc")


def job(**overrides: object) -> JobSpec:
    terms: dict[str, object] = {
        "job_id": "j1",
        "coordinator": "sunarc",
        "model": "logreg",
        "shapes": ((4, 2), (2,)),
        "rounds": 5,
        "min_members": 3,
        "members": MEMBERS,
    }
    return JobSpec(**(terms | overrides))  # type: ignore[arg-type]


def secure(**overrides: object) -> JobSpec:
    return job(secure_aggregation=True, threshold=2, update_clip=1.0, **overrides)


def dp(noise: float, **more: object) -> DPConfig:
    return DPConfig(clip=1.0, noise_multiplier=noise, **more)  # type: ignore[arg-type]


def demo_terms() -> JobSpec:
    """The demo's job exactly as its coordinator publishes it (secure, no DP, 5 rounds)."""
    from qdspace.node.demo.federation import _job

    terms = _job("demo-1")
    widths = tuple(terms.pop("widths"))
    return JobSpec.from_dict(terms | {"shapes": [list(s) for s in cnn_shapes(widths)]})


def test_the_default_floor_joins_the_shipped_jobs_and_asks_for_no_dp() -> None:
    """The demo's job, a plain job and a 50-round one (the longest the tests run) all
    meet the default floor: nothing that ran before is refused."""
    floor = MemberFloor()
    assert not floor.wants_dp
    for terms in (demo_terms(), job(), job(rounds=50), secure(dp=dp(0.01))):
        assert floor_problems(terms, floor) == [], terms.job_id


def test_the_node_settings_default_is_the_floors_default() -> None:
    assert FederationFloorSetting().floor() == MemberFloor()


def test_a_member_asking_for_dp_refuses_a_job_with_dp_off() -> None:
    floor = MemberFloor(min_noise_multiplier=0.5)
    assert floor_problems(demo_terms(), floor) == [
        "dp is off (no noise on this member's update), and min_noise_multiplier 0.5 asks for it"
    ]
    (only,) = floor_problems(job(), MemberFloor(max_epsilon=8.0))
    assert "dp is off" in only and "max_epsilon 8 asks for it" in only


def test_near_zero_noise_is_refused_naming_the_term_and_the_floor() -> None:
    (only,) = floor_problems(secure(dp=dp(1e-6)), MemberFloor(min_noise_multiplier=0.5))
    assert only.startswith("dp.noise_multiplier 1e-06 leaves ")
    assert "under min_noise_multiplier 0.5" in only


def test_central_noise_is_not_noise_a_member_can_count() -> None:
    """The coordinator adds central noise to what it already saw: a member asking for
    DP refuses it, however large the multiplier the terms name."""
    terms = secure(dp=dp(100.0, mode=NoiseMode.CENTRAL))
    assert protecting_noise(terms)[0] == 0.0
    (only,) = floor_problems(terms, MemberFloor(min_noise_multiplier=0.5))
    assert only.startswith("dp.mode is central") and "needs distributed noise" in only


def test_without_secure_aggregation_only_the_members_own_share_counts() -> None:
    """Distributed noise of multiplier 1 over 4 members without masking: the coordinator
    sees each update with a quarter of the variance, a multiplier of 0.5."""
    members = (*MEMBERS, "x")
    plain = job(members=members, min_members=4, dp=dp(1.0))
    assert protecting_noise(plain)[0] == pytest.approx(0.5)
    (only,) = floor_problems(plain, MemberFloor(min_noise_multiplier=0.8))
    assert "leaves 0.5 on this member's update" in only and "sqrt(min_members 4)" in only
    masked = dataclasses.replace(
        plain, secure_aggregation=True, threshold=3, update_clip=1.0
    )  # sums of at least 3 of the 4 shares
    assert protecting_noise(masked)[0] == pytest.approx(3**0.5 / 2)
    assert floor_problems(masked, MemberFloor(min_noise_multiplier=0.8)) == []


def test_epsilon_is_counted_at_the_members_delta_over_every_round_unsampled() -> None:
    """A coordinator cannot talk epsilon down: a large delta, a small sample rate and a
    small epsilon budget of its own are all the coordinator's to name, not to prove."""
    honest = secure(dp=dp(1.0, max_epsilon=1e6), rounds=5)
    floor = MemberFloor(max_epsilon=20.0)
    assert floor_problems(honest, floor) == []
    (only,) = floor_problems(dataclasses.replace(honest, rounds=500), floor)
    assert "over the job's 500 rounds" in only and "over max_epsilon 20" in only
    # the same noise and rounds dressed up: huge delta, 1% sampling, a budget of 1
    dressed = dataclasses.replace(
        honest, rounds=500, dp=dp(1.0, delta=0.5, sample_rate=0.01, max_epsilon=1.0)
    )
    assert floor_problems(dressed, floor) == [only]


def test_noise_too_small_to_square_is_infinite_epsilon() -> None:
    (only,) = floor_problems(secure(dp=dp(1e-200)), MemberFloor(max_epsilon=1.0))
    assert "spends epsilon inf" in only


def test_secure_aggregation_and_rounds_are_floors_too() -> None:
    floor = MemberFloor(require_secure_aggregation=True, max_rounds=10)
    assert floor_problems(job(rounds=11), floor) == [
        "rounds 11 is over max_rounds 10",
        "secure_aggregation is off, and require_secure_aggregation is set",
    ]
    assert floor_problems(secure(rounds=10), floor) == []
    assert floor_problems(job(rounds=1_001), MemberFloor()) == [
        "rounds 1,001 is over max_rounds 1,000"
    ]
