"""One real local Ray for the serving tests of the inspection tier, gone when they are.

Ray is started by the first test of this folder that needs it and shut down (Serve
with it) after the last test of the folder, not at the end of the session: an idle
Ray with a Serve controller and replica costs ~10% of a core, which the test folders
that run after this one should not pay. ``local_ray`` is module-scoped so module
fixtures (a deployed tier) can use it; it starts Ray again if tests of this folder
come back after others (a reordered run).
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
_started = False


def _stop_ray() -> None:
    global _started
    if not _started:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()  # ends Serve too; serve.shutdown() first only adds raylet noise
    _started = False


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """A 2-CPU local Ray without dashboard (started once for the folder)."""
    global _started
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        _init_ray(ray)
        _started = True
    yield


#: what Ray raises when its processes did not come up within its deadlines
_SLOW_START = ("timed out during startup", "Timed out waiting for file")


def _init_ray(ray: Any) -> None:
    """``ray.init``, tried again when Ray's processes did not come up in time: on two
    loaded cores (the suite's other worker may be starting nodes, or a Ray of its own,
    beside it) the GCS can miss its port-file deadline (given 120 s here instead of
    Ray's default) and the raylet its fixed 30 s registration deadline, and a start
    after the failed one is torn down comes up. Any other failure is raised as it is.
    Process handles Ray drops while starting (a helper process that failed under load)
    are collected here, their ResourceWarnings with them, not reported against
    whichever test runs next."""
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    # Ray turns token auth on by itself once ~/.ray/auth_token exists (a local start on
    # this machine may write one); this Ray is the test process's own, as the cluster
    # test's is (`test_inspect_serve_cluster`), so it starts without
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for attempt in (1, 2, 3):
            try:
                ray.init(
                    num_cpus=2,
                    include_dashboard=False,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
                break
            except Exception as exc:
                if attempt == 3 or not any(slow in str(exc) for slow in _SLOW_START):
                    raise
                ray.shutdown()
            finally:
                gc.collect()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """After the item's fixtures are torn down: stop Ray when the folder's tests end."""
    result = yield
    if nextitem is None or not Path(nextitem.path).resolve().is_relative_to(HERE):
        _stop_ray()
    return result
