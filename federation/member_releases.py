"""Every release of a member's update counted against its floor, not every round.

A member's floor (``member_floor``) is checked when its node joins a job, over the
rounds the terms name: one release of the member's (clipped, noised, masked) update per
round. But a round is not one release. A secure-aggregation round runs in attempts, and
the coordinator decides when one fails: each new attempt the member trains nothing new
but draws fresh noise (``member.prepare_change``) and sends a fresh masked input, and a
plain round is sent again by a member that joins the job again (its node restarted).
A hostile coordinator that restarts the attempts of one round, and unmasks each,
receives as many noisy copies of the same members' data as it likes; averaging them
strips the noise the floor counted on. The floor bounded the terms, not what left the
company.

So the member keeps a count of its releases per job (``Releases``): each attempt in
which it sent its masked input, each plain update it sent. Before the next one leaves,
``Releases.refusal`` counts it in: the epsilon of ``made + 1`` releases
(``member_floor.member_epsilon``: the same protecting noise, delta and accountant as
the join check) must stay within the floor's ``max_epsilon``, and ``made + 1`` within
its ``max_rounds``. Over it, the member withholds its update (``ReleaseRefused``) and
the round goes on without it. A masked input counts when it is sent, not when it is
unmasked: the member cannot see what the coordinator unmasks later.

The count is per job, and a coordinator can publish as many jobs as it likes over the
same data: the releases of all of one coordinator's jobs are counted together against a
total as well (``member_budget``). For that each release keeps the noise that protected
it (``member_floor.protecting_noise`` of its job's terms); records written before kept
none (``[round, attempt]`` rows) and are read as before, their noise unknown.

This module is the arithmetic and the record's shape only; the node keeps the record
on disk, written before each release leaves, so a crash between the two can only
over-count (``node.runtime.federation_releases``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from qdspace.federation.errors import FederationError
from qdspace.federation.job import JobSpec
from qdspace.federation.member_floor import MemberFloor, member_epsilon

#: The most releases a record may list: a whole job's worth at the largest floor
#: (``job.MAX_ROUNDS``) is far below it; a longer list is not a record this node wrote.
MAX_RECORDED = 1_000_000


class ReleaseRefused(FederationError, PermissionError):
    """This member withholds an update: one more release would pass its floor."""


class ReleaseRecordError(FederationError, ValueError):
    """A stored release record is not one this node wrote (it is not guessed at)."""


@dataclass(frozen=True, slots=True)
class Release:
    """One update of this member's that left for the coordinator: round and attempt
    (attempt 1 for a plain round), and the noise multiplier that protected it from the
    coordinator (0: none; None: not known, a record written before noise was kept)."""

    round: int
    attempt: int
    noise: float | None = None

    def to_row(self) -> list[int | float]:
        if self.noise is None:
            return [self.round, self.attempt]
        return [self.round, self.attempt, self.noise]


@dataclass(frozen=True, slots=True)
class Releases:
    """The releases this member made for one job at one coordinator, oldest first."""

    coordinator: str
    job_id: str
    made: tuple[Release, ...] = ()

    @property
    def count(self) -> int:
        return len(self.made)

    @property
    def unknown(self) -> int:
        """How many releases were recorded without their noise (before it was kept)."""
        return sum(1 for r in self.made if r.noise is None)

    def plus(self, release: Release) -> Releases:
        return Releases(self.coordinator, self.job_id, (*self.made, release))

    def with_noise(self, noise: float) -> Releases:
        """The same record, ``noise`` given to each release recorded without one."""
        made = tuple(r if r.noise is not None else replace(r, noise=noise) for r in self.made)
        return Releases(self.coordinator, self.job_id, made)

    def refusal(self, job: JobSpec, floor: MemberFloor) -> str | None:
        """Why one more release of ``job`` would pass ``floor`` (naming the job, the
        releases made and the floor setting that stops it); None when it may leave."""
        nth = self.count + 1
        over = []
        if nth > floor.max_rounds:
            over.append(f"{nth:,} releases would be over max_rounds {floor.max_rounds:,}")
        most = floor.max_epsilon
        if most is not None:
            epsilon = member_epsilon(job, floor, nth)
            if epsilon > most:
                over.append(
                    f"{nth:,} releases would spend epsilon {epsilon:.3g} of this member's "
                    f"(delta {floor.delta:g}), over max_epsilon {most:g}"
                )
        if not over:
            return None
        return (
            f"job {self.job_id} at {self.coordinator}: this member has already sent "
            f"{self._made_text()}; " + " and ".join(over) + " (federation_floor, node.json)"
        )

    def _made_text(self) -> str:
        if not self.made:
            return "no update"
        last = self.made[-1]
        word = "update" if self.count == 1 else "updates"
        return f"{self.count:,} {word} (the last in round {last.round} attempt {last.attempt})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "coordinator": self.coordinator,
            "job_id": self.job_id,
            "releases": [r.to_row() for r in self.made],
        }

    @classmethod
    def from_dict(cls, data: object, coordinator: str, job_id: str) -> Releases:
        """The record of ``job_id`` at ``coordinator`` in ``data``; ``ReleaseRecordError``
        says what is wrong with one that is not."""
        if not isinstance(data, dict):
            raise ReleaseRecordError("a release record must be a JSON object")
        if (data.get("coordinator"), data.get("job_id")) != (coordinator, job_id):
            raise ReleaseRecordError(
                f"the record is of job {str(data.get('job_id'))[:80]!r} at "
                f"{str(data.get('coordinator'))[:80]!r}, not of job {job_id} at {coordinator}"
            )
        rows = data.get("releases")
        if not isinstance(rows, list) or len(rows) > MAX_RECORDED:
            raise ReleaseRecordError(
                "'releases' must be a list of [round, attempt] pairs (or [round, attempt, "
                "noise] triples)"
            )
        return cls(coordinator, job_id, tuple(_release(i, row) for i, row in enumerate(rows)))


def _release(i: int, row: object) -> Release:
    """Row ``i`` of a record: ``[round, attempt, noise]``, or ``[round, attempt]`` as
    written before the noise was kept."""
    if not (
        isinstance(row, list)
        and len(row) in (2, 3)
        and all(type(v) is int and v >= 1 for v in row[:2])
    ):
        raise ReleaseRecordError(
            f"releases[{i}] must be [round, attempt] (or [round, attempt, noise]): two whole "
            "numbers >= 1 (and the noise multiplier)"
        )
    if len(row) == 2:
        return Release(row[0], row[1])
    noise = row[2]
    if type(noise) not in (int, float) or not 0 <= noise < math.inf:
        raise ReleaseRecordError(
            f"releases[{i}]: noise must be a finite number >= 0, got {str(noise)[:40]!r}"
        )
    return Release(row[0], row[1], float(noise))
