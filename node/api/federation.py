"""Operator REST endpoints of federated learning: start and read jobs, join them as a member.

The node runs the member's side of a job itself (``runtime.federation_member``); these
routes are how its operator asks for that: ``POST /v1/federation/jobs`` publishes a job on
its coordinator (normally this node), ``GET /v1/federation/jobs[/{id}]`` reads what the
coordinator shows this node (a long poll with ``wait_s`` and the last position seen),
``POST /v1/federation/sessions`` joins a job and answers at once with a session id, and
``GET /v1/federation/sessions/{id}`` reports the session: events so far, then the final
status and the version deployed.

Routes decode, call the service, encode. Errors rise to the app's one table
(``node.api.problems``): a coordinator's refusal by the gRPC status it names, a job's
invalid terms or a data file that does not fit as 400, an unknown session as 404.
Every number a caller sends is finite and bounded, so bad input is a 4xx, never a 500.

No ``from __future__ import annotations`` here: the typed dependencies are made inside
``federation_router`` (they close over the node's context) and FastAPI reads each
route's annotations as objects.
"""

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, params
from pydantic import BaseModel, Field

from qdspace.federation.el_cnn import with_shapes
from qdspace.federation.job import MAX_ROUNDS, JobSpec
from qdspace.federation.params import Params, params_from_bytes
from qdspace.federation.round_status import Phase, StatusView
from qdspace.node.api.bodies import Body
from qdspace.node.api.caller_paths import caller_path
from qdspace.node.api.deps import Paging
from qdspace.node.api.models import Id, IdPath
from qdspace.node.context import NodeContext
from qdspace.node.runtime.federation_member import (
    FederationMember,
    FederationRequestError,
    JoinRequest,
    MemberSession,
    Seen,
)

PREFIX = "/v1/federation"
#: a start request carries the initial model (base64): larger than other JSON bodies
START_BODY_LIMIT = 96 << 20
MAX_PATH = 4096
MAX_WAIT_S = 60.0
#: the largest dimension of a tensor in a job's terms (and of a model in scalars)
MAX_DIM = 2**31 - 1
Finite = Annotated[float, Field(allow_inf_nan=False)]
FilePath = Annotated[str, Field(min_length=1, max_length=MAX_PATH, pattern=r"^[^\x00]+$")]


class RoundPublic(BaseModel):
    round: int
    version: int
    members: list[str]
    bounded: list[str]
    epsilon: float | None
    #: a secure round whose sum was scaled back to what the clip allows
    sum_bounded: bool = False


class JobStatus(BaseModel):
    """A job as its coordinator shows it to this node (``qdspace fl status --json``)."""

    job_id: str
    round: int
    rounds: int
    attempt: int
    phase: str
    finished: bool
    version: int
    deadline_in_s: float
    detail: str
    delta: float | None
    agreement_asset: str | None
    job_digest: str
    history: list[RoundPublic]


class StartJobBody(Body):
    terms: dict[str, Any] = Field(description="the job's terms (federation.job.JobSpec)")
    initial: str | None = Field(
        default=None,
        max_length=START_BODY_LIMIT,
        description="the initial model, QDFP1 bytes in base64; default all zeros",
    )
    coordinator: Id | None = Field(default=None, description="default: this node")


class JoinBody(Body):
    job_id: Id
    coordinator: Id | None = Field(default=None, description="default: this node")
    data: FilePath = Field(description="this member's training data (.npz) on the node's machine")
    test: FilePath | None = Field(default=None, description="held-out data to score versions on")
    deploy: bool = False
    image_size: int | None = Field(default=None, ge=8, le=4096)
    poll_s: Finite = Field(default=10.0, gt=0.0, le=MAX_WAIT_S)


class SessionEventPublic(BaseModel):
    kind: str
    round: int
    version: int
    detail: str
    coordinator: str
    members: list[str]
    scores: dict[str, float]


class SessionPublic(BaseModel):
    session_id: str
    job_id: str
    coordinator: str
    member: str
    state: str = Field(description="running | done | failed")
    started_at: float
    finished_at: float | None
    error: str | None
    events: list[SessionEventPublic]
    #: how many events came before ``events`` (the ``after`` asked for)
    events_from: int
    status: JobStatus | None
    contributed: list[int]
    versions: list[int]
    aborted: list[str]
    deployment: dict[str, Any] | None


def status_public(view: StatusView) -> JobStatus:
    return JobStatus(
        job_id=view.job_id,
        round=view.round,
        rounds=view.rounds,
        attempt=view.attempt,
        phase=view.phase.value,
        finished=view.finished,
        version=view.version,
        deadline_in_s=view.deadline_in_s,
        detail=view.detail,
        delta=view.delta,
        agreement_asset=view.agreement_asset,
        job_digest=view.job_digest.hex(),
        history=[
            RoundPublic(
                round=r.round,
                version=r.version,
                members=list(r.members),
                bounded=list(r.bounded),
                epsilon=r.epsilon,
                sum_bounded=r.sum_bounded,
            )
            for r in view.history
        ],
    )


