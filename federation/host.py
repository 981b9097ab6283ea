"""A job on its coordinator's node: rounds, signed model versions, checkpoints.

The node's ``Federation`` servicer decodes a call, calls one method here and
encodes the answer; nothing here knows about gRPC. A ``JobHost`` keeps one job's
directory (``job.json`` with the terms, ``checkpoint.npz`` written between rounds,
``version.json`` with the latest signed version), so a coordinator restarted
between rounds resumes where it stopped (``JobHost.load``).

Every global model the coordinator publishes is described by a ``ModelVersion``,
signed with the coordinator's Ed25519 key and handed to ``anchor`` (the node's
ledger, when it has one) as a ``model_version`` leaf.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey, VerifyKey
from numpy.typing import NDArray

from qdspace.federation.errors import CheckpointError, FederationError, RefusalReason, UpdateRefused
from qdspace.federation.job import JobSpec
from qdspace.federation.params import (
    Params,
    check_update,
    encode_vector,
    encoded_size,
    flatten,
    params_from_bytes,
    unflatten,
)
from qdspace.federation.rounds import Coordinator, Phase, RoundRecord, RoundStatus
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.federation.versions import (
    LEDGER_KIND,
    ModelVersion,
    SignedVersion,
    describe,
    sign_version,
)
from qdspace.util.files import write_atomic

logger = logging.getLogger("federation")

JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
JOB_FILE = "job.json"
CHECKPOINT_FILE = "checkpoint.bin"
VERSION_FILE = "version.json"

#: Longest long poll a member may ask for (longer asks are cut to this).
MAX_WAIT_S = 30.0
#: Largest example count an update may claim (the weight of plain FedAvg).
MAX_EXAMPLES = 10**12
#: Largest phase deadline a coordinator's status may announce (a day).
MAX_DEADLINE_S = 86_400.0

#: ``(kind, ref_id, record)``: called once per signed version; the node's ledger hook.
VersionAnchor = Callable[[str, str, bytes], None]


class JobExists(FederationError, ValueError):
    """A job with this id is already published on this node."""


class UnknownJob(FederationError, LookupError):
    """No job with this id on this node."""


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

    def __post_init__(self) -> None:
        """A status comes from a peer: every number must be finite and in range."""
        bad = []
        if not (math.isfinite(self.deadline_in_s) and 0.0 <= self.deadline_in_s <= MAX_DEADLINE_S):
            bad.append(f"deadline_in_s {self.deadline_in_s}")
        if self.delta is not None and not (math.isfinite(self.delta) and 0.0 < self.delta < 1.0):
            bad.append(f"delta {self.delta}")
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


@dataclass(frozen=True, slots=True)
class Published:
    """A signed global version, the canonical bytes of its parameters and their SHA-256."""

    signed: SignedVersion
    payload: bytes | memoryview
    sha256: bytes

    @property
    def version(self) -> ModelVersion:
        return self.signed.version


def _encoded(vector: NDArray[np.float32], job: JobSpec) -> tuple[memoryview, bytes]:
    payload = encode_vector(vector, job.shapes)
    return payload, hashlib.sha256(payload).digest()


def _fsync_later(paths: Sequence[Path]) -> None:
    """Flush written files (and their directory) to disk off the round's critical path.

    The checkpoint is written and renamed into place synchronously, which is what a
    restarted coordinator process needs; only the flush to stable storage (for a
    power loss) happens in the background.
    """

    def flush() -> None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # replaced by a newer checkpoint meanwhile
            try:
                os.fsync(fd)
            except OSError as exc:
                logger.warning("federation: fsync of %s failed: %s", path, exc)
            finally:
                os.close(fd)

    threading.Thread(target=flush, name="federation-fsync", daemon=True).start()


def poll_wait(wait_s: float) -> float:
    """How long a long poll may wait: ``wait_s`` capped at ``MAX_WAIT_S``; a NaN, infinite
    or negative value from a peer is refused (it would make the poll loop spin)."""
    if not math.isfinite(wait_s) or wait_s < 0.0:
        raise UpdateRefused(
            RefusalReason.OUT_OF_RANGE, f"wait_s must be a finite number >= 0, got {wait_s}"
        )
    return min(wait_s, MAX_WAIT_S)


def check_job_id(job_id: str) -> None:
    if not JOB_ID.fullmatch(job_id):
        raise FederationError(
            f"job id {job_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )


class JobHost:
    """One job on its coordinator. Create with ``create`` or ``load``; all calls take ``now``."""

    def __init__(
        self,
        directory: Path,
        coordinator: Coordinator,
        signer: SigningKey,
        latest: Published,
        anchor: VersionAnchor | None = None,
    ) -> None:
        self.directory = directory
        self.coordinator = coordinator
        self._signer = signer
        self._latest = latest
        self._anchor = anchor
        self._saved_phase = coordinator.phase
        self._saved_attempt = (coordinator.round, coordinator.attempt)

    # --- lifecycle ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        root: Path,
        job: JobSpec,
        initial: Sequence[NDArray[np.float32]],
        signer: SigningKey,
        now: float,
        *,
        anchor: VersionAnchor | None = None,
        seed: int | None = None,
    ) -> JobHost:
        """Publish a new job under ``root/<job_id>`` with its initial model as version 0."""
        check_job_id(job.job_id)
        directory = root / job.job_id
        if directory.exists():
            raise JobExists(f"job {job.job_id} already exists on this node ({directory})")
        try:
            check_update(initial, job.shapes, "the initial model")
        except UpdateRefused as exc:
            raise FederationError(f"job {job.job_id}: {exc.detail}") from exc
        coordinator = Coordinator.start(job, flatten(initial), now, seed=seed)
        directory.mkdir(parents=True)
        (directory / JOB_FILE).write_bytes(job.canonical_bytes())
        payload, digest = _encoded(coordinator.global_vector, job)
        record = describe(
            job_id=job.job_id,
            job_digest=job.digest(),
            version=0,
            round_=0,
            model=job.model,
            params=initial,
            parent=None,
            members=(),
            coordinator=job.coordinator,
            created_at=datetime.now(UTC),
            digest=digest,
        )
        latest = Published(sign_version(record, signer), payload, digest)
        host = cls(directory, coordinator, signer, latest, anchor)
        host._save()
        host._announce(latest)
        return host

    @classmethod
    def load(
        cls,
        directory: Path,
        signer: SigningKey,
        now: float,
        *,
        anchor: VersionAnchor | None = None,
        seed: int | None = None,
    ) -> JobHost:
        """Resume a job from its directory (after the coordinator's node restarted)."""
        try:
            job = JobSpec.from_dict(json.loads((directory / JOB_FILE).read_bytes()))
            saved = json.loads((directory / VERSION_FILE).read_text())
            signed = SignedVersion(
                bytes.fromhex(saved["record"]), bytes.fromhex(saved["signature"])
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"job directory {directory} cannot be read: {exc}") from exc
        coordinator = Coordinator.resume(directory / CHECKPOINT_FILE, job, now, seed=seed)
        latest = Published(signed, *_encoded(coordinator.global_vector, job))
        host = cls(directory, coordinator, signer, latest, anchor)
        if signed.version.version == coordinator.version - 1:
            host._publish()  # stopped after the checkpoint, before the version was written
        elif signed.version.version != coordinator.version:
            raise CheckpointError(
                f"job {job.job_id}: checkpoint is at version {coordinator.version}, "
                f"the signed version file at {signed.version.version}"
            )
        host._saved_phase = coordinator.phase
        host._save()  # the resumed attempt's number is on disk before anyone uses it
        return host

    # --- what members read -------------------------------------------------------------

    @property
    def job(self) -> JobSpec:
        return self.coordinator.job

    @property
    def latest(self) -> Published:
        return self._latest

    @property
    def history(self) -> list[RoundRecord]:
        return self.coordinator.history

    def status(self, now: float) -> RoundStatus:
        """The current status, after closing a phase whose deadline has passed."""
        self.coordinator.tick(now)
        self._sync()
        return self.coordinator.status()

    def view(self, now: float) -> StatusView:
        """``status`` with the job's history, for the wire."""
        status = self.status(now)
        job = self.job
        return StatusView(
            job_id=job.job_id,
            round=status.round,
            attempt=status.attempt,
            phase=status.phase,
            deadline_in_s=0.0 if self.coordinator.finished else max(status.deadline - now, 0.0),
            version=status.version,
            detail=status.detail,
            rounds=job.rounds,
            history=tuple(self.coordinator.history),
            job_digest=job.digest(),
            delta=None if job.dp is None else job.dp.delta,
            agreement_asset=job.agreement_asset,
        )

    def model(self, version: int) -> Published:
        """The published version ``version``; only the latest one is kept for download."""
        if version != self._latest.version.version:
            raise UpdateRefused(
                RefusalReason.WRONG_ROUND,
                f"job {self.job.job_id} serves version {self._latest.version.version}, "
                f"not {version}",
            )
        return self._latest

    def upload_size(self, phase: Phase) -> int:
        """How many bytes a plain update (TRAINING) or a masked input must announce."""
        if phase is Phase.TRAINING:
            return encoded_size(self.job.shapes)
        return 4 * self.job.vector_len

    def expect_upload(
        self,
        member: str,
        round_: int,
        phase: Phase,
        now: float,
        *,
        attempt: int | None,
        total_bytes: int,
    ) -> None:
        """Refuse an upload on its header: wrong member, round, phase or announced size."""
        self._run(lambda: self.coordinator.expect(member, round_, phase, now, attempt))
        expected = self.upload_size(phase)
        if total_bytes != expected:
            what = "update" if phase is Phase.TRAINING else "masked input"
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"{what} of {member} announces {total_bytes} bytes, the model needs {expected}",
            )

    # --- what members send -------------------------------------------------------------

    def submit_update(
        self,
        member: str,
        round_: int,
        payload: bytes | bytearray | memoryview,
        examples: int,
        now: float,
    ) -> None:
        if not 0 <= examples <= MAX_EXAMPLES:
            raise UpdateRefused(
                RefusalReason.OUT_OF_RANGE,
                f"update of {member} claims {examples} examples, the limit is {MAX_EXAMPLES}",
            )
        try:
            params = params_from_bytes(payload)
        except FederationError as exc:
            raise UpdateRefused(RefusalReason.WRONG_SHAPE, f"update of {member}: {exc}") from exc
        self._run(lambda: self.coordinator.submit_update(member, round_, params, examples, now))

    def submit_advert(
        self,
        member: str,
        round_: int,
        attempt: int,
        advert: KeyAdvert,
        verify_key: VerifyKey,
        now: float,
    ) -> None:
        """``verify_key``: the Ed25519 key the caller's certificate binds to ``member``."""
        self._run(
            lambda: self.coordinator.submit_advert(member, round_, attempt, advert, verify_key, now)
        )

    def roster(self, member: str, round_: int, attempt: int) -> tuple[KeyAdvert, ...]:
        return self.coordinator.roster(member, round_, attempt)

    def submit_shares(
        self,
        member: str,
        round_: int,
        attempt: int,
        shares: Sequence[EncryptedShare],
        now: float,
    ) -> None:
        self._run(lambda: self.coordinator.submit_shares(member, round_, attempt, shares, now))

    def inbox(self, member: str, round_: int, attempt: int) -> list[EncryptedShare]:
        return self.coordinator.inbox(member, round_, attempt)

    def submit_masked(
        self,
        member: str,
        round_: int,
        attempt: int,
        payload: bytes | bytearray | memoryview,
        now: float,
    ) -> None:
        expected = 4 * self.job.vector_len
        if len(payload) != expected:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"masked input of {member} has {len(payload)} bytes, expected {expected}",
            )
        vector = np.frombuffer(payload, dtype="<u4")
        if not vector.flags.writeable:
            vector = vector.copy()
        masked = MaskedInput(member, vector)
        self._run(lambda: self.coordinator.submit_masked(member, round_, attempt, masked, now))

    def unmask_request(self, member: str, round_: int, attempt: int) -> UnmaskRequest:
        return self.coordinator.unmask_request(member, round_, attempt)

    def submit_confirmation(
        self,
        member: str,
        round_: int,
        attempt: int,
        confirmation: Confirmation,
        now: float,
    ) -> None:
        self._run(
            lambda: self.coordinator.submit_confirmation(member, round_, attempt, confirmation, now)
        )

    def submit_unmask(
        self, member: str, round_: int, attempt: int, response: UnmaskResponse, now: float
    ) -> None:
        self._run(lambda: self.coordinator.submit_unmask(member, round_, attempt, response, now))

    # --- publishing and checkpoints ----------------------------------------------------

    def _run(self, call: Callable[[], None]) -> None:
        try:
            call()
        finally:
            self._sync()

    def _sync(self) -> None:
        """After any state change: publish a new version, checkpoint between rounds."""
        coordinator = self.coordinator
        if coordinator.version != self._latest.version.version:
            self._save()
            self._publish()
        elif coordinator.finished and self._saved_phase is not coordinator.phase:
            self._save()
        elif (coordinator.round, coordinator.attempt) != self._saved_attempt:
            self._save()  # a new attempt: a restart must not reuse its number

    def _save(self) -> None:
        path = self.directory / CHECKPOINT_FILE
        self.coordinator.checkpoint(path, fsync=False)
        _fsync_later((path, self.directory))
        self._saved_phase = self.coordinator.phase
        self._saved_attempt = (self.coordinator.round, self.coordinator.attempt)

    def _publish(self) -> None:
        coordinator, job = self.coordinator, self.job
        params: Params = unflatten(coordinator.global_vector, job.shapes, copy=False)
        payload, digest = _encoded(coordinator.global_vector, job)
        record = next(r for r in reversed(coordinator.history) if r.version == coordinator.version)
        spent = None
        if job.dp is not None:
            spent = (record.epsilon, job.dp.delta)
        version = describe(
            job_id=job.job_id,
            job_digest=job.digest(),
            version=coordinator.version,
            round_=record.round,
            model=job.model,
            params=params,
            parent=self._latest.version,
            members=record.members,
            coordinator=job.coordinator,
            created_at=datetime.now(UTC),
            epsilon=None if spent is None else spent[0],
            delta=None if spent is None else spent[1],
            digest=digest,
        )
        self._latest = Published(sign_version(version, self._signer), payload, digest)
        self._announce(self._latest)

    def _announce(self, published: Published) -> None:
        signed = published.signed
        saved = {"record": signed.record.hex(), "signature": signed.signature.hex()}
        path = self.directory / VERSION_FILE
        write_atomic(path, json.dumps(saved).encode(), mode=0o644)
        if self._anchor is None:
            return
        version = published.version
        try:
            self._anchor(LEDGER_KIND, version.ledger_ref, signed.record)
        except Exception:  # the ledger queues durably; a failing hook must not stop the round
            logger.exception("federation: anchoring %s failed", version.ledger_ref)


def load_jobs(
    root: Path,
    signer: SigningKey,
    now: float,
    *,
    anchor: VersionAnchor | None = None,
) -> dict[str, JobHost]:
    """Every job found under ``root``, resumed; a job that cannot be resumed is logged."""
    jobs: dict[str, JobHost] = {}
    if not root.is_dir():
        return jobs
    for directory in sorted(p for p in root.iterdir() if (p / JOB_FILE).is_file()):
        try:
            host = JobHost.load(directory, signer, now, anchor=anchor)
        except FederationError as exc:
            logger.error("federation: job in %s not resumed: %s", directory, exc)
            continue
        jobs[host.job.job_id] = host
        logger.info(
            "federation: resumed job %s at round %s (version %s)",
            host.job.job_id,
            host.coordinator.round,
            host.coordinator.version,
        )
    return jobs
