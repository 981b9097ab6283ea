"""An inspection session: a registered model version served (by Ray Serve or in-process).

It is the one place that decides how verdicts get judged, so the CLI, the demo and the
benchmark start, swap and stop the tier the same way. A swap to a version that does not
load raises a ``model_refused`` alarm and leaves the current version serving.
"""

from __future__ import annotations

import logging
import socket
from types import TracebackType
from typing import TYPE_CHECKING

from qdspace.inference import alarms as kinds
from qdspace.inference.alarms import AlarmLog
from qdspace.inference.errors import ModelLoadError, ServingError
from qdspace.inference.extras import load_ray
from qdspace.inference.line import Judge, LocalJudge
from qdspace.inference.model import OnnxClassifier, content_hash
from qdspace.inference.registry import ModelRegistry, ModelVersion, RegistryError

if TYPE_CHECKING:
    from qdspace.inference.serve import InspectionTier, ServeSettings

logger = logging.getLogger("inference")

#: seconds to wait for a cluster head's port before refusing its address
JOIN_PROBE_S = 5.0


def _check_reachable(address: str, timeout_s: float = JOIN_PROBE_S) -> None:
    """Refuse an address whose head does not answer: ``ray.init`` would retry forever."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # a Ray client URL or a form Ray resolves itself: let ray.init judge it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ServingError(
            f"cannot join the Ray cluster at {address}: its head does not answer "
            f"({exc.strerror or exc}); check --ray-address / RAY_ADDRESS"
        ) from exc


class InspectionSession:
    """Serve one model version of a node's registry; swap versions while frames flow."""

    def __init__(
        self,
        registry: ModelRegistry,
        settings: ServeSettings | None = None,
        use_ray: bool = True,
        num_cpus: int | None = None,
        alarms: AlarmLog | None = None,
        app_name: str | None = None,
        ray_address: str | None = None,
    ) -> None:
        self.registry = registry
        self.alarms = alarms or AlarmLog()
        self._settings = settings
        self._use_ray = use_ray
        self._num_cpus = num_cpus
        self._tier: InspectionTier | None = None
        self._local: LocalJudge | None = None
        self._started_ray = False
        self._ray_address = ray_address
        self._joined_ray = False
        self._app_name = app_name
        self._refused: set[str] = set()
        self.version: ModelVersion | None = None

    def start(self, version: str | None = None) -> ModelVersion:
        """Serve ``version`` (default: the registry's active one)."""
        entry = self.registry.get(version) if version else self.registry.active()
        if entry is None:
            raise RegistryError(
                f"no active model version in {self.registry.root}: train one with `qdspace train`"
            )
        data = self._read(entry)
        if self._use_ray:
            self._start_ray(data, entry)
        else:
            threads = self._settings.threads if self._settings else 1
            device = self._settings.device if self._settings else "auto"
            self._local = LocalJudge(OnnxClassifier(data, entry.file, device, threads))
        self.version = entry
        return entry

    def _start_ray(self, data: bytes, entry: ModelVersion) -> None:
        ray = load_ray()  # InspectionUnavailableError without the ``inspect`` extra
        from qdspace.inference.serve import APP_NAME, InspectionTier, ServeSettings

        if ray.is_initialized():
            pass
        elif self._ray_address:  # join a running cluster: its nodes host the replicas
            _check_reachable(self._ray_address)
            try:
                ray.init(
                    address=self._ray_address, logging_level=logging.WARNING, log_to_driver=False
                )
            except (ConnectionError, ValueError) as exc:
                raise ServingError(
                    f"cannot join the Ray cluster at {self._ray_address}: {exc}"
                ) from exc
            self._joined_ray = True
        else:  # "local": never join a cluster by accident (RAY_ADDRESS, `ray start` file)
            ray.init(
                address="local",
                num_cpus=self._num_cpus,
                include_dashboard=False,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
            self._started_ray = True
        self._tier = InspectionTier(self._settings or ServeSettings(), self._app_name or APP_NAME)
        self._tier.start(data, entry.file)

    @property
    def judge(self) -> Judge:
        """The judge stations call."""
        if self._tier is not None:
            return self._tier.judge()
        if self._local is not None:
            return self._local
        raise ServingError("the inspection session is not started")

    @property
    def tier(self) -> InspectionTier | None:
        """The Ray Serve tier, when the session runs on Ray."""
        return self._tier

    def swap(self, version: str) -> bool:
        """Hot-swap to a registered version; ``False`` (alarmed) when it does not load."""
        try:
            entry = self.registry.get(version)
            data = self._read(entry)
            if self._tier is not None:
                self._tier.swap(data, entry.file)
            elif self._local is not None:
                device = self._settings.device if self._settings else "auto"
                self._local.swap(OnnxClassifier(data, entry.file, device))
            else:
                raise ServingError("the inspection session is not started")
        except (ModelLoadError, RegistryError) as exc:
            current = self.version.version[:12] if self.version else "none"
            self.alarms.raise_alarm(kinds.MODEL_REFUSED, None, f"{exc}; still serving {current}")
            return False
        except ServingError as exc:  # replicas lost mid-swap: not the model's fault, try again
            self.alarms.raise_alarm(kinds.SWAP_FAILED, None, str(exc))
            raise
        self.version = entry
        logger.info("inference.session: now serving %s", entry.version[:12])
        return True

    def follow_active(self) -> ModelVersion | None:
        """Swap to the registry's active version if an operator activated another one.

        Called on every display tick, so ``qdspace inspect activate V`` in another
        terminal hot-swaps a running line. A version that was refused once (alarmed) is
        not retried until it is activated again after another version; a swap that
        lost replicas on the way (alarmed ``swap_failed``) is tried again next call.
        """
        if self.version is None:
            return None
        try:
            active = self.registry.active()
        except RegistryError as exc:
            self.alarms.raise_alarm(kinds.MODEL_REFUSED, None, f"{exc}; registry unreadable")
            return None
        if active is None or active.version == self.version.version:
            self._refused.clear()
            return None
        if active.version in self._refused:
            return None
        try:
            swapped = self.swap(active.version)
        except ServingError:  # alarmed; the next tick tries again
            return None
        if swapped:
            return active
        self._refused.add(active.version)
        return None

    def _read(self, entry: ModelVersion) -> bytes:
        path = self.registry.root / entry.file
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(str(path), f"cannot read ({exc.strerror or exc})") from exc
        if content_hash(data) != entry.version:
            raise ModelLoadError(
                str(path), f"content hash {content_hash(data)[:12]} != version {entry.version[:12]}"
            )
        return data

    def close(self) -> None:
        """Stop the tier, and Ray if this session started it."""
        if self._tier is not None:
            self._tier.stop()
            self._tier = None
        if self._started_ray or self._joined_ray:
            import ray

            # a Ray started here ends (Serve with it; serve.shutdown() first only adds
            # raylet noise); a joined cluster only loses this driver
            ray.shutdown()
            self._started_ray = self._joined_ray = False

    def __enter__(self) -> InspectionSession:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