def session_public(s: MemberSession, after: int = 0) -> SessionPublic:
    events = s.public_events(after)
    return SessionPublic(
        session_id=s.session_id,
        job_id=s.job_id,
        coordinator=s.coordinator,
        member=s.member,
        state=s.state,
        started_at=s.started_at,
        finished_at=s.finished_at,
        error=s.error,
        events=[SessionEventPublic(**e) for e in events],
        events_from=min(after, len(s.events)),
        status=None if s.status is None else status_public(s.status),
        contributed=s.contributed,
        versions=s.versions,
        aborted=s.aborted,
        deployment=s.deployment,
    )


def job_terms(terms: dict[str, Any]) -> JobSpec:
    """The terms a caller sent, as a job: invalid or absurd terms are a 400."""
    try:
        job = JobSpec.from_dict(with_shapes(terms))
    except (OverflowError, ArithmeticError) as exc:
        raise FederationRequestError(f"job terms are not valid: {exc}") from None
    if job.rounds > MAX_ROUNDS or any(not 1 <= d <= MAX_DIM for s in job.shapes for d in s):
        raise FederationRequestError(
            f"job {job.job_id}: rounds must be in 1..{MAX_ROUNDS} and every tensor dimension "
            f"in 1..{MAX_DIM}"
        )
    return job


def initial_params(encoded: str | None) -> Params | None:
    if encoded is None:
        return None
    try:
        return params_from_bytes(base64.b64decode(encoded, validate=True))
    except binascii.Error as exc:
        raise FederationRequestError(f"initial: not base64 ({exc})") from None


def federation_router(ctx: NodeContext, operator: params.Depends) -> APIRouter:
    """The ``/v1/federation`` routes of a node; ``operator`` is the app's token dependency."""
    router = APIRouter(prefix=PREFIX, dependencies=[operator], tags=["federation"])

    def service() -> FederationMember:
        if ctx.federation is None:
            raise HTTPException(503, "this node runs no federation member service")
        return ctx.federation

    Service = Annotated[FederationMember, Depends(service)]
    Coordinator = Annotated[
        str | None, Query(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")
    ]

    @router.post("/jobs", response_model=JobStatus)
    async def start_job(body: StartJobBody, member: Service) -> JobStatus:
        """Publish a job on its coordinator's node (only the coordinator's operator may)."""
        job = job_terms(body.terms)
        view = await member.start_job(job, initial_params(body.initial), body.coordinator)
        return status_public(view)

    @router.get("/jobs", response_model=list[JobStatus])
    async def list_jobs(
        member: Service, page: Paging, response: Response, coordinator: Coordinator = None
    ) -> list[JobStatus]:
        """The jobs the coordinator (default: this node) shows this node."""
        return page.take([status_public(v) for v in await member.jobs(coordinator)], response)

    @router.get("/jobs/{job_id}", response_model=JobStatus)
    async def job_status(
        job_id: IdPath,
        member: Service,
        coordinator: Coordinator = None,
        wait_s: Annotated[float, Query(ge=0.0, le=MAX_WAIT_S, allow_inf_nan=False)] = 0.0,
        round: Annotated[int | None, Query(ge=0, le=MAX_DIM)] = None,
        attempt: Annotated[int | None, Query(ge=0, le=MAX_DIM)] = None,
        phase: Phase | None = None,
        version: Annotated[int | None, Query(ge=-1, le=MAX_DIM)] = None,
    ) -> JobStatus:
        """A job's status; given the last position seen, once the job moved past it."""
        seen = None
        if round is not None and attempt is not None and phase is not None and version is not None:
            seen = Seen(round, attempt, phase, version)
        return status_public(await member.job_status(job_id, coordinator, seen, wait_s))

    @router.post("/sessions", response_model=SessionPublic, status_code=202)
    async def join(body: JoinBody, member: Service) -> SessionPublic:
        """Join a job as this member: checked now, followed in the background."""
        request = JoinRequest(
            job_id=body.job_id,
            coordinator=body.coordinator or member.name,
            data=caller_path(body.data, ctx.caller_files, "data"),
            test=None if body.test is None else caller_path(body.test, ctx.caller_files, "test"),
            deploy=body.deploy,
            image_size=body.image_size,
            poll_s=body.poll_s,
        )
        return session_public(await member.join(request))

    @router.get("/sessions", response_model=list[SessionPublic])
    async def sessions(member: Service, page: Paging, response: Response) -> list[SessionPublic]:
        return page.take([session_public(s) for s in member.sessions()], response)

    @router.get("/sessions/{session_id}", response_model=SessionPublic)
    async def session(
        session_id: IdPath,
        member: Service,
        after: Annotated[int, Query(ge=0, le=MAX_DIM)] = 0,
    ) -> SessionPublic:
        """A session's progress: the events after the first ``after``, its result."""
        return session_public(member.session(session_id), after)

    return router
