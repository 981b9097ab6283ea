"""The member side of federated learning, run by the node itself.

A member takes part in a job from its own node: the node holds the keys that sign its
secure-aggregation messages, the revocation list that checks the roster, the ledger
view that checks a version's anchor and the model registry a version is deployed into.
So the node, not the CLI process or the demo, runs the member's round loop. The
operator (``qdspace fl join``, the demo) asks the node through its operator API and
watches a *session*: the events so far, then the result and the deployed version --
the way ``kubectl`` asks the API server and watches what it started.

This module is the feature service behind those routes. It talks to coordinators
through a small port, :class:`CoordinatorLink`, that a transport implements (the node
wires in the gRPC one, ``node.rpc.federation_link``); nothing here knows gRPC or HTTP.
It also starts jobs and reads their status on a coordinator for the operator.

Everything a caller sends is checked before a session starts: the job must exist and
name this node, its terms must meet this node's own floor (``federation.member_floor``:
the noise, secure aggregation and rounds its settings ask of any job), the data must
load with the job's shapes, a node that cannot deploy refuses ``deploy`` at once. Only
then does the session run, as a task of the node's event loop; whatever ends it later
is kept on the session as its error. The floor holds while it runs too: each update the
session sends is counted on disk against it (``runtime.federation_releases``), so a
coordinator restarting attempts, or a job joined again, gets no release past the floor.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qdspace.federation.el_cnn import MODEL as EL_CNN
from qdspace.federation.errors import FederationError
from qdspace.federation.job import JobSpec
from qdspace.federation.logreg import Dataset
from qdspace.federation.member import Trainer
from qdspace.federation.member_floor import MemberFloor, floor_problems
from qdspace.federation.models import ModelKind, job_problems, model_kind
from qdspace.federation.params import Params, size_of
from qdspace.federation.round_status import Phase, StatusView
from qdspace.federation.strategies import StrategyName
from qdspace.federation.versions import ModelVersion
from qdspace.node.errors import NodeError
from qdspace.node.layout import NodeLayout
from qdspace.node.runtime.federation_releases import ReleaseBook, ReleaseGuard

logger = logging.getLogger("node.federation")

#: the most scalars of a job's model the node zero-fills when no initial model is sent
MAX_ZERO_INITIAL = 16 * 1024 * 1024
#: EL image size of an el-mlp job whose terms do not name one (the demo's); an el-cnn
#: job's terms always name theirs
DEFAULT_IMAGE_SIZE = 96
#: finished sessions kept for their callers to read (the oldest go first)
KEEP_FINISHED = 256


# --- what a member sees of a job (shared with the transport that runs the round loop) ---


@dataclass(frozen=True, slots=True)
class MemberEvent:
    """Progress of a member through a job, for the CLI, the demo and logs."""

    kind: str  # model | trained | sent | refused | skipped | aborted | waiting | done
    round: int
    version: int
    detail: str = ""


@dataclass
class MemberResult:
    """What a member ends a job with."""

    status: StatusView
    versions: list[ModelVersion] = field(default_factory=list)
    params: Params | None = None
    contributed: list[int] = field(default_factory=list)
    #: Why secure rounds were abandoned by this member (a swapped key, an inconsistent
    #: survivor set, a named member's bad shares), one line per round attempt.
    aborted: list[str] = field(default_factory=list)


#: Called with each verified global version: the member's hot-swap hook.
VersionHook = Callable[[ModelVersion, Params], None]


class Position(Protocol):
    """Where a job was last seen (a :class:`StatusView` is one): for long polls."""

    @property
    def round(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def phase(self) -> Phase: ...
    @property
    def version(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Seen:
    """A position the caller sends back: answer when the job has moved past it."""

    round: int
    attempt: int
    phase: Phase
    version: int


class CoordinatorLink(Protocol):
    """The port: one coordinator, about one job, over whatever transport is wired in."""

    async def start_job(self, job: JobSpec, initial: Params) -> StatusView: ...
    async def list_jobs(self) -> list[StatusView]: ...
    async def status(self, known: Position | None = None, wait_s: float = 0.0) -> StatusView: ...
    async def job(self) -> JobSpec: ...
    async def version_proof(self, version: int) -> str: ...
    async def follow(
        self,
        trainer: Trainer,
        *,
        on_event: Callable[[MemberEvent], None],
        on_version: VersionHook,
        poll_s: float,
        coordinator_id: str | None = None,
        releases: ReleaseGuard | None = None,
    ) -> MemberResult:
        """Take part in every round until the job ends (checking every version); with
        ``coordinator_id``, only while the coordinator's name is held by that member; with
        ``releases``, sending no update it refuses."""
        ...

    async def close(self) -> None: ...


#: (coordinator name, job id) -> a link; raises ``UnknownPeerError`` for an unknown name
Connect = Callable[[str, str], CoordinatorLink]
#: (coordinator name, the job it describes) -> the member id the session is held to: the
#: member this node's agreement for the job names (else `NotTheCoordinator`, or the
#: peer's error), or, for a job under no contract, the member holding the name now
Vouch = Callable[[str, JobSpec], Awaitable[str | None]]


# --- errors a caller can cause -----------------------------------------------------------


class FederationRequestError(NodeError, ValueError):
    """A request the node cannot act on: a data file it cannot read, a model too large."""


class NotAJobMember(NodeError, PermissionError):
    """This node is not among the members the job's terms name."""


