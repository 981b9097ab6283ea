"""Line processes of a local network: simulated plant equipment and the connectors that
read it (an OPC UA server, ``qdspace connect opcua``), beside the nodes.

They are started like the nodes (own session, log file, the network's interpreter and
environment), stopped before them by :meth:`LocalNetwork.stop` (a connector writes into
a node's database), and recorded by :meth:`LocalNetwork.leave_running` for ``qdspace
demo stop``, each with a marker that is on its command line. Each keeps its log file
bounded itself, as a node does its ``process.log`` (`process_log_env`).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from qdspace.node.logs import process_log_env


@dataclass
class LineProcess:
    name: str
    argv: list[str]
    log_path: Path
    #: a path on the command line, by which ``demo stop`` knows the pid is still ours
    marker: str
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def spawn(self, env: dict[str, str]) -> None:
        if self.marker not in self.argv:
            raise ValueError(f"{self.name}: marker {self.marker} is not on its command line")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, **process_log_env(self.log_path)},  # the process rotates it
                start_new_session=True,
            )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, wait, SIGKILL if it does not stop; its exit code (None: never ran)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""
