"""The live stream reads only the rows its gate can release: other customers' rows are
skipped in SQL, while the gate still decides every row and the cursor still moves on.

A provider with many customers stores their inspections interleaved. A subscriber's
page of `limit` rows used to be read from every customer's rows and then filtered, so it
could release nothing at all while another customer's rows filled it. Narrowing by the
orders the gate can let out (`ReleaseGate.orders`) must give the subscriber the same
rows, records and keys as before, never another customer's, and a cursor to resume
after that neither skips nor re-reads.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert

from qdspace.connector import paging
from qdspace.connector.assets import Asset, AssetKind
from qdspace.connector.encoding import live_page, record_key
from qdspace.connector.paging import INSPECTION_FIELDS, INSPECTION_TABLE
from qdspace.connector.pseudonym import Pseudonymizer
from qdspace.connector.release_gate import ReleaseGate
from qdspace.connector.storage import open_store
from qdspace.connector.transfer_wire import BatchRow
from qdspace.policies.evaluate import Request
from qdspace.policies.model import (
    Action,
    Constraint,
    LeftOperand,
    OfferTerms,
    Operator,
    Permission,
    Policy,
    PolicyType,
    Prohibition,
    make_offer,
    to_agreement,
)

T0 = datetime(2026, 6, 1, tzinfo=UTC)
SECRET = b"s" * 32
AGR = "agr-live"
QA = "qa"
LIMIT = 500  # the node's page (`node.runtime.contracts_transfer.STREAM_PAGE`)
A_ORDERS = ("A-1", "A-2")  # customer A's
B_ORDERS = ("B-1", "B-2", "B-3")  # customer B's


def asset(orders: frozenset[str] | None = None) -> Asset:
    offer = make_offer(
        "offer-live",
        "cellex",
        "live-inspections",
        OfferTerms(purposes=frozenset({QA}), orders=orders, retention_days=30),
    )
    return Asset(
        asset_id="live-inspections",
        title="EL inspections as they happen",
        kind=AssetKind.LIVE_INSPECTION_STREAM,
        tables=("qdm_inspection",),
        fields=INSPECTION_FIELDS,
        offer=offer,
        pseudonymized=frozenset(),
    )


def gate_for(
    owned: frozenset[str] | None, scope: frozenset[str] | None = None, purpose: str = QA
) -> ReleaseGate:
    live = asset(scope)
    agreement: Policy = to_agreement(live.offer, AGR, "sunarc")
    asked = Request(Action.STREAM, T0, live.fields, purpose=purpose)
    return ReleaseGate(live, agreement, asked, Pseudonymizer(SECRET, AGR), owned_orders=owned)


def row(n: int, order: str | None) -> dict[str, Any]:
    return {
        "inspection_id": f"INS-{n:06d}",
        "station": f"EL-{n % 2}",
        "inspected_at": T0 + timedelta(seconds=n),
        "verdict": "pass" if n % 3 else "fail",
        "score": round((n % 50) / 100, 2),
        "model_version": "el-1",
        "order_id": order,
        "batch_id": "CB-1",
    }


class Qdm:
    """A provider QDM (an SQLite file, or a PostgreSQL schema) that rows are added to in
    id order."""

    def __init__(self, url: str) -> None:
        self.store = open_store(url)
        self.engine: Engine = self.store.engine
        self.count = 0

    def add(self, orders: Sequence[str | None]) -> None:
        rows = [row(self.count + i, order) for i, order in enumerate(orders)]
        self.count += len(rows)
        with self.engine.begin() as connection:
            connection.execute(insert(INSPECTION_TABLE), rows)


@pytest.fixture
def qdm(
    db_backend: str,
    tmp_path: Path,
    fresh_pg_schema: Callable[[str], AbstractContextManager[tuple[str, str]]],
) -> Iterator[Qdm]:
    """The provider's QDM on each backend: the order list is an IN list on PostgreSQL's
    planner too."""
    with ExitStack() as stack:
        if db_backend == "sqlite":
            url = f"sqlite:///{tmp_path / 'qdm.sqlite'}"
        else:
            url, _ = stack.enter_context(fresh_pg_schema("live"))
        store = Qdm(url)
        try:
            yield store
        finally:
            store.store.close()


def unnarrowed(engine: Engine, gate: ReleaseGate, after: int) -> list[tuple[str, BatchRow]]:
    """What the stream released before narrowing: every row after `after`, read whole
    (no order list) and filtered by the gate, as (cursor, row)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(paging, "ORDER_LIST_MAX", -1)  # no list: every order's rows are read
        rows, positions, _ = live_page(engine, gate, after, 1_000_000)
    return list(zip(positions, rows, strict=True))


