"""Sending one window of journaled anchor transactions: network only.

The anchorer's pass sends a window in a second thread and seals the next batches while the
chain executes it (see :meth:`qdspace.ledger.anchorer.Anchorer._pipeline`). What runs in
that thread is this: it sends and polls, and touches neither the database nor the
anchorer's state (nonce, errors). The pass writes the outcome itself once the window is
back, so the journal and the nonces move in one thread, in the order they always did, and a
crash while a window is out leaves it journaled for the next start to resolve.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from qdspace.ledger.client import LedgerClient, TxReceipt
from qdspace.ledger.errors import LedgerError
from qdspace.ledger.queue_schema import Batch

#: per batch of a window: the chain's refusal (None: taken) and its receipt (None: none yet)
Outcome = tuple[list[LedgerError | None], list[TxReceipt | None]]


def transmit(
    client: LedgerClient,
    batches: Sequence[Batch],
    *,
    timeout_s: float,
    poll_s: float,
    stop: threading.Event,
) -> Outcome:
    """Send journaled transactions in one request, nonce order, then poll the receipts of
    those the chain took until all came, ``timeout_s`` passed or ``stop`` was set.

    Raises ChainUnavailable when the chain cannot be reached."""
    refusals = client.send_raw_many([b.raw_tx or b"" for b in batches])
    receipts: list[TxReceipt | None] = [None] * len(batches)
    waiting = [i for i, refusal in enumerate(refusals) if refusal is None]
    deadline = time.monotonic() + timeout_s
    while waiting:
        found = client.receipts([batches[i].tx_hash or b"" for i in waiting])
        for i, receipt in zip(waiting, found, strict=True):
            receipts[i] = receipt
        waiting = [i for i in waiting if receipts[i] is None]
        if not waiting or time.monotonic() >= deadline or stop.is_set():
            break
        time.sleep(poll_s)
    return refusals, receipts
