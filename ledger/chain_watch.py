"""Noticing that the JSON-RPC endpoint has come to serve another chain than the node's.

The URL stays the same while what answers behind it can change: an operator or a hosted
service points it at another network, a provider misroutes, a dev chain is started afresh.
The client asked for the chain id once and the anchorer compared it once, at start, so the
node went on signing for, anchoring on and reading from whatever answered: proofs were
checked against another chain, and batches anchored in blocks above the new chain's head
were never looked at again (`qdspace.ledger.reorg` looks from the head down).

A pass of the anchorer looks (`ChainWatch.check`) before it first asks the chain for
anything, so before it signs, sends or resolves a transaction or rechecks a block: one
request (a JSON-RPC batch of ``eth_chainId``, ``eth_blockNumber`` and the block of the
newest anchored batch, `LedgerClient.observe`), whose head the reorganisation check then
uses instead of asking again. A pass that asks the chain nothing (leaves wait to be due,
every tick) looks only every `LOOK_S`: one request a tick would be 170k a day for a node
with a trickle of leaves, much of a hosted service's daily quota. The look is read against
what the watch has seen of the chain (`what_changed`):

- another chain id: another network, whatever its blocks say;
- a head more than ``reorg_depth`` below the highest head seen: a reorganisation replaces
  at most the last ``reorg_depth`` blocks (that is what the setting says), so a chain that
  lost more is another one (a dev chain started afresh); with ``reorg_depth`` 0, a chain
  that does not reorganise, any step back counts;
- a head below the block of the newest anchored batch, by any amount, unless the chain
  still has that block with the hash the node recorded. The hash is the reliable signal,
  the head alone is not: a hosted service balancing between nodes may answer a head a
  block behind the node that mined the transaction, and then still has the block; a chain
  without it cannot prove that batch.

When the node starts (no head seen yet) and once it has seen another chain, the watch
trusts the chain only on positive evidence: our chain id, a head within the reorg depth of
the highest seen, and the newest anchored block with its recorded hash, unless that block
lies within the reorg depth of the head (a changed hash there is a reorganisation, for
`qdspace.ledger.reorg`). The head alone would not do: a dev chain started afresh keeps the
chain id, and after a while its head passes the old one. While the chain is trusted, a
changed hash of an anchored block at or below the head stays a reorganisation's business
(``reorg_depth``), as it was.

On another chain the pass raises `ChainSwapped` before it signs or sends anything or moves
a journaled batch (leaves it sealed into a batch before it looked wait as sealed). It is a
`ChainUnavailable`, reported as the anchorer reports an outage: the status says the chain
is unreachable with the message as its last error, the anchorer logs it and retries with
backoff, a flush waits, the regulator's routes answer 503. Meanwhile the client refuses
every read (`LedgerClient.hold_reads`), and every pass looks again. Once our chain answers
the pass goes on where it stopped (the nonce is asked again).

What it cannot tell: within the reorg depth, another chain of the same chain id and a
reorganisation look alike; a node that anchored nothing has no block of its own to know its
chain by (a head gone back is all it sees); the highest head is kept in memory (after a
restart the newest anchored block stands in for it). A change is seen at the next look: at
once when the anchorer has something to send, else within `LOOK_S` (an idle anchorer's
passes come every ``IDLE_RECHECK_S``); reads until then are not held.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from qdspace.ledger.client import LedgerClient
from qdspace.ledger.errors import ChainSwapped
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.queue_schema import ANCHORED, Batch
from qdspace.ledger.rpc_answers import ChainView

log = logging.getLogger("ledger.anchorer")

#: a pass that asks the chain nothing looks at it at most this often (see the module notes)
LOOK_S = 10.0


@dataclass(frozen=True, slots=True)
class AnchoredBlock:
    """Where the newest anchored batch is, as the node recorded it."""

    batch_id: int
    number: int
    hash: bytes

    @classmethod
    def of(cls, batch: Batch) -> AnchoredBlock | None:
        """The block of an anchored `batch` (None when its hash was not recorded)."""
        if batch.block_number is None or not batch.block_hash:
            return None
        return cls(batch.id, batch.block_number, batch.block_hash)


def what_changed(
    chain_id: int,
    high: int,
    depth: int,
    view: ChainView,
    anchored: AnchoredBlock | None,
    trusted: bool,
) -> str | None:
    """What shows that `view` is of another chain than ``chain_id`` (whose highest head
    seen is `high`), or None; the rules are the module docstring's."""
    if view.chain_id != chain_id:
        return f"it serves chain id {view.chain_id}"
    if view.head + depth < high:
        return (
            f"its head went back from block {high} to {view.head}, "
            f"more than the reorg depth of {depth}"
        )
    if anchored is None or view.block_hash == anchored.hash:
        return None
    if view.block_hash is None:
        lost = f"it has no block {anchored.number}"
    else:
        lost = f"its block {anchored.number} is 0x{view.block_hash.hex()[:16]}…"
    where = f"where batch {anchored.batch_id} was anchored"
    if anchored.number > view.head:
        return f"its head {view.head} is below block {anchored.number}, {where}, and {lost}"
    if not trusted and anchored.number + depth <= max(high, view.head):
        return f"{lost}, {where}"
    return None