def orders_of(rows: list[BatchRow]) -> set[str]:
    return {r.order_id for r in rows} | {json.loads(r.payload)["order_id"] for r in rows}


def test_a_subscriber_gets_its_rows_not_a_page_filled_by_another_customers(qdm: Qdm) -> None:
    """Before narrowing, B's 600 rows after A's cursor filled A's page of 500, which
    released nothing (and a page then released A's rows once B's were read past)."""
    qdm.add(["A-1"] * 3)  # A's first rows: ids 1-3, already sent
    qdm.add([B_ORDERS[n % 3] for n in range(600)])  # B's rows: ids 4-603
    qdm.add(["A-1", "B-1", "A-2", "B-2", "A-1"] * 2)  # interleaved: A's 6 of ids 604-613
    qdm.add(["B-3"] * 50)
    a, b = gate_for(frozenset(A_ORDERS)), gate_for(frozenset(B_ORDERS))

    rows, positions, position = live_page(qdm.engine, a, 3, LIMIT)

    assert [int(p) for p in positions] == [604, 606, 608, 609, 611, 613]
    assert a.orders == frozenset(A_ORDERS)
    assert orders_of(rows) == set(A_ORDERS)
    # the same rows, record keys and bytes as the whole read gave A (its 500-row pages
    # are just fewer rows of it), and none of B's
    assert list(zip(positions, rows, strict=True)) == unnarrowed(qdm.engine, a, 3)
    keys = {json.loads(r.payload)["@key"] for r in rows}
    b_rows, _, _ = live_page(qdm.engine, b, 3, 10_000)
    assert len(b_rows) == 600 + 4 + 50 and orders_of(b_rows) == set(B_ORDERS)
    assert not keys & {json.loads(r.payload)["@key"] for r in b_rows}
    # the keys a pull under the agreement gives (ids 604, 606: INS-000603, INS-000605)
    expected = [record_key(a.pseudonymizer, INSPECTION_TABLE, [f"INS-{n:06d}"]) for n in (603, 605)]
    assert [json.loads(r.payload)["@key"] for r in rows[:2]] == expected
    # Every row of A's up to the cursor was read: the cursor is the table's end.
    assert position == qdm.count == 663
    assert live_page(qdm.engine, a, position, LIMIT) == ([], [], position)


def test_the_cursor_resumes_exactly_and_moves_on_while_the_subscriber_is_quiet(
    qdm: Qdm,
) -> None:
    a = gate_for(frozenset(A_ORDERS))
    qdm.add(["B-1"] * 20)
    rows, _, position = live_page(qdm.engine, a, 0, LIMIT)
    assert rows == [] and position == 20  # a heartbeat's position: nothing of A's before
    qdm.add(["A-1"] * 7 + ["B-2"] * 5 + ["A-2"] * 3)  # ids 21-35
    seen: list[str] = []
    for _ in range(3):  # pages of 4: two full pages of A's rows, then a short one
        rows, positions, after = live_page(qdm.engine, a, position, 4)
        assert after > position and all(int(p) > position for p in positions)
        seen += positions
        position = after
    assert seen == [str(n) for n in [*range(21, 28), 33, 34, 35]]
    assert position == 35  # a full page ends at its last row; the short one at the end
    qdm.add(["B-3"] * 10)
    assert live_page(qdm.engine, a, position, 4) == ([], [], 45)


def test_without_an_order_list_the_stream_reads_every_row_as_before(qdm: Qdm) -> None:
    """No list bounds the gate (no owned orders, no order scope): every row is read and
    the cursor is the last row read, as before."""
    qdm.add(["B-1"] * 5 + [None] * 3 + ["A-1"] * 2)
    gate = gate_for(None)
    assert gate.orders is None
    rows, positions, position = live_page(qdm.engine, gate, 0, 8)
    assert len(positions) == 8 and position == 8
    assert {r.order_id for r in rows} == {"B-1", ""}  # rows of no order too, as before
    assert live_page(qdm.engine, gate, position, 8)[2] == 10


def test_a_denied_gate_lists_no_order_and_releases_nothing(qdm: Qdm) -> None:
    qdm.add(["A-1"] * 3)
    gate = gate_for(frozenset(A_ORDERS), purpose="marketing")
    assert not gate.decision.allowed and gate.orders == frozenset()
    assert live_page(qdm.engine, gate, 0, LIMIT) == ([], [], 3)