class NotTheCoordinator(NodeError, PermissionError):
    """A job under contract whose coordinator this node holds no agreement with."""


class UnknownSession(NodeError, LookupError):
    """No member session with this id on this node."""


class SessionConflict(NodeError):
    """This node already follows the job at that coordinator (one session per job)."""


# --- sessions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JoinRequest:
    """What the operator asks for: follow ``job_id`` at ``coordinator`` with this data."""

    job_id: str
    coordinator: str
    data: Path
    test: Path | None = None
    deploy: bool = False
    image_size: int | None = None
    poll_s: float = 10.0


@dataclass
class SessionEvent:
    """One line of a session's progress: a round-loop event, or a verified version."""

    kind: str  # a MemberEvent kind, or "version" (a verified version, with its scores)
    round: int
    version: int
    detail: str = ""
    coordinator: str = ""
    members: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


@dataclass
class MemberSession:
    """A job this node follows as a member, as its operator sees it."""

    session_id: str
    job_id: str
    coordinator: str
    member: str
    started_at: float
    state: str = "running"  # running | done | failed
    events: list[SessionEvent] = field(default_factory=list)
    error: str | None = None
    #: the job's final status (``status_json`` shape) once the round loop ended
    status: StatusView | None = None
    contributed: list[int] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    #: the final version in this node's inspection tier (when asked to deploy)
    deployment: dict[str, Any] | None = None
    finished_at: float | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def public_events(self, after: int = 0) -> list[dict[str, Any]]:
        return [asdict(e) for e in self.events[after:]]


def held_out_scores(kind: ModelKind, params: Params, data: Dataset) -> dict[str, float]:
    """Accuracy of a version on held-out data; F1 and AUROC of the defect class (EL models)."""
    if kind.defect_scores is None:
        return {"accuracy": float(kind.accuracy(params, data))}
    from qdspace.inference.metrics import binary_metrics

    m = binary_metrics(data.y, kind.defect_scores(params, data))
    return {"accuracy": float(m.accuracy), "f1": float(m.f1), "auroc": float(m.auroc)}


