"""The jobs this node coordinates, as a service: admission, locking, long polls.

``federation.host.JobHost`` runs one job and knows nothing of callers, threads or the
rest of the node. Serving it to members needs more, and none of it is about gRPC:

- **admission**: every job call but listing needs membership *and*, for a job under
  contract, an agreement in force (FINALIZED, not terminated, policy allows training
  now), checked against the node's contract store; the coordinator takes part in its
  own job without a contract with itself. Each name is pinned to the member id of its
  first accepted call (``federation.member_pins``): a name the authority reissued to
  another member gets no place in a running job;
- **one lock per job**: each call runs under its job's lock in a worker thread, so
  aggregating a 50 MB round does not stall the event loop, and a call that moves the
  job on wakes the long polls waiting for that (``status`` answers as soon as the job
  moves on, or when the current phase's deadline passes);
- **hostile members**: one upload stream per member and job is read at a time (a
  second is refused as BUSY before its data is read; one that stalls, runs late or
  outlives its round is cut off, ``federation_uploads``), and a key advert must carry the
  caller's own certificate, which members check before trusting the key;
- **the rest of the node**: jobs resume from disk, a job under contract is offered in
  the node's catalog so members can negotiate it, published versions are anchored
  through the ledger hook, and inclusion proofs come from the node's ledger; each
  arrives as a plain callable (``node.runtime.federation_wiring`` makes them from the
  node's context), so the service is built and tested without a contract store or a
  chain.

The caller is whoever the transport authenticated (a ``MemberIdentity``); a message
claiming to be from someone else is refused by the round logic. Errors are
``federation`` errors (the few that are about the node are defined here), so the
transport maps them to its statuses in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from nacl.signing import SigningKey, VerifyKey

from qdspace.federation.admission import refuse_impersonation
from qdspace.federation.chunks import prefer_heap_for_large_buffers
from qdspace.federation.errors import FederationError, RefusalReason, RosterRefused, UpdateRefused
from qdspace.federation.host import JobExists, JobHost, UnknownJob, load_jobs
from qdspace.federation.job import JobSpec, JobSpecError
from qdspace.federation.job_files import Published, VersionAnchor
from qdspace.federation.models import job_problems
from qdspace.federation.params import params_from_bytes
from qdspace.federation.round_status import Phase, RoundRecord, StatusView, poll_wait
from qdspace.federation.secagg_messages import (
    Confirmation,
    EncryptedShare,
    KeyAdvert,
    UnmaskRequest,
    UnmaskResponse,
)
from qdspace.federation.versions import LEDGER_KIND
from qdspace.ledger.errors import LedgerError, NotAnchored, UnknownLeaf
from qdspace.node.identity.certs import MemberIdentity, Trust
from qdspace.node.rpc.federation_keys import CertificateKeys
from qdspace.node.rpc.federation_serde import DOWNLOAD_FRAMING
from qdspace.node.runtime.federation_slots import JobSlot, RoundRef, Upload, job_state
from qdspace.node.runtime.federation_uploads import StreamWatch, UploadTimes, paced

logger = logging.getLogger("node.federation")

T = TypeVar("T")
M = TypeVar("M")

#: ``(member_id, asset_id, now) -> None`` if the member may send updates, else the reason.
AgreementCheck = Callable[[str, str, datetime], str | None]
#: ``(kind, ref_id) -> proof JSON``; raises ``ledger.errors`` NotAnchored / UnknownLeaf.
ProofSource = Callable[[str, str], str]


class NotOperator(FederationError, PermissionError):
    """Only the node's own operator may start jobs on it."""


class UnknownVersion(FederationError, LookupError):
    """No such version was published, or it was never anchored."""


class NoChain(FederationError):
    """This node anchors to no chain, so it has no proofs to give."""


class ProofPending(FederationError):
    """The version is not anchored yet, or the ledger cannot be read just now."""


