"""The anchorer: seals queued leaves into batches and anchors each batch root once.

A batch of one kind is sealed when ``max_leaves`` leaves wait or the oldest waited
``max_age_s``; each batch is one ``anchor`` transaction. Transactions are pipelined: up to
``max_in_flight`` of them, with consecutive nonces, are signed, journaled together in one
database transaction (:meth:`LeafQueue.mark_window_signed`), sent in one JSON-RPC batch
request and their receipts polled in batches, instead of one round trip and one receipt
wait per batch (one at a time this spent most of its time waiting). If one transaction of a
window is refused, the pass stops there and the next one resolves the window first, in
nonce order. The signed transaction is journaled before it is sent; on every pass,
journaled transactions are resolved first (receipt found, or the same bytes resent), so a
crash or an outage never anchors a batch twice and never loses one. While the chain is
unreachable, leaves keep queuing and the anchorer retries with exponential backoff.

An idle node does not ask its database every tick. A pass costs two queries per kind
(~12 ms of CPU on SQLite, 24 ms a second at the default tick: a tenth of a core for a
network of four idle nodes). Every leaf reaches the queue through this object's
``enqueue*``, which counts them, so once a pass found the queue empty (nothing pending,
sealed or awaiting a receipt) and nothing was enqueued since it began, the thread skips
its passes until something is enqueued or ``IDLE_RECHECK_S`` has passed (a safety net for
a queue changed behind its back, e.g. a restored database). Anything left pending keeps
the passes going every tick, so the age rule seals as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from qdspace.ledger.client import LedgerClient, TxReceipt
from qdspace.ledger.errors import (
    AlreadyAnchored,
    ChainUnavailable,
    LedgerError,
    NonceConsumed,
)
from qdspace.ledger.keys import ChainSigner
from qdspace.ledger.leaves import KIND_CODES, Leaf, kind_code
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import SEALED, SIGNED, Batch, StoredLeaf
from qdspace.ledger.tx import ANCHOR_GAS, DEFAULT_MAX_IN_FLIGHT, SignedAnchor

log = logging.getLogger("ledger.anchorer")

#: an idle anchorer still looks at its queue this often (see the module's notes)
IDLE_RECHECK_S = 30.0

DEFAULT_MAX_LEAVES = 1_000
DEFAULT_MAX_AGE_S = 5.0


@dataclass(frozen=True, slots=True)
class AnchorPolicy:
    """When to seal a batch and how patiently to deal with the chain."""

    max_leaves: int = DEFAULT_MAX_LEAVES
    max_age_s: float = DEFAULT_MAX_AGE_S
    tick_s: float = 0.5
    receipt_timeout_s: float = 30.0
    receipt_poll_s: float = 0.05
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    gas: int | None = ANCHOR_GAS  # None: ask the chain to estimate every transaction
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT  # transactions sent before awaiting receipts

    def __post_init__(self) -> None:
        if self.max_leaves < 1 or self.max_age_s < 0 or self.tick_s <= 0 or self.max_in_flight < 1:
            raise LedgerError(
                "anchor policy needs max_leaves >= 1, max_age_s >= 0, tick_s > 0, "
                f"max_in_flight >= 1; got {self}"
            )


@dataclass(frozen=True, slots=True)
class StepReport:
    """What one pass did."""

    sealed: int = 0
    anchored: int = 0
    waiting: int = 0


@dataclass(frozen=True, slots=True)
class AnchorStatus:
    """For operators: what waits, what is in flight, whether the chain answered lately."""

    pending: dict[str, int]
    batches: dict[str, int]
    chain_reachable: bool
    last_error: str | None = None
    address: str = field(default="")


class Anchorer:
    """Drives batches from the queue to the chain; run it with :meth:`start` or :meth:`step`."""

    def __init__(
        self,
        queue: LeafQueue,
        client: LedgerClient,
        signer: ChainSigner,
        policy: AnchorPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.client = client
        self.signer = signer
        self.policy = policy or AnchorPolicy()
        self._clock = clock
        self._step_lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._since_wake = 0
        # leaves enqueued so far (only ever compared for change), and its value when a pass
        # that found the queue empty began (None: not known to be empty)
        self._enqueued = 0
        self._empty_at: int | None = None
        self._last_empty = False  # the last pass (the thread's or a flush) left nothing
        self._chain_reachable = True
        self._chain_checked = False
        self._last_error: str | None = None
        # the next nonce to use; None means "ask the chain" (at start, after any failure)
        self._next_nonce: int | None = None

    # -- feeding -------------------------------------------------------------------------

    def enqueue(self, kind: str, ref_id: str, record: bytes) -> StoredLeaf:
        """Queue one leaf durably (returns once committed); anchoring happens later."""
        stored = self.queue.enqueue(kind, ref_id, record)
        self._nudge(1)
        return stored

    def enqueue_leaves(self, leaves: list[Leaf]) -> list[StoredLeaf]:
        """Queue many leaves in one transaction per kind."""
        stored = self.queue.enqueue_leaves(leaves)
        self._nudge(len(leaves))
        return stored

    def enqueue_records(self, kind: str, ref_ids: list[str], records: list[bytes]) -> int:
        """Queue many records of one kind in one transaction (the bulk path); returns new."""
        fresh = self.queue.enqueue_records(kind, ref_ids, records)
        self._nudge(fresh)
        return fresh

    def _nudge(self, added: int) -> None:
        self._enqueued += 1
        self._since_wake += added
        if self._since_wake >= self.policy.max_leaves:
            self._since_wake = 0
            self._wake.set()

    # -- one pass ------------------------------------------------------------------------

    def step(self, *, force: bool = False) -> StepReport:
        """Resolve journaled transactions, seal due batches, anchor sealed ones.

        ``force`` seals whatever waits regardless of age. Raises ChainUnavailable when the
        chain cannot be reached; nothing is lost, the next step continues where this stopped.
        Raises WrongChain (before signing anything) when the endpoint serves another chain id
        than the client expects or has no anchor contract at the address.
        """
        with self._step_lock:
            try:
                report, pending_left = self._step(force)
            except ChainUnavailable as exc:
                self._forget_nonce()
                self._chain_reachable, self._last_error = False, str(exc)
                raise
            except Exception:
                self._forget_nonce()  # e.g. the chain came back with another pool
                raise
            # whoever ran the pass (the thread, a flush), the status says how it went
            self._chain_reachable, self._last_error = True, None
            self._last_empty = report == StepReport() and not pending_left
            return report

    def _step(self, force: bool) -> tuple[StepReport, bool]:
        """The pass, and whether leaves are left pending (not due yet)."""
        if not self._chain_checked:  # never sign for a chain or contract we did not expect
            self.client.check()
            self._chain_checked = True
        anchored = waiting = 0
        journaled = self.queue.batches(SIGNED)
        if journaled:
            anchored = self._resolve(journaled)
            waiting = len(journaled) - anchored
        sealed, pending_left = self._seal_due(force)
        if waiting:  # a window is stuck: resolve it (next pass) before signing more
            stuck = waiting + len(self.queue.batches(SEALED))
            return StepReport(sealed, anchored, stuck), pending_left
        todo = self.queue.batches(SEALED)
        while todo:
            window, todo = todo[: self.policy.max_in_flight], todo[self.policy.max_in_flight :]
            done = self._send_window(window)
            anchored, waiting = anchored + done, waiting + len(window) - done
            if done < len(window):
                waiting += len(todo)
                break
        return StepReport(sealed, anchored, waiting), pending_left

    def _seal_due(self, force: bool) -> tuple[int, bool]:
        """Batches sealed, and whether leaves are left pending (not due yet)."""
        sealed, now, pending_left = 0, self._clock(), False
        for kind in KIND_CODES:
            while True:
                pending = self.queue.pending(kind)
                if pending.count == 0 or pending.oldest_at is None:
                    break
                old = now - pending.oldest_at >= self.policy.max_age_s
                if not (force or old or pending.count >= self.policy.max_leaves):
                    pending_left = True
                    break
                if self.queue.seal(kind, self.policy.max_leaves) is None:
                    break
                sealed += 1
        return sealed, pending_left

    def _send_window(self, batches: list[Batch]) -> int:
        """Sign, journal (together), send and settle a window; returns how many anchored."""
        # A batch never signed cannot have been sent by us; a root someone else anchored
        # makes the transaction revert (or, with estimated gas, the estimate), handled in
        # _settle. Only batches that went back to sealed after an attempt need asking the
        # contract first; they also ask for a gas estimate, so that a revert names its
        # reason before anything is spent.
        anchored, window = 0, list[tuple[Batch, SignedAnchor]]()
        nonce = self._nonce()
        for batch in batches:
            if batch.attempts > 0 and self._adopt_if_anchored(batch):
                anchored += 1
                continue
            try:
                signed = self.client.sign_anchor(
                    self.signer,
                    batch.root,
                    batch.leaf_count,
                    kind_code(batch.kind),
                    nonce + len(window),
                    gas=self.policy.gas if batch.attempts == 0 else None,
                )
            except AlreadyAnchored:  # anchored between lookup and estimate
                anchored += self._adopt_if_anchored(batch)
                continue
            window.append((batch, signed))
        if not window:
            return anchored
        journaled = self.queue.mark_window_signed(window, self.client.chain_id, self.client.address)
        self._next_nonce = nonce + len(window)
        log.info(
            "anchorer.send: %s batches (%s leaves) nonces %s..%s",
            len(journaled),
            sum(b.leaf_count for b in journaled),
            nonce,
            nonce + len(window) - 1,
        )
        return anchored + self._deliver(journaled)

    def _nonce(self) -> int:
        """The next nonce: counted locally while all goes well, else asked from the chain.

        After a restart the journaled transactions are resolved (resent) before anything
        new is signed, so the chain's pending count already includes them.
        """
        if self._next_nonce is None:
            self._next_nonce = self.client.pending_nonce(self.signer.address)
        return self._next_nonce

    def _forget_nonce(self) -> None:
        self._next_nonce = None
        self.client.forget_fees()

    def _resolve(self, journaled: list[Batch]) -> int:
        """Settle journaled transactions: receipt found, root adopted, or the same bytes
        resent, in nonce order; returns how many are anchored now."""
        journaled = sorted(journaled, key=lambda b: (b.nonce or 0, b.id))
        receipts = self.client.receipts([b.tx_hash or b"" for b in journaled])
        anchored, resend = 0, []
        for batch, receipt in zip(journaled, receipts, strict=True):
            if receipt is not None:
                anchored += self._settle(batch, receipt)
            elif self._adopt_if_anchored(batch):
                anchored += 1
            else:
                resend.append(batch)
        if resend:
            log.info(
                "anchorer.resolve: %s journaled transactions have no receipt yet; resending "
                "nonces %s",
                len(resend),
                [b.nonce for b in resend],
            )
            anchored += self._deliver(resend)
        return anchored

    def _deliver(self, batches: list[Batch]) -> int:
        """Send journaled transactions (nonce order) in one request, then await receipts."""
        try:
            refusals = self.client.send_raw_many([b.raw_tx or b"" for b in batches])
        except ChainUnavailable:
            self._forget_nonce()
            raise
        sent = []
        for batch, refusal in zip(batches, refusals, strict=True):
            if refusal is None:
                sent.append(batch)
                continue
            self._forget_nonce()
            if isinstance(refusal, NonceConsumed):
                if not self._adopt_if_anchored(batch):
                    self.queue.mark_unsent(batch, str(refusal))
            else:
                self.queue.note_error(batch, str(refusal))
                self._last_error = str(refusal)
        return self._await_receipts(sent)

    def _await_receipts(self, sent: list[Batch]) -> int:
        deadline = time.monotonic() + self.policy.receipt_timeout_s
        anchored, waiting = 0, sent
        while waiting:
            receipts = self.client.receipts([b.tx_hash or b"" for b in waiting])
            still = []
            for batch, receipt in zip(waiting, receipts, strict=True):
                if receipt is None:
                    still.append(batch)
                else:
                    anchored += self._settle(batch, receipt)
            waiting = still
            if not waiting or time.monotonic() >= deadline or self._stop.is_set():
                break
            time.sleep(self.policy.receipt_poll_s)
        for batch in waiting:
            self._forget_nonce()
            self.queue.note_error(batch, f"no receipt after {self.policy.receipt_timeout_s}s")
        return anchored

    def _settle(self, batch: Batch, receipt: TxReceipt) -> bool:
        if receipt.succeeded and batch.root in receipt.anchored_roots:
            self.queue.mark_anchored(
                batch,
                receipt.tx_hash,
                receipt.block_number,
                receipt.block_hash,
                self.client.chain_id,
                self.client.address,
            )
            log.info(
                "anchorer.settle: batch %s anchored in block %s", batch.id, receipt.block_number
            )
            return True
        if self._adopt_if_anchored(batch):
            return True
        self._forget_nonce()
        self.queue.mark_unsent(batch, f"tx 0x{receipt.tx_hash.hex()} reverted")
        return False

    def _adopt_if_anchored(self, batch: Batch) -> bool:
        """If the root is on chain already, record that, don't resend: an earlier send of
        ours, or another member's anchoring of the very same leaves (both parties of a
        closed quality case anchor its one closure record). The batch keeps the account
        the chain names, so our passport does not claim another's anchoring as ours."""
        onchain = self.client.lookup(batch.root)
        if onchain is None:
            return False
        tx_hash = self.client.anchoring_tx(batch.root, onchain.block_number) or b""
        block_hash = self.client.block_hash(onchain.block_number) or b""
        self.queue.mark_anchored(
            batch,
            tx_hash,
            onchain.block_number,
            block_hash,
            self.client.chain_id,
            self.client.address,
            sender=onchain.anchorer,
        )
        log.info(
            "anchorer.adopt: batch %s was already anchored in block %s by %s",
            batch.id,
            onchain.block_number,
            onchain.anchorer,
        )
        return True

    # -- running -------------------------------------------------------------------------

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Seal and anchor everything queued now; True when nothing is left unanchored."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                self.step(force=True)
            except ChainUnavailable:
                time.sleep(self.policy.backoff_initial_s)
                continue
            if not self.queue.batches(SEALED, SIGNED) and not any(
                self.queue.pending(kind).count for kind in KIND_CODES
            ):
                return True
        return False

    def start(self) -> None:
        """Run steps in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ledger-anchorer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the background thread; what is queued stays queued."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _idle(self, last_pass: float) -> bool:
        """Nothing to do without asking the database (see the module's notes)."""
        empty_at = self._empty_at
        recent = time.monotonic() - last_pass < IDLE_RECHECK_S
        return empty_at is not None and empty_at == self._enqueued and recent

    def _run(self) -> None:
        backoff = self.policy.backoff_initial_s
        last_pass = time.monotonic()
        while not self._stop.is_set():
            wait = self.policy.tick_s
            if self._idle(last_pass):
                self._wake.wait(wait)
                self._wake.clear()
                continue
            try:
                began, last_pass = self._enqueued, time.monotonic()
                self._empty_at = None
                self.step()
                if self._last_empty:
                    self._empty_at = began
                self._chain_reachable, self._last_error = True, None
                backoff = self.policy.backoff_initial_s
            except ChainUnavailable as exc:
                self._chain_reachable, self._last_error = False, str(exc)
                log.warning("anchorer.run: %s; retrying in %.1fs", exc, backoff)
                wait, backoff = backoff, min(backoff * 2, self.policy.backoff_max_s)
            except Exception as exc:  # keep anchoring alive; the error is shown in status
                self._last_error = f"{type(exc).__name__}: {exc}"
                log.exception("anchorer.run: step failed; retrying in %.1fs", backoff)
                wait, backoff = backoff, min(backoff * 2, self.policy.backoff_max_s)
            self._wake.wait(wait)
            self._wake.clear()

    def status(self) -> AnchorStatus:
        """Queue and chain health for the operator API."""
        return AnchorStatus(
            pending={kind: self.queue.pending(kind).count for kind in KIND_CODES},
            batches=self.queue.state_counts(),
            chain_reachable=self._chain_reachable,
            last_error=self._last_error,
            address=self.signer.address,
        )
