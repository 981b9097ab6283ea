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

Sealing and the chain overlap. A pass seals what is due when it looks (a window at most),
sends that window from a second thread (:mod:`qdspace.ledger.sender`, network only) and
seals the next batches while the chain executes it; it writes the window's outcome itself
before signing the next, so nonces and the journal move as in one thread. A pass used to
seal until nothing was due before sending anything: under a stream of leaves that outran
the sealing (each seal let more arrive) nothing was sent until the stream paused, and then
the chain worked while nothing was sealed (200k leaves in 10k batches: 162k -> 195k
leaves/s end to end, medians of five, ``bench/anchor.py``).

A batch whose transaction can no longer be mined (its nonce was used, or it reverted, and
the root is not on chain) goes back to sealed and is signed again under a new nonce: at
once the first time, then after a pause that doubles with its attempts up to
``resign_max_s`` (`AnchorPolicy.resign_delay`; kept in memory, so a restart tries once at
once). An endpoint that answers every transaction with
a "nonce too low" or a failed receipt made the anchorer sign the batch again every pass
(six transactions for one root in three seconds, each of which a colluding chain could mine
and charge for).

A chain may reorganise: with ``reorg_depth`` set, a pass checks the batches anchored near
the chain's head again (at most every `REORG_CHECK_S`; :mod:`qdspace.ledger.reorg`). The
endpoint may come to serve another chain: a pass looks (one request) whether it still serves
ours before it first asks the chain for anything, and stops there when not
(:mod:`qdspace.ledger.chain_watch`).

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
from concurrent.futures import Future, ThreadPoolExecutor

from qdspace.ledger.anchor_policy import AnchorPolicy, AnchorStatus, StepReport
from qdspace.ledger.chain_watch import ChainWatch
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
from qdspace.ledger.reorg import recheck_recent
from qdspace.ledger.sender import Outcome, transmit
from qdspace.ledger.tx import SignedAnchor

log = logging.getLogger("ledger.anchorer")