class FederationMember:
    """Starts, follows and reports this node's member sessions; starts and reads jobs."""

    def __init__(
        self,
        connect: Connect,
        directory: Path,
        name: str,
        vouch: Vouch | None = None,
        floor: MemberFloor | None = None,
        room: Callable[[int, str], None] | None = None,
    ) -> None:
        self._connect = connect
        self.directory = directory
        #: asked before a deployed version is written (`NodeContext.check_kept`)
        self._room = room
        self.name = name
        #: what this node accepts of any job's terms (its settings' ``federation_floor``)
        self.floor = MemberFloor() if floor is None else floor
        #: who the coordinator of a job under contract must be (None: not checked)
        self._vouch = vouch
        #: every update this node sent, per job: counted against ``floor`` while it runs
        self.releases = ReleaseBook(NodeLayout(directory).federation)
        self._sessions: dict[str, MemberSession] = {}

    # -- coordinator side: jobs -----------------------------------------------------------

    async def start_job(
        self, job: JobSpec, initial: Params | None, coordinator: str | None = None
    ) -> StatusView:
        """Publish ``job`` on the coordinator's node (normally this one)."""
        if initial is None and job.model == EL_CNN:  # a seeded fresh network, not zeros
            from qdspace.federation.el_cnn import initial_params
            from qdspace.federation.errors import TrainingError

            try:
                initial = await asyncio.to_thread(initial_params, job.shapes, job.training)
            except TrainingError as exc:
                raise FederationRequestError(f"job {job.job_id}: {exc}") from None
        if initial is None:
            if any(d < 1 for s in job.shapes for d in s) or size_of(job.shapes) > MAX_ZERO_INITIAL:
                raise FederationRequestError(
                    f"job {job.job_id}: shapes {list(job.shapes)} are not a model this node "
                    f"zero-fills (at most {MAX_ZERO_INITIAL:,} scalars); send the initial model"
                )
            initial = [np.zeros(s, np.float32) for s in job.shapes]
        link = self._connect(coordinator or self.name, job.job_id)
        try:
            return await link.start_job(job, initial)
        finally:
            await link.close()

    async def jobs(self, coordinator: str | None = None) -> list[StatusView]:
        """The jobs the coordinator shows this node (those it is a member of)."""
        link = self._connect(coordinator or self.name, "")
        try:
            return await link.list_jobs()
        finally:
            await link.close()

    async def job_status(
        self,
        job_id: str,
        coordinator: str | None = None,
        known: Position | None = None,
        wait_s: float = 0.0,
    ) -> StatusView:
        """One job's status; with ``known`` and ``wait_s``, once it moved past ``known``."""
        link = self._connect(coordinator or self.name, job_id)
        try:
            return await link.status(known, wait_s)
        finally:
            await link.close()

    # -- member side: sessions ------------------------------------------------------------

    def session(self, session_id: str) -> MemberSession:
        found = self._sessions.get(session_id)
        if found is None:
            raise UnknownSession(f"no member session {session_id!r} on {self.name}")
        return found

    def sessions(self) -> list[MemberSession]:
        return sorted(self._sessions.values(), key=lambda s: s.started_at)

    async def join(self, request: JoinRequest) -> MemberSession:
        """Check the request, then follow the job in the background; the new session."""
        for s in self._sessions.values():
            if s.running and (s.job_id, s.coordinator) == (request.job_id, request.coordinator):
                raise SessionConflict(
                    f"{self.name} already follows job {request.job_id} at {request.coordinator} "
                    f"(session {s.session_id})"
                )
        if request.deploy:  # before any round: deploying needs the ``inspect`` extra
            from qdspace.inference.extras import require_model_export

            try:
                require_model_export()
            except ImportError as exc:
                raise FederationRequestError(f"{self.name} cannot deploy: {exc}") from None
        for path in (request.data, request.test):
            if path is not None and not (path.is_absolute() and path.is_file()):
                raise FederationRequestError(
                    f"{path}: not a file on {self.name}'s machine (give an absolute path)"
                )
        link = self._connect(request.coordinator, request.job_id)
        try:
            spec = await link.job()
            if self.name not in spec.members:
                raise NotAJobMember(f"{self.name} is not a member of job {spec.job_id}")
            below = floor_problems(spec, self.floor)
            if below:
                raise FederationRequestError(
                    f"{self.name} refuses job {spec.job_id}: its terms are below this node's "
                    "federation_floor (node.json): " + "; ".join(below)
                )
            try:
                releases = self.releases.for_job(request.coordinator, spec, self.floor)
            except FederationError as exc:  # an unreadable record
                refused = f"{self.name} refuses job {spec.job_id}: {exc}"
                raise FederationRequestError(refused) from None
            held_to = None
            if self._vouch is not None and request.coordinator != self.name:
                # model updates say much about the data they came from: they go to the
                # member this node agreed with (or, under no contract, the one it joined),
                # not to whoever holds its name later
                held_to = await self._vouch(request.coordinator, spec)
            kind = model_kind(spec.model)
            problems = job_problems(spec.model, spec.shapes, spec.training)
            if problems:
                raise FederationRequestError(
                    f"{self.name} refuses job {spec.job_id}: " + "; ".join(problems)
                )
            sizes = (request.image_size, spec.training.get("image_size"))
            if spec.model == EL_CNN and request.image_size is not None and len(set(sizes)) > 1:
                raise FederationRequestError(
                    f"job {spec.job_id} trains its CNN at {sizes[1]} px; image size "
                    f"{request.image_size} cannot be deployed for it"
                )
            own = await asyncio.to_thread(kind.load, request.data, spec.shapes, spec.training)
            held_out = None
            if request.test is not None:
                held_out = await asyncio.to_thread(
                    kind.load, request.test, spec.shapes, spec.training
                )
        except BaseException:
            await link.close()
            raise
        session = MemberSession(
            uuid.uuid4().hex, spec.job_id, request.coordinator, self.name, time.time()
        )
        self._forget_old()
        self._sessions[session.session_id] = session
        session.task = asyncio.get_running_loop().create_task(
            self._follow(session, link, spec, kind, own, held_out, request, held_to, releases),
            name=f"federation member {spec.job_id}",
        )
        return session

    async def stop(self) -> None:
        """Cancel the running sessions (the node is stopping)."""
        tasks = [s.task for s in self._sessions.values() if s.task is not None and s.running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _forget_old(self) -> None:
        done = [s for s in self.sessions() if not s.running]
        for s in done[: max(0, len(done) - KEEP_FINISHED + 1)]:
            del self._sessions[s.session_id]

    async def _follow(
        self,
        session: MemberSession,
        link: CoordinatorLink,
        spec: JobSpec,
        kind: ModelKind,
        own: Dataset,
        held_out: Dataset | None,
        request: JoinRequest,
        held_to: str | None,
        releases: ReleaseGuard,
    ) -> None:
        def on_event(event: MemberEvent) -> None:
            session.events.append(
                SessionEvent(event.kind, event.round, event.version, event.detail)
            )

        def on_version(version: ModelVersion, params: Params) -> None:
            scores = {} if held_out is None else held_out_scores(kind, params, held_out)
            session.events.append(
                SessionEvent(
                    "version",
                    version.round,
                    version.version,
                    coordinator=version.coordinator,
                    members=list(version.members),
                    scores=scores,
                )
            )

        mu = (
            spec.strategy.params.get("mu", 0.0)
            if spec.strategy.name is StrategyName.FEDPROX
            else 0.0
        )
        try:
            result = await link.follow(
                kind.trainer(spec.training, own, mu),
                on_event=on_event,
                on_version=on_version,
                poll_s=request.poll_s,
                coordinator_id=held_to,
                releases=releases,
            )
            session.status = result.status
            session.contributed = list(result.contributed)
            session.versions = [v.version for v in result.versions]
            session.aborted = list(result.aborted)
            if request.deploy and result.versions and result.params is not None:
                size = int(spec.training.get("image_size", DEFAULT_IMAGE_SIZE))
                if spec.model != EL_CNN:  # the CNN is served at the size it was trained at
                    size = request.image_size or size
                last = [e.scores for e in session.events if e.kind == "version"]
                metrics = last[-1] if last else None
                session.deployment = await self._deploy(link, result, size, metrics)
            session.state = "done"
        except asyncio.CancelledError:
            session.state, session.error = "failed", f"{self.name} stopped during the job"
            raise
        except Exception as exc:  # kept for the caller to read: the session failed
            logger.warning("federation member session %s failed: %s", session.session_id, exc)
            session.state, session.error = "failed", str(exc) or type(exc).__name__
        finally:
            session.finished_at = time.time()
            await link.close()

    async def _deploy(
        self,
        link: CoordinatorLink,
        result: MemberResult,
        size: int,
        metrics: dict[str, float] | None,
    ) -> dict[str, Any]:
        """The final version's ledger anchor checked against this node's own view of the
        chain, its ONNX export checked, registered (with ``metrics``, the member's
        held-out scores) and, if the promotion gate lets it, made the active model."""
        from qdspace.node.runtime.federation import install, member_ledger, verified_anchor

        final, params = result.versions[-1], result.params
        assert params is not None
        ledger = await asyncio.to_thread(member_ledger, self.directory)
        verdict = await verified_anchor(link, final, ledger)
        done = await asyncio.to_thread(
            install, self.directory, final, params, verdict, size, metrics=metrics, room=self._room
        )
        return {
            "member": self.name,
            "version": final.version,
            "model": final.model,
            "anchor": verdict.reason,
            "registry_version": done.registry_version,
            "max_difference": done.max_difference,
            "active": done.active,
            "gate": done.gate,
            "metrics": dict(metrics or {}),
        }
