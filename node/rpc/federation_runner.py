"""A member's round loop: follows a job from the member's node until it finishes.

``MemberRunner`` downloads each global version and checks its signature (and, given
a hook, its ledger anchor) before anything uses it, trains on the member's own data
through a ``Trainer``, and sends only its clipped change, masked when the job uses
secure aggregation. It takes a version only if it is the one the status announced
and newer than its own (an old signed version served again is refused), and it
trains no round past the job's terms. It talks to the coordinator only through ``FederationClient``
(``federation_client``) and stays in ``rpc/`` because it lives on that client's
refusals (``FederationRefused`` and their gRPC status codes). The node's side of a
member's job (``runtime.federation_member``) reaches it through its ``CoordinatorLink``
port, which ``federation_link`` implements with this runner.

In secure rounds the runner trusts the coordinator with nothing it can check
itself: the roster's keys are taken only from adverts signed under the key each
member's certificate binds to it (``federation_keys``), it signs the survivor set
it is shown, and it reveals shares only for a set enough other members signed.
When it refuses, the round's abort is reported as an ``aborted`` event that names
the cause (a swapped key, an inconsistent survivor set, a member's bad shares). A
member whose shares to us do not open is reported to the coordinator, which leaves it
and us out of the job's later attempts (it cannot tell which of us lies), so a member
dealing bad shares cannot make every attempt abort.
A coordinator that is briefly unreachable (restarting) is polled again for up to
``OUTAGE_S``: a restarted coordinator resumes the job.

Each update that leaves (a plain update, or an attempt's masked input: each drawn with
fresh noise) is one release of the member's data, which a coordinator restarting
attempts could otherwise ask for without end. Given a ``ReleaseGuard``
(``runtime.federation_releases``), the runner asks it before training for a release and
has it counted on disk before sending one; past the member's floor the round goes on
without the member (a ``skipped`` event that names the job, the releases made and the
floor setting).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from nacl.signing import SigningKey, VerifyKey

from qdspace.federation import secagg
from qdspace.federation.chunks import prefer_heap_for_large_buffers
from qdspace.federation.errors import (
    BadShares,
    FederationError,
    RefusalReason,
    SecAggAbort,
    SecAggError,
    VersionError,
)
from qdspace.federation.job import JobSpec
from qdspace.federation.member import Trainer, plain_update, prepare_change, secagg_client
from qdspace.federation.member_releases import ReleaseRefused
from qdspace.federation.params import Params, Vector, flatten
from qdspace.federation.round_status import Phase, StatusView
from qdspace.federation.secagg_messages import protocol_mismatch
from qdspace.federation.versions import AnchorCheck, ModelVersion, verify_version
from qdspace.node.identity.certs import Trust
from qdspace.node.rpc.federation_client import FederationClient, FederationRefused
from qdspace.node.rpc.federation_keys import CertificateKeys, Revoked
from qdspace.node.runtime.federation_member import MemberEvent, MemberResult, VersionHook
from qdspace.node.runtime.federation_releases import ReleaseGuard
from qdspace.util.threads import on_own_thread

logger = logging.getLogger("node.rpc")

DEFAULT_POLL_S = 10.0
#: How long a member keeps polling a coordinator that cannot be reached (it restarts).
OUTAGE_S = 180.0
RETRY_S = 1.0
_TRANSIENT = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED"})


def _flat(params: Params) -> Vector:
    """The trainer's parameters as one vector: a view of a single contiguous tensor, else a copy."""
    if len(params) == 1 and params[0].dtype == np.float32 and params[0].flags.c_contiguous:
        return params[0].reshape(-1)
    return flatten(params)


@dataclass
class _SecureRound:
    client: secagg.SecAggClient
    change: Vector | None  # dropped once masked: 50 MB a round otherwise kept to the end
    steps: set[Phase] = field(default_factory=set)