class ChainWatch:
    """What the anchorer has seen of its chain, and the look at the endpoint each pass."""

    def __init__(self, client: LedgerClient, queue: LeafQueue, reorg_depth: int) -> None:
        self.client, self.queue, self.depth = client, queue, reorg_depth
        self.high = 0  # the highest head seen of our chain (0: none yet)
        self.trusted = False  # the chain was recognised, and nothing else seen since
        self.swapped: str | None = None  # while another chain answers: what was seen
        self._looked_at = float("-inf")  # when (monotonic) it last looked
        self._head: int | None = None  # the head this pass saw (None: not looked yet)

    def begin_pass(self) -> None:
        """A pass begins: it looks now when the last look is `LOOK_S` old or saw another
        chain, else at its first `head` (when it first asks the chain for anything)."""
        self._head = None
        if self.swapped is not None or time.monotonic() - self._looked_at >= LOOK_S:
            self.head()

    def head(self) -> int:
        """The chain's head as this pass's look saw it (looking now if it has not)."""
        if self._head is None:
            self._head = self.check()
        return self._head

    def check(self) -> int:
        """Look at the endpoint (one request): its head, or ChainSwapped when it serves
        another chain (then every read is refused until ours is back)."""
        self._looked_at = time.monotonic()
        newest = self.queue.batches(ANCHORED, newest=1)
        anchored = AnchoredBlock.of(newest[0]) if newest else None
        view = self.client.observe(None if anchored is None else anchored.number)
        ours = self.client.chain_id  # checked at the start (`LedgerClient.check`), kept
        what = what_changed(ours, self.high, self.depth, view, anchored, self.trusted)
        if what is None:
            if self.swapped is not None:
                log.warning(
                    "anchorer.watch: chain %s answers at %s again; anchoring goes on",
                    ours,
                    self.client.shown_url,
                )
            self.client.hold_reads(None)
            self.swapped, self.trusted = None, True
            self.high = max(self.high, view.head)
            return view.head
        message = self._message(ours, what, view, anchored)
        if self.swapped is None:
            log.error("anchorer.watch: %s", message)
        self.swapped, self.trusted = message, False
        self.client.hold_reads(message)
        raise ChainSwapped(message)

    def _message(
        self, ours: int, what: str, view: ChainView, anchored: AnchoredBlock | None
    ) -> str:
        """What changed, and what the operator can do about it."""
        seen = max(self.high, 0 if anchored is None else anchored.number)
        holding = ""
        if anchored is not None:
            holding = f", the one with block {anchored.number} 0x{anchored.hash.hex()}"
        return (
            f"chain at {self.client.shown_url} is no longer chain {ours}, the one this node "
            f"anchors to: {what} (chain id {ours} -> {view.chain_id}, highest block seen "
            f"{seen or 'none yet'} -> head {view.head}). Nothing is signed, sent or read "
            f"there until chain {ours} answers again: queued batches wait, and anchoring "
            f"goes on by itself then. Point rpc_url back at chain {ours}{holding}; the "
            "batches anchored on it can be proven only there"
        )
