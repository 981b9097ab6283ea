"""The pipelined anchorer killed mid-window: after a restart every leaf is anchored exactly
once and the account's nonces are contiguous (none reused, none skipped).

The anchorer runs in its own process against a real chain process and a real SQLite file;
it dies either exactly between two transactions of a journaled window (``os._exit`` inside
the batch send: the window is journaled, only its first ``cut`` transactions reached the
chain) or by SIGKILL at whatever point it has reached. A fresh anchorer on the same
database then finishes the work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from qdspace.connector.storage import create_store_engine
from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.errors import LedgerError
from qdspace.ledger.keys import ChainSigner
from qdspace.ledger.leaves import Leaf
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ANCHORED, SIGNED, Batch, ensure_schema

from .conftest import ChainProcess
from .test_anchorer import assert_each_leaf_anchored_once

pytestmark = pytest.mark.integration

WINDOW = 8
CRASHED = 9

# The anchorer as a node runs it, in a process of its own; CUT >= 0 makes the first batch
# send of a full window deliver only its first CUT transactions and then kill the process.
ANCHORER = """
import os, sys
from pathlib import Path
from qdspace.connector.storage import create_store_engine
from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.keys import load_signer
from qdspace.ledger.queue import LeafQueue

db, url, address, key, cut, window, leaves = sys.argv[1:8]
client = LedgerClient(url, address)
send = client.send_raw_many

def crash_mid_window(raws):
    if 0 <= int(cut) < len(raws):
        send(raws[: int(cut)])
        os._exit(9)
    return send(raws)

