"""A member counts every release of its update against its floor, not every round.

Before, the floor's epsilon was counted once, at join, over the rounds the terms name;
each retried attempt of a round (fresh noise, a fresh masked input) went out uncounted.
``Releases.refusal`` counts the releases made, plus the next one, with the same
protecting noise, delta and accountant as the join check (``member_epsilon``).
"""

from __future__ import annotations

import math

import pytest

from qdspace.federation.dp import DPConfig, NoiseMode
from qdspace.federation.job import JobSpec
from qdspace.federation.member_floor import MemberFloor, floor_problems, member_epsilon
from qdspace.federation.member_releases import Release, ReleaseRecordError, Releases

MEMBERS = ("cellex", "polycell", "sunarc")


def secure_job(**overrides: object) -> JobSpec:
    terms: dict[str, object] = {
        "job_id": "j1",
        "coordinator": "sunarc",
        "model": "logreg",
        "shapes": ((4, 2), (2,)),
        "rounds": 2,
        "min_members": 3,
        "members": MEMBERS,
        "secure_aggregation": True,
        "threshold": 2,
        "dp": DPConfig(clip=1.0, noise_multiplier=4.0),
    }
    return JobSpec(**(terms | overrides))  # type: ignore[arg-type]


def attempts(count: int, round_: int = 1) -> Releases:
    """``count`` attempts of one round, each one release."""
    made = Releases("sunarc", "j1")
    for attempt in range(1, count + 1):
        made = made.plus(Release(round_, attempt))
    return made


def test_each_attempt_of_one_round_is_one_more_release_past_the_floor() -> None:
    """The terms (2 rounds) meet the floor at join; its epsilon allows 3 releases. The
    fourth attempt of round 1 is refused, whatever round it belongs to."""
    job = secure_job()
    probe = MemberFloor(max_epsilon=1.0)
    most = (member_epsilon(job, probe, 3) + member_epsilon(job, probe, 4)) / 2
    floor = MemberFloor(max_epsilon=most)
    assert floor_problems(job, floor) == []
    for made in range(3):
        assert attempts(made).refusal(job, floor) is None
    refusal = attempts(3).refusal(job, floor)
    assert refusal is not None
    assert refusal.startswith(
        "job j1 at sunarc: this member has already sent 3 updates (the last in round 1 "
        "attempt 3); 4 releases would spend epsilon "
    )
    assert f"(delta 1e-05), over max_epsilon {most:g} (federation_floor, node.json)" in refusal


def test_the_release_epsilon_is_the_join_checks_epsilon() -> None:
    """At join the floor counts one release per round: a floor the terms just meet is
    spent, release by release, after exactly the rounds the terms name."""
    job = secure_job(rounds=5)
    floor = MemberFloor(max_epsilon=member_epsilon(job, MemberFloor(), 5))
    assert floor_problems(job, floor) == []
    assert attempts(4).refusal(job, floor) is None
    assert attempts(5).refusal(job, floor) is not None
    assert floor_problems(secure_job(rounds=6), floor) != []


def test_releases_stay_within_max_rounds_without_dp() -> None:
    """A floor asking no DP still caps the releases, at ``max_rounds``."""
    job = secure_job(dp=None, update_clip=1.0)
    floor = MemberFloor(max_rounds=2)
    assert attempts(1).refusal(job, floor) is None
    refusal = attempts(2).refusal(job, floor)
    assert refusal is not None
    assert "already sent 2 updates (the last in round 1 attempt 2)" in refusal
    assert "3 releases would be over max_rounds 2" in refusal
    assert "epsilon" not in refusal


@pytest.mark.parametrize(
    "job",
    [
        secure_job(dp=None, update_clip=1.0),
        secure_job(dp=DPConfig(clip=1.0, noise_multiplier=4.0, mode=NoiseMode.CENTRAL)),
    ],
)
def test_no_noise_the_member_can_count_on_spends_all_of_max_epsilon(job: JobSpec) -> None:
    assert member_epsilon(job, MemberFloor(), 1) == math.inf
    assert member_epsilon(job, MemberFloor(), 0) == 0.0
    assert Releases("sunarc", "j1").refusal(job, MemberFloor(max_epsilon=100.0)) is not None


def test_a_record_round_trips_and_a_foreign_one_is_refused() -> None:
    made = attempts(2).plus(Release(2, 1))
    assert Releases.from_dict(made.to_dict(), "sunarc", "j1") == made
    assert made.count == 3
    for data, named in (
        ([], "must be a JSON object"),
        (made.to_dict() | {"job_id": "j2"}, "of job 'j2' at 'sunarc', not of job j1 at sunarc"),
        (made.to_dict() | {"releases": {"1": 1}}, "must be a list of [round, attempt] pairs"),
        (made.to_dict() | {"releases": [[1, 1], [1, 0]]}, "releases[1] must be [round, attempt]"),
        (made.to_dict() | {"releases": [[1, True]]}, "releases[0] must be"),
        (made.to_dict() | {"releases": [[1.0, 1]]}, "releases[0] must be"),
    ):
        with pytest.raises(ReleaseRecordError) as refused:
            Releases.from_dict(data, "sunarc", "j1")
        assert named in str(refused.value)
