"""Batches anchored in a block a reorganisation replaced: found and sent again.

A chain may reorganise: a block with an anchoring transaction is replaced, and the
transaction is mined in a later block or dropped. The anchorer takes a receipt as it comes
(a batch is ANCHORED at once, so its proofs are served at once) and, with ``reorg_depth``
set, checks the batches anchored in the last ``reorg_depth`` blocks again
(`recheck_recent`, the hashes of their blocks in one request): a batch whose block is no
longer the chain's is recorded where its transaction was mined again, or goes back to
signed and its same signed bytes are sent again (`LeafQueue.mark_reorganised`: the same
nonce, so it is never anchored twice). Before, receipts were taken at zero confirmations
and never looked at again: a reorganisation left its batches ANCHORED with proofs that
then fail. Proofs handed out before the check name the old block: fetch them again.

A reorganisation may also leave the chain shorter than it was: the batches anchored in
blocks above the new head are checked too (before, the check looked from the head down and
never saw them). The anchorer's chain watch (`qdspace.ledger.chain_watch`) has made sure
that it is still our chain, one that lost no more than ``reorg_depth`` blocks.
"""

from __future__ import annotations

import logging

from qdspace.ledger.client import LedgerClient
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.rpc_answers import MAX_CHAIN_NUMBER

log = logging.getLogger("ledger.anchorer")


def recheck_recent(
    queue: LeafQueue, client: LedgerClient, depth: int, head: int | None = None
) -> int:
    """Check the blocks of the batches anchored within `depth` blocks of the head (`head`,
    else the chain is asked) or above it; returns how many went back to be sent again."""
    head = client.latest_block() if head is None else head
    recent = queue.anchored_in_blocks(max(head - depth, 0), MAX_CHAIN_NUMBER)
    if not recent:
        return 0
    canonical = client.block_hashes(sorted({b.block_number or 0 for b in recent}))
    moved = 0
    for batch in recent:
        if canonical.get(batch.block_number or 0) == batch.block_hash:
            continue
        receipt = client.receipt(batch.tx_hash) if batch.tx_hash else None
        if (
            receipt is not None
            and receipt.succeeded
            and batch.root in receipt.anchored_roots
            and client.block_hash(receipt.block_number) == receipt.block_hash
        ):
            queue.mark_anchored(
                batch,
                receipt.tx_hash,
                receipt.block_number,
                receipt.block_hash,
                client.chain_id,
                client.address,
            )
            log.warning(
                "anchorer: batch %s: block %s was reorganised away; mined again in %s",
                batch.id,
                batch.block_number,
                receipt.block_number,
            )
            continue
        why = f"block {batch.block_number} was reorganised away with its transaction"
        queue.mark_reorganised(batch, why)
        log.warning("anchorer: batch %s: %s; sending it again", batch.id, why)
        moved += 1
    return moved
