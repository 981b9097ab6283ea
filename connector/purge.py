"""Leaving the data space: what a consumer must delete, terminate and answer for, now.

A member that leaves (a hosted tenant removed, a supplier that stops trading) may not
keep what providers shared with it under agreements until the retention deadlines
come: it deletes everything it holds as a consumer at once, destroys the data keys,
and proves each deletion to the provider with the same signed receipt the retention
sweep sends (`DeletionReceipt`), marked with `REASON_LEAVING`. Its agreements as
consumer end first, so nothing new arrives while it deletes.

Why separate: the decision (which agreements end, which (agreement, order) pairs are
deleted and answered with a receipt, which are already answered) is a function of
facts the store reports (`Holding`) and holds no I/O, so it is tested on its own and
the node's runtime only carries it out (`node.runtime.contracts_purge`), one store
transaction per pair exactly as the sweep does (`ContractStore.shred`).

Invariants of the plan: at most one step per (agreement, order); never a step for a
pair that already has a receipt (so a second purge issues none); a step for every
pair that holds rows, a live data key or a recorded closure; an agreement under which
nothing was ever held or answered gets one step for order ``""`` (zero rows), so its
provider sees its duty answered rather than pending forever; only agreements held as
consumer are touched, and each one still in force is terminated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from qdspace.connector.agreement import REASON_LEAVING, SignedReceipt

__all__ = [
    "REASON_LEAVING",
    "TERMINATION_REASON",
    "ConsumerAgreement",
    "Holding",
    "PurgeFailure",
    "PurgePlan",
    "PurgeReport",
    "PurgeStep",
    "agreements_to_end",
    "plan_purge",
]

#: why a purge terminates the agreements it ends (the provider is told this reason)
TERMINATION_REASON = "the consumer leaves the data space; its data was deleted"


@dataclass(frozen=True)
class ConsumerAgreement:
    """An agreement this member holds as consumer, as far as a purge needs it."""

    agreement_id: str
    provider_id: str
    consumer_id: str
    terminated: bool


@dataclass(frozen=True)
class Holding:
    """What the store holds for one (agreement, order): received records (current
    versions; tombstones count 0 but are still erased), whether its data key is still
    live, whether a closure is recorded, and whether a receipt answers it already."""

    agreement_id: str
    order_id: str
    rows: int = 0
    key_live: bool = False
    closed: bool = False
    receipted: bool = False

    @property
    def holds_anything(self) -> bool:
        return self.rows > 0 or self.key_live or self.closed


@dataclass(frozen=True)
class PurgeStep:
    """Delete one (agreement, order) and answer it with a receipt to `provider_id`."""

    agreement_id: str
    order_id: str
    provider_id: str
    consumer_id: str


@dataclass(frozen=True)
class PurgePlan:
    terminate: tuple[str, ...]  # agreement ids still in force, to end first
    steps: tuple[PurgeStep, ...]  # pairs to delete and answer, in a stable order
    answered: tuple[tuple[str, str], ...]  # (agreement, order) pairs with a receipt already

    @property
    def empty(self) -> bool:
        return not self.terminate and not self.steps


@dataclass(frozen=True)
class PurgeFailure:
    agreement_id: str
    order_id: str
    error: str


@dataclass(frozen=True)
class PurgeReport:
    """What one purge did: the consumer agreements it covered, those it ended now, the
    receipts it issued now, and the pairs it could not delete (a later purge retries)."""

    agreements: tuple[str, ...]
    terminated: tuple[str, ...]
    receipts: tuple[SignedReceipt, ...]
    already_answered: int
    failures: tuple[PurgeFailure, ...]

    @property
    def rows_deleted(self) -> int:
        return sum(s.receipt.row_count for s in self.receipts)

    @property
    def complete(self) -> bool:
        """Nothing left held under any agreement as consumer."""
        return not self.failures


def agreements_to_end(agreements: Sequence[ConsumerAgreement]) -> tuple[str, ...]:
    """The agreements still in force, which a purge terminates before it deletes (a row
    arriving under a terminated agreement is refused, so nothing lands after the plan
    is read)."""
    return tuple(sorted(a.agreement_id for a in agreements if not a.terminated))


def plan_purge(agreements: Sequence[ConsumerAgreement], holdings: Iterable[Holding]) -> PurgePlan:
    """What a purge of everything held under `agreements` must do, given `holdings`.

    Holdings of agreements not in `agreements` (held as provider, or unknown) are
    ignored: a purge only deletes what this member received."""
    by_id = {a.agreement_id: a for a in agreements}
    merged: dict[tuple[str, str], Holding] = {}
    for h in holdings:
        if h.agreement_id not in by_id:
            continue
        key = (h.agreement_id, h.order_id)
        seen = merged.get(key)
        merged[key] = h if seen is None else _merge(seen, h)
    answered = sorted(k for k, h in merged.items() if h.receipted)
    owed = {k for k, h in merged.items() if not h.receipted and h.holds_anything}
    touched = {agreement_id for agreement_id, _ in merged}
    owed |= {(a, "") for a in by_id if a not in touched}  # never held nor answered anything
    steps = tuple(
        PurgeStep(a, o, by_id[a].provider_id, by_id[a].consumer_id) for a, o in sorted(owed)
    )
    return PurgePlan(agreements_to_end(agreements), steps, tuple(answered))


def _merge(a: Holding, b: Holding) -> Holding:
    return Holding(
        a.agreement_id,
        a.order_id,
        rows=a.rows + b.rows,
        key_live=a.key_live or b.key_live,
        closed=a.closed or b.closed,
        receipted=a.receipted or b.receipted,
    )
