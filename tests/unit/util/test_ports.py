"""`free_port` hands out ports the kernel will not give to an outgoing connection."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from qdspace.util import ports
from qdspace.util.ports import LOWEST, ephemeral_start, free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    top = ephemeral_start()
    given = [free_port() for _ in range(50)]
    assert len(set(given)) == len(given)
    for port in given:
        assert LOWEST <= port < top
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # raises if it was not free


def test_a_bound_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # The draws are scripted and the ports given before are this test's own: in a test
    # worker that had handed out hundreds of ports, the third draw (then `other + 1`) was
    # sometimes one of them, was skipped, and the script ran out (StopIteration).
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        given = free_port()
        fresh = next(
            p for p in range(given + 1, 65536) if p != taken and ports._bindable("127.0.0.1", p)
        )
        monkeypatch.setattr(ports, "_given", {("127.0.0.1", given)})
        monkeypatch.setattr(ports, "_random", _Scripted(iter([taken, taken, given, fresh])))
        monkeypatch.setattr(ports, "LOWEST", 1024)
        monkeypatch.setattr(ports, "ephemeral_start", lambda: 65536)
        # the bound port is skipped twice, the one given before once, then the free one
        assert free_port() == fresh


def test_ephemeral_start_read_from_the_kernel_file(tmp_path: Path) -> None:
    good = tmp_path / "range"
    good.write_text("40000\t60999\n")
    assert ephemeral_start(good) == 40000
    for bad in ("", "junk", "1024 2000"):
        good.write_text(bad)
        assert ephemeral_start(good) == ports.DEFAULT_EPHEMERAL_START
    assert ephemeral_start(tmp_path / "missing") == ports.DEFAULT_EPHEMERAL_START


class _Scripted(random.Random):
    def __init__(self, draws: object) -> None:
        super().__init__()
        self._draws = draws

    def randint(self, a: int, b: int) -> int:
        return next(self._draws)  # type: ignore[call-overload, no-any-return]
