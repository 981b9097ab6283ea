"""The coordinator's round state machine: phases, deadlines, refusals, aggregation.

Pure and synchronous: every call takes ``now`` (seconds, any monotonic clock) so the
transport decides what time it is and tests can jump. A round is either plain
(``TRAINING``: members upload their trained parameters) or, with secure aggregation,
the five SecAgg phases (the fourth, ``CONSISTENCY``, is the signed survivor-set check
that keeps a lying coordinator from unmasking one member's update). A phase closes
early when every expected member has answered, or at its deadline with whoever
answered if that is enough; stragglers are then refused with ``DEADLINE_PASSED``.
A round that ends with too few members is tried again (a fresh attempt, new
deadline) up to ``max_attempts`` times.

A job's clip (``JobSpec.clip``) is enforced here on every change the coordinator
sees, not left to the members that agreed to it: in plain rounds each update is
clipped before any strategy runs (FedAvg, median and Krum included), so one hostile
member cannot move the model further than the bound. Under secure aggregation the
coordinator never sees a single change, so it bounds their sum instead: longer than
honest members' changes within the clip can add up to, it is scaled back
(``RoundRecord.sum_bounded``), and the model moves by at most the clip there too (with
distributed noise, a member may still send, in place of its share of the noise, a change
of that share's length: the sum cannot tell them apart).

Between rounds the coordinator's state is written as a checkpoint and a restarted
coordinator resumes from it (``checkpoint`` / ``resume``): which state survives and
how the round in flight is reopened is decided here, the file's bytes are
``checkpoint``'s. The vocabulary others read (``Phase``, ``RoundStatus``,
``RoundRecord``) lives in ``round_status``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from nacl.signing import VerifyKey
from numpy.typing import NDArray

from qdspace.federation.admission import (
    refuse_impersonation,
    refuse_out_of_turn,
    refuse_stranger,
    refuse_unreadable,
)
from qdspace.federation.checkpoint import read_checkpoint, write_checkpoint
from qdspace.federation.dp import Accountant, add_noise
from qdspace.federation.errors import (
    BadShares,
    CheckpointError,
    FederationError,
    PrivacyError,
    RefusalReason,
    SecAggAbort,
    UpdateRefused,
)
from qdspace.federation.job import JobSpec
from qdspace.federation.params import Vector, check_update, flatten
from qdspace.federation.round_status import Phase, RoundRecord, RoundStatus
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    MaskedPieces,
    SecAggConfig,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.federation.secagg_server import SecAggServer
from qdspace.federation.strategies import (
    ClientUpdate,
    NormBounding,
    build_strategy,
    clip_to_norm,
    l2_norm,
)

DEFAULT_MAX_ATTEMPTS = 3
#: Elements per block of the in-place mean (1 MiB of float32).
_BLOCK = 1 << 18


@dataclass
class Coordinator:
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

    def __post_init__(self) -> None:
        self._updates: dict[str, ClientUpdate] = {}
        self._secagg: SecAggServer | None = None
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
            config = self.job.secagg_config(self.round, self.attempt)
            self._secagg = SecAggServer(config, set(self.job.members) - self.excluded)
            self.phase = Phase.ADVERTISE
        else:
            self.phase = Phase.TRAINING
        self.deadline = now + self.job.phase_timeout_s

    @property
    def _secure_quorum(self) -> int:
        """Members a secure round needs: each masks with at least t others."""
        return max(self.job.min_members, self.job.threshold + 1)

    def _leave_out_reported(self) -> None:
        """The ending attempt's bad-share reports leave members out of the job."""
        if self._secagg is not None and self._secagg.reports:
            out, said = self._secagg.left_out(self._secure_quorum)
            self.excluded = self.excluded | out
            self.detail += f"; {said}"

    def _finish(self, phase: Phase, detail: str) -> None:
        self.phase, self.detail, self.deadline = phase, detail, 0.0

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    @property
    def secagg_config(self) -> SecAggConfig | None:
        """What members of the current secure round must agree on (None in plain rounds)."""
        return None if self._secagg is None else self._secagg.config

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

    def _server(self) -> SecAggServer:
        if self._secagg is None:
            raise UpdateRefused(RefusalReason.WRONG_PHASE, "this job has no secure aggregation")
        return self._secagg

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
            server = self._server()
            if member not in server.shared:
                raise UpdateRefused(RefusalReason.DROPPED, f"{member} did not share keys")
            if member in server.survivors:
                raise UpdateRefused(RefusalReason.DUPLICATE, f"{member} already sent its input")
            if member in server.reports:
                raise UpdateRefused(RefusalReason.DROPPED, f"{member} reported bad shares")

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

    # --- secure aggregation rounds -----------------------------------------------------

    def submit_advert(
        self,
        member: str,
        round_: int,
        attempt: int,
        advert: KeyAdvert,
        key: VerifyKey,
        now: float,
    ) -> None:
        """A member's signed key advert; ``key`` is its certificate-bound Ed25519 key."""
        refuse_impersonation(member, advert.member)  # identity first: impersonation is never "late"
        self._admit(member, round_, Phase.ADVERTISE, now, attempt)
        server = self._server()
        server.receive_advert(advert, key)
        if len(server.advertised) == len(set(self.job.members) - self.excluded):
            self._close(now)

    def roster(self, member: str, round_: int, attempt: int) -> tuple[KeyAdvert, ...]:
        self._readable(member, round_, Phase.SHARE_KEYS, attempt)
        return self._server().roster

    def submit_shares(
        self,
        member: str,
        round_: int,
        attempt: int,
        shares: Sequence[EncryptedShare],
        now: float,
    ) -> None:
        self._admit(member, round_, Phase.SHARE_KEYS, now, attempt)
        server = self._server()
        server.receive_shares(member, shares)
        if len(server.shared) == len(server.roster):
            self._close(now)

    def inbox(self, member: str, round_: int, attempt: int) -> list[EncryptedShare]:
        self._readable(member, round_, Phase.MASKED_INPUT, attempt)
        return self._server().inbox(member)

    def submit_masked(
        self,
        member: str,
        round_: int,
        attempt: int,
        masked: MaskedInput | MaskedPieces,
        now: float,
    ) -> None:
        refuse_impersonation(member, masked.member)
        self._admit(member, round_, Phase.MASKED_INPUT, now, attempt)
        server = self._server()
        server.receive_masked(masked)
        if len(server.survivors) + len(server.reports) == len(server.shared):
            self._close(now)

    def submit_report(
        self, member: str, round_: int, attempt: int, accused: str, now: float
    ) -> None:
        """``member`` found ``accused``'s key shares unusable and sends no masked input."""
        self._admit(member, round_, Phase.MASKED_INPUT, now, attempt)
        server = self._server()
        server.receive_report(member, accused)
        if len(server.survivors) + len(server.reports) == len(server.shared):
            self._close(now)

    def unmask_request(self, member: str, round_: int, attempt: int) -> UnmaskRequest:
        """The split to sign (``CONSISTENCY``), then with the signatures on it (``UNMASK``)."""
        self._readable(member, round_, Phase.CONSISTENCY, attempt)
        return self._server().unmask_request()

    def submit_confirmation(
        self,
        member: str,
        round_: int,
        attempt: int,
        confirmation: Confirmation,
        now: float,
    ) -> None:
        refuse_impersonation(member, confirmation.member)
        self._admit(member, round_, Phase.CONSISTENCY, now, attempt)
        server = self._server()
        server.receive_confirmation(confirmation)
        if len(server.confirmed) == len(server.survivors):
            self._close(now)

    def submit_unmask(
        self, member: str, round_: int, attempt: int, response: UnmaskResponse, now: float
    ) -> None:
        refuse_impersonation(member, response.member)
        self._admit(member, round_, Phase.UNMASK, now, attempt)
        server = self._server()
        server.receive_unmask(response)
        if server.responses == len(server.survivors):
            self._close(now)

    def _readable(self, member: str, round_: int, phase: Phase, attempt: int) -> None:
        refuse_unreadable(self.status(), self.job.members, member, round_, phase, attempt)

    # --- deadlines and closing ---------------------------------------------------------

    def tick(self, now: float) -> bool:
        """Close the current phase if its deadline has passed; True if anything changed."""
        if self.finished or now <= self.deadline:
            return False
        self._close(now)
        return True

    def _close(self, now: float) -> None:
        try:
            if self.phase is Phase.TRAINING:
                self._close_training(now)
            else:
                self._close_secagg(now)
        except SecAggAbort as exc:
            self.detail = f"round {self.round} attempt {self.attempt} aborted: {exc}"
            if isinstance(exc, BadShares):  # found at fault by us: out of the job
                self.excluded = self.excluded | {exc.member}
                self.detail += f"; {exc.member} is left out of the job's later attempts"
            self._open_round(now)

    def _close_training(self, now: float) -> None:
        if len(self._updates) < self.job.min_members:
            self.detail = (
                f"round {self.round} attempt {self.attempt}: {len(self._updates)} updates by "
                f"the deadline, job needs {self.job.min_members}"
            )
            self._open_round(now)
            return
        updates = [self._updates[m] for m in sorted(self._updates)]
        clip = self.job.clip
        if self.job.sum_mode:
            deltas = [u.vector - self.global_vector for u in updates]
            bounded = []
            if clip is not None:
                clipped = [clip_to_norm(d, clip) for d in deltas]
                deltas = [d for d, _ in clipped]
                bounded = [u.member for u, (_, was) in zip(updates, clipped, strict=True) if was]
            total = np.asarray(np.sum(deltas, axis=0, dtype=np.float64), dtype=np.float32)
            self._apply_sum(total, tuple(u.member for u in updates), tuple(bounded), now)
            return
        strategy = build_strategy(self.job.strategy)
        ours: tuple[str, ...] = ()
        if clip is not None and not (isinstance(strategy, NormBounding) and strategy.bound <= clip):
            updates, ours = self._clip_updates(updates, clip)
        agg = strategy.aggregate(self.global_vector, updates)
        self._advance(agg.vector, agg.used, tuple(sorted({*ours, *agg.bounded})), now)

    def _clip_updates(
        self, updates: list[ClientUpdate], clip: float
    ) -> tuple[list[ClientUpdate], tuple[str, ...]]:
        """Each update whose change from the global model is longer than ``clip`` (L2),
        scaled back to it; and who was. The job's clip is a term every member agreed
        to, so the coordinator enforces it on what arrives rather than trust each member
        to have applied it: a hostile member's 1e30 update moved a FedAvg model by 5e29.
        Updates within the bound are kept as sent (bit for bit)."""
        base = self.global_vector
        out: list[ClientUpdate] = []
        bounded: list[str] = []
        for u in updates:
            with np.errstate(over="ignore"):  # a change past float32's range: see below
                change = np.subtract(u.vector, base, dtype=np.float32)  # ours
            norm = l2_norm(change)
            if norm <= clip:
                out.append(u)
                continue
            if math.isinf(norm):  # the difference itself overflowed: scale it in float64
                wide = np.subtract(u.vector, base, dtype=np.float64)
                change = (wide * (clip / float(np.linalg.norm(wide)))).astype(np.float32)
            else:
                np.multiply(change, np.float32(clip / norm), out=change)
            np.add(change, base, out=change)
            out.append(ClientUpdate(u.member, change, u.num_examples))
            bounded.append(u.member)
        return out, tuple(bounded)

    def _close_secagg(self, now: float) -> None:
        server = self._server()
        if self.phase is Phase.ADVERTISE:
            # each member masks with at least t others (`SecAggClient.masking`)
            needed = self._secure_quorum
            if len(server.advertised) < needed:
                raise SecAggAbort(
                    f"{len(server.advertised)} members advertised keys, the round needs {needed}"
                )
            server.close_adverts()
            self.phase = Phase.SHARE_KEYS
        elif self.phase is Phase.SHARE_KEYS:
            server.close_shares()
            self.phase = Phase.MASKED_INPUT
        elif self.phase is Phase.MASKED_INPUT:
            server.close_masked()
            self.phase = Phase.CONSISTENCY
        elif self.phase is Phase.CONSISTENCY:
            server.close_consistency()
            self.phase = Phase.UNMASK
        elif self.phase is Phase.UNMASK:
            result = server.finish()
            total, over = self._bound_secure_sum(result.total, len(result.members))
            self._apply_sum(total, result.members, (), now, sum_bounded=over)
            return
        self.deadline = now + self.job.phase_timeout_s

    def _sum_bound(self, members: int, size: int) -> float:
        """The longest sum (L2) of `members` changes each within the job's clip, as a
        secure round decodes it: their clips and the quantizer's rounding in every
        coordinate, and the distributed noise each member adds, bounded by its square.

        The noise adds ``sigma^2 * d`` to the sum's square, give or take six standard
        deviations of that (``sigma^2 * sqrt(2d)`` each) and of its cross term with the
        changes (``2 * sigma * |changes|`` each); bounding the square, not the length,
        keeps the slack to that. What it cannot bound: a member that leaves out its own
        share of the noise and sends a change of that share's length instead
        (``sigma / sqrt(members) * sqrt(d)``, in a direction of its choosing): the sum
        cannot tell a member's noise from its change. A relative 1e-4 on top keeps
        float32 rounding of an honest, aligned sum from counting as over."""
        clip = self.job.clip
        assert clip is not None  # a secure job has one (`JobSpec.problems`)
        quantizer = self._server().config.quantizer
        changes = members * clip + quantizer.max_error(members) * math.sqrt(size)
        square = changes * changes
        dp = self.job.dp
        if dp is not None:
            sigma = math.sqrt(members) * dp.member_noise_std(self.job.min_members)
            noise = sigma * sigma * (size + 6.0 * math.sqrt(2.0 * size))
            square += noise + 6.0 * 2.0 * sigma * changes
        return math.sqrt(square) * (1.0 + 1e-4)

    def _bound_secure_sum(self, total: Vector, members: int) -> tuple[Vector, bool]:
        """The unmasked sum, scaled back to `_sum_bound` if it is longer; whether it was.

        The coordinator never sees a member's change under secure aggregation, so it
        cannot clip one; but a masked input is any ring element the member likes (each
        coordinate up to the quantizer's room for all members' sum), and one hostile
        member's input moved the model by ``sqrt(d)`` times the clip. Honest members'
        sum is within this bound, so bounding the sum takes nothing from them; without
        noise it moves the model by at most the clip (the mean), as clipping does in a
        plain round (with distributed noise, see `_sum_bound` for what is left). Who
        sent the long input stays unknown (that is the protocol's point)."""
        flat = np.asarray(total, dtype=np.float32)
        bound = self._sum_bound(members, flat.size)
        norm = l2_norm(flat.ravel())
        if norm <= bound:
            return total, False
        if math.isinf(norm) or not flat.flags.writeable or flat is not total:
            wide = np.asarray(total, dtype=np.float64)
            return (wide * (bound / float(np.linalg.norm(wide)))).astype(np.float32), True
        np.multiply(flat, np.float32(bound / norm), out=flat)
        return flat, True

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
        # ``total`` is a fresh array of this round: divide and add in place (no 50 MB temporaries)
        mean = np.asarray(total, dtype=np.float32)
        if mean is total and mean.flags.writeable:
            count, base = np.float32(len(members)), self.global_vector
            for start in range(0, mean.size, _BLOCK):  # both steps while a block is in cache
                part = mean[start : start + _BLOCK]
                np.divide(part, count, out=part)
                np.add(part, base[start : start + _BLOCK], out=part)
            self._advance(mean, members, bounded, now, sum_bounded=sum_bounded)
            return
        mean = (mean / np.float32(len(members))).astype(np.float32)
        self._advance(self.global_vector + mean, members, bounded, now, sum_bounded=sum_bounded)

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
        )
        if meta["phase"] in (Phase.DONE.value, Phase.FAILED.value):
            coord._finish(Phase(meta["phase"]), meta["detail"])
        else:
            coord.attempt = coord.attempt_base = int(meta.get("attempt", 0))
            coord._open_round(now)
        return coord