class MemberRunner:
    """Follows one job as one member until it finishes (or the task is cancelled)."""

    def __init__(
        self,
        client: FederationClient,
        member: str,
        trainer: Trainer,
        coordinator_key: VerifyKey,
        *,
        signing_key: SigningKey | None = None,
        certificate: x509.Certificate | None = None,
        ca_cert: Trust | None = None,
        revoked: Revoked | None = None,
        on_event: Callable[[MemberEvent], None] | None = None,
        on_version: VersionHook | None = None,
        anchored: AnchorCheck | None = None,
        seed: int = 0,
        poll_s: float = DEFAULT_POLL_S,
        before_send: Callable[[], Awaitable[None]] | None = None,
        releases: ReleaseGuard | None = None,
    ) -> None:
        self.client = client
        self.member = member
        self._trainer = trainer
        self._key = coordinator_key
        self._signing_key = signing_key
        self._certificate = certificate
        self._ca_cert = ca_cert
        self._revoked = revoked  # the member's own revocation list, for the roster
        self._on_event = on_event
        self._on_version = on_version
        self._anchored = anchored
        self._rng = np.random.default_rng(seed)
        self._poll_s = poll_s
        #: raises when the coordinator's name is no longer held by the member joined
        self._before_send = before_send
        #: counts each update sent against the member's floor (None: not counted)
        self._releases = releases
        #: why this member sends no more updates of the job (its floor is reached: the
        #: count only grows), said once; it follows the job on for its versions
        self._withheld: str | None = None
        self._job: JobSpec | None = None
        self._version: ModelVersion | None = None
        self._params: Params | None = None
        self._global: Vector | None = None
        self._trained: dict[int, tuple[Vector, int]] = {}
        self._sent: set[int] = set()
        self._secure: dict[tuple[int, int], _SecureRound] = {}
        self._result: MemberResult | None = None
        prefer_heap_for_large_buffers()  # 50 MB round buffers without per-round page faults

    def _emit(self, kind: str, round_: int, detail: str = "") -> None:
        version = -1 if self._version is None else self._version.version
        event = MemberEvent(kind, round_, version, detail)
        logger.info("federation member %s: %s round %s: %s", self.member, kind, round_, detail)
        if self._on_event is not None:
            self._on_event(event)

    @property
    def job(self) -> JobSpec:
        if self._job is None:
            raise FederationError("the runner has not fetched the job yet")
        return self._job

    async def run(self) -> MemberResult:
        job = self._job = await self.client.job()
        if self.member not in job.members:
            raise FederationRefused(
                f"{self.member} is not a member of job {job.job_id}",
                "PERMISSION_DENIED",
                RefusalReason.NOT_A_MEMBER,
            )
        status = await self.client.status()
        if job.secure_aggregation:  # a coordinator of another protocol: never take part
            problem = protocol_mismatch(
                f"coordinator {self.client.coordinator}", status.secagg_protocol
            )
            if problem is not None:
                raise FederationRefused(
                    problem, "FAILED_PRECONDITION", RefusalReason.WRONG_PROTOCOL
                )
        result = self._result = MemberResult(status)
        while True:
            if self._version is None or status.version > self._version.version:
                await self._download(status.version)
            if status.finished:
                break
            self._check_round(status)
            try:
                if self._withheld is None:
                    await self._act(status)
            except ReleaseRefused as exc:
                self._withheld = str(exc)
                self._emit("skipped", status.round, f"{exc}; no more updates of this job")
            except FederationRefused as exc:
                if exc.code == "PERMISSION_DENIED" or exc.reason is RefusalReason.WRONG_PROTOCOL:
                    raise
                self._emit("refused", status.round, str(exc))
            except (SecAggError, SecAggAbort) as exc:  # we refuse what the coordinator relayed
                result.aborted.append(f"round {status.round} attempt {status.attempt}: {exc}")
                self._emit("aborted", status.round, str(exc))
            except FederationError as exc:  # e.g. our masked input missed the round
                self._emit("skipped", status.round, str(exc))
            status = await self._poll(status)
        result.status, result.params = status, self._params
        result.contributed = sorted(self._sent)
        self._emit("done", status.round, f"{status.phase.value}: {status.detail}")
        return result

    async def _poll(self, known: StatusView) -> StatusView:
        """The next status; a coordinator that is down (restarting) is polled again until
        it is back or ``OUTAGE_S`` has passed: a restarted coordinator resumes the job."""
        waited = 0.0
        while True:
            try:
                return await self.client.status(known, wait_s=self._poll_s)
            except FederationRefused as exc:
                if exc.code not in _TRANSIENT or waited >= OUTAGE_S:
                    raise
                self._emit("waiting", known.round, f"coordinator unreachable: {exc}")
            await asyncio.sleep(RETRY_S)
            waited += RETRY_S

    async def _download(self, version: int) -> None:
        got = await self.client.download(version)
        signed, params = got.signed, got.params
        parent = self._version
        if parent is not None and version != parent.version + 1:
            parent = None  # missed versions (joined late or dropped): no chain link to check
        checked = verify_version(
            signed,
            self._key,
            params,
            job_id=self.job.job_id,
            job_digest=self.job.digest(),
            parent=parent,
            anchored=self._anchored,
            digest=got.sha256,
        )
        self._check_newer(checked, version)
        self._version, self._params, self._global = checked, params, got.vector
        assert self._result is not None
        self._result.versions.append(checked)
        self._emit("model", checked.round, f"version {checked.version} verified")
        if self._on_version is not None:
            await asyncio.to_thread(self._on_version, checked, params)

    def _check_newer(self, checked: ModelVersion, announced: int) -> None:
        """A downloaded version must be the one the status announced, and newer than ours.

        Once versions were missed there is no parent to check against (``_download``),
        and every version the coordinator ever signed verifies: a coordinator announcing
        version 9 could serve its signed version 2 again, and the member took the old
        model as its newest (hot-swapped it, deployed it at the end of the job)."""
        current = self._version
        if checked.version != announced or (
            current is not None and checked.version <= current.version
        ):
            have = "none" if current is None else str(current.version)
            raise VersionError(
                f"coordinator {self.client.coordinator} announced version {announced} of job "
                f"{self.job.job_id} and served version {checked.version} (this member has "
                f"{have}): a member takes only the announced, newer version"
            )

    def _check_round(self, status: StatusView) -> None:
        """A job runs the rounds its terms name: a coordinator that opens round
        ``rounds + 1`` (or later) asks for training the member never agreed to."""
        if not status.finished and status.round > self.job.rounds:
            raise FederationRefused(
                f"coordinator {self.client.coordinator} opened round {status.round} of job "
                f"{self.job.job_id}, whose terms end after {self.job.rounds} rounds",
                "FAILED_PRECONDITION",
                RefusalReason.OUT_OF_RANGE,
            )

    async def _train(self, round_: int) -> tuple[Vector, int]:
        """Train for `round_` (once), on a thread of its own for the call: training takes
        seconds to minutes, and on a managed host the shared worker threads are taken
        within each tenant's share (`node.host.workers`), where a round's training would
        hold its tenant's share for that long and its calls would wait behind it."""
        if round_ not in self._trained:
            assert self._params is not None
            trained, examples = await on_own_thread(self._trainer, self._params, round_)
            self._trained = {round_: (_flat(trained), examples)}
            self._emit("trained", round_, f"{examples} local examples")
        return self._trained[round_]

    async def _send(self) -> None:
        """Before anything of ours leaves for the coordinator (an update, a key, a share)."""
        if self._before_send is not None:
            await self._before_send()

    async def _release(self, round_: int, attempt: int, *, send: bool) -> None:
        """Before training for a release (``send=False``: checked only) and right before
        sending one (counted on disk first): ``ReleaseRefused`` past the member's floor."""
        if self._releases is not None:
            step = self._releases.record if send else self._releases.check
            await asyncio.to_thread(step, round_, attempt)

    async def _act(self, status: StatusView) -> None:
        round_, attempt, phase = status.round, status.attempt, status.phase
        job, client = self.job, self.client
        assert self._params is not None and self._global is not None
        global_vector = self._global
        if phase is Phase.TRAINING:
            if round_ in self._sent:
                return
            await self._release(round_, attempt, send=False)
            trained, examples = await self._train(round_)
            update = plain_update(job, global_vector, trained, self._rng)
            await self._send()
            await self._release(round_, attempt, send=True)
            # an honest member with more data than the terms' cap claims the cap (the
            # coordinator refuses a claim over it: `JobSpec.max_examples_per_member`)
            await client.upload_update(round_, update, min(examples, job.examples_cap))
            self._sent.add(round_)
            self._emit("sent", round_, "update sent")
            return
        key = (round_, attempt)
        state = self._secure.get(key)
        if phase is Phase.ADVERTISE and state is None:
            signing_key, certificate, _ = self._credentials()
            await self._release(round_, attempt, send=False)
            trained, _ = await self._train(round_)
            change = prepare_change(job, global_vector, trained, self._rng)
            sa = secagg_client(job, self.member, round_, attempt, signing_key)
            # only the current attempt's state is kept: an earlier one's phases are over
            state = _SecureRound(sa, change)
            self._secure = {key: state}
            state.steps.add(Phase.ADVERTISE)
            await self._send()
            await client.advertise(round_, attempt, sa.advertise(certificate))
        elif state is None or phase in state.steps:
            return
        elif phase is Phase.SHARE_KEYS:
            state.steps.add(phase)
            roster = await client.roster(round_, attempt)
            verify_keys = self._credentials()[2].keys(roster)
            await self._send()
            await client.share_keys(round_, attempt, state.client.share_keys(roster, verify_keys))
        elif phase is Phase.MASKED_INPUT:
            state.steps.add(phase)
            masked_change, state.change = state.change, None
            assert masked_change is not None
            inbox = await client.inbox(round_, attempt)
            # the shares are opened and the seeds derived first; then each chunk (of the
            # client's chunk size: the wire's message limit) is masked while the one
            # before it is being sent
            try:
                masking = await asyncio.to_thread(state.client.masking, masked_change, inbox)
            except BadShares as exc:  # the coordinator leaves both of us out of the job
                await client.report_bad_shares(round_, attempt, exc.member)
                raise
            # each chunk is copied onto the wire before the next is made: one chunk buffer
            parts = masking.blocks(client.chunk_elements, reuse_buffer=True)
            await self._send()
            await self._release(round_, attempt, send=True)
            await client.upload_masked_stream(round_, attempt, masking.size, parts)
            self._sent.add(round_)
            self._emit("sent", round_, "masked update sent")
        elif phase is Phase.CONSISTENCY:
            state.steps.add(phase)
            request = await client.unmask_request(round_, attempt)
            await self._send()
            await client.confirm(round_, attempt, state.client.confirm(request))
        elif phase is Phase.UNMASK:
            state.steps.add(phase)
            request = await client.unmask_request(round_, attempt)
            await self._send()
            await client.unmask(round_, attempt, state.client.unmask(request))

    def _credentials(self) -> tuple[SigningKey, bytes, CertificateKeys]:
        """What secure rounds need: our signing key, our certificate (DER) for the others to
        check, and the authority's certificate to check theirs."""
        if self._signing_key is None or self._certificate is None or self._ca_cert is None:
            raise SecAggError(
                f"member {self.member}: secure aggregation needs the member's signing key, "
                "its certificate and the authority's certificate"
            )
        der = self._certificate.public_bytes(Encoding.DER)
        checker = CertificateKeys(self._ca_cert, self.job.members, revoked=self._revoked)
        return self._signing_key, der, checker
