"""One job as the node serves it: its lock, its long-poll event, a member's upload claim.

:class:`node.runtime.federation_jobs.FederationJobs` keeps a :class:`JobSlot` per job it
coordinates. The slot is what serving adds to ``federation.host.JobHost``: one lock (each
call runs under it in a worker thread, so a 50 MB aggregation never meets a second call
half-way), an event replaced each time the job moves on (the long polls waiting on the
old one wake), and the latest version's encoding, made once for every member that
downloads it. A :class:`RoundRef` names the round a member's message is for, and an
:class:`Upload` is a member's claim on its one upload stream, checked against the round
before any payload is read.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from qdspace.federation.host import JobHost
from qdspace.federation.job_files import Published
from qdspace.federation.round_status import Phase


def job_state(host: JobHost) -> tuple[int, int, str, int]:
    """Where the job stands (round, attempt, phase, version): a long poll waits on a change."""
    c = host.coordinator
    return (c.round, c.attempt, c.phase.value, c.version)


@dataclass
class JobSlot:
    """One job with its lock and a 'something changed' event for long polls."""

    host: JobHost
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    #: the latest version and its encoding, made once and sent to every member downloading it
    encoded: tuple[Published | None, tuple[bytes, ...]] = (None, ())

    def notify(self) -> None:
        old, self.changed = self.changed, asyncio.Event()
        old.set()


@dataclass(frozen=True)
class RoundRef:
    """Which job, round and attempt a member's message is for."""

    job_id: str
    round: int
    attempt: int


@dataclass(frozen=True)
class Upload:
    """A member's claim on its one upload stream for a job, from header to payload."""

    slot: JobSlot
    member: str
    phase: Phase
    ref: RoundRef
    #: the most bytes the payload may have
    limit: int
