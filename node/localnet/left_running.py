"""A local network left running: its pid file, and stopping it from another process.

``qdspace demo --keep-running`` ends while its node processes, hosts and chain go on.
Whoever stops them later (``qdspace demo stop --workdir W``) is a different process
that never had them as children, so it works from ``W/run/processes.json``: one entry
per process with its pid and a marker (its directory) that must appear on the
process's command line -- a pid reused by an unrelated process since is left alone.

Every process of the network was started in its own session (``start_new_session``),
so its pid is also its process group: stopping sends SIGTERM to the process (nodes
and chain stop gracefully on it), waits, and SIGKILLs the group of whatever is left,
so no child (a node's worker, say) outlives it either.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from qdspace.node.errors import NodeError

PROCESSES_FILE = Path("run") / "processes.json"
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RunningProcess:
    """One process of a network left running."""

    name: str  # member or host name, or "chain"
    pid: int
    marker: str  # a path that is on its command line (its node or state directory)


def processes_file(workdir: Path) -> Path:
    return workdir / PROCESSES_FILE


def write_processes(workdir: Path, processes: list[RunningProcess]) -> Path:
    """Record what a later ``stop_left_running`` must stop."""
    path = processes_file(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(p) for p in processes], indent=2) + "\n")
    return path


def read_processes(workdir: Path) -> list[RunningProcess]:
    path = processes_file(workdir)
    try:
        raw = json.loads(path.read_text())
        return [RunningProcess(str(p["name"]), int(p["pid"]), str(p["marker"])) for p in raw]
    except FileNotFoundError:
        raise NodeError(
            f"no network left running in {workdir} (no {PROCESSES_FILE}); "
            "start one with: qdspace demo --keep-running"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise NodeError(f"{path}: not a process list ({exc})") from None


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a reaped-late child counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def is_ours(process: RunningProcess) -> bool:
    """The pid still runs the process we started (its marker is on its command line)."""
    try:
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return _alive(process.pid) and process.marker.encode() in cmdline


def group_members(pgid: int) -> list[int]:
    """Live pids whose process group is ``pgid`` (a stopped process's leftover children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if _alive(p)]
    return left


def _terminate(processes: list[RunningProcess], timeout: float) -> dict[str, str]:
    """SIGTERM what is still ours, wait, then SIGKILL the process groups of what was."""
    ours = [p for p in processes if is_ours(p)]
    outcome = {p.name: "was not running" for p in processes}
    for p in ours:
        os.kill(p.pid, signal.SIGTERM)
        outcome[p.name] = "stopped"
    stubborn = set(_wait_gone([p.pid for p in ours], timeout))
    for p in ours:  # only groups we started: a reused pid's group is someone else's
        if p.pid in stubborn:
            outcome[p.name] = "killed (did not stop on SIGTERM)"
        for pid in group_members(p.pid):  # the process, or children it left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _wait_gone([pid for p in ours for pid in group_members(p.pid)], 5.0)
    left = [p.name for p in ours if _alive(p.pid) or group_members(p.pid)]
    if left:
        raise NodeError(f"still running after SIGKILL: {', '.join(left)}")
    return outcome


def stop_left_running(workdir: Path, timeout: float = STOP_TIMEOUT_S) -> dict[str, str]:
    """Stop a network left running in ``workdir``: nodes first, then the chain.

    Nodes go first so that they do not spend their last seconds failing to anchor.
    Returns what happened to each process; removes the pid file when nothing is left.
    """
    processes = read_processes(workdir)
    nodes = [p for p in processes if p.name != "chain"]
    outcome = _terminate(nodes, timeout)
    outcome |= _terminate([p for p in processes if p.name == "chain"], timeout)
    processes_file(workdir).unlink(missing_ok=True)
    return outcome
