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
        monkeypatch.delenv(ports.RANGE_VARIABLE, raising=False)
        monkeypatch.setattr(ports, "_given", {given})
        monkeypatch.setattr(ports, "_random", _Scripted(iter([taken, taken, given, fresh])))
        monkeypatch.setattr(ports, "LOWEST", 1024)
        monkeypatch.setattr(ports, "ephemeral_start", lambda: 65536)
        # the bound port is skipped twice, the one given before once, then the free one
        assert free_port() == fresh


def test_a_port_given_for_one_address_is_not_given_for_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a server on 0.0.0.0 holds its port on 127.0.0.1 too: the Ray head's and a node's
    first, second = free_port(), free_port()  # two ports bindable now
    monkeypatch.setattr(ports, "_random", _Scripted(iter([first, first, second])))
    monkeypatch.setattr(ports, "_given", set())
    assert free_port("0.0.0.0") == first
    assert free_port("127.0.0.1") == second


def test_ephemeral_start_read_from_the_kernel_file(tmp_path: Path) -> None:
    good = tmp_path / "range"
    good.write_text("40000\t60999\n")
    assert ephemeral_start(good) == 40000
    for bad in ("", "junk", "1024 2000"):
        good.write_text(bad)
        assert ephemeral_start(good) == ports.DEFAULT_EPHEMERAL_START
    assert ephemeral_start(tmp_path / "missing") == ports.DEFAULT_EPHEMERAL_START


def test_a_process_draws_only_from_its_own_part_of_the_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the suite's workers each get a part; the ports one draws are never the other's
    whole = {ports.RANGE_VARIABLE: "20000-20399"}
    parts = [ports.split_range(i, 2, whole) for i in range(2)]
    assert parts == ["20000-20199", "20200-20399"]
    drawn: list[set[int]] = []
    for part in parts:
        monkeypatch.setenv(ports.RANGE_VARIABLE, part)
        low, high = ports.port_range()
        got = {free_port() for _ in range(40)}
        assert all(low <= port <= high for port in got)
        drawn.append(got)
    assert not drawn[0] & drawn[1]
    # without the variable: everything from LOWEST to below the ephemeral range
    assert ports.port_range({}) == (LOWEST, ephemeral_start() - 1)
    assert ports.split_range(1, 3, {}) != ports.split_range(0, 3, {})


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("20000", "expected LOW-HIGH"),
        ("a-b", "expected LOW-HIGH"),
        ("²-30000", "expected LOW-HIGH"),
        ("20000-999999", "expected LOW-HIGH"),
        ("30000-20000", "LOW <= HIGH"),
        ("80-90", "1024 <= LOW"),
    ],
)
def test_a_range_that_names_no_ports_is_refused_saying_so(value: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ports.port_range({ports.RANGE_VARIABLE: value})


def test_a_range_too_small_to_split_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot be split into 3 parts"):
        ports.split_range(0, 3, {ports.RANGE_VARIABLE: "20000-20001"})
    with pytest.raises(ValueError, match="expected 0 <= part < count"):
        ports.split_range(2, 2, {})


class _Scripted(random.Random):
    def __init__(self, draws: object) -> None:
        super().__init__()
        self._draws = draws

    def randint(self, a: int, b: int) -> int:
        return next(self._draws)  # type: ignore[call-overload, no-any-return]
