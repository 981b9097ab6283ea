"""The Ray Serve tier: an onnxruntime session per replica, dynamic batching, hot swap.

Stations call ``ServeJudge`` (an async callable) and never see Ray. A swap loads the
new ONNX bytes next to the running session and then replaces one reference, so the
batch in progress finishes on the old version, the next batch runs on the new one,
no request is refused in between, and every verdict names the version that judged it.
A model that does not load is refused before it reaches a replica (and again inside
the replica): the tier keeps serving the current version.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import ray

with warnings.catch_warnings():
    # Ray Serve's own pydantic models still pass v1-style extras to ``Field`` (ray 2.60).
    warnings.filterwarnings("ignore", message=r"Using extra keyword arguments on `Field`")
    from ray import serve
    from ray.serve.handle import DeploymentHandle

from qdspace.inference.errors import ModelLoadError, ServingError
from qdspace.inference.model import DEFAULT_THRESHOLD, Device, OnnxClassifier, content_hash
from qdspace.inference.verdicts import FrameRequest, ServedVerdict, judge_requests, model_failed

logger = logging.getLogger("inference")

APP_NAME = "qdspace-inspection"
DEPLOYMENT_NAME = "el-classifier"
SWAP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ServeSettings:
    """How the tier runs: replicas, threads, batching and the verdict threshold."""

    num_replicas: int = 1
    replica_cpus: float = 1.0
    device: Device = "auto"
    threads: int = 1
    max_batch_size: int = 16
    #: 0 = adaptive batching: a batch is whatever queued while the previous one ran, so
    #: a lone frame never waits for company and a burst still goes through in batches
    batch_wait_timeout_s: float = 0.0
    max_ongoing_requests: int = 64
    threshold: float = DEFAULT_THRESHOLD
    #: frames travel to the replica over Serve's direct gRPC channel, not as Ray
    #: object references (one hop less each way; see bench/inference.py)
    grpc_transport: bool = True


@dataclass(frozen=True)
class SwapOutcome:
    """What one replica did with a swap request."""

    replica: str
    version: str
    previous: str
    error: str | None = None


@dataclass(frozen=True)
class ReplicaStatus:
    """A replica's model version, providers and counters."""

    replica: str
    version: str
    providers: tuple[str, ...]
    frames: int
    batches: int
    bad_frames: int
    failed_swaps: int
    batch_sizes: dict[int, int] = field(default_factory=dict)
    #: the Ray node the replica runs on (replicas spread over the cluster's nodes)
    node_id: str = ""


class InspectionModel:
    """One replica: an ``OnnxClassifier`` behind a batched ``judge`` method."""

    def __init__(self, model_bytes: bytes, source: str, settings: ServeSettings) -> None:
        self._settings = settings
        self._model = OnnxClassifier(model_bytes, source, settings.device, settings.threads)
        self.judge.set_max_batch_size(settings.max_batch_size)  # type: ignore[attr-defined]
        self.judge.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)  # type: ignore[attr-defined]
        self._frames = self._batches = self._bad_frames = self._failed_swaps = 0
        self._batch_sizes: dict[int, int] = {}
        self._swap_lock = asyncio.Lock()
        logger.info(
            "inference.serve: replica up with %s on %s",
            self._model.info.short_version,
            self._model.providers,
        )

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def judge(self, requests: list[FrameRequest]) -> list[ServedVerdict]:
        """Judge a batch with the model current when the batch starts."""
        model = self._model
        # never raises for one frame: a bad frame, or a NaN row, is that frame's answer
        answers = judge_requests(model, requests, self._settings.threshold)
        if len(answers) != len(requests):  # Serve would fail every frame of the batch
            raise ServingError(f"{len(answers)} verdicts for a batch of {len(requests)}")
        self._frames += len(requests)
        self._batches += 1
        self._batch_sizes[len(requests)] = self._batch_sizes.get(len(requests), 0) + 1
        self._bad_frames += sum(1 for a in answers if a.error is not None)
        return answers

    async def judge_frames(self, requests: list[FrameRequest]) -> list[ServedVerdict]:
        """Frames a station client sent together: each joins the dynamic batch queue.

        They may land in different batches: a batch that fails (a bug, not a bad frame,
        which ``judge`` answers itself) fails its own frames, each with an error naming
        it, never the frames of the trip that were judged in another batch."""
        answers = await asyncio.gather(*(self.judge(r) for r in requests), return_exceptions=True)
        version = self._model.version
        return [
            model_failed(r, version, f"the batch failed: {a!r}")
            if isinstance(a, BaseException)
            else a
            for r, a in zip(requests, answers, strict=True)
        ]

    async def swap(self, model_bytes: bytes, source: str) -> SwapOutcome:
        """Load a new version beside the current one, then switch; failure keeps the old."""
        replica = _replica_name()
        async with self._swap_lock:
            previous = self._model.version
            if content_hash(model_bytes) == previous:  # asked again (a retried swap): done
                return SwapOutcome(replica, previous, previous)
            try:
                model = await asyncio.to_thread(
                    OnnxClassifier,
                    model_bytes,
                    source,
                    self._settings.device,
                    self._settings.threads,
                )
            except ModelLoadError as exc:
                self._failed_swaps += 1
                logger.error("inference.serve: swap refused, keeping %s: %s", previous[:12], exc)
                return SwapOutcome(replica, previous, previous, str(exc))
            self._model = model
        logger.info("inference.serve: swapped %s -> %s", previous[:12], model.info.short_version)
        return SwapOutcome(replica, model.version, previous)

    async def status(self) -> ReplicaStatus:
        """Counters and the current version of this replica."""
        return ReplicaStatus(
            replica=_replica_name(),
            version=self._model.version,
            providers=tuple(self._model.providers),
            frames=self._frames,
            batches=self._batches,
            bad_frames=self._bad_frames,
            failed_swaps=self._failed_swaps,
            batch_sizes=dict(self._batch_sizes),
            node_id=str(ray.get_runtime_context().get_node_id()),
        )