client.send_raw_many = crash_mid_window
queue = LeafQueue(create_store_engine(f"sqlite:///{db}"))
policy = AnchorPolicy(max_leaves=int(leaves), max_age_s=3600, max_in_flight=int(window))
anchorer = Anchorer(queue, client, load_signer(Path(key), None), policy)
print("flushed", anchorer.flush(timeout_s=120), flush=True)
"""


def _queue(path: Path, leaves: int) -> LeafQueue:
    engine = create_store_engine(f"sqlite:///{path}")
    ensure_schema(engine)
    queue = LeafQueue(engine)
    queue.enqueue_leaves([Leaf.of("inspection", f"EL-{i:05d}", b"r%d" % i) for i in range(leaves)])
    return queue


def _anchorer(
    chain: ChainProcess, db: Path, key: Path, *, cut: int, leaves_per_batch: int
) -> subprocess.Popen[bytes]:
    args = [db, chain.url, chain.deployment.address, key, cut, WINDOW, leaves_per_batch]
    return subprocess.Popen(
        [sys.executable, "-c", ANCHORER, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finish_and_check(
    chain: ChainProcess, queue: LeafQueue, signer: ChainSigner, leaves: int
) -> None:
    """A fresh anchorer on the same database finishes; every leaf once, nonces contiguous."""
    restarted = Anchorer(
        LeafQueue(queue.engine), chain.client(), signer, AnchorPolicy(max_in_flight=WINDOW)
    )
    assert restarted.flush(timeout_s=120)
    batches = assert_each_leaf_anchored_once(queue, chain.client(), leaves, signer)
    nonces = sorted(b.nonce for b in batches if b.nonce is not None)
    assert nonces == list(range(len(batches)))  # contiguous from 0: none reused or skipped


@pytest.mark.parametrize("cut", [0, 3])
def test_killed_between_transactions_of_a_window_anchors_every_leaf_once(
    chain: ChainProcess, signer: ChainSigner, tmp_path: Path, cut: int
) -> None:
    leaves = 200
    queue = _queue(tmp_path / "node.db", leaves)
    proc = _anchorer(chain, tmp_path / "node.db", tmp_path / "keys" / "chain.key", cut=cut,
                     leaves_per_batch=10)  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == CRASHED, out.decode()
    # the whole first window was journaled before anything was sent; `cut` of it was sent
    journaled = queue.batches(SIGNED)
    assert [b.nonce for b in journaled] == list(range(WINDOW))
    assert chain.client().pending_nonce(signer.address) == cut
    assert not queue.batches(ANCHORED)
    _finish_and_check(chain, queue, signer, leaves)


def test_sigkill_while_windows_are_in_flight_anchors_every_leaf_once(
    chain: ChainProcess, signer: ChainSigner, tmp_path: Path
) -> None:
    leaves = 1_500
    queue = _queue(tmp_path / "node.db", leaves)
    proc = _anchorer(chain, tmp_path / "node.db", tmp_path / "keys" / "chain.key", cut=-1,
                     leaves_per_batch=5)  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while queue.state_counts()[ANCHORED] < 2 * WINDOW:
            assert proc.poll() is None, "the anchorer finished before it could be killed"
            assert time.monotonic() < deadline, "the anchorer made no progress"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert queue.state_counts()[ANCHORED] < leaves // 5  # killed with work left
    _finish_and_check(chain, queue, signer, leaves)


class _Stream(LeafQueue):
    """A queue fed faster than it is sealed: each seal lets another full batch arrive (as a
    busy node's stream does while the anchorer seals), ``more`` times; it notes each seal."""

    def __init__(self, queue: LeafQueue, batch: int, more: int) -> None:
        super().__init__(queue.engine)
        self.batch, self.more, self.fed = batch, more, 0
        self.seals: list[tuple[float, int]] = []  # (when, thread)
        self.writers: set[int] = set()  # threads that wrote a batch's outcome

    def seal(self, kind: str, max_leaves: int) -> Batch | None:
        sealed = super().seal(kind, max_leaves)
        self.seals.append((time.monotonic(), threading.get_ident()))
        if sealed is not None and self.fed < self.more:
            lo = self.fed * self.batch
            self.enqueue_leaves(
                [Leaf.of(kind, f"S-{lo + i:05d}", b"s%d" % (lo + i)) for i in range(self.batch)]
            )
            self.fed += 1
        return sealed

    def mark_anchored(self, batch: Batch, *args: Any, **kwargs: Any) -> Batch:
        self.writers.add(threading.get_ident())
        return super().mark_anchored(batch, *args, **kwargs)


def test_a_stream_of_leaves_is_anchored_while_it_lasts(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue
) -> None:
    """Sealing everything due before sending anything never sent while a stream outran the
    sealing: the first window goes out with what was due when the pass looked."""
    queue.enqueue_leaves([Leaf.of("inspection", f"EL-{i:05d}", b"r%d" % i) for i in range(10)])
    stream = _Stream(queue, batch=5, more=30)
    client = chain.client()
    sealed_at_send: list[int] = []
    send = client.send_raw_many

    def counting(raws: Sequence[bytes]) -> list[LedgerError | None]:
        sealed_at_send.append(len(stream.seals))
        return send(raws)

    client.send_raw_many = counting  # type: ignore[method-assign]
    anchorer = Anchorer(stream, client, signer, AnchorPolicy(max_leaves=5, max_in_flight=16))
    anchorer.step()
    assert sealed_at_send[0] == 2  # the two batches due when the pass began, not 32
    assert anchorer.flush(timeout_s=60)
    assert_each_leaf_anchored_once(stream, client, 10 + 30 * 5, signer)
    assert len(sealed_at_send) > 2


def test_the_next_batches_are_sealed_while_a_window_is_out(
    chain: ChainProcess, signer: ChainSigner, queue: LeafQueue
) -> None:
    """The chain works on a window while the anchorer seals the next; every outcome is still
    written by the thread that runs the pass, not by the one that waited for the chain."""
    queue.enqueue_leaves([Leaf.of("inspection", f"EL-{i:05d}", b"r%d" % i) for i in range(5)])
    stream = _Stream(queue, batch=5, more=12)
    client = chain.client()
    out: list[tuple[float, float, int]] = []  # (began, ended, thread) of each window's send
    send = client.send_raw_many

    def slow_chain(raws: Sequence[bytes]) -> list[LedgerError | None]:
        began = time.monotonic()
        time.sleep(0.2)  # a chain that takes its time over a window
        answers = send(raws)
        out.append((began, time.monotonic(), threading.get_ident()))
        return answers

    client.send_raw_many = slow_chain  # type: ignore[method-assign]
    anchorer = Anchorer(stream, client, signer, AnchorPolicy(max_leaves=5, max_in_flight=4))
    assert anchorer.flush(timeout_s=60)
    assert_each_leaf_anchored_once(stream, client, 5 + 12 * 5, signer)
    here = threading.get_ident()
    during = [t for t, thread in stream.seals if any(a < t < b for a, b, _ in out)]
    assert len(during) >= 2  # sealed while the chain had a window
    assert {thread for _, thread in stream.seals} == {here} == stream.writers
    assert here not in {thread for _, _, thread in out}  # the waiting was done elsewhere
