"""The arithmetic of a member's total at one coordinator, over all its jobs.

Before, releases were counted per job only: a coordinator publishing fresh job ids
got a fresh budget in each. ``CoordinatorReleases`` composes every release at the
coordinator (Rényi DP of each, whatever its job) and refuses past the floor's totals.
"""

from __future__ import annotations

import math

import pytest

from qdspace.federation.dp import DPConfig
from qdspace.federation.job import JobSpec
from qdspace.federation.member_budget import (
    TOTAL_JOBS,
    CoordinatorReleases,
    release_rho,
    rho_epsilon,
    total_epsilon_cap,
    total_rounds_cap,
    unknown_noise,
)
from qdspace.federation.member_floor import MemberFloor, member_epsilon, protecting_noise
from qdspace.federation.member_releases import Release, ReleaseRecordError, Releases

MEMBERS = ("cellex", "polycell", "sunarc")


def job(job_id: str = "j1", noise: float = 4.0) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        coordinator="sunarc",
        model="logreg",
        shapes=((4, 2), (2,)),
        rounds=2,
        min_members=3,
        members=MEMBERS,
        secure_aggregation=True,
        threshold=2,
        dp=DPConfig(clip=1.0, noise_multiplier=noise),
    )


def sent(spec: JobSpec, count: int) -> Releases:
    """``count`` releases of ``spec``, each with the noise that protected it."""
    noise = protecting_noise(spec)[0]
    made = tuple(Release(1, a, noise) for a in range(1, count + 1))
    return Releases("sunarc", spec.job_id, made)


def test_one_jobs_total_is_its_per_job_epsilon_and_jobs_compose_with_one_delta() -> None:
    floor = MemberFloor()
    for n in range(1, 8):
        total = CoordinatorReleases("sunarc", (sent(job(), n),))
        assert rho_epsilon(total.rho, floor.delta) == pytest.approx(
            member_epsilon(job(), floor, n), rel=1e-12
        )
    a, b = job("a", noise=4.0), job("b", noise=2.0)
    both = CoordinatorReleases("sunarc", (sent(a, 3), sent(b, 2)))
    each = member_epsilon(a, floor, 3) + member_epsilon(b, floor, 2)
    together = rho_epsilon(both.rho, floor.delta)
    assert max(member_epsilon(a, floor, 3), member_epsilon(b, floor, 2)) < together < each


def test_the_default_caps_are_four_jobs_worth_and_explicit_ones_win() -> None:
    assert TOTAL_JOBS == 4
    assert total_epsilon_cap(MemberFloor()) is None
    assert total_epsilon_cap(MemberFloor(max_epsilon=2.5)) == (
        10.0,
        "max_total_epsilon 10 (the default: 4 x max_epsilon)",
    )
    assert total_epsilon_cap(MemberFloor(max_epsilon=2.5, max_total_epsilon=3.0)) == (
        3.0,
        "max_total_epsilon 3",
    )
    assert total_rounds_cap(MemberFloor()) == (
        4000,
        "max_total_rounds 4,000 (the default: 4 x max_rounds)",
    )
    assert total_rounds_cap(MemberFloor(max_total_rounds=7)) == (7, "max_total_rounds 7")


def test_four_full_jobs_fit_under_the_default_total_and_then_it_refuses() -> None:
    floor = MemberFloor(max_epsilon=member_epsilon(job(), MemberFloor(), 5))
    full = tuple(sent(job(f"j{i}"), 5) for i in range(TOTAL_JOBS))
    assert (
        CoordinatorReleases("sunarc", (*full[:-1], sent(job("j3"), 4))).refusal(job("j3"), floor)
        is None
    )
    made = full
    while (refusal := CoordinatorReleases("sunarc", made).refusal(job("jx"), floor)) is None:
        made = (*made, sent(job(f"k{len(made)}"), 1))
    count = sum(r.count for r in made)
    assert refusal.startswith(
        f"job jx at sunarc: this member has already sent {count} updates in {len(made)} jobs"
    )
    assert "over max_total_epsilon" in refusal and "(the default: 4 x max_epsilon)" in refusal


def test_a_release_without_protecting_noise_leaves_no_epsilon() -> None:
    assert release_rho(0.0) == math.inf and release_rho(None) == math.inf
    assert release_rho(1e-200) == math.inf  # too small to square
    plain = Releases("sunarc", "p", (Release(1, 1, 0.0),))
    refusal = CoordinatorReleases("sunarc", (plain,)).refusal(job(), MemberFloor(max_epsilon=9))
    assert refusal is not None and "spending epsilon inf" in refusal


def test_unknown_noise_charges_exactly_the_per_job_cap() -> None:
    for releases, most in ((1, 0.5), (3, 2.5), (40, 8.0)):
        noise = unknown_noise(releases, most, 1e-5)
        spent = rho_epsilon(releases * release_rho(noise), 1e-5)
        assert most <= spent == pytest.approx(most, rel=1e-9)
    # below the least epsilon any release spends at this delta: charged that least
    noise = unknown_noise(2, 0.001, 1e-5)
    assert 0 < noise < math.inf and rho_epsilon(2 * release_rho(noise), 1e-5) > 0.001
    assert unknown_noise(3, None, 1e-5) == 0.0


def test_records_keep_the_noise_and_read_those_written_before() -> None:
    made = sent(job(), 2).plus(Release(2, 1))
    assert Releases.from_dict(made.to_dict(), "sunarc", "j1") == made
    assert made.to_dict()["releases"][0] == [1, 1, protecting_noise(job())[0]]
    assert made.to_dict()["releases"][2] == [2, 1]
    assert made.unknown == 1 and made.with_noise(0.5).made[2] == Release(2, 1, 0.5)
    assert made.with_noise(0.5).made[:2] == made.made[:2]
    for row in ([1, 1, -1.0], [1, 1, True], [1, 1, "4"], [1, 1, math.nan], [1, 1, 2, 3]):
        with pytest.raises(ReleaseRecordError, match=r"releases\[0\]"):
            Releases.from_dict(made.to_dict() | {"releases": [row]}, "sunarc", "j1")
