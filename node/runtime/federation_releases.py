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
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Protocol

from qdspace.federation.job import JobSpec
from qdspace.federation.member_floor import MemberFloor
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
        for what, name in (("coordinator", coordinator), ("job id", job_id)):
            if not FILE_NAME.fullmatch(name):
                raise ReleaseRecordError(
                    f"{what} {name[:80]!r} is not a name this node keeps a release count "
                    "under (1-64 letters, digits, '.', '_' or '-')"
                )
        return self.directory / coordinator / f"{job_id}.json"

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

    def for_job(self, coordinator: str, job: JobSpec, floor: MemberFloor) -> JobReleases:
        """The guard of one job's releases under ``floor`` (its record read once now, so an
        unreadable one refuses the join rather than the first round)."""
        self.releases(coordinator, job.job_id)
        return JobReleases(self, coordinator, job, floor)

    def count(self, coordinator: str, job: JobSpec, floor: MemberFloor, made: Release) -> None:
        """Record ``made`` as one more release of ``job`` (flushed to disk when this returns),
        or ``ReleaseRefused`` if it would pass ``floor`` or the record cannot be read."""
        with self._lock:
            try:
                releases = self.releases(coordinator, job.job_id)
            except ReleaseRecordError as exc:
                raise _withheld(job, made, f"{exc} (a release is sent only once counted)") from exc
            refusal = releases.refusal(job, floor)
            if refusal is not None:
                raise _withheld(job, made, refusal)
            after = releases.plus(made)
            data = json.dumps(after.to_dict(), separators=(",", ":")).encode()
            write_atomic(self.path(coordinator, job.job_id), data)


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
        try:
            releases = self.made()
        except ReleaseRecordError as exc:
            raise _withheld(self.job, Release(round_, attempt), str(exc)) from exc
        refusal = releases.refusal(self.job, self.floor)
        if refusal is not None:
            raise _withheld(self.job, Release(round_, attempt), refusal)

    def record(self, round_: int, attempt: int) -> None:
        self._book.count(self.coordinator, self.job, self.floor, Release(round_, attempt))
