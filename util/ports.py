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
one process. Two processes drawing at random from ~12,000 ports rarely meet, and the
bind check catches a port already taken.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

#: the lowest port handed out: above the registered services commonly run on a box
LOWEST = 20000
#: used when the ephemeral range cannot be read (Linux's default start)
DEFAULT_EPHEMERAL_START = 32768
RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_given: set[tuple[str, int]] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


def ephemeral_start(range_file: Path = RANGE_FILE) -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        low = int(range_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_START
    return low if low > LOWEST + 1000 else DEFAULT_EPHEMERAL_START


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` outside the ephemeral range, bindable now, not given before."""
    top = ephemeral_start() - 1
    with _lock:
        for _ in range(200):
            port = _random.randint(LOWEST, top)
            if (host, port) in _given or not _bindable(host, port):
                continue
            _given.add((host, port))
            return port
    raise OSError(f"no free TCP port on {host} between {LOWEST} and {top}")