INSPECTION_DEPLOYMENT = serve.deployment(name=DEPLOYMENT_NAME)(InspectionModel)


def _replica_name() -> str:
    return str(serve.get_replica_context().replica_id.unique_id)


class ServeJudge:
    """The stations' view of the tier: ``await judge(request)`` returns a verdict.

    Frames submitted in the same turn of the stations' event loop (stations that tick
    together) travel to the replica as one Serve request and join its dynamic batch
    together; a frame never waits for company, it only shares the trip with frames
    that are already there. Each Serve request costs about a millisecond of Python on
    each side on two cores, so this halves the serving cost of two stations at one rate.
    """

    def __init__(self, handle: DeploymentHandle[Any], grpc_transport: bool = True) -> None:
        # by reference, a frame goes driver -> object store -> replica and the answer back
        # as a streamed object; over gRPC it is one request and one reply on a socket
        self._judge_frames = handle.judge_frames.options(_by_reference=not grpc_transport)
        self._pending: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, list[tuple[FrameRequest, asyncio.Future[ServedVerdict]]]
        ] = weakref.WeakKeyDictionary()
        self._trips: set[asyncio.Task[None]] = set()

    async def __call__(self, request: FrameRequest) -> ServedVerdict:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[ServedVerdict] = loop.create_future()
        pending = self._pending.setdefault(loop, [])
        pending.append((request, answer))
        if len(pending) == 1:  # the first frame of this turn sends the lot next turn
            loop.call_soon(self._send, loop)
        return await answer

    def _send(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._pending.pop(loop, [])
        if batch:
            trip = loop.create_task(self._trip(batch))
            self._trips.add(trip)
            trip.add_done_callback(self._trips.discard)

    async def _trip(self, batch: list[tuple[FrameRequest, asyncio.Future[ServedVerdict]]]) -> None:
        try:
            verdicts: list[ServedVerdict] = await self._judge_frames.remote(
                [request for request, _ in batch]
            )
            if len(verdicts) != len(batch):
                raise ServingError(f"{len(verdicts)} verdicts for {len(batch)} frames")
        except Exception as exc:  # every frame of the trip fails the same way
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        for (_, answer), verdict in zip(batch, verdicts, strict=True):
            if not answer.done():
                answer.set_result(verdict)


class InspectionTier:
    """Starts the Serve application on a running Ray, swaps models, and tears it down."""

    def __init__(self, settings: ServeSettings | None = None, app_name: str = APP_NAME) -> None:
        self.settings = settings or ServeSettings()
        self.app_name = app_name
        self._handle: DeploymentHandle[Any] | None = None
        self.version: str | None = None

    @property
    def handle(self) -> DeploymentHandle[Any]:
        """The handle of the running deployment."""
        if self._handle is None:
            raise ServingError("the inspection tier is not started")
        return self._handle

    def start(self, model_bytes: bytes, source: str) -> DeploymentHandle[Any]:
        """Deploy the model (checked locally first) and wait until replicas are up."""
        if not ray.is_initialized():
            raise ServingError("Ray is not initialised: call ray.init() before starting the tier")
        version = OnnxClassifier(model_bytes, source, device="cpu").version
        s = self.settings
        app = INSPECTION_DEPLOYMENT.options(
            num_replicas=s.num_replicas,
            max_ongoing_requests=s.max_ongoing_requests,
            ray_actor_options={"num_cpus": s.replica_cpus},
            # an access-log line per frame is file I/O on the replica's request path
            logging_config={"log_level": "WARNING", "enable_access_log": False},
            # a stopping replica first sleeps one wait loop (2 s by default), then waits
            # for the frames in flight: look every 0.1 s instead
            graceful_shutdown_wait_loop_s=0.1,
        ).bind(model_bytes, source, s)
        try:
            # stations call the deployment through a handle: no HTTP/gRPC proxy to feed
            serve.start(proxy_location="Disabled", logging_config={"log_level": "WARNING"})
            self._handle = serve.run(app, name=self.app_name, route_prefix=None)
        except Exception as exc:  # Serve wraps replica start failures in its own errors
            raise ServingError(f"cannot start {self.app_name}: {exc}") from exc
        self.version = version
        logger.info("inference.serve: %s serving %s", self.app_name, version[:12])
        return self._handle

    def judge(self) -> ServeJudge:
        """An async judge for station runners."""
        return ServeJudge(self.handle, self.settings.grpc_transport)

    def swap(self, model_bytes: bytes, source: str, timeout_s: float = SWAP_TIMEOUT_S) -> str:
        """Hot-swap every replica to a new version; returns it, or raises ``ModelLoadError``.

        The bytes are loaded here first, so a broken file never reaches a replica. A
        handle call reaches one replica, so the call is repeated until as many distinct
        replicas answered as are running (a replica already on the version answers at
        once). A replica lost on the way (its node died) fails its call; the call is
        repeated and the count of running replicas read again, so a swap during a node
        loss completes on the replicas that are left.
        """
        version = OnnxClassifier(model_bytes, source, device="cpu").version
        seen: dict[str, SwapOutcome] = {}
        deadline = time.monotonic() + timeout_s
        lost: Exception | None = None
        while len(seen) < max(self.running_replicas(), 1):
            if time.monotonic() > deadline:
                raise ServingError(
                    f"swap to {version[:12]} reached {len(seen)} replicas only"
                    + (f" (last failure: {lost!r})" if lost else "")
                )
            try:
                outcome: SwapOutcome = self.handle.swap.remote(model_bytes, source).result(
                    timeout_s=max(deadline - time.monotonic(), 0.1)
                )
            except Exception as exc:  # a replica lost mid-call: ask again (another one)
                lost = exc
                time.sleep(0.2)
                continue
            if outcome.error is not None:
                raise ModelLoadError(source, f"replica {outcome.replica}: {outcome.error}")
            seen[outcome.replica] = outcome
        self.version = version
        return version

    def running_replicas(self) -> int:
        """How many replicas the Serve controller counts as running now."""
        try:
            app = serve.status().applications[self.app_name]
            states = app.deployments[DEPLOYMENT_NAME].replica_states
        except KeyError:
            return 0
        return sum(n for state, n in states.items() if state == "RUNNING")

    def replicas(self, timeout_s: float = SWAP_TIMEOUT_S) -> list[ReplicaStatus]:
        """The status of every running replica (asked until each has answered once)."""
        seen: dict[str, ReplicaStatus] = {}
        deadline = time.monotonic() + timeout_s
        while len(seen) < self.running_replicas() and time.monotonic() < deadline:
            try:
                status: ReplicaStatus = self.handle.status.remote().result(timeout_s=5.0)
            except Exception:  # a replica going away: ask again
                time.sleep(0.2)
                continue
            seen[status.replica] = status
        return sorted(seen.values(), key=lambda s: s.replica)

    def status(self) -> ReplicaStatus:
        """Status of one replica (with one replica: of the tier)."""
        status: ReplicaStatus = self.handle.status.remote().result()
        return status

    def stop(self) -> None:
        """Delete the application (Ray itself keeps running)."""
        if self._handle is not None:
            serve.delete(self.app_name)
            self._handle = None
