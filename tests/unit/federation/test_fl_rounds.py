"""The coordinator's round state machine, driven without sockets."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path

import numpy as np
import pytest
from nacl.signing import SigningKey

from qdspace.federation import logreg
from qdspace.federation.checkpoint import previous_path
from qdspace.federation.dp import DPConfig, NoiseMode
from qdspace.federation.errors import CheckpointError, RefusalReason, UpdateRefused
from qdspace.federation.job import JobSpec, JobSpecError
from qdspace.federation.job_files import fsync_later
from qdspace.federation.member import plain_update, prepare_change, secagg_client
from qdspace.federation.params import flatten, unflatten
from qdspace.federation.round_status import Phase
from qdspace.federation.rounds import Coordinator
from qdspace.federation.secagg import SecAggClient
from qdspace.federation.strategies import StrategyName, StrategySpec

DIMS, CLASSES = 10, 3
SHAPES = logreg.model_shapes(DIMS, CLASSES)
MEMBERS = ("cellex", "polycell", "sunarc")
_DATA = logreg.make_blobs(1200, DIMS, CLASSES, seed=5, spread=1.2)
SHARDS = dict(
    zip(MEMBERS, logreg.split(logreg.Dataset(_DATA.x[:900], _DATA.y[:900]), 3), strict=True)
)
TEST = logreg.Dataset(_DATA.x[900:], _DATA.y[900:])
INITIAL = flatten(logreg.init_params(DIMS, CLASSES))
SIGNING = {m: SigningKey.generate() for m in MEMBERS}
VERIFY = {m: k.verify_key for m, k in SIGNING.items()}


def job(**overrides: object) -> JobSpec:
    terms: dict[str, object] = {
        "job_id": "el-2025-1",
        "coordinator": "sunarc",
        "model": "logreg",
        "shapes": SHAPES,
        "rounds": 3,
        "min_members": 2,
        "members": MEMBERS,
        "phase_timeout_s": 10.0,
    }
    terms.update(overrides)
    return JobSpec(**terms)  # type: ignore[arg-type]


def train(member: str, coord: Coordinator) -> list[np.ndarray]:
    params, _ = logreg.train_local(
        unflatten(coord.global_vector, SHAPES), SHARDS[member], seed=coord.round
    )
    return params


def plain_round(coord: Coordinator, now: float, members: Collection[str] = MEMBERS) -> None:
    rnd = coord.round
    for m in members:
        coord.submit_update(m, rnd, train(m, coord), len(SHARDS[m]), now)


# --- job terms -------------------------------------------------------------------------


def test_job_terms_round_trip_and_digest() -> None:
    spec = job(
        secure_aggregation=True,
        threshold=2,
        dp=DPConfig(clip=0.5, noise_multiplier=1.0),
        strategy=StrategySpec(StrategyName.NORM_BOUNDING, {"bound": 0.5}),
        training={"epochs": 1, "lr": 0.1},
    )
    again = JobSpec.from_dict(spec.to_dict())
    assert again == spec and again.digest() == spec.digest()
    assert job(rounds=4).digest() != job().digest()
    assert spec.clip == 0.5 and spec.sum_mode


def test_inconsistent_job_terms_are_refused() -> None:
    with pytest.raises(JobSpecError, match="cannot run under secure aggregation"):
        job(secure_aggregation=True, update_clip=1.0, strategy=StrategySpec(StrategyName.MEDIAN))
    with pytest.raises(JobSpecError, match="needs a clipping bound"):
        job(secure_aggregation=True)
    with pytest.raises(JobSpecError, match="min_members"):
        job(min_members=4)
    with pytest.raises(JobSpecError, match="threshold"):
        job(secure_aggregation=True, update_clip=1.0, threshold=3)
    with pytest.raises(JobSpecError, match="not valid"):
        JobSpec.from_dict({"job_id": "x"})


# --- plain rounds ----------------------------------------------------------------------


def test_three_plain_rounds_learn_and_finish() -> None:
    coord = Coordinator.start(job(), INITIAL, now=0.0)
    before = logreg.accuracy(unflatten(coord.global_vector, SHAPES), TEST)
    for r in range(3):
        assert coord.status().phase is Phase.TRAINING and coord.round == r + 1
        plain_round(coord, now=float(r))
    assert coord.phase is Phase.DONE and coord.version == 3
    assert [h.members for h in coord.history] == [MEMBERS] * 3
    after = logreg.accuracy(unflatten(coord.global_vector, SHAPES), TEST)
    assert after > max(before, 0.8)


def test_updates_that_do_not_fit_are_refused_with_a_reason() -> None:
    coord = Coordinator.start(job(), INITIAL, now=0.0)
    good = train("cellex", coord)

    def refused(member: str, rnd: int, params: list[np.ndarray]) -> RefusalReason:
        with pytest.raises(UpdateRefused) as exc:
            coord.submit_update(member, rnd, params, 10, now=1.0)
        return exc.value.reason

    assert refused("mallory", 1, good) is RefusalReason.NOT_A_MEMBER
    assert refused("cellex", 2, good) is RefusalReason.WRONG_ROUND
    assert refused("cellex", 1, [good[0]]) is RefusalReason.WRONG_SHAPE
    assert refused("cellex", 1, [good[0].T.copy(), good[1]]) is RefusalReason.WRONG_SHAPE
    assert refused("cellex", 1, [good[0].astype(np.float64), good[1]]) is RefusalReason.WRONG_SHAPE
    nan = good[0].copy()
    nan[0, 0] = np.nan
    assert refused("cellex", 1, [nan, good[1]]) is RefusalReason.NOT_FINITE
    coord.submit_update("cellex", 1, good, 10, now=1.0)
    assert refused("cellex", 1, good) is RefusalReason.DUPLICATE
    coord.submit_update("polycell", 1, good, 10, now=1.0)
    coord.submit_update("sunarc", 1, good, 10, now=1.0)
    assert coord.round == 2
    assert refused("sunarc", 1, good) is RefusalReason.WRONG_ROUND
    with pytest.raises(UpdateRefused, match="round 1 \\(that round is closed\\)"):
        coord.submit_update("sunarc", 1, good, 10, now=1.0)


def test_stragglers_miss_the_round_and_too_few_members_retry_then_fail() -> None:
    coord = Coordinator.start(job(), INITIAL, now=0.0)
    plain_round(coord, now=1.0, members=("cellex", "polycell"))
    assert coord.round == 1  # still waiting for sunarc
    assert coord.tick(now=10.5)  # deadline: aggregate the two that came
    assert coord.round == 2 and coord.history[0].members == ("cellex", "polycell")
    late = train("sunarc", coord)
    with pytest.raises(UpdateRefused) as exc:
        coord.submit_update("sunarc", 1, late, 10, now=11.0)
    assert exc.value.reason is RefusalReason.WRONG_ROUND
    # Round 2: only one member answers in each attempt.
    now = 11.0
    for attempt in (1, 2, 3):
        assert coord.attempt == attempt
        plain_round(coord, now=now, members=("cellex",))
        now = coord.deadline + 0.1
        coord.tick(now)
    assert coord.phase is Phase.FAILED and "failed 3 times" in coord.detail


def test_robust_strategy_is_applied_by_the_coordinator() -> None:
    coord = Coordinator.start(
        job(members=(*MEMBERS, "wafer"), strategy=StrategySpec(StrategyName.MEDIAN)), INITIAL, 0.0
    )
    for m in MEMBERS:
        coord.submit_update(m, 1, train(m, coord), 300, now=1.0)
    poisoned = [np.full(s, 1e6, np.float32) for s in SHAPES]
    coord.submit_update("wafer", 1, poisoned, 10**9, now=1.0)
    assert coord.round == 2 and float(np.max(np.abs(coord.global_vector))) < 10


def test_dp_rounds_report_epsilon_and_stop_at_the_budget() -> None:
    dp = DPConfig(clip=1.0, noise_multiplier=2.0, mode=NoiseMode.CENTRAL, max_epsilon=5.0)
    coord = Coordinator.start(job(rounds=50, dp=dp), INITIAL, now=0.0, seed=1)
    rounds = 0
    while not coord.finished:
        plain_round(coord, now=float(rounds))
        rounds += 1
    eps = [h.epsilon for h in coord.history]
    assert all(e is not None for e in eps) and eps == sorted(eps)  # type: ignore[type-var]
    assert eps[-1] is not None and eps[-1] <= 5.0
    assert coord.phase is Phase.DONE and "over the job's budget 5" in coord.detail
    assert 1 < rounds < 50


def test_member_clips_its_change_before_it_leaves() -> None:
    spec = job(update_clip=0.1)
    rng = np.random.default_rng(0)
    trained = INITIAL + 5.0
    change = prepare_change(spec, INITIAL, trained, rng)
    assert np.linalg.norm(change) == pytest.approx(0.1, rel=1e-5)
    np.testing.assert_allclose(plain_update(spec, INITIAL, trained, rng), INITIAL + change)
    np.testing.assert_array_equal(plain_update(job(), INITIAL, trained, rng), trained)


# --- secure aggregation rounds ---------------------------------------------------------


def secure_round(
    coord: Coordinator,
    now: float,
    *,
    skip_mask: Collection[str] = (),
    skip_unmask: Collection[str] = (),
    poison: dict[str, np.ndarray] | None = None,
    trained_for: Callable[[str, Coordinator], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    rnd, attempt, rng = coord.round, coord.attempt, np.random.default_rng(coord.round)
    clients: dict[str, SecAggClient] = {
        m: secagg_client(coord.job, m, rnd, attempt, SIGNING[m]) for m in MEMBERS
    }
    changes = {}
    for m, c in clients.items():
        coord.submit_advert(m, rnd, attempt, c.advertise(), VERIFY[m], now)
    assert coord.phase is Phase.SHARE_KEYS
    for m, c in clients.items():
        roster = coord.roster(m, rnd, attempt)
        coord.submit_shares(m, rnd, attempt, c.share_keys(roster, VERIFY), now)
    assert coord.phase is Phase.MASKED_INPUT
    for m, c in clients.items():
        trained = flatten(train(m, coord)) if trained_for is None else trained_for(m, coord)
        changes[m] = prepare_change(coord.job, coord.global_vector, trained, rng)
        if poison is not None and m in poison:  # masked as it is: never clipped
            changes[m] = poison[m]
        masked = c.mask(changes[m], coord.inbox(m, rnd, attempt))
        if m not in skip_mask:
            coord.submit_masked(m, rnd, attempt, masked, now)
    if skip_mask:
        coord.tick(coord.deadline + 0.1)
        now = coord.deadline - coord.job.phase_timeout_s
    assert coord.phase is Phase.CONSISTENCY
    split = coord.unmask_request(MEMBERS[0], rnd, attempt)
    for m in split.survivors:
        coord.submit_confirmation(m, rnd, attempt, clients[m].confirm(split), now)
    assert coord.phase is Phase.UNMASK
    request = coord.unmask_request(MEMBERS[0], rnd, attempt)
    for m in request.survivors:
        if m not in skip_unmask:
            coord.submit_unmask(m, rnd, attempt, clients[m].unmask(request), now)
    if skip_unmask:
        coord.tick(coord.deadline + 0.1)
    return {m: changes[m] for m in request.survivors}


def test_secure_rounds_average_clipped_changes_and_survive_dropouts() -> None:
    spec = job(secure_aggregation=True, update_clip=1.0, threshold=2)
    coord = Coordinator.start(spec, INITIAL, now=0.0)
    before = coord.global_vector.copy()
    changes = secure_round(coord, now=1.0)
    expected = before + np.mean(list(changes.values()), axis=0)
    assert coord.round == 2 and coord.history[0].members == MEMBERS
    np.testing.assert_allclose(coord.global_vector, expected, atol=1e-6)
    # Round 2: the coordinator-member sunarc drops after sharing keys (the consistency
    # round needs t=2 signatures from members other than the coordinator, so with three
    # members only the coordinator's own dropout is survivable); round 3: after masking.
    before = coord.global_vector.copy()
    changes = secure_round(coord, now=2.0, skip_mask={"sunarc"})
    assert coord.history[1].members == ("cellex", "polycell")
    np.testing.assert_allclose(
        coord.global_vector, before + np.mean(list(changes.values()), axis=0), atol=1e-6
    )
    before = coord.global_vector.copy()
    changes = secure_round(coord, now=coord.deadline - 1, skip_unmask={"sunarc"})
    assert coord.history[2].members == MEMBERS and coord.phase is Phase.DONE
    np.testing.assert_allclose(
        coord.global_vector, before + np.mean(list(changes.values()), axis=0), atol=1e-6
    )


def test_a_secure_sum_longer_than_the_clip_allows_is_scaled_back() -> None:
    """A hostile member masks a change with every coordinate at the clip (each one within
    the quantizer's room, its length sqrt(d) times the clip): the coordinator cannot clip
    what it never sees, so it bounds the sum, and the model moves by at most the clip."""
    clip = 1.0
    spec = job(secure_aggregation=True, update_clip=clip, threshold=2)
    coord = Coordinator.start(spec, INITIAL, now=0.0)
    before = coord.global_vector.copy()
    hostile = np.full(INITIAL.size, clip, np.float32)
    assert np.linalg.norm(hostile) > 5 * clip
    changes = secure_round(coord, now=1.0, poison={"sunarc": hostile})
    moved = float(np.linalg.norm(coord.global_vector - before))
    unbounded = float(np.linalg.norm(np.mean(list(changes.values()), axis=0)))
    assert unbounded > 1.5 * clip  # what the round moved the model by before
    assert moved <= clip * 1.001
    assert coord.history[0].sum_bounded and "scaled back" in coord.status().detail
    # an honest round after it: its sum is within the bound and taken as it is
    before = coord.global_vector.copy()
    changes = secure_round(coord, now=2.0)
    assert not coord.history[1].sum_bounded
    np.testing.assert_allclose(
        coord.global_vector, before + np.mean(list(changes.values()), axis=0), atol=1e-6
    )


def test_a_secure_sum_under_distributed_noise_is_bounded() -> None:
    """With distributed noise the bound must leave room for every member's noise (on a
    model of 100k parameters ~390 clips long in all), so an honest round is taken as it
    is; a member that sends twice its share of the noise's length in one direction, and
    no noise, is scaled back. (One that sends its share's length, in place of its noise,
    is not: the sum cannot tell a member's noise from its change.)"""
    big = logreg.model_shapes(2_000, 50)
    dp = DPConfig(clip=1.0, noise_multiplier=1.0, mode=NoiseMode.DISTRIBUTED)
    spec = job(shapes=big, secure_aggregation=True, dp=dp, threshold=2, rounds=2)
    start = np.zeros(sum(int(np.prod(s)) for s in big), np.float32)
    coord = Coordinator.start(spec, start, now=0.0, seed=3)
    rng = np.random.default_rng(7)

    def trained(member: str, c: Coordinator) -> np.ndarray:
        return c.global_vector + rng.normal(0.0, 0.01, c.global_vector.size).astype(np.float32)

    secure_round(coord, now=1.0, trained_for=trained)
    assert not coord.history[0].sum_bounded  # honest: noise and all, taken as it is
    share = dp.member_noise_std(spec.min_members) * np.sqrt(start.size)  # ~224 clips
    # (each coordinate within what the quantizer takes: the masked input is clipped there)
    hostile = np.zeros(start.size, np.float32)
    width = int((2 * share / 5.0) ** 2) + 1
    hostile[:width] = 5.0  # a direction of twice the share's length
    before = coord.global_vector.copy()
    changes = secure_round(coord, now=2.0, trained_for=trained, poison={"sunarc": hostile})
    assert coord.history[1].sum_bounded
    direction = hostile / np.linalg.norm(hostile)
    pushed = float(np.dot(np.sum(list(changes.values()), axis=0), direction))
    moved = float(np.dot(coord.global_vector - before, direction)) * len(changes)
    assert pushed > 1.9 * share and moved < 0.8 * pushed


def test_secure_round_refuses_out_of_phase_and_impersonation() -> None:
    spec = job(secure_aggregation=True, update_clip=1.0, threshold=2)
    coord = Coordinator.start(spec, INITIAL, now=0.0)
    client = secagg_client(spec, "cellex", 1, 1, SIGNING["cellex"])
    with pytest.raises(UpdateRefused) as exc:
        coord.submit_update("cellex", 1, train("cellex", coord), 10, now=1.0)
    assert exc.value.reason is RefusalReason.WRONG_PHASE
    with pytest.raises(UpdateRefused) as exc:
        coord.submit_advert("polycell", 1, 1, client.advertise(), VERIFY["polycell"], now=1.0)
    assert exc.value.reason is RefusalReason.NOT_A_MEMBER
    with pytest.raises(UpdateRefused) as exc:
        coord.roster("cellex", 1, 1)
    assert exc.value.reason is RefusalReason.WRONG_PHASE
    # Nobody advertised by the deadline: attempt 2 starts, and attempt-1 keys are refused.
    coord.tick(now=11.0)
    assert coord.attempt == 2 and coord.phase is Phase.ADVERTISE
    with pytest.raises(UpdateRefused) as exc:
        stale = secagg_client(spec, "cellex", 1, 1, SIGNING["cellex"]).advertise()
        coord.submit_advert("cellex", 1, 1, stale, VERIFY["cellex"], 11.5)
    assert exc.value.reason is RefusalReason.WRONG_ROUND
    fresh = secagg_client(spec, "cellex", 1, 2, SIGNING["cellex"])
    coord.submit_advert("cellex", 1, 2, fresh.advertise(), VERIFY["cellex"], now=11.5)


# --- checkpoint and resume -------------------------------------------------------------


def test_restarted_coordinator_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "el-2025-1.npz"
    coord = Coordinator.start(job(), INITIAL, now=0.0)
    plain_round(coord, now=1.0)
    coord.checkpoint(path)
    after_round_1 = coord.global_vector.copy()
    plain_round(coord, now=2.0, members=("cellex",))  # in flight when the process dies
    resumed = Coordinator.resume(path, job(), now=100.0)
    # round 2 reopens as attempt 2: attempt 1's number (and keys) are never reused
    assert (resumed.round, resumed.version, resumed.attempt) == (2, 1, 2)
    assert resumed.phase is Phase.TRAINING and resumed.deadline == 110.0
    np.testing.assert_array_equal(resumed.global_vector, after_round_1)
    assert not np.array_equal(after_round_1, INITIAL)
    assert resumed.history == coord.history[:1]
    assert coord.history[0].seconds == 1.0, "round 1: opened at 0, aggregated at 1"
    plain_round(resumed, now=101.5)
    plain_round(resumed, now=104.0)
    assert resumed.phase is Phase.DONE and resumed.version == 3
    # round 2 counts from its reopening (100) in the new process; round 3 from 101.5
    assert [r.seconds for r in resumed.history] == [1.0, 1.5, 2.5]
    resumed.checkpoint(path)
    assert Coordinator.resume(path, job(), now=200.0).phase is Phase.DONE
    with pytest.raises(CheckpointError, match="another job"):
        Coordinator.resume(path, job(rounds=5), now=0.0)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Coordinator.resume(path, job(), now=0.0)
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_checkpoint_kept_aside_while_replaced_and_read_after_a_crash_between_renames(
    tmp_path: Path,
) -> None:
    # keep_previous (the host's between-rounds write): the replaced file stays aside as
    # the slot of the next write
    path = tmp_path / "checkpoint.bin"
    coord = Coordinator.start(job(), INITIAL, now=0.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    plain_round(coord, now=1.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    previous = previous_path(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, previous.name])
    assert Coordinator.resume(path, job(), now=2.0).version == 1
    assert Coordinator.resume(previous, job(), now=2.0).version == 0
    # a crash between the two renames: only the previous checkpoint is there, and it is
    # the one of the version announced last (the new one is announced after the rename)
    path.unlink()
    assert Coordinator.resume(path, job(), now=3.0).version == 0
    # the next write supersedes it: a new file into the free name; the stale one is
    # the slot of the write after, never read again
    plain_round(coord, now=4.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    assert Coordinator.resume(path, job(), now=5.0).version == 2
    previous.unlink()
    path.unlink()
    with pytest.raises(CheckpointError, match="cannot be read"):
        Coordinator.resume(path, job(), now=6.0)


def test_checkpoint_two_slots_overwritten_in_place_in_turn(tmp_path: Path) -> None:
    # keep_previous: the third write goes into the first file (same inode, overwritten in
    # place, cut to its new length), the fourth into the second: two slots in turn
    path = tmp_path / "checkpoint.bin"
    previous = previous_path(path)
    coord = Coordinator.start(job(), INITIAL, now=0.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    first = path.stat().st_ino
    plain_round(coord, now=1.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    second = path.stat().st_ino
    assert second != first and previous.stat().st_ino == first
    previous.write_bytes(previous.read_bytes() + b"x" * 100_000)  # longer than what comes
    plain_round(coord, now=2.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    assert (path.stat().st_ino, previous.stat().st_ino) == (first, second)
    resumed = Coordinator.resume(path, job(), now=3.0)
    assert resumed.version == 2 and resumed.history == coord.history
    np.testing.assert_array_equal(resumed.global_vector, coord.global_vector)
    assert Coordinator.resume(previous, job(), now=3.0).version == 1
    coord.checkpoint(path, fsync=True, keep_previous=True)
    assert (path.stat().st_ino, previous.stat().st_ino) == (second, first)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, previous.name])


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_checkpoint_crash_between_the_slot_renames_leaves_a_complete_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    # the process dies at the 1st, 2nd or 3rd rename of a two-slot write: what a restarted
    # coordinator reads is a complete checkpoint, the old one or the new one, and the
    # next write puts the files back in order
    import qdspace.federation.checkpoint as checkpoint

    path = tmp_path / "checkpoint.bin"
    coord = Coordinator.start(job(), INITIAL, now=0.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    plain_round(coord, now=1.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    plain_round(coord, now=2.0)
    renames = 0
    real_replace = checkpoint.os.replace

    def dying_replace(src: object, dst: object) -> None:
        nonlocal renames
        renames += 1
        if renames == crash_at:
            raise KeyboardInterrupt("the process dies here")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        coord.checkpoint(path, fsync=False, keep_previous=True)
    monkeypatch.setattr(checkpoint.os, "replace", real_replace)
    # before the first rename the old checkpoint is in place; after it, the new one
    assert Coordinator.resume(path, job(), now=3.0).version == (1 if crash_at == 1 else 2)
    plain_round(coord, now=4.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    assert Coordinator.resume(path, job(), now=5.0).version == 3
    coord.checkpoint(path, fsync=False, keep_previous=True)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([path.name, previous_path(path).name])
    assert Coordinator.resume(path, job(), now=6.0).version == 3


def test_background_flush_is_waited_for_and_skips_a_file_gone_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.bin"
    coord = Coordinator.start(job(), INITIAL, now=0.0)
    coord.checkpoint(path, fsync=False, keep_previous=True)
    thread = fsync_later((path, tmp_path / "gone.bin", tmp_path))
    thread.join(10)
    assert not thread.is_alive() and Coordinator.resume(path, job(), now=1.0).version == 0


def test_secure_round_with_distributed_dp_sums_noisy_changes_and_reports_epsilon() -> None:
    dp = DPConfig(clip=1.0, noise_multiplier=1.0, mode=NoiseMode.DISTRIBUTED)
    spec = job(secure_aggregation=True, dp=dp, threshold=2, rounds=1)
    assert spec.secagg_config(1, 1).quantizer.clip == pytest.approx(1.0 + 6 / np.sqrt(2))
    coord = Coordinator.start(spec, INITIAL, now=0.0)
    before = coord.global_vector.copy()
    changes = secure_round(coord, now=1.0)
    noisy = np.stack(list(changes.values()))
    assert float(np.max(np.linalg.norm(noisy, axis=1))) > 1.5  # noise on top of the clip
    np.testing.assert_allclose(coord.global_vector, before + noisy.mean(axis=0), atol=1e-5)
    record = coord.history[0]
    assert record.epsilon is not None and record.epsilon > 0 and coord.phase is Phase.DONE
    assert not record.sum_bounded  # honest noise is within the bound on the sum
