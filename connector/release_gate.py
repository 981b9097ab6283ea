"""The release gate: the single gate rows pass on their way out to a consumer.

`ReleaseGate` applies policy enforcement (the agreement's order scope and the fields
it grants, through `policies.evaluate.RowGate`, plus the provider's own check that
the order is one this consumer placed: `owned_orders`) and then pseudonymisation, in
that order, so a field the agreement does not grant is never even pseudonymised and a
row outside the scope never reaches the pseudonymiser.

Why separate: what may leave is decided here, and only here. The live stream and the
row-at-a-time path of a transfer call the gate for each row; the page encoder
(`encoding.PageEncoder`) compiles the gate's decision (granted fields, order scope,
pseudonymised fields) for whole pages. The readers (`paging`) and the encoders only
decide how rows are read and written.

Invariants: a gate is built only for the asset its agreement targets, with the
asset's own fields in the request (a request built for another view could otherwise
widen the grant) and with the pseudonyms of that agreement.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from qdspace.connector.assets import Asset
from qdspace.connector.contract_errors import ViewError
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.policies.evaluate import Decision, Request, RowGate, scope_orders
from qdspace.policies.model import Policy


class ReleaseGate:
    """`gate(row)`: the row as it may leave under `agreement` (scoped, projected,
    pseudonymised), or None. `gate.decision` says whether anything may leave, and why not.

    `request.asset_fields` must be the asset's fields: a request built for
    another view could otherwise widen the grant.

    `owned_orders` are the orders the consumer has placed with the provider, read at
    the time of the call (None: the asset is not scoped by customer). It is checked
    on top of the agreement: a request for an order outside it is denied, and a row
    of such an order never passes, whatever the agreement's order scope says.
    """

    def __init__(
        self,
        asset: Asset,
        agreement: Policy,
        request: Request,
        pseudonymizer: Pseudonymizer,
        *,
        closed_orders: Mapping[str, datetime] | None = None,
        owned_orders: frozenset[str] | None = None,
    ) -> None:
        if agreement.target != asset.asset_id:
            raise ViewError(
                f"agreement {agreement.uid} is for {agreement.target}, not {asset.asset_id}"
            )
        if request.asset_fields != asset.fields:
            raise ViewError(f"request for {asset.asset_id} names another asset's fields")
        if pseudonymizer.agreement_id != agreement.uid:
            raise ViewError(
                f"pseudonyms for agreement {pseudonymizer.agreement_id} used for {agreement.uid}"
            )
        self.asset = asset
        self.request = request
        self._gate = RowGate(
            agreement, request, order_key=asset.order_key, closed_orders=closed_orders
        )
        self.pseudonymizer = pseudonymizer
        self._pseudonymized = tuple(sorted(asset.pseudonymized))
        self.owned_orders = owned_orders
        self._decision = self._gate.decision
        order = request.order_id
        foreign = owned_orders is not None and order is not None and order not in owned_orders
        if self._decision.allowed and foreign:  # the agreement's own reason comes first
            self._decision = Decision(False, f"order {order} is not an order you placed with us")
        self._orders = self._releasable(agreement)

    @property
    def decision(self) -> Decision:
        return self._decision

    def owns(self, order: Any) -> bool:
        """Whether a row of `order` may go to this consumer at all (see `owned_orders`)."""
        return self.owned_orders is None or (isinstance(order, str) and order in self.owned_orders)

    @property
    def orders(self) -> frozenset[str] | None:
        """The orders whose rows the gate can let out, when they are finitely many: the
        request's order, the agreement's order scope and `owned_orders`, intersected
        (None: no list bounds them). A reader may skip other orders' rows in its query;
        the gate still decides every row it reads."""
        return self._orders

    def _releasable(self, agreement: Policy) -> frozenset[str] | None:
        if not self._decision.allowed:
            return frozenset()
        order = self.request.order_id
        asked = None if order is None else frozenset({order})
        found: frozenset[str] | None = None
        for bound in (asked, scope_orders(agreement), self.owned_orders):
            if bound is not None:
                found = bound if found is None else found & bound
        return found

    @property
    def query_fields(self) -> frozenset[str]:
        """What to read from the database: the granted fields plus the order key."""
        return self.decision.allowed_fields | {self.asset.order_key}

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any] | None:
        if not self._decision.allowed or not self.owns(row.get(self.asset.order_key)):
            return None
        out = self._gate(row)
        if out is None:
            return None
        return self.pseudonymizer.apply(out, self._pseudonymized)


def release(
    asset: Asset,
    agreement: Policy,
    request: Request,
    rows: Iterable[Mapping[str, Any]],
    pseudonymizer: Pseudonymizer,
    *,
    closed_orders: Mapping[str, datetime] | None = None,
    owned_orders: frozenset[str] | None = None,
) -> Iterator[dict[str, Any]]:
    """The rows that may leave under `agreement`: in scope, granted fields only, pseudonymised."""
    gate = ReleaseGate(
        asset,
        agreement,
        request,
        pseudonymizer,
        closed_orders=closed_orders,
        owned_orders=owned_orders,
    )
    if not gate.decision.allowed:
        return
    for row in rows:
        out = gate(row)
        if out is not None:
            yield out
