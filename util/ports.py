"""A free TCP port for a server that another process will bind later.

The usual trick (bind port 0, read the number, close) hands out a port from the
kernel's *ephemeral* range, the same range the kernel draws from for every outgoing
connection. A local data space allocates its nodes' ports first and starts the nodes
afterwards; in between, any client connection on the machine (another node dialling a
peer, the chain's JSON-RPC, PostgreSQL) may be given that very port as its local end,
and the node then fails with "Address already in use". The fresh-clone CI met exactly
this (`test_contracts_purge[postgres]`).

So `free_port` draws from below the ephemeral range (read from
``/proc/sys/net/ipv4/ip_local_port_range``), which the kernel never assigns on its own,
checks that the port can be bound right now, and never hands the same port out twice in
one process. The bind check catches a port already taken, but not one another process
drew a moment ago and binds a moment later: two processes that each start local data
spaces (the test suite's two workers) met on one port in two of four fresh-clone runs,
the later node failing with "Address already in use". Such processes each get their own
part of the range: ``QDSPACE_PORT_RANGE=LOW-HIGH`` (the suite's conftest gives every
worker a disjoint one; a user running two demos side by side may do the same).
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

#: the lowest port handed out: above the registered services commonly run on a box
LOWEST = 20000
#: used when the ephemeral range cannot be read (Linux's default start)
DEFAULT_EPHEMERAL_START = 32768
RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: names the part of the range this process draws from, as ``LOW-HIGH`` (both given)
RANGE_VARIABLE = "QDSPACE_PORT_RANGE"

#: every port handed out by this process, on any address: a port given for 0.0.0.0 and
#: the same one for 127.0.0.1 would meet (a server on 0.0.0.0 holds it on every address)
_given: set[int] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


def ephemeral_start(range_file: Path = RANGE_FILE) -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_START
    return low if low > LOWEST + 1000 else DEFAULT_EPHEMERAL_START


def port_range(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """The ports this process draws from, lowest and highest, both inclusive: from
    ``QDSPACE_PORT_RANGE`` where it is set, else from ``LOWEST`` to below the ephemeral
    range. A range that is no ``LOW-HIGH`` of ports 1024-65535 raises ``ValueError``
    saying so (a port the kernel may give to any connection would be drawn otherwise)."""
    value = (os.environ if environ is None else environ).get(RANGE_VARIABLE, "").strip()
    if not value:
        return LOWEST, ephemeral_start() - 1
    low_text, dash, high_text = value.partition("-")
    low_text, high_text = low_text.strip(), high_text.strip()
    if not (
        dash
        and low_text.isascii()
        and low_text.isdigit()
        and high_text.isascii()
        and high_text.isdigit()
        and len(low_text) <= 5
        and len(high_text) <= 5
    ):
        raise ValueError(f"{RANGE_VARIABLE}={value!r}: expected LOW-HIGH, e.g. 20000-26000")
    low, high = int(low_text), int(high_text)
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"{RANGE_VARIABLE}={value!r}: expected 1024 <= LOW <= HIGH <= 65535")
    return low, high


def split_range(index: int, count: int, environ: dict[str, str] | None = None) -> str:
    """Part ``index`` of ``count`` disjoint parts of this process's range, as the value
    of ``QDSPACE_PORT_RANGE`` for a process that starts data spaces beside its siblings."""
    if not 0 <= index < count:
        raise ValueError(f"part {index} of {count}: expected 0 <= part < count")
    low, high = port_range(environ)
    size = (high - low + 1) // count
    if size < 1:
        raise ValueError(f"ports {low}-{high} cannot be split into {count} parts")
    first = low + index * size
    return f"{first}-{first + size - 1}"


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` in this process's range (outside the ephemeral one), bindable
    now, not given before."""
    low, top = port_range()
    with _lock:
        for _ in range(200):
            port = _random.randint(low, top)
            if port in _given or not _bindable(host, port):
                continue
            _given.add(port)
            return port
    raise OSError(f"no free TCP port on {host} between {low} and {top}")
