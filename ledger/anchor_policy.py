"""What the anchorer is told (its policy) and what it tells (a pass's report, its status).

Plain values, kept apart from the passes in :mod:`qdspace.ledger.anchorer` (which import
the chain client: web3 and eth_account); they import nothing of the chain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qdspace.ledger.errors import LedgerError
from qdspace.ledger.tx import ANCHOR_GAS, DEFAULT_MAX_IN_FLIGHT

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
    # a batch whose transaction will not be mined is signed again at once, then after this,
    # doubling with its attempts up to `resign_max_s` (see `qdspace.ledger.anchorer`)
    resign_first_s: float = 2.0
    resign_max_s: float = 900.0
    # how far behind the chain's head an anchored batch's block is checked again for a
    # reorganisation (0: never, for a chain that does not reorganise, as the embedded one)
    reorg_depth: int = 0

    def __post_init__(self) -> None:
        if (
            self.max_leaves < 1
            or self.max_age_s < 0
            or self.tick_s <= 0
            or self.max_in_flight < 1
            or self.reorg_depth < 0
        ):
            raise LedgerError(
                "anchor policy needs max_leaves >= 1, max_age_s >= 0, tick_s > 0, "
                f"max_in_flight >= 1, reorg_depth >= 0; got {self}"
            )

    def resign_delay(self, attempts: int) -> float:
        """How long a batch signed `attempts` times waits before it is signed again: not
        at all the first time (an honest chain refuses a nonce another tool of the same
        account used), then `resign_first_s`, doubling up to `resign_max_s`."""
        if attempts <= 1:
            return 0.0
        return min(self.resign_first_s * 2.0 ** (attempts - 2), self.resign_max_s)


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