ALL_ORDERS = [*A_ORDERS, *B_ORDERS, "C-1"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Qdm]:
    """300 rows of six orders (and some of none), in random order."""
    store = Qdm(f"sqlite:///{tmp_path_factory.mktemp('live') / 'qdm.sqlite'}")
    rng = random.Random(5)
    store.add([rng.choice([*ALL_ORDERS, None]) for _ in range(300)])
    yield store
    store.store.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    owned=st.none() | st.frozensets(st.sampled_from(ALL_ORDERS)),
    scope=st.none() | st.frozensets(st.sampled_from([*ALL_ORDERS, "Z-9"]), min_size=1),
    limit=st.integers(1, 120),
    start=st.integers(0, 320),
)
def test_a_narrowed_stream_releases_what_the_whole_read_released(
    mixed: Qdm,
    owned: frozenset[str] | None,
    scope: frozenset[str] | None,
    limit: int,
    start: int,
) -> None:
    """Paging through the stream from any cursor with any page size gives exactly the
    rows (cursors, bytes) that reading every row and gating it gave; the cursor never
    goes back and every row the gate lets out lies in `gate.orders`."""
    gate = gate_for(owned, scope)
    expected = unnarrowed(mixed.engine, gate, start)
    if gate.orders is not None:
        assert {r.order_id for _, r in expected} <= gate.orders
    got: list[tuple[str, BatchRow]] = []
    position = start
    for _ in range(400):
        rows, positions, after = live_page(mixed.engine, gate, position, limit)
        assert after >= position
        got += zip(positions, rows, strict=True)
        if after == position:
            break
        position = after
    assert got == expected
    assert position == max(start, mixed.count)


ORDER_RULE = st.tuples(
    st.sampled_from([Operator.EQ, Operator.NEQ, Operator.IS_ANY_OF, Operator.IS_NONE_OF]),
    st.frozensets(st.sampled_from(ALL_ORDERS), min_size=1, max_size=3),
)


def _constraint(rule: tuple[Operator, frozenset[str]]) -> Constraint:
    operator, orders = rule
    right: str | frozenset[str] = orders
    if operator in (Operator.EQ, Operator.NEQ):
        right = min(orders)
    return Constraint(LeftOperand.ORDER, operator, right)


@settings(max_examples=300, deadline=None)
@given(
    permissions=st.lists(
        st.tuples(st.sampled_from([Action.USE, Action.STREAM, Action.READ]), st.lists(ORDER_RULE)),
        min_size=1,
        max_size=3,
    ),
    prohibited=st.lists(ORDER_RULE, max_size=2),
    owned=st.none() | st.frozensets(st.sampled_from(ALL_ORDERS)),
    asked=st.none() | st.sampled_from(ALL_ORDERS),
)
def test_every_order_a_gate_lets_out_is_one_it_lists(
    permissions: list[tuple[Action, list[tuple[Operator, frozenset[str]]]]],
    prohibited: list[tuple[Operator, frozenset[str]]],
    owned: frozenset[str] | None,
    asked: str | None,
) -> None:
    """Over agreements of several permissions with eq / neq / isAnyOf / isNoneOf order
    scopes (and order prohibitions), a request's order and the customer's orders: a row
    the gate lets out is of an order in `gate.orders`, so narrowing a read to them
    drops nothing the gate would release."""
    live = asset()
    purpose = Constraint(LeftOperand.PURPOSE, Operator.IS_ANY_OF, frozenset({QA}))
    rules = tuple(
        Permission(action, (purpose, *map(_constraint, scope))) for action, scope in permissions
    )
    bans = tuple(Prohibition(Action.STREAM, (_constraint(rule),)) for rule in prohibited)
    agreement = Policy(AGR, PolicyType.AGREEMENT, "cellex", live.asset_id, rules, bans, (), "c")
    action = Action.READ if asked else Action.STREAM
    request = Request(action, T0, live.fields, purpose=QA, order_id=asked)
    gate = ReleaseGate(live, agreement, request, Pseudonymizer(SECRET, AGR), owned_orders=owned)
    released = {o for o in [*ALL_ORDERS, "Z-9"] if gate({"order_id": o, "verdict": "pass"})}
    if gate.orders is not None:
        assert released <= gate.orders
    if not gate.decision.allowed:
        assert gate.orders == frozenset() and not released
