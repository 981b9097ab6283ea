"""What a round looks like from outside: its phases, its status, its history.

A member's runner, the wire codecs, the operator API and the node's job service all
need to name a phase, read a status or show a job's history, and none of them needs
the coordinator's state machine (``rounds``), its secure-aggregation server or the
job's files (``host``). This is that shared vocabulary, kept apart so a reader of a
status finds its rules here and every importer stays clear of the machinery.

A ``StatusView`` arrives from a peer (a member polls its coordinator), so its numbers
are checked on construction, and so is its phase: a phase this node does not know is
the coordinator's protocol error (``Phase._missing_``), refused like an out-of-range
number rather than surfacing as a bare ``ValueError`` wherever it was parsed.
``poll_wait`` bounds the long poll a peer may ask for.

A status is sent on every poll of every member, so it carries only the last
``STATUS_HISTORY`` rounds of the history: the whole history grew with the job (up to
``job.MAX_ROUNDS`` records, each naming its members) and was sent again on each poll.
How many rounds were aggregated in all is the status's ``version`` (each aggregated
round makes one version); the coordinator's checkpoint keeps the whole history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from qdspace.federation.errors import RefusalReason, UpdateRefused
from qdspace.federation.job import MAX_ROUNDS

#: Longest long poll a member may ask for (longer asks are cut to this).
MAX_WAIT_S = 30.0
#: Largest phase deadline a coordinator's status may announce (a day).
MAX_DEADLINE_S = 86_400.0
#: Rounds of the history a status carries (the most recent ones).
STATUS_HISTORY = 100


class Phase(StrEnum):
    TRAINING = "training"
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASK = "unmask"
    DONE = "done"
    FAILED = "failed"

    @classmethod
    def _missing_(cls, value: object) -> Phase:
        """A phase no round has (from a coordinator's status, say): the sender's protocol
        error, named with the field and the value, like an out-of-range number."""
        known = ", ".join(p.value for p in cls)
        raise UpdateRefused(
            RefusalReason.OUT_OF_RANGE,
            f"status field phase has the unknown value {str(value)[:40]!r} (known: {known})",
        )


@dataclass(frozen=True, slots=True)
class RoundStatus:
    """What a member polls: where the job is and until when the current phase is open."""

    job_id: str
    round: int
    attempt: int
    phase: Phase
    deadline: float
    version: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One aggregated round, as kept in the history and the checkpoint."""

    round: int
    version: int
    members: tuple[str, ...]
    bounded: tuple[str, ...]
    epsilon: float | None
    #: seconds from the round's opening to its aggregation, on the coordinator's clock
    #: (after a restart, from the reopening); None in checkpoints older than the field
    seconds: float | None = None
    #: a secure round whose unmasked sum was longer than its members' changes within the
    #: clip can be, and was scaled back (`round_aggregate.bound_secure_sum`); False in
    #: checkpoints older than the field
    sum_bounded: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRecord:
        """A record as ``dataclasses.asdict`` wrote it into a checkpoint."""
        return cls(
            data["round"],
            data["version"],
            tuple(data["members"]),
            tuple(data["bounded"]),
            data["epsilon"],
            data.get("seconds"),
            bool(data.get("sum_bounded", False)),
        )


@dataclass(frozen=True, slots=True)
class StatusView:
    """What a member or operator sees of a job: where it is, until when, what it did."""

    job_id: str
    round: int
    attempt: int
    phase: Phase
    deadline_in_s: float
    version: int
    detail: str
    rounds: int
    history: tuple[RoundRecord, ...]
    job_digest: bytes
    delta: float | None = None
    #: The job's contract asset (``JobSpec.agreement_asset``): what a member must hold
    #: an agreement for before it may read the terms, status or models.
    agreement_asset: str | None = None
    #: A secure job's secure-aggregation wire protocol (``secagg_masks.PROTOCOL``; empty
    #: for a plain job and from a v1 coordinator): a member of another one does not join.
    secagg_protocol: str = ""

    def __post_init__(self) -> None:
        """A status comes from a peer: every number must be finite and in range."""
        bad = []
        if not (math.isfinite(self.deadline_in_s) and 0.0 <= self.deadline_in_s <= MAX_DEADLINE_S):
            bad.append(f"deadline_in_s {self.deadline_in_s}")
        if self.delta is not None and not (math.isfinite(self.delta) and 0.0 < self.delta < 1.0):
            bad.append(f"delta {self.delta}")
        if not 0 <= self.rounds <= MAX_ROUNDS:
            bad.append(f"rounds {self.rounds} (at most {MAX_ROUNDS:,})")
        if len(self.history) > self.rounds:  # a round is aggregated at most once
            bad.append(f"{len(self.history)} history records for a job of {self.rounds} rounds")
        for record in self.history:
            eps = record.epsilon
            if eps is not None and not (math.isfinite(eps) and eps >= 0.0):
                bad.append(f"epsilon {eps} of round {record.round}")
        if bad:
            raise UpdateRefused(
                RefusalReason.OUT_OF_RANGE,
                f"status of job {self.job_id} has out-of-range values: {', '.join(bad)}",
            )

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    def moved_from(self, round_: int, attempt: int, phase: str, version: int) -> bool:
        """Whether this status differs from what a long-polling caller already knows."""
        return (self.round, self.attempt, self.phase.value, self.version) != (
            round_,
            attempt,
            phase,
            version,
        )


def poll_wait(wait_s: float) -> float:
    """How long a long poll may wait: ``wait_s`` capped at ``MAX_WAIT_S``; a NaN, infinite
    or negative value from a peer is refused (it would make the poll loop spin)."""
    if not math.isfinite(wait_s) or wait_s < 0.0:
        raise UpdateRefused(
            RefusalReason.OUT_OF_RANGE, f"wait_s must be a finite number >= 0, got {wait_s}"
        )
    return min(wait_s, MAX_WAIT_S)
