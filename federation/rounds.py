"""The coordinator's round state machine: phases, deadlines, attempts, refusals.

Pure and synchronous: every call takes ``now`` (seconds, any monotonic clock) so the
transport decides what time it is and tests can jump. A round is either plain
(``TRAINING``: members upload their trained parameters) or, with secure aggregation,
the five SecAgg phases (the fourth, ``CONSISTENCY``, is the signed survivor-set check
that keeps a lying coordinator from unmasking one member's update). A phase closes
early when every expected member has answered, or at its deadline with whoever
answered if that is enough; stragglers are then refused with ``DEADLINE_PASSED``.
A round that ends with too few members is tried again (a fresh attempt, new
deadline) up to ``max_attempts`` times.

Between rounds the coordinator's state is written as a checkpoint and a restarted
coordinator resumes from it (``checkpoint`` / ``resume``): which state survives and
how the round in flight is reopened is decided here, the file's bytes are
``checkpoint``'s.

What is not here, and why: this file is the machine every round runs through, plain
or secure, and reads as phases, deadlines and attempts. The secure phases' nine calls
and their closings are ``round_secagg``'s (a mixin of ``Coordinator``, so the transport
still calls one object); the numbers a closed round is turned into a model with (the
job's clip on each update, the bound on a secure sum, the in-place mean) are
``round_aggregate``'s; the vocabulary others read (``Phase``, ``RoundStatus``,
``RoundRecord``) lives in ``round_status``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from qdspace.federation.admission import refuse_out_of_turn, refuse_stranger
from qdspace.federation.checkpoint import read_checkpoint, write_checkpoint
from qdspace.federation.dp import Accountant, add_noise
from qdspace.federation.errors import (
    BadShares,
    CheckpointError,
    FederationError,
    PrivacyError,
    RefusalReason,
    SecAggAbort,
    SecAggError,
    UpdateRefused,
)
from qdspace.federation.job import JobSpec
from qdspace.federation.params import Vector, check_update, flatten
from qdspace.federation.round_aggregate import clip_updates, mean_step, sum_of_changes
from qdspace.federation.round_secagg import SecureRounds
from qdspace.federation.round_status import Phase, RoundRecord, RoundStatus
from qdspace.federation.strategies import ClientUpdate, NormBounding

DEFAULT_MAX_ATTEMPTS = 3


@dataclass
class Coordinator(SecureRounds):
    """Runs one job's rounds. Create with ``start`` or ``resume``."""

    job: JobSpec
    global_vector: Vector
    round: int
    version: int
    history: list[RoundRecord]
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    phase: Phase = Phase.TRAINING
    attempt: int = 0
    deadline: float = 0.0
    detail: str = ""
    seed: int | None = None
    #: Attempts of the current round made before a restart: they do not count towards
    #: ``max_attempts``, but their numbers are never reused (each attempt's keys and
    #: masks are bound to its number, so a resumed round starts with a fresh one).
    attempt_base: int = 0
    #: when the current round first opened in this process (``now`` of that call)
    round_opened_at: float = 0.0
    #: members this coordinator found at fault in a secure round (their signed shares did
    #: not rebuild the secret they committed to), and those bad-share reports leave out
    #: (``SecAggServer.left_out``): left out of every later attempt, so one member
    #: cannot make each attempt abort until the job fails
    excluded: frozenset[str] = frozenset()
    #: members named in a bad-share report whose two sides both stayed (leaving both out
    #: would have ended the job); named again in a later attempt, such a member is left
    #: out even if that ends the job (``SecAggServer.left_out``)
    accused: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self._updates: dict[str, ClientUpdate] = {}
        self._secagg = None  # declared, and filled per attempt, in ``round_secagg``
        self._rng = np.random.default_rng(self.seed)
        self._accountant = None if self.job.dp is None else Accountant(self.job.dp)

    # --- lifecycle ---------------------------------------------------------------------

    @classmethod
    def start(
        cls, job: JobSpec, initial: Vector, now: float, *, seed: int | None = None
    ) -> Coordinator:
        vec = np.asarray(initial, dtype=np.float32)
        if vec.shape != (job.vector_len,):
            raise FederationError(
                f"initial model has {vec.size} values, job {job.job_id} needs {job.vector_len}"
            )
        coord = cls(job, vec.copy(), round=1, version=0, history=[], seed=seed)
        coord._open_round(now)
        return coord

    def _open_round(self, now: float) -> None:
        self._leave_out_reported()
        self._updates = {}
        self._secagg = None
        if self.round > self.job.rounds:
            self._finish(Phase.DONE, f"all {self.job.rounds} rounds done")
            return
        if self._accountant is not None:
            try:
                self._accountant.check_budget(len(self.history) + 1)
            except PrivacyError as exc:
                self._finish(Phase.DONE, f"stopped before round {self.round}: {exc}")
                return
        present, needed = set(self.job.members) - self.excluded, self._secure_quorum
        if self.job.secure_aggregation and len(present) < needed:
            self._finish(
                Phase.FAILED,
                f"{self.detail}; {len(present)} members are left in the job, "
                f"a secure round needs {needed}",
            )
            return
        if self.attempt == self.attempt_base:  # the round's first attempt here
            self.round_opened_at = now
        self.attempt += 1
        if self.attempt - self.attempt_base > self.max_attempts:
            self._finish(Phase.FAILED, f"round {self.round} failed {self.max_attempts} times")
            return
        if self.job.secure_aggregation:
            self._open_secure_attempt()
        else:
            self.phase = Phase.TRAINING
        self.deadline = now + self.job.phase_timeout_s

    def _finish(self, phase: Phase, detail: str) -> None:
        self.phase, self.detail, self.deadline = phase, detail, 0.0

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    def status(self) -> RoundStatus:
        return RoundStatus(
            self.job.job_id,
            self.round,
            self.attempt,
            self.phase,
            self.deadline,
            self.version,
            self.detail,
        )

    # --- checks ------------------------------------------------------------------------

    def _admit(
        self, member: str, round_: int, phase: Phase, now: float, attempt: int | None = None
    ) -> None:
        refuse_stranger(self.job.members, self.job.job_id, member)
        self.tick(now)
        refuse_out_of_turn(self.status(), member, round_, phase, attempt)

    def expect(
        self, member: str, round_: int, phase: Phase, now: float, attempt: int | None = None
    ) -> None:
        """Refuse now what ``submit_update`` / ``submit_masked`` would refuse later.

        The transport calls this on an upload's header, so a non-member or a late or
        duplicate upload is refused before 50 MB of chunks are read.
        """
        self._admit(member, round_, phase, now, attempt)
        if phase is Phase.TRAINING and member in self._updates:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{member} already sent round {round_}")
        if phase is Phase.MASKED_INPUT:
            self._expect_masked(member)

    # --- plain rounds ------------------------------------------------------------------

    def submit_update(
        self,
        member: str,
        round_: int,
        params: Sequence[NDArray[np.float32]],
        examples: int,
        now: float,
    ) -> None:
        """Accept a member's trained parameters for this round, or refuse with a reason."""
        self._admit(member, round_, Phase.TRAINING, now)
        if member in self._updates:
            raise UpdateRefused(RefusalReason.DUPLICATE, f"{member} already sent round {round_}")
        check_update(params, self.job.shapes, member)
        self._updates[member] = ClientUpdate(member, flatten(params), max(examples, 0))
        if len(self._updates) == len(self.job.members):
            self._close(now)

    # --- deadlines and closing ---------------------------------------------------------

    def tick(self, now: float) -> bool:
        """Close the current phase if its deadline has passed; True if anything changed."""
        if self.finished or now <= self.deadline:
            return False
        self._close(now)
        return True

    def _close(self, now: float) -> None:
        """Close the phase; whatever fails in closing it ends the attempt, never the call.

        A closing is run by whichever call comes after the deadline (a status read, a
        list of jobs, another member's upload): an error escaping from it would be
        raised to every such call, the phase would never close and the job would be
        stuck for good. Any secure-aggregation error (``SecAggError``, ``SecAggAbort``)
        is therefore the end of this attempt and the start of the next.
        """
        try:
            if self.phase is Phase.TRAINING:
                self._close_training(now)
            else:
                self._close_secagg(now)
        except (SecAggAbort, SecAggError) as exc:
            self.detail = f"round {self.round} attempt {self.attempt} aborted: {exc}"
            if isinstance(exc, BadShares):  # found at fault by us: out of the job
                self.excluded = self.excluded | {exc.member}
                self.detail += f"; {exc.member} is left out of the job's later attempts"
            self._open_round(now)

    def _close_training(self, now: float) -> None:
        # the strategy's own floor too (Krum's 2f+3): the terms refuse a min_members
        # under it, and a job agreed before that check must not freeze on it
        strategy = self.job.aggregator()  # the mean unweighted unless the terms bound examples
        needed = max(self.job.min_members, strategy.min_updates)
        if len(self._updates) < needed:
            self.detail = (
                f"round {self.round} attempt {self.attempt}: {len(self._updates)} updates by "
                f"the deadline, too few: the job needs {needed}"
            )
            self._open_round(now)
            return
        updates = [self._updates[m] for m in sorted(self._updates)]
        clip = self.job.clip
        if self.job.sum_mode:
            total, bounded = sum_of_changes(updates, self.global_vector, clip)
            self._apply_sum(total, tuple(u.member for u in updates), bounded, now)
            return
        ours: tuple[str, ...] = ()
        if clip is not None and not (isinstance(strategy, NormBounding) and strategy.bound <= clip):
            updates, ours = clip_updates(updates, self.global_vector, clip)
        agg = strategy.aggregate(self.global_vector, updates)
        self._advance(agg.vector, agg.used, tuple(sorted({*ours, *agg.bounded})), now)

    def _apply_sum(
        self,
        total: Vector,
        members: tuple[str, ...],
        bounded: tuple[str, ...],
        now: float,
        *,
        sum_bounded: bool = False,
    ) -> None:
        dp = self.job.dp
        if dp is not None:
            total = add_noise(total, dp.central_noise_std(), self._rng)
        # ``total`` is a fresh array of this round: ``mean_step`` divides and adds in place
        step = mean_step(total, len(members), self.global_vector)
        self._advance(step, members, bounded, now, sum_bounded=sum_bounded)

    def _advance(
        self,
        vector: Vector,
        members: tuple[str, ...],
        bounded: tuple[str, ...],
        now: float,
        *,
        sum_bounded: bool = False,
    ) -> None:
        self.global_vector = np.asarray(vector, dtype=np.float32)
        self.version += 1
        eps = None
        if self._accountant is not None:
            eps = self._accountant.spent(len(self.history) + 1).epsilon
        seconds = max(0.0, now - self.round_opened_at)
        self.history.append(
            RoundRecord(self.round, self.version, members, bounded, eps, seconds, sum_bounded)
        )
        self.detail = f"round {self.round} aggregated from {len(members)} members"
        if sum_bounded:
            self.detail += (
                "; their sum was longer than the job's clip allows and was scaled back "
                "(a masked input was over the clip)"
            )
        self.round += 1
        self.attempt = self.attempt_base = 0
        self._open_round(now)

    # --- checkpoint --------------------------------------------------------------------

    def checkpoint(self, path: Path, *, fsync: bool = True, keep_previous: bool = False) -> None:
        """Write the between-rounds state atomically (``checkpoint.write_checkpoint``).

        ``fsync=False`` leaves flushing to the caller (the file is complete and in
        place for a restarted process either way); ``keep_previous`` leaves the replaced
        file beside it (``checkpoint.previous_path``), and the next write overwrites that
        one in place (two slots).
        """
        meta = {
            "job": self.job.to_dict(),
            "job_digest": self.job.digest().hex(),
            "round": self.round,
            "version": self.version,
            "max_attempts": self.max_attempts,
            "history": [asdict(r) for r in self.history],
            "phase": self.phase.value,
            "attempt": self.attempt,
            "detail": self.detail,
            "excluded": sorted(self.excluded),
            "accused": sorted(self.accused),
            "vector_len": int(self.global_vector.size),
        }
        write_checkpoint(path, meta, self.global_vector, fsync=fsync, keep_previous=keep_previous)

    @classmethod
    def resume(
        cls, path: Path, job: JobSpec, now: float, *, seed: int | None = None
    ) -> Coordinator:
        """Reload a checkpoint of ``job`` and reopen its current round with a fresh deadline.

        What the lost process held of the round in flight (adverts, shares, masked
        inputs) is gone; the round reopens as the next attempt number, so members make
        fresh keys and no mask is ever used twice, and the round is aggregated once.
        """
        meta, vector = read_checkpoint(path)
        if meta.get("job_digest") != job.digest().hex():
            raise CheckpointError(f"checkpoint {path} belongs to another job or other terms")
        history = [RoundRecord.from_dict(r) for r in meta["history"]]
        coord = cls(
            job,
            vector,
            round=int(meta["round"]),
            version=int(meta["version"]),
            history=history,
            max_attempts=int(meta["max_attempts"]),
            seed=seed,
            excluded=frozenset(str(m) for m in meta.get("excluded", ())),
            accused=frozenset(str(m) for m in meta.get("accused", ())),
        )
        if meta["phase"] in (Phase.DONE.value, Phase.FAILED.value):
            coord._finish(Phase(meta["phase"]), meta["detail"])
        else:
            coord.attempt = coord.attempt_base = int(meta.get("attempt", 0))
            coord._open_round(now)
        return coord
