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
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        other = free_port()
        draws = iter([taken, taken, other + 1 if other + 1 != taken else other + 2])
        monkeypatch.setattr(ports, "_random", _Scripted(draws))
        monkeypatch.setattr(ports, "LOWEST", 1024)
        monkeypatch.setattr(ports, "ephemeral_start", lambda: 65536)
        assert free_port() not in (taken, other)


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
