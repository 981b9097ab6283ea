"""A job on its coordinator's node: what members may read and send, and when it is saved.

The node's ``Federation`` servicer decodes a call, calls one method here and
encodes the answer; nothing here knows about gRPC. A ``JobHost`` wraps one job's
round state machine (``rounds.Coordinator``): it checks what arrives from the wire
(sizes, example counts, masked bytes) before the coordinator sees it, and after every
change it decides what must reach the disk: a new signed version when the global
model moved, a checkpoint between rounds and for every new attempt. The directory
layout and the signing are ``job_files``'; a coordinator restarted between rounds
resumes where it stopped (``JobHost.load``, ``load_jobs``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey, VerifyKey
from numpy.typing import NDArray

from qdspace.federation.errors import CheckpointError, FederationError, RefusalReason, UpdateRefused
from qdspace.federation.job import JobSpec
from qdspace.federation.job_files import (
    BARE,
    CHECKPOINT_FILE,
    JOB_FILE,
    Framing,
    Published,
    VersionAnchor,
    announce,
    check_job_id,
    encoded,
    initial_version,
    next_version,
    read_job_directory,
    save_checkpoint,
)
from qdspace.federation.member_pins import MemberPins
from qdspace.federation.params import check_update, encoded_size, flatten, params_from_bytes
from qdspace.federation.round_status import (
    STATUS_HISTORY,
    Phase,
    RoundRecord,
    RoundStatus,
    StatusView,
)
from qdspace.federation.rounds import Coordinator
from qdspace.federation.secagg_masks import PROTOCOL
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    MaskedInput,
    MaskedPieces,
    UnmaskRequest,
    UnmaskResponse,
)

logger = logging.getLogger("federation")


class JobExists(FederationError, ValueError):
    """A job with this id is already published on this node."""


class UnknownJob(FederationError, LookupError):
    """No job with this id on this node."""


class JobHost:
    """One job on its coordinator. Create with ``create`` or ``load``; all calls take ``now``."""

    def __init__(
        self,
        directory: Path,
        coordinator: Coordinator,
        signer: SigningKey,
        latest: Published,
        anchor: VersionAnchor | None = None,
        framing: Framing = BARE,
    ) -> None:
        self.directory = directory
        self._framing = framing
        self.coordinator = coordinator
        self._signer = signer
        self._latest = latest
        self._anchor = anchor
        self._saved_phase = coordinator.phase
        self._saved_attempt = (coordinator.round, coordinator.attempt)
        #: the member id holding each member name, pinned on its first accepted call
        self.pins = MemberPins.load(directory)

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
        framing: Framing = BARE,
    ) -> JobHost:
        """Publish a new job under ``root/<job_id>`` with its initial model as version 0
        (``framing``: how its versions are cut into download messages)."""
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
        latest = initial_version(job, initial, coordinator, signer, framing)
        host = cls(directory, coordinator, signer, latest, anchor, framing)
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
        framing: Framing = BARE,
    ) -> JobHost:
        """Resume a job from its directory (after the coordinator's node restarted)."""
        job, signed = read_job_directory(directory)
        coordinator = Coordinator.resume(directory / CHECKPOINT_FILE, job, now, seed=seed)
        latest = Published(signed, *encoded(coordinator.global_vector, job, framing))
        host = cls(directory, coordinator, signer, latest, anchor, framing)
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
        """``status`` with the last ``STATUS_HISTORY`` rounds of the job's history, for the
        wire (every member's every poll gets one: not the whole history, which grows
        with the job); ``history`` keeps them all."""
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
            history=tuple(self.coordinator.history[-STATUS_HISTORY:]),
            job_digest=job.digest(),
            delta=None if job.dp is None else job.dp.delta,
            agreement_asset=job.agreement_asset,
            secagg_protocol=PROTOCOL if job.secure_aggregation else "",
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
        cap = self.job.examples_cap
        if not 0 <= examples <= cap:
            term = "" if self.job.max_examples_per_member is None else " (max_examples_per_member)"
            raise UpdateRefused(
                RefusalReason.OUT_OF_RANGE,
                f"update of {member} claims {examples} examples, the limit is {cap}{term}",
            )
        try:  # the header must name the job's shapes before anything is cut up
            params = params_from_bytes(payload, self.job.shapes)
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
        payload: bytes | bytearray | memoryview | tuple[bytes | memoryview, ...],
        now: float,
    ) -> None:
        """A member's masked input: one buffer, or the consecutive pieces a stream carried
        it in (``chunks.Pieces``; summed from where they lie, never kept). A writable
        buffer is consumed (the round's sum may be built in its memory), so the caller
        must not use it afterwards."""
        if isinstance(payload, tuple):
            pieces = MaskedPieces(member, payload)
            self._run(lambda: self.coordinator.submit_masked(member, round_, attempt, pieces, now))
            return
        expected = 4 * self.job.vector_len
        if len(payload) != expected:
            raise UpdateRefused(
                RefusalReason.WRONG_SHAPE,
                f"masked input of {member} has {len(payload)} bytes, expected {expected}",
            )
        vector = np.frombuffer(payload, dtype="<u4")
        if not vector.flags.writeable:
            vector = vector.copy()
        # the payload is this node's own upload buffer (or the copy just made): the
        # aggregation may sum into it rather than copy it
        masked = MaskedInput(member, vector, owned=True)
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

    def submit_report(
        self, member: str, round_: int, attempt: int, accused: str, now: float
    ) -> None:
        self._run(lambda: self.coordinator.submit_report(member, round_, attempt, accused, now))

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
            # The checkpoint is written while the new version is encoded, hashed and
            # signed (both release the GIL on 50 MB): a round's two big passes overlap.
            # It is announced only once the checkpoint is in place, as before, so a
            # restarted coordinator never finds a version newer than its checkpoint.
            with ThreadPoolExecutor(1, thread_name_prefix="federation-checkpoint") as pool:
                saved = pool.submit(self._save)
                published = next_version(
                    coordinator, self._latest.version, self._signer, self._framing
                )
                saved.result()
            self._latest = published
            self._announce(published)
        elif coordinator.finished and self._saved_phase is not coordinator.phase:
            self._save()
        elif (coordinator.round, coordinator.attempt) != self._saved_attempt:
            self._save()  # a new attempt: a restart must not reuse its number

    def _save(self) -> None:
        save_checkpoint(self.directory, self.coordinator)
        self._saved_phase = self.coordinator.phase
        self._saved_attempt = (self.coordinator.round, self.coordinator.attempt)

    def _publish(self) -> None:
        self._latest = next_version(
            self.coordinator, self._latest.version, self._signer, self._framing
        )
        self._announce(self._latest)

    def _announce(self, published: Published) -> None:
        announce(self.directory, published, self._anchor)


def load_jobs(
    root: Path,
    signer: SigningKey,
    now: float,
    *,
    anchor: VersionAnchor | None = None,
    framing: Framing = BARE,
) -> dict[str, JobHost]:
    """Every job found under ``root``, resumed; a job that cannot be resumed is logged."""
    jobs: dict[str, JobHost] = {}
    if not root.is_dir():
        return jobs
    for directory in sorted(p for p in root.iterdir() if (p / JOB_FILE).is_file()):
        try:
            host = JobHost.load(directory, signer, now, anchor=anchor, framing=framing)
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
