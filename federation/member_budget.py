"""A member's total budget at one coordinator: every release of every job counted.

The per-job count (``member_releases``) stops a job at its floor, and it is kept per
job: a coordinator that publishes a new job id over the same data starts a fresh count,
and for every job the operator joins the member spends its ``max_epsilon`` again. The
updates all describe the member's data and all reach that one coordinator, so the loss
to it is the composition of all of them, which new job ids made unbounded. So the
member also counts, per coordinator, every release of all its jobs together, and sends
none past ``max_total_epsilon`` or ``max_total_rounds`` of its floor: no job id, and no
number of them, opens a new budget.

How the epsilon of releases of different jobs adds up. Each release is one unsampled
Gaussian release of the member's clipped update under the noise that protects it from
the coordinator (``member_floor.protecting_noise`` of its job's terms): Rényi DP
``order / (2 noise^2)`` at every order. Rényi DP adds up over releases (it is how the
per-job count composes a job's releases, through ``dp.Accountant``), whatever job each
belongs to, so the member sums ``rho = sum(1 / (2 noise_i^2))`` over all its releases at
the coordinator and converts once, at the floor's delta. For the releases of one job
this is exactly the per-job epsilon. Basic composition (adding up each job's epsilon)
would be sound too, but each job adds its own delta: a coordinator publishing many small
jobs would grow the delta without end, the same unbounded loss in the other parameter.
Composed as Rényi divergences the total keeps one delta, and (at the small deltas floors
use) is never more than the sum of the jobs' epsilons, since epsilon is a concave
function of ``rho``. A release without protecting noise has no finite epsilon: once one
is on record, no epsilon budget is left at that coordinator.

The default caps are ``TOTAL_JOBS`` (four) jobs' worth of the per-job caps:
``max_total_epsilon`` four times ``max_epsilon`` (none counted without it) and
``max_total_rounds`` four times ``max_rounds``. The per-job cap is the loss the operator
accepted for one job; a coordinator a member works with runs more than one (a retrained
model, a new season's data), and a total of one job's cap would stop the second job at
its start, while a large multiple is no cap against a coordinator minting job ids.
Four full jobs always fit (by the concavity above; at typical epsilons of a few, the
Rényi total lets several more through), after which the operator decides again. The
release cap bounds a member that asks for no DP too (the default floor), and with it
the records the count reads.

Records written before noise was kept (``[round, attempt]`` rows) are counted too: in
the releases at once, and in the epsilon, when one is counted, at the noise with which
that job's unknown releases spend exactly the per-job ``max_epsilon`` (``unknown_noise``):
the most the per-job count let a job spend, had the floor been the same. The node writes
that noise into the record before counting (``node.runtime.federation_releases``), so a
floor changed later does not change what was charged. Without a per-job cap to go by
they are charged as unprotected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from qdspace.federation.dp import DEFAULT_ORDERS, rdp_to_epsilon
from qdspace.federation.job import JobSpec
from qdspace.federation.member_floor import MemberFloor, protecting_noise
from qdspace.federation.member_releases import Releases

#: How many jobs' worth of the per-job caps a coordinator gets in all by default.
TOTAL_JOBS = 4
#: Steps of the search for the noise charged to releases of unknown noise.
_SEARCH_STEPS = 200


def total_epsilon_cap(floor: MemberFloor) -> tuple[float, str] | None:
    """The epsilon all releases at one coordinator may spend, and the setting that says
    so (for refusals); None when the floor counts no epsilon."""
    if floor.max_total_epsilon is not None:
        return floor.max_total_epsilon, f"max_total_epsilon {floor.max_total_epsilon:g}"
    if floor.max_epsilon is None:
        return None
    cap = TOTAL_JOBS * floor.max_epsilon
    return cap, f"max_total_epsilon {cap:g} (the default: {TOTAL_JOBS} x max_epsilon)"


def total_rounds_cap(floor: MemberFloor) -> tuple[int, str]:
    """The releases one coordinator may have in all, and the setting that says so."""
    if floor.max_total_rounds is not None:
        return floor.max_total_rounds, f"max_total_rounds {floor.max_total_rounds:,}"
    cap = TOTAL_JOBS * floor.max_rounds
    return cap, f"max_total_rounds {cap:,} (the default: {TOTAL_JOBS} x max_rounds)"


def release_rho(noise: float | None) -> float:
    """Rényi DP per order of one release under ``noise`` (infinite without noise: none,
    unknown, or too small to square)."""
    if noise is None or noise <= 0.0:
        return math.inf
    square = noise * noise
    return math.inf if square == 0.0 else 1.0 / (2.0 * square)


def rho_epsilon(rho: float, delta: float) -> float:
    """Epsilon at ``delta`` of releases whose Rényi DP sums to ``order * rho``."""
    if rho <= 0.0:
        return 0.0
    if math.isinf(rho):
        return math.inf
    return rdp_to_epsilon([a * rho for a in DEFAULT_ORDERS], DEFAULT_ORDERS, delta)[0]


def unknown_noise(releases: int, epsilon: float | None, delta: float) -> float:
    """The noise at which ``releases`` releases spend (at least, and within a hair)
    ``epsilon`` at ``delta``: the charge of releases recorded without their noise. 0
    (unprotected) when there is no ``epsilon`` to go by."""
    if epsilon is None or releases < 1:
        return 0.0
    low, high = 0.0, 1.0
    while rho_epsilon(high, delta) < epsilon:
        low, high = high, high * 2
    for _ in range(_SEARCH_STEPS):  # the least rho that spends epsilon, from above
        middle = (low + high) / 2
        if middle in (low, high):
            break
        low, high = (middle, high) if rho_epsilon(middle, delta) < epsilon else (low, middle)
    return math.sqrt(releases / (2.0 * high))


@dataclass(frozen=True, slots=True)
class CoordinatorReleases:
    """Every release this member recorded at one coordinator, one record per job."""

    coordinator: str
    jobs: tuple[Releases, ...] = ()

    @property
    def count(self) -> int:
        return sum(r.count for r in self.jobs)

    @property
    def rho(self) -> float:
        return math.fsum(release_rho(r.noise) for job in self.jobs for r in job.made)

    def refusal(self, job: JobSpec, floor: MemberFloor) -> str | None:
        """Why one more release of ``job`` would pass the floor's total at this
        coordinator (naming the job, the coordinator, what was spent and the cap);
        None when it may leave."""
        nth = self.count + 1
        over = []
        rounds, rounds_setting = total_rounds_cap(floor)
        if nth > rounds:
            over.append(f"{nth:,} releases would be over {rounds_setting}")
        spent = ""
        epsilon_cap = total_epsilon_cap(floor)
        if epsilon_cap is not None:
            most, setting = epsilon_cap
            now = self.rho
            after = rho_epsilon(now + release_rho(protecting_noise(job)[0]), floor.delta)
            if after > most:
                spent = f", spending epsilon {rho_epsilon(now, floor.delta):.3g}"
                over.append(
                    f"one more would spend epsilon {after:.3g} of this member's there "
                    f"(delta {floor.delta:g}), over {setting}"
                )
        if not over:
            return None
        return (
            f"job {job.job_id} at {self.coordinator}: this member has already sent "
            f"{self._sent_text()} to {self.coordinator}{spent}; "
            + " and ".join(over)
            + " (a total over all the coordinator's jobs: federation_floor, node.json)"
        )

    def _sent_text(self) -> str:
        jobs = sum(1 for r in self.jobs if r.count)
        word = "update" if self.count == 1 else "updates"
        return f"{self.count:,} {word} in {jobs:,} job{'' if jobs == 1 else 's'}"