class FederationJobs:
    """The jobs this node coordinates; resumes them from disk when built."""

    def __init__(
        self,
        me: MemberIdentity,
        signer: SigningKey,
        root: Path,
        *,
        anchor: VersionAnchor | None = None,
        clock: Callable[[], float] = time.monotonic,
        agreements: AgreementCheck | None = None,
        offer: Callable[[JobSpec], None] | None = None,
        proofs: ProofSource | None = None,
        ca_cert: Trust | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
        on_finished: Callable[[JobSpec, Published], None] | None = None,
        room: Callable[[int, str], None] | None = None,
        upload_times: UploadTimes = UploadTimes(),
    ) -> None:
        self._me = me
        #: how long an upload stream may stall or run (``federation_uploads``)
        self._upload_times = upload_times
        self._watches: dict[tuple[str, str], StreamWatch] = {}
        #: asked before a new job's directory is written (`NodeContext.check_kept`)
        self._room = room
        self._on_finished = on_finished
        self._finishing: set[asyncio.Task[None]] = set()
        self._on_round = on_round
        self._ca = ca_cert
        self._uploading: set[tuple[str, str]] = set()
        self._proofs = proofs
        self._agreements = agreements
        self._offer = offer
        self._signer = signer
        self._root = root
        self._anchor = anchor
        self._clock = clock
        prefer_heap_for_large_buffers()  # 50 MB round buffers without per-round page faults
        hosts = load_jobs(root, signer, clock(), anchor=anchor, framing=DOWNLOAD_FRAMING)
        self._jobs: dict[str, JobSlot] = {job_id: JobSlot(h) for job_id, h in hosts.items()}
        for slot in self._jobs.values():
            self._publish(slot.host.job)

    def _publish(self, job: JobSpec) -> None:
        """Offer a job under contract in this node's catalog, so members can negotiate it."""
        if job.agreement_asset is not None and self._offer is not None:
            self._offer(job)

    # --- admission and locking ---------------------------------------------------------

    def _slot(self, job_id: str) -> JobSlot:
        slot = self._jobs.get(job_id)
        if slot is None:
            raise UnknownJob(f"no job {job_id!r} on {self._me.name}")
        return slot

    async def _require_agreement(self, job: JobSpec, member_id: str) -> None:
        """Refuse a member without an agreement in force when the job is under contract."""
        if job.agreement_asset is None or member_id == self._me.member_id:
            return  # the coordinator takes part in its own job without a contract with itself
        if self._agreements is None:
            raise UpdateRefused(
                RefusalReason.NO_AGREEMENT,
                f"job {job.job_id} needs agreements, and {self._me.name} keeps no contracts",
            )
        asset, now = job.agreement_asset, datetime.now(UTC)
        reason = await asyncio.to_thread(self._agreements, member_id, asset, now)
        if reason is not None:
            raise UpdateRefused(RefusalReason.NO_AGREEMENT, reason)

    async def _admit(self, job_id: str, caller: MemberIdentity) -> JobSlot:
        """The job, if the caller is one of its members holding an agreement in force."""
        slot = self._slot(job_id)
        job, member, pins = slot.host.job, caller.name, slot.host.pins
        if member not in job.members and member != self._me.name:
            raise UpdateRefused(
                RefusalReason.NOT_A_MEMBER, f"{member} is not a member of job {job_id}"
            )
        pins.check(job_id, member, caller.member_id)  # a reissued name keeps no place
        await self._require_agreement(job, caller.member_id)
        pins.pin(job_id, member, caller.member_id)
        return slot

    async def _locked(self, slot: JobSlot, call: Callable[[], T]) -> T:
        """Run ``call`` on the job under its lock in a worker thread; wake long polls."""
        async with slot.lock:
            before, rounds = job_state(slot.host), len(slot.host.history)
            try:
                return await asyncio.to_thread(call)
            finally:
                if job_state(slot.host) != before:
                    slot.notify()
                    if slot.host.coordinator.phase is Phase.DONE:
                        self._finished(slot.host)
                if self._on_round is not None:
                    for record in slot.host.history[rounds:]:  # rounds this call aggregated
                        self._on_round(record)

    def _finished(self, host: JobHost) -> None:
        """Hand the job's final version to ``on_finished`` in the background (the last
        member's call is answered at once; an export of a CNN takes seconds)."""
        if self._on_finished is None:
            return
        hook, job = self._on_finished, host.job
        published = host.model(host.coordinator.version)

        async def run() -> None:
            try:
                await asyncio.to_thread(hook, job, published)
            except FederationError as exc:  # e.g. no PyTorch on this node to export with
                logger.warning(
                    "federation: job %s: final version not registered: %s", job.job_id, exc
                )
            except Exception:  # the job is done either way; the operator reads the log
                logger.exception("federation: job %s: final version hook failed", job.job_id)

        task = asyncio.get_running_loop().create_task(run(), name=f"finished {job.job_id}")
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _read(
        self, ref: RoundRef, caller: MemberIdentity, read: Callable[[JobHost, str, int, int], T]
    ) -> T:
        """Admit the caller, then ``read(host, member, round, attempt)`` under the lock."""
        slot = await self._admit(ref.job_id, caller)
        return await self._locked(
            slot, lambda: read(slot.host, caller.name, ref.round, ref.attempt)
        )

    async def _submit(
        self,
        ref: RoundRef,
        caller: MemberIdentity,
        submit: Callable[[JobHost, str, int, int, M, float], None],
        message: M,
    ) -> StatusView:
        """Admit the caller, hand ``message`` to the round with
        ``submit(host, member, round, attempt, message, now)`` under the lock; the job's
        status after."""
        slot = await self._admit(ref.job_id, caller)
        await self._locked(
            slot,
            lambda: submit(slot.host, caller.name, ref.round, ref.attempt, message, self._clock()),
        )
        return slot.host.view(self._clock())

    # --- administration ----------------------------------------------------------------

    def check_operator(self, caller: MemberIdentity) -> None:
        """Refuse anyone but this node's own operator (checked before a job is read)."""
        if caller.member_id != self._me.member_id:
            raise NotOperator(
                f"only {self._me.name}'s own operator may start jobs on it, not {caller.name}"
            )

    def proposed(self, terms: bytes) -> JobSpec:
        """The terms of a job to start here: it must name this node and be new."""
        job = JobSpec.from_dict(_json(terms))
        problems = job_problems(job.model, job.shapes, job.training)
        if problems:
            raise JobSpecError(f"job {job.job_id}: " + "; ".join(problems))
        if job.coordinator != self._me.name:
            raise FederationError(
                f"job {job.job_id} names coordinator {job.coordinator}, this node is "
                f"{self._me.name}"
            )
        if job.job_id in self._jobs:
            raise JobExists(f"job {job.job_id} already exists on {self._me.name}")
        return job

    async def start(self, job: JobSpec, initial: memoryview, caller: str) -> StatusView:
        """Publish ``job`` with its initial model as version 0 and serve it. Its
        checkpoint's two slots (each the size of the model) are asked for first."""
        params = params_from_bytes(initial)
        if self._room is not None:
            kept = 2 * len(initial) + len(job.canonical_bytes())
            await asyncio.to_thread(self._room, kept, f"federated job {job.job_id}")
        host = await asyncio.to_thread(
            JobHost.create,
            self._root,
            job,
            params,
            self._signer,
            self._clock(),
            anchor=self._anchor,
            framing=DOWNLOAD_FRAMING,
        )
        self._jobs[job.job_id] = JobSlot(host)
        self._publish(job)
        logger.info(
            "federation: job %s started by %s: %s rounds, members %s, strategy %s, secagg %s",
            job.job_id,
            caller,
            job.rounds,
            ",".join(job.members),
            job.strategy.name.value,
            job.secure_aggregation,
        )
        return host.view(self._clock())

    async def jobs_of(
        self, member: str, job_id: str = "", *, member_id: str | None = None
    ) -> list[StatusView]:
        """The jobs ``member`` takes part in (or only ``job_id``); no agreement needed.
        With ``member_id``, not those where the name is pinned to another member id."""
        now = self._clock()
        views = []
        for name in sorted(self._jobs):
            slot = self._jobs[name]
            if job_id and job_id != name:
                continue
            host = slot.host
            pinned = host.pins.get(member)
            if member_id is not None and pinned not in (None, member_id):
                continue  # the name was reissued: that job is its former holder's
            if member in host.job.members or member == self._me.name:
                views.append(await self._locked(slot, functools.partial(host.view, now)))
        return views

    async def job(self, job_id: str, caller: MemberIdentity) -> JobSpec:
        return (await self._admit(job_id, caller)).host.job

    async def status(
        self,
        job_id: str,
        caller: MemberIdentity,
        known: tuple[int, int, str, int],
        wait_s: float,
    ) -> StatusView:
        """The job's status once it moved on from ``known`` (round, attempt, phase,
        version), or after ``wait_s`` (bounded by ``poll_wait``), whichever comes first."""
        slot = await self._admit(job_id, caller)
        wait_s = poll_wait(wait_s)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait_s
        while True:
            changed = slot.changed
            view = await self._locked(slot, lambda: slot.host.view(self._clock()))
            if view.finished or view.moved_from(*known):
                break
            remaining = end - loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, view.deadline_in_s + 0.02))
        return view

    async def model(
        self,
        job_id: str,
        caller: MemberIdentity,
        version: int,
        encode: Callable[[Published], tuple[bytes, ...]],
    ) -> tuple[bytes, ...]:
        """The published ``version``, as ``encode`` makes it; encoded once per version (the
        first download encodes it under the job's lock, the others share the result)."""
        slot = await self._admit(job_id, caller)
        published = slot.host.model(version)
        if slot.encoded[0] is published:
            return slot.encoded[1]

        def build() -> tuple[bytes, ...]:
            if slot.encoded[0] is not published:
                slot.encoded = (published, encode(published))
            return slot.encoded[1]

        async with slot.lock:
            return await asyncio.to_thread(build)

    # --- uploads -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def upload(
        self, ref: RoundRef, caller: MemberIdentity, phase: Phase, total_bytes: int
    ) -> AsyncIterator[Upload]:
        """Claim the caller's one upload stream for the job, checked against the round
        before any data is read (an update in TRAINING, a masked input in MASKED_INPUT);
        the claim ends when the block does, which ``paced`` sees to in time."""
        member = caller.name
        slot = await self._admit(ref.job_id, caller)
        key = (ref.job_id, member)
        if key in self._uploading:
            what = "update" if phase is Phase.TRAINING else "masked input"
            raise UpdateRefused(
                RefusalReason.BUSY,
                f"{member} already has an upload in flight for job {ref.job_id}; "
                f"this {what} is refused until it ends",
            )
        self._uploading.add(key)
        try:
            attempt = None if phase is Phase.TRAINING else ref.attempt
            expect = functools.partial(slot.host.expect_upload, member, ref.round, phase)

            def claim() -> tuple[tuple[int, int, str], float]:
                now = self._clock()
                expect(now, attempt=attempt, total_bytes=total_bytes)
                return job_state(slot.host)[:3], max(slot.host.coordinator.deadline - now, 0.0)

            state, left = await self._locked(slot, claim)
            what = f"{'update' if phase is Phase.TRAINING else 'masked input'} of {member}"
            times, loop = self._upload_times, asyncio.get_running_loop()
            deadline = loop.time() + left + times.slack_s
            self._watches[key] = StreamWatch(slot, what, deadline, times.idle_s, state)
            yield Upload(slot, member, phase, ref, slot.host.upload_size(phase))
        finally:  # the stream held the member's upload slot until its payload was taken
            self._uploading.discard(key)
            self._watches.pop(key, None)

    def uploading(self, job_id: str) -> frozenset[str]:
        """The members whose upload stream for ``job_id`` was taken and is read now."""
        return frozenset(m for j, m in self._watches if j == job_id)

    def paced(self, upload: Upload, requests: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The rest of ``upload``'s stream, cut off (``DEADLINE_PASSED``) when it stalls,
        runs past its phase's deadline or outlives its round (``federation_uploads``)."""
        return paced(self._watches[(upload.ref.job_id, upload.member)], requests)

    async def submit(
        self, upload: Upload, payload: memoryview | tuple[memoryview, ...], examples: int
    ) -> StatusView:
        """Hand the uploaded update (``examples``: its training set size) or masked input
        (one buffer, or the pieces its stream carried) to the round."""
        host, member, ref = upload.slot.host, upload.member, upload.ref
        if upload.phase is Phase.TRAINING:
            if isinstance(payload, tuple):
                raise TypeError("an update is parsed from one buffer, not from pieces")
            call = functools.partial(host.submit_update, member, ref.round, payload, examples)
        else:
            call = functools.partial(host.submit_masked, member, ref.round, ref.attempt, payload)
        await self._locked(upload.slot, lambda: call(self._clock()))
        return host.view(self._clock())

    # --- secure aggregation --------------------------------------------------------------

    def _advert_key(self, slot: JobSlot, caller: MemberIdentity, advert: KeyAdvert) -> VerifyKey:
        """The caller's signing key, once its advert is seen to carry the caller's certificate."""
        refuse_impersonation(caller.name, advert.member)
        if self._ca is None:
            raise RosterRefused(f"{self._me.name} has no authority certificate to check adverts")
        identity = CertificateKeys(self._ca, slot.host.job.members).identity(advert)
        if identity.fingerprint != caller.fingerprint:
            raise UpdateRefused(
                RefusalReason.BAD_SIGNATURE,
                f"key advert of {caller.name} carries a certificate other than its own",
            )
        return VerifyKey(caller.verify_key)

    async def advertise(
        self, ref: RoundRef, caller: MemberIdentity, advert: KeyAdvert
    ) -> StatusView:
        slot = await self._admit(ref.job_id, caller)
        key = self._advert_key(slot, caller, advert)
        submit = functools.partial(slot.host.submit_advert, caller.name, ref.round, ref.attempt)
        await self._locked(slot, lambda: submit(advert, key, self._clock()))
        return slot.host.view(self._clock())

    async def roster(self, ref: RoundRef, caller: MemberIdentity) -> tuple[KeyAdvert, ...]:
        return await self._read(ref, caller, JobHost.roster)

    async def share_keys(
        self, ref: RoundRef, caller: MemberIdentity, shares: Sequence[EncryptedShare]
    ) -> StatusView:
        return await self._submit(ref, caller, JobHost.submit_shares, shares)

    async def inbox(self, ref: RoundRef, caller: MemberIdentity) -> list[EncryptedShare]:
        return await self._read(ref, caller, JobHost.inbox)

    async def unmask_request(self, ref: RoundRef, caller: MemberIdentity) -> UnmaskRequest:
        return await self._read(ref, caller, JobHost.unmask_request)

    async def confirm(
        self, ref: RoundRef, caller: MemberIdentity, confirmation: Confirmation
    ) -> StatusView:
        return await self._submit(ref, caller, JobHost.submit_confirmation, confirmation)

    async def unmask(
        self, ref: RoundRef, caller: MemberIdentity, response: UnmaskResponse
    ) -> StatusView:
        return await self._submit(ref, caller, JobHost.submit_unmask, response)

    async def report_bad_shares(
        self, ref: RoundRef, caller: MemberIdentity, accused: str
    ) -> StatusView:
        return await self._submit(ref, caller, JobHost.submit_report, accused)

    # --- ledger proofs -------------------------------------------------------------------

    async def version_proof(self, job_id: str, caller: MemberIdentity, version: int) -> str:
        """The inclusion proof (JSON) of a published version's ``model_version`` leaf."""
        published = (await self._admit(job_id, caller)).host.coordinator.version
        ref = f"{job_id}/v{version}"
        if version > published:
            raise UnknownVersion(f"job {job_id} has no version {version}")
        if self._proofs is None:
            raise NoChain(f"{self._me.name} anchors to no chain")
        try:
            return await asyncio.to_thread(self._proofs, LEDGER_KIND, ref)
        except NotAnchored as exc:
            raise ProofPending(f"not anchored yet: {exc}") from exc
        except UnknownLeaf as exc:
            raise UnknownVersion(f"{ref} was never anchored: {exc}") from exc
        except LedgerError as exc:
            raise ProofPending(f"ledger: {exc}") from exc
        except FederationError as exc:
            raise NoChain(str(exc)) from exc


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        raise FederationError(f"job terms are not JSON: {exc}") from exc
