"""The member's count of its releases per job, on disk, written before each one leaves.

``federation.member_releases`` says why a member counts every update it sends (each
attempt of a secure round is one more noisy copy of its data) and does the arithmetic;
this module keeps the count where a restarted node finds it. A count kept in the
session would start at zero whenever the node restarted or the operator joined the job
again, and a coordinator could ask for a new batch of releases each time.

Each job at each coordinator has one small JSON record in the node's federation folder
(``federation/releases/<coordinator>/<job_id>.json``, beside ``federation/jobs`` of the
jobs this node coordinates). ``JobReleases.record`` re-reads it, checks one more
release against the member's floor, and writes the longer record (atomically, flushed
to disk) *before* the runner sends: a crash between the write and the send counts a
release that never left, never the other way round. A record that cannot be read
withholds every further release of the job instead of starting the count again: the
operator reads the error, and removes the file only if they mean to.

The same records are the count of the coordinator's total (``federation.member_budget``:
a new job id is no new budget): each release is checked against the records of every
job in the coordinator's folder, so the one atomic write of a job's record is also the
total's, with the same crash-safety, and a coordinator cannot reset it by publishing new
job ids, by restarting, or by ids that are no file name (refused at join). A record
that cannot be read withholds the coordinator's every job, not its own only. Records
written before the noise was kept get the noise they are charged at written into them
the first time a count needs their epsilon (at the join, normally), before counting.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Protocol

from qdspace.federation.job import JobSpec
from qdspace.federation.member_budget import CoordinatorReleases, total_epsilon_cap, unknown_noise
from qdspace.federation.member_floor import MemberFloor, protecting_noise
from qdspace.federation.member_releases import (
    Release,
    ReleaseRecordError,
    ReleaseRefused,
    Releases,
)
from qdspace.util.files import write_atomic

logger = logging.getLogger("node.federation")

#: the folder of the release records, inside the node's ``federation`` folder
RELEASES_DIR = "releases"
#: the suffix of a job's record in its coordinator's folder
RECORD_SUFFIX = ".json"
#: a coordinator name or job id a record is kept under: what certificate names and job
#: ids allow (``federation.job_files.JOB_ID``, not imported: the coordinator's side)
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ReleaseGuard(Protocol):
    """What the round loop asks before it trains for, and before it sends, a release."""

    def check(self, round_: int, attempt: int) -> None:
        """``ReleaseRefused`` if one more release would pass the floor (nothing written)."""
        ...

    def record(self, round_: int, attempt: int) -> None:
        """Count one more release on disk, or ``ReleaseRefused`` if it would pass the floor."""
        ...


class ReleaseBook:
    """The release records of one node (``federation/releases`` of its directory)."""

    def __init__(self, federation_dir: Path) -> None:
        self.directory = federation_dir / RELEASES_DIR
        #: one check-and-write at a time: sessions of several jobs share the book
        self._lock = threading.Lock()

    def path(self, coordinator: str, job_id: str) -> Path:
        """The record's file; ``ReleaseRecordError`` for a name that is no file name."""
        return self.folder(coordinator) / f"{_file_name('job id', job_id)}{RECORD_SUFFIX}"

    def folder(self, coordinator: str) -> Path:
        """The folder of the records of ``coordinator``'s jobs."""
        return self.directory / _file_name("coordinator", coordinator)

    def releases(self, coordinator: str, job_id: str) -> Releases:
        """The releases recorded for ``job_id`` at ``coordinator`` (none if no record)."""
        path = self.path(coordinator, job_id)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return Releases(coordinator, job_id)
        except (OSError, ValueError) as exc:
            raise ReleaseRecordError(f"{path}: release record cannot be read: {exc}") from exc
        try:
            return Releases.from_dict(data, coordinator, job_id)
        except ReleaseRecordError as exc:
            raise ReleaseRecordError(f"{path}: {exc}") from exc

    def coordinator(self, coordinator: str, floor: MemberFloor) -> CoordinatorReleases:
        """Every record at ``coordinator`` (a name that is no file name is refused); the
        releases of unknown noise among them charged on disk first when ``floor`` counts
        epsilon. Call with the lock held."""
        folder = self.folder(coordinator)
        try:
            names = sorted(p.name for p in folder.iterdir() if p.is_file())
        except FileNotFoundError:
            return CoordinatorReleases(coordinator)
        except OSError as exc:
            raise ReleaseRecordError(f"{folder}: release records cannot be listed: {exc}") from exc
        jobs = []
        for name in names:
            job_id = name.removesuffix(RECORD_SUFFIX)
            if name.endswith(RECORD_SUFFIX) and FILE_NAME.fullmatch(job_id):
                jobs.append(self._charged(self.releases(coordinator, job_id), floor))
        return CoordinatorReleases(coordinator, tuple(jobs))

    def _charged(self, releases: Releases, floor: MemberFloor) -> Releases:
        """``releases`` with the releases recorded without their noise given, on disk,
        the noise they are charged at (``member_budget.unknown_noise``) when ``floor``
        counts epsilon at the coordinator; as they are otherwise."""
        unknown = releases.unknown
        if not unknown or total_epsilon_cap(floor) is None:
            return releases
        noise = unknown_noise(unknown, floor.max_epsilon, floor.delta)
        charged = releases.with_noise(noise)
        self._write(charged)
        most = floor.max_epsilon
        logger.warning(
            "federation member: %s release(s) of job %s at %s were recorded before their "
            "noise was kept; counted at noise %.6g (%s)",
            unknown,
            releases.job_id,
            releases.coordinator,
            noise,
            "unprotected: no per-job max_epsilon to go by"
            if most is None
            else f"spending all of the per-job max_epsilon {most:g}",
        )
        return charged

    def _write(self, releases: Releases) -> None:
        data = json.dumps(releases.to_dict(), separators=(",", ":")).encode()
        write_atomic(self.path(releases.coordinator, releases.job_id), data)

    def for_job(self, coordinator: str, job: JobSpec, floor: MemberFloor) -> JobReleases:
        """The guard of one job's releases under ``floor`` (its record, and its
        coordinator's, read once now, so an unreadable one refuses the join rather than
        the first round; records of unknown noise are charged now)."""
        with self._lock:
            self.releases(coordinator, job.job_id)
            self.coordinator(coordinator, floor)
        return JobReleases(self, coordinator, job, floor)

    def refusal(self, coordinator: str, job: JobSpec, floor: MemberFloor) -> str | None:
        """Why one more release of ``job`` would pass ``floor``, for the job or for the
        coordinator's total; None when it may leave. Call with the lock held."""
        refusal = self.releases(coordinator, job.job_id).refusal(job, floor)
        if refusal is None:
            refusal = self.coordinator(coordinator, floor).refusal(job, floor)
        return refusal

    def check(self, coordinator: str, job: JobSpec, floor: MemberFloor, made: Release) -> None:
        """``ReleaseRefused`` if ``made`` would pass ``floor`` (nothing counted)."""
        with self._lock:
            try:
                refusal = self.refusal(coordinator, job, floor)
            except ReleaseRecordError as exc:
                raise _withheld(job, made, str(exc)) from exc
        if refusal is not None:
            raise _withheld(job, made, refusal)

    def count(self, coordinator: str, job: JobSpec, floor: MemberFloor, made: Release) -> None:
        """Record ``made`` as one more release of ``job`` (flushed to disk when this returns),
        or ``ReleaseRefused`` if it would pass ``floor`` or a record cannot be read."""
        with self._lock:
            try:
                refusal = self.refusal(coordinator, job, floor)
            except ReleaseRecordError as exc:
                raise _withheld(job, made, f"{exc} (a release is sent only once counted)") from exc
            if refusal is not None:
                raise _withheld(job, made, refusal)
            noise, _ = protecting_noise(job)
            after = self.releases(coordinator, job.job_id).plus(
                Release(made.round, made.attempt, noise)
            )
            self._write(after)