#: an idle anchorer still looks at its queue this often (see the module's notes)
IDLE_RECHECK_S = 30.0
#: recently anchored batches are checked for a reorganisation at most this often
REORG_CHECK_S = 10.0


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
        self._more_due = False  # the last pass left batches due unsealed (a window's worth)
        self._chain_reachable = True
        self._chain_checked = False
        self._last_error: str | None = None
        # the next nonce to use; None means "ask the chain" (at start, after any failure)
        self._next_nonce: int | None = None
        # batches sent back to sealed, by id: when (monotonic) they may be signed again
        self._resign_at: dict[int, float] = {}
        self._reorg_checked = float("-inf")  # when (monotonic) recent blocks were checked
        self._watch = ChainWatch(client, queue, self.policy.reorg_depth)

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
        chain cannot be reached, ChainSwapped (one) when it serves another chain than at the
        start; nothing is lost, the next step continues where this stopped. Raises
        WrongChain (before signing anything) when the endpoint serves another chain id than
        the client expects or has no anchor contract at the address.
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
        self._watch.begin_pass()  # its `head` looks before the pass first asks the chain
        anchored = 0
        waiting = self._recheck_recent()
        journaled = self.queue.batches(SIGNED)
        if journaled:
            anchored = self._resolve(journaled)
            waiting = len(journaled) - anchored
        if waiting:  # a window is stuck (or taken by a reorganisation): resolve it first
            sealed, pending_left = self._seal_due(force, self.policy.max_in_flight)
            stuck = waiting + len(self.queue.batches(SEALED))
            return StepReport(sealed, anchored, stuck), pending_left
        # a window of what is due now goes out; the pipeline seals what follows while it is out
        sealed, pending_left = self._seal_due(force, self.policy.max_in_flight)
        return self._pipeline(force, sealed, anchored, pending_left)

    def _recheck_recent(self) -> int:
        """The reorganisation check (`qdspace.ledger.reorg`), at most every `REORG_CHECK_S`;
        returns how many batches went back to be sent again."""
        depth = self.policy.reorg_depth
        if depth == 0 or time.monotonic() - self._reorg_checked < REORG_CHECK_S:
            return 0
        self._reorg_checked = time.monotonic()
        return recheck_recent(self.queue, self.client, depth, self._watch.head())

    def _pipeline(
        self, force: bool, sealed: int, anchored: int, pending_left: bool
    ) -> tuple[StepReport, bool]:
        """Send the sealed batches window by window, sealing the next while one is out.

        A window's transactions go out and their receipts are awaited in a second thread
        (:meth:`_transmit`: network only), while this thread seals what is due, one batch
        at a time until the window is back; the window's outcome is then written here
        (:meth:`_record`) before the next window is signed, so nonces and the journal move
        exactly as when it was all one thread. The chain executes a window while the next
        is sealed, instead of after, and a window holds what was sealed meanwhile: one
        batch on an idle embedded chain, up to ``max_in_flight`` on a chain that mines a
        block every few seconds.
        """
        limit, waiting = self.policy.max_in_flight, 0
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-anchorer-send") as out:
            flight: tuple[list[Batch], Future[Outcome]] | None = None
            todo, held = self._signable()
            waiting += held
            while True:
                if flight is not None:
                    (sent, outcome), flight = flight, None
                    if not todo:  # seal one at a time until the chain is done with it
                        before = sealed
                        while not outcome.done() and not self._stop.is_set():
                            more, pending_left = self._seal_due(force, 1)
                            if not more:
                                break
                            sealed += more
                        if sealed > before:
                            todo, _held = self._signable()
                    done = self._record(sent, *outcome.result())
                    anchored += done
                    if done < len(sent):  # refused or no receipt: the next pass resolves
                        waiting += len(sent) - done + len(todo)
                        break
                if not todo:
                    break
                window, todo = todo[:limit], todo[limit:]
                journaled, adopted = self._sign_window(window)
                anchored += adopted
                waiting += len(window) - len(journaled) - adopted  # neither sent nor adopted
                if journaled:
                    flight = (journaled, out.submit(self._transmit, journaled))
        return StepReport(sealed, anchored, waiting), pending_left

    def _signable(self) -> tuple[list[Batch], int]:
        """The sealed batches that may be signed now, and how many wait to be signed again
        (`_unsent`)."""
        now, ready, held = time.monotonic(), list[Batch](), 0
        for batch in self.queue.batches(SEALED):
            if self._resign_at.get(batch.id, 0.0) > now:
                held += 1
            else:
                ready.append(batch)
        return ready, held

    def _unsent(self, batch: Batch, why: str) -> None:
        """`batch`'s transaction will not be mined: back to sealed, to be signed again
        under a new nonce after `AnchorPolicy.resign_delay` (see the module docstring)."""
        self.queue.mark_unsent(batch, why)
        delay = self.policy.resign_delay(batch.attempts)
        self._resign_at[batch.id] = time.monotonic() + delay
        log.warning("anchorer: batch %s to be signed again in %.0f s: %s", batch.id, delay, why)

    def _seal_due(self, force: bool, limit: int) -> tuple[int, bool]:
        """Batches sealed, and whether leaves are left pending (not due yet, or due later).

        Seals the batches that were due when it first looked at a kind, ``limit`` at most:
        leaves that arrive while it seals wait for the next call (the pipeline's, while a
        window is out, or the next pass, which then runs at once: :attr:`_more_due`).
        """
        sealed, now, pending_left = 0, self._clock(), False
        self._more_due = False
        for kind in KIND_CODES:
            budget: int | None = None  # the batches of this kind due when the pass looked
            while True:
                pending = self.queue.pending(kind)
                if pending.count == 0 or pending.oldest_at is None:
                    break
                old = now - pending.oldest_at >= self.policy.max_age_s
                if not (force or old or pending.count >= self.policy.max_leaves):
                    pending_left = True
                    break
                if budget is None:
                    full, rest = divmod(pending.count, self.policy.max_leaves)
                    budget = full + (1 if rest and (force or old) else 0)
                if budget == 0:
                    pending_left = self._more_due = True
                    break
                if sealed >= limit:  # the other kinds are looked at by the next call
                    self._more_due = True
                    return sealed, True
                if self.queue.seal(kind, self.policy.max_leaves) is None:
                    break
                sealed, budget = sealed + 1, budget - 1
        return sealed, pending_left

    def _sign_window(self, batches: list[Batch]) -> tuple[list[Batch], int]:
        """Sign and journal (together) a window: the journaled batches, to be sent in nonce
        order, and how many were found anchored already instead."""
        # A batch never signed cannot have been sent by us; a root someone else anchored
        # makes the transaction revert (or, with estimated gas, the estimate), handled in
        # _settle. Only batches that went back to sealed after an attempt need asking the
        # contract first; they also ask for a gas estimate, so that a revert names its
        # reason before anything is spent.
        anchored, window = 0, list[tuple[Batch, SignedAnchor]]()
        self._watch.head()  # ChainSwapped before anything is signed
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
            return [], anchored
        journaled = self.queue.mark_window_signed(window, self.client.chain_id, self.client.address)
        self._next_nonce = nonce + len(window)
        log.info(
            "anchorer.send: %s batches (%s leaves) nonces %s..%s",
            len(journaled),
            sum(b.leaf_count for b in journaled),
            nonce,
            nonce + len(window) - 1,
        )
        return journaled, anchored

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
        self._watch.head()  # ChainSwapped before anything is sent
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
        """Send journaled transactions (nonce order) and await receipts, in this thread."""
        return self._record(batches, *self._transmit(batches))

    def _transmit(self, batches: list[Batch]) -> Outcome:
        return transmit(
            self.client,
            batches,
            timeout_s=self.policy.receipt_timeout_s,
            poll_s=self.policy.receipt_poll_s,
            stop=self._stop,
        )

    def _record(
        self,
        batches: list[Batch],
        refusals: list[LedgerError | None],
        receipts: list[TxReceipt | None],
    ) -> int:
        """Write what :meth:`_transmit` found; returns how many are anchored now."""
        anchored = 0
        for batch, refusal, receipt in zip(batches, refusals, receipts, strict=True):
            if receipt is not None:
                anchored += self._settle(batch, receipt)
                continue
            self._forget_nonce()
            if refusal is None:
                self.queue.note_error(batch, f"no receipt after {self.policy.receipt_timeout_s}s")
            elif isinstance(refusal, NonceConsumed):
                if self._adopt_if_anchored(batch):
                    anchored += 1
                else:
                    self._unsent(batch, str(refusal))
            else:
                self.queue.note_error(batch, str(refusal))
                self._last_error = str(refusal)
        return anchored

    def _settle(self, batch: Batch, receipt: TxReceipt) -> bool:
        self._resign_at.pop(batch.id, None)
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
        self._unsent(batch, f"tx 0x{receipt.tx_hash.hex()} reverted")
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
                if self._more_due:  # more is due than one window: the next pass at once
                    wait = 0.0
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
