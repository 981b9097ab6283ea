"""A coordinator publishing fresh job ids, against a member's total at that coordinator.

The member counted its releases per job (``test_federation_releases``), so every new job
id a coordinator published over the same data opened a fresh count: each job the
operator joined spent the floor's ``max_epsilon`` (and ``max_rounds``) again, without
end. Now every release at one coordinator is counted against a total as well
(``federation.member_budget``), from the same records on disk, so neither new job ids,
nor restarts, nor records written before the total existed reset it.

The coordinator is the rogue gRPC server of ``test_federation_releases`` (``Restarting``:
it restarts a secure round's attempts after each masked input); here it is asked for a
new job each time. The member is the node's own ``FederationMember``, made anew on the
node's directory for each job (as a restarted node makes it), with its ``MemberRunner``
over real gRPC; its floor is read from a ``node.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qdspace.federation.dp import DPConfig
from qdspace.federation.job import JobSpec
from qdspace.federation.member_budget import TOTAL_JOBS, release_rho, rho_epsilon
from qdspace.federation.member_floor import MemberFloor, member_epsilon, protecting_noise
from qdspace.federation.member_releases import ReleaseRefused
from qdspace.node.layout import NodeLayout
from qdspace.node.runtime.federation_member import FederationRequestError
from qdspace.node.runtime.federation_releases import ReleaseBook

from .test_federation_floor import node_floor
from .test_federation_hostile_coordinator import COORDINATOR, terms
from .test_federation_releases import (
    ALLOWED,
    floor_allowing,
    member_keys,
    secure_job,
    take_part,
    withheld,
)


def fresh(job: JobSpec, job_id: str) -> JobSpec:
    """``job`` published again under another id (the same data, a fresh per-job count)."""
    return JobSpec.from_dict(job.to_dict() | {"job_id": job_id})


def stream_epsilon(job: JobSpec, floor: MemberFloor, releases: int, rho: float = 0.0) -> float:
    """Epsilon of ``releases`` releases of ``job`` on top of ``rho`` already spent."""
    return rho_epsilon(rho + releases * release_rho(protecting_noise(job)[0]), floor.delta)


def book(node: Path) -> ReleaseBook:
    return ReleaseBook(NodeLayout(node).federation)


def legacy_record(node: Path, job_id: str, releases: int) -> Path:
    """A record as the per-job count wrote it before the total: ``[round, attempt]``."""
    path = book(node).path(COORDINATOR, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [[1, attempt] for attempt in range(1, releases + 1)]
    path.write_text(json.dumps({"coordinator": COORDINATOR, "job_id": job_id, "releases": rows}))
    return path


def test_fresh_job_ids_get_no_release_past_the_total_epsilon(tmp_path: Path) -> None:
    """Each job allows ``ALLOWED`` releases; the total at the coordinator allows seven.
    Jobs j1 and j2 send three each, j3 one, j4 none (each joined by a member made anew
    from the directory). Before: three in every job, as many jobs as it published."""
    job, keys = secure_job(), member_keys()
    per_job = floor_allowing(job, ALLOWED).max_epsilon
    total = (stream_epsilon(job, MemberFloor(), 7) + stream_epsilon(job, MemberFloor(), 8)) / 2
    floor = node_floor(tmp_path, max_epsilon=per_job, max_total_epsilon=total)
    uploads, refusals = [], []
    for job_id in ("j1", "j2", "j3", "j4"):
        session, coordinator = take_part(tmp_path, fresh(job, job_id), keys, floor)
        assert session.state == "done", session.error
        uploads.append(coordinator.uploads)
        refusals.append(withheld(session))
    assert uploads == [[1, 2, 3], [1, 2, 3], [1], []], uploads
    assert [len(r) for r in refusals] == [1, 1, 1, 1]
    assert "over max_epsilon" in refusals[0][0]  # j1 and j2 stop at the per-job cap
    j3, j4 = refusals[2][0], refusals[3][0]
    assert "withholding this member's update of job j3 (round 1 attempt 2)" in j3
    spent = stream_epsilon(job, floor, 7)
    assert (
        f"job j3 at {COORDINATOR}: this member has already sent 7 updates in 3 jobs to "
        f"{COORDINATOR}, spending epsilon {spent:.3g}; one more would spend epsilon "
        f"{stream_epsilon(job, floor, 8):.3g}" in j3
    )
    assert f"over max_total_epsilon {total:g} (a total over all the coordinator's jobs" in j3
    assert "withholding this member's update of job j4 (round 1 attempt 1)" in j4
    assert "already sent 7 updates in 3 jobs" in j4 and j4.endswith("no more updates of this job")
    # each release on disk with the noise that protected it
    noise = protecting_noise(job)[0]
    made = book(tmp_path).releases(COORDINATOR, "j3").made
    assert [(r.attempt, r.noise) for r in made] == [(1, noise)]


def test_the_default_total_stops_fresh_plain_jobs_at_four_jobs_of_max_rounds(
    tmp_path: Path,
) -> None:
    """A floor asking for no DP and ``max_rounds`` 1, nothing else: one update per job,
    and by default ``TOTAL_JOBS`` jobs' worth at the coordinator in all. Before: one
    update in every job the coordinator published."""
    floor, keys = node_floor(tmp_path, max_rounds=1), member_keys()
    sent = []
    for i in range(1, TOTAL_JOBS + 2):
        job = terms(job_id=f"p{i}", rounds=1, dp=DPConfig(clip=1.0, noise_multiplier=1.0))
        session, coordinator = take_part(tmp_path, job, keys, floor)
        assert session.state == "done", session.error
        sent.append(len(coordinator.uploads))
    assert sent == [1] * TOTAL_JOBS + [0]
    [refusal] = withheld(session)
    assert (
        f"job p{TOTAL_JOBS + 1} at {COORDINATOR}: this member has already sent "
        f"{TOTAL_JOBS} updates in {TOTAL_JOBS} jobs to {COORDINATOR}; " in refusal
    )
    assert f"{TOTAL_JOBS + 1} releases would be over max_total_rounds {TOTAL_JOBS}" in refusal
    assert f"(the default: {TOTAL_JOBS} x max_rounds)" in refusal


def test_the_default_total_epsilon_is_four_times_max_epsilon(tmp_path: Path) -> None:
    """The node's release book, job after fresh job at one coordinator, each spending its
    per-job cap: at least ``TOTAL_JOBS`` full jobs fit, and the release that would take
    the total past ``TOTAL_JOBS * max_epsilon`` is refused, whatever its job id. Before:
    no release was ever refused in a fresh job."""
    job = secure_job()
    floor = floor_allowing(job, ALLOWED)
    assert floor.max_epsilon is not None
    cap = TOTAL_JOBS * floor.max_epsilon
    sent, refused = 0, None
    for i in range(1, 40):
        guard = book(tmp_path).for_job(COORDINATOR, fresh(job, f"j{i}"), floor)
        for attempt in range(1, ALLOWED + 1):
            try:
                guard.record(1, attempt)
            except ReleaseRefused as exc:
                refused = str(exc)
                break
            sent += 1
        if refused is not None:
            break
    assert refused is not None, f"{sent} releases and none refused"
    assert sent >= TOTAL_JOBS * ALLOWED
    assert stream_epsilon(job, floor, sent) <= cap < stream_epsilon(job, floor, sent + 1)
    assert f"over max_total_epsilon {cap:g} (the default: {TOTAL_JOBS} x max_epsilon)" in refused
    # the per-job epsilon of one job is the total's epsilon of its releases
    assert stream_epsilon(job, floor, ALLOWED) == pytest.approx(
        member_epsilon(job, floor, ALLOWED), rel=1e-12
    )


def test_per_job_counts_from_before_are_counted_into_the_total(tmp_path: Path) -> None:
    """A node that counted per job only has records of four fresh jobs, three releases
    each: by default ``TOTAL_JOBS`` times ``max_rounds`` 3 in all, so a fifth job sends
    nothing. Before: three more in the fifth job."""
    for i in range(1, TOTAL_JOBS + 1):
        legacy_record(tmp_path, f"old{i}", ALLOWED)
    job = fresh(secure_job(), "new")
    session, coordinator = take_part(tmp_path, job, member_keys(), MemberFloor(max_rounds=3))
    assert session.state == "done", session.error
    assert coordinator.uploads == []
    [refusal] = withheld(session)
    assert "already sent 12 updates in 4 jobs" in refusal
    assert "13 releases would be over max_total_rounds 12" in refusal


def test_per_job_counts_from_before_are_charged_their_per_job_epsilon(tmp_path: Path) -> None:
    """Records from before kept no noise: at the join each job's releases are charged the
    per-job ``max_epsilon`` (the most its count let it spend), written into the record,
    and a total that leaves room for one more release lets one through."""
    job, keys = secure_job(), member_keys()
    per_job = floor_allowing(job, ALLOWED)
    assert per_job.max_epsilon is not None
    path = legacy_record(tmp_path, "old", ALLOWED)
    charged = book(tmp_path).coordinator(COORDINATOR, per_job).jobs[0].made
    rho = sum(release_rho(r.noise) for r in charged)  # (charged at once by the book)
    assert rho_epsilon(rho, per_job.delta) == pytest.approx(per_job.max_epsilon, rel=1e-9)
    assert rho_epsilon(rho, per_job.delta) >= per_job.max_epsilon
    path.unlink()
    legacy_record(tmp_path, "old", ALLOWED)
    total = (stream_epsilon(job, per_job, 1, rho) + stream_epsilon(job, per_job, 2, rho)) / 2
    floor = node_floor(tmp_path, max_epsilon=per_job.max_epsilon, max_total_epsilon=total)
    session, coordinator = take_part(tmp_path, fresh(job, "new"), keys, floor)
    assert session.state == "done", session.error
    assert coordinator.uploads == [1]
    [refusal] = withheld(session)
    assert "already sent 4 updates in 2 jobs" in refusal
    assert f"over max_total_epsilon {total:g}" in refusal
    rows = json.loads(path.read_text())["releases"]
    assert [row[:2] for row in rows] == [[1, 1], [1, 2], [1, 3]]
    assert {row[2] for row in rows} == {charged[0].noise}  # the charge, on disk


def test_an_unreadable_record_of_another_job_refuses_the_join(tmp_path: Path) -> None:
    """The total reads every job's record at the coordinator: one it cannot read is not
    taken for zero releases (nor skipped), so no job there is joined."""
    path = book(tmp_path).path(COORDINATOR, "j0")
    path.parent.mkdir(parents=True)
    path.write_text("{")
    with pytest.raises(FederationRequestError, match="release record cannot be read") as refused:
        take_part(tmp_path, secure_job(), member_keys(), floor_allowing(secure_job(), ALLOWED))
    assert str(path) in str(refused.value)


@pytest.mark.parametrize(
    ("floor", "where"),
    [
        ({"max_total_epsilon": 0}, "federation_floor.max_total_epsilon"),
        ({"max_total_epsilon": "inf"}, "federation_floor.max_total_epsilon"),
        ({"max_total_rounds": 0}, "federation_floor.max_total_rounds"),
    ],
)
def test_a_bad_total_names_its_setting(tmp_path: Path, floor: dict[str, Any], where: str) -> None:
    from qdspace.node.errors import ConfigError

    with pytest.raises(ConfigError, match=f"node.json: {where}: "):
        node_floor(tmp_path, **floor)


def test_a_total_epsilon_alone_asks_for_dp_at_join(tmp_path: Path) -> None:
    """``max_total_epsilon`` without a per-job cap still refuses a job without noise
    (its releases would spend all of it), at the join."""
    floor = node_floor(tmp_path, max_total_epsilon=5)
    assert (floor.max_total_epsilon, floor.max_total_rounds) == (5.0, None)
    job = terms(rounds=1)
    with pytest.raises(FederationRequestError, match="max_total_epsilon 5 asks for it"):
        take_part(tmp_path, job, member_keys(), floor)