def _file_name(what: str, name: str) -> str:
    if not FILE_NAME.fullmatch(name):
        raise ReleaseRecordError(
            f"{what} {name[:80]!r} is not a name this node keeps a release count "
            "under (1-64 letters, digits, '.', '_' or '-')"
        )
    return name


def _withheld(job: JobSpec, made: Release, why: str) -> ReleaseRefused:
    """The refusal of round ``made.round`` attempt ``made.attempt``'s release, logged."""
    message = (
        f"withholding this member's update of job {job.job_id} (round {made.round} "
        f"attempt {made.attempt}): {why}"
    )
    logger.warning("federation member: %s", message)
    return ReleaseRefused(message)


class JobReleases:
    """The ``ReleaseGuard`` of one job: this node's record of it, checked against its floor."""

    def __init__(
        self, book: ReleaseBook, coordinator: str, job: JobSpec, floor: MemberFloor
    ) -> None:
        self._book = book
        self.coordinator = coordinator
        self.job = job
        self.floor = floor

    def made(self) -> Releases:
        return self._book.releases(self.coordinator, self.job.job_id)

    def check(self, round_: int, attempt: int) -> None:
        self._book.check(self.coordinator, self.job, self.floor, Release(round_, attempt))

    def record(self, round_: int, attempt: int) -> None:
        self._book.count(self.coordinator, self.job, self.floor, Release(round_, attempt))
