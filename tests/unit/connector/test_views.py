"""Views over a real QDM (SQLite file): cursors, scopes, genealogy, and the release gate."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey
from sqlalchemy import Engine, create_engine, insert

from qdspace.connector.agreement import ContractAgreement, countersign, sign_agreement
from qdspace.connector.assets import Asset, AssetKind, catalog
from qdspace.connector.contract_errors import ViewError
from qdspace.connector.contract_store import ContractStore, IncomingRow, ensure_schema
from qdspace.connector.encoding import record_key, stream_batches
from qdspace.connector.negotiation import Role
from qdspace.connector.paging import (
    INSPECTION_FIELDS,
    INSPECTION_TABLE,
    MEASUREMENT_TABLE,
    OPERATOR_LOG_FIELDS,
    OPERATOR_LOG_TABLE,
    inspections,
    order_batches,
    parse_position,
    process_along_genealogy,
    read_asset,
)
from qdspace.connector.pseudonym import PSEUDONYM_PREFIX, Pseudonymizer
from qdspace.connector.release_gate import ReleaseGate
from qdspace.connector.storage import QualityStore, migrate, open_store
from qdspace.connector.transfer import accept_batch, open_transfer
from qdspace.connector.transfer import apply as apply_transfer
from qdspace.connector.transfer_messages import TransferRequest, TransferStart, TransferSuspension
from qdspace.connector.transfer_wire import Checkpoint, row_bytes
from qdspace.policies.canonical import format_datetime
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
    make_offer,
    to_agreement,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)
ORDERS = ["ORD-1", "ORD-2", "ORD-3"]
SECRET = b"s" * 32


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    path: Path = tmp_path_factory.mktemp("views") / "qdm.sqlite"
    store = open_store(f"sqlite:///{path}")
    rng = random.Random(7)
    inspections_rows = [
        {
            "inspection_id": f"ins-{n}",
            "station": f"EL-{n % 3}",
            "inspected_at": T0 + timedelta(seconds=n, microseconds=1237 * n if n % 2 else 0),
            "verdict": rng.choice(["ok", "ng"]),
            "defect_class": rng.choice([None, "crack", "finger"]),
            "score": rng.random(),
            "model_version": "el-v1",
            "order_id": ORDERS[n % 3] if n % 7 else None,
            "serial": f"SN{n}",
            "batch_id": f"CB-{n % 3}",
        }
        for n in range(40)
    ]
    logs = [
        {
            "operator_id": f"op-{n % 4}",
            "logged_at": T0 + timedelta(minutes=n),
            "action": "rework",
            "station": "EL-1",
            "order_id": ORDERS[n % 3],
        }
        for n in range(12)
    ]
    measurements = [
        {
            "equipment": "PECVD-1",
            "parameter": "vacuum",
            "element_id": "E1",
            "measured_at": T0 + timedelta(minutes=n),
            "value": 1.0 + n,
            "unit": "Pa",
            "raw_value": str(1.0 + n),
            "raw_unit": "Pa",
            "batch_id": ["WB-9", "CB-0", "XX-1"][n % 3],
        }
        for n in range(9)
    ]
    with store.engine.begin() as connection:
        connection.execute(insert(INSPECTION_TABLE), inspections_rows)
        connection.execute(insert(OPERATOR_LOG_TABLE), logs)
        connection.execute(insert(MEASUREMENT_TABLE), measurements)
        connection.execute(
            insert(INSPECTION_TABLE.metadata.tables["qdm_genealogy"]),
            [{"child_batch_id": "CB-0", "parent_batch_id": "WB-9"}],
        )
    yield store.engine
    store.close()


def test_rows_come_in_cursor_order_and_resume_exactly(engine: Engine) -> None:
    every = list(inspections(engine, "ORD-2", {"inspection_id", "order_id"}, page_size=3))
    assert [cursor for cursor, _ in every] == sorted(cursor for cursor, _ in every)
    assert {row["order_id"] for _, row in every} == {"ORD-2"}
    assert all(set(row) == {"inspection_id", "order_id"} for _, row in every)
    cut = every[4][0]
    rest = list(inspections(engine, "ORD-2", {"inspection_id", "order_id"}, after=cut))
    assert every[5:] == rest
    assert list(inspections(engine, "ORD-2", {"order_id"}, limit=2, page_size=1)) == [
        (c, {"order_id": r["order_id"]}) for c, r in every[:2]
    ]
    stream = list(inspections(engine, None, {"verdict"}))
    assert len(stream) == 40
    with pytest.raises(ViewError, match="no fields"):
        list(inspections(engine, "ORD-1", {"password"}))
    with pytest.raises(ViewError, match="negative"):
        list(inspections(engine, "ORD-1", {"verdict"}, after=-1))
    (_, timed), *_ = inspections(engine, "ORD-1", {"inspected_at"})
    assert timed["inspected_at"].utcoffset() is not None  # aware: canonical JSON needs a zone


def test_process_data_follows_the_genealogy(engine: Engine) -> None:
    assert order_batches(engine, "ORD-1") == {"CB-0", "WB-9"}  # WB-9 via the genealogy
    rows = list(process_along_genealogy(engine, "ORD-1", {"batch_id", "value"}))
    assert {row["batch_id"] for _, row in rows} == {"WB-9", "CB-0"}
    assert {row["order_id"] for _, row in rows} == {"ORD-1"}
    assert parse_position("") == 0 and parse_position("17") == 17
    with pytest.raises(ViewError):
        parse_position("x")


def offer_for(
    asset_id: str, orders: frozenset[str] | None, fields: frozenset[str] | None
) -> Policy:
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=orders, fields=fields)
    return make_offer(f"offer-{asset_id}", "cellex", asset_id, terms)


def logs_asset(orders: frozenset[str] | None, fields: frozenset[str] | None) -> Asset:
    return Asset(
        asset_id="operator-logs",
        title="Operator actions",
        kind=AssetKind.INSPECTIONS_OF_ORDER,
        tables=("qdm_operator_log",),
        fields=OPERATOR_LOG_FIELDS,
        offer=offer_for("operator-logs", orders, fields),
        audience=frozenset({"oem"}),
    )


def test_release_pseudonymises_operators_and_drops_ungranted_fields(engine: Engine) -> None:
    asset = logs_asset(frozenset({"ORD-1"}), frozenset({"operator_id", "action", "order_id"}))
    agreement = to_agreement(asset.offer, "agr-1", "sunarc")
    request = Request(Action.READ, T0, asset.fields, purpose="qa", order_id="ORD-1")
    gate = ReleaseGate(asset, agreement, request, Pseudonymizer(SECRET, "agr-1"))
    assert gate.decision.allowed
    rows = [gate(row) for _, row in read_asset(engine, asset, "ORD-1", gate.query_fields)]
    assert rows and all(r is not None for r in rows)
    for row in rows:
        assert row is not None and set(row) == {"operator_id", "action", "order_id"}
        assert row["operator_id"].startswith(PSEUDONYM_PREFIX)
    assert len({r["operator_id"] for r in rows if r}) == 4  # op-0, op-1, op-2, op-3
    with pytest.raises(ViewError, match="pseudonyms for agreement"):
        ReleaseGate(asset, agreement, request, Pseudonymizer(SECRET, "agr-2"))
    assert [e.asset_id for e in catalog([asset], "cellex", "oem")] == ["operator-logs"]
    assert catalog([asset], "cellex", "supplier") == []


GRANTABLE = sorted(INSPECTION_FIELDS)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    orders=st.none() | st.frozensets(st.sampled_from(ORDERS), min_size=1),
    fields=st.none() | st.frozensets(st.sampled_from(GRANTABLE), min_size=1),
    asked_order=st.none() | st.sampled_from([*ORDERS, "ORD-9"]),
    asked_fields=st.none() | st.frozensets(st.sampled_from(GRANTABLE), min_size=1, max_size=4),
    purpose=st.sampled_from(["qa", "marketing"]),
)
def test_provider_never_emits_a_row_or_field_the_policy_does_not_allow(
    engine: Engine,
    orders: frozenset[str] | None,
    fields: frozenset[str] | None,
    asked_order: str | None,
    asked_fields: frozenset[str] | None,
    purpose: str,
) -> None:
    asset = Asset(
        asset_id="inspections",
        title="EL inspections",
        kind=AssetKind.INSPECTIONS_OF_ORDER,
        tables=("qdm_inspection",),
        fields=INSPECTION_FIELDS,
        offer=offer_for("inspections", orders, fields),
        pseudonymized=frozenset(),
    )
    agreement = to_agreement(asset.offer, "agr-x", "sunarc")
    action = Action.READ if asked_order else Action.STREAM
    request = Request(
        action, T0, asset.fields, purpose=purpose, order_id=asked_order, fields=asked_fields
    )
    gate = ReleaseGate(asset, agreement, request, Pseudonymizer(SECRET, "agr-x"))
    out: list[dict[str, Any]] = []
    wire: list[dict[str, Any]] = []
    if gate.decision.allowed:
        for _, row in read_asset(engine, asset, asked_order, gate.query_fields, page_size=16):
            released = gate(row)
            if released is not None:
                out.append(released)
        # The transfer path: whole pages read, gated and encoded column by column.
        opening = TransferRequest("m", "tx", "sunarc", "agr-x", "cellex", T0, "qa", asked_order)
        process = apply_transfer(
            open_transfer(opening, Role.PROVIDER),
            TransferStart("s", "tx", "cellex", Checkpoint.genesis("tx"), T0),
        )
        for batch, _ in stream_batches(process, engine, gate, batch_rows=16):
            wire.extend(_content(json.loads(line)) for line in batch.payloads())
            for row, order in zip(batch.payloads(), batch.orders(), strict=True):
                assert asked_order is None or order == asked_order
                assert row == row_bytes(json.loads(row))
    granted = fields if fields is not None else INSPECTION_FIELDS
    in_scope = (
        purpose == "qa"
        and (asked_fields is None or asked_fields <= granted)
        and (asked_order is None or orders is None or asked_order in orders)
    )
    assert gate.decision.allowed == in_scope
    if not in_scope:
        assert out == [] and wire == []
        return
    wanted = granted if asked_fields is None else asked_fields
    every = [row for _, row in inspections(engine, None, INSPECTION_FIELDS)]
    expected = [
        {k: v for k, v in row.items() if k in wanted}
        for row in every
        if (asked_order is None or row["order_id"] == asked_order)
        and (orders is None or row["order_id"] in orders)
    ]
    assert out == expected
    for row in out:
        assert set(row) <= granted
    on_wire = [{k: _wire_value(v) for k, v in row.items()} for row in expected]
    assert wire == on_wire


P_KEY, C_KEY = SigningKey(b"p" * 32), SigningKey(b"c" * 32)


def hold_agreement(store: ContractStore, agreement: Policy, asset: Asset) -> None:
    """Save `agreement` (signed by both) in a consumer's store: rows need one to land."""
    terms = ContractAgreement(
        agreement.uid,
        f"neg-{agreement.uid}",
        "cellex",
        "sunarc",
        asset.asset_id,
        agreement,
        T0,
        T0,
    )
    store.save_agreement(
        countersign(sign_agreement(terms, P_KEY), C_KEY, P_KEY.verify_key), Role.CONSUMER
    )


def _content(row: dict[str, Any]) -> dict[str, Any]:
    """A row on the wire without its record envelope (which every row has)."""
    assert row["@key"].startswith("rec_") and row["@v"] >= 1 and "@withdrawn" not in row
    return {k: v for k, v in row.items() if not k.startswith("@")}


def _wire_value(value: Any) -> Any:
    return format_datetime(value) if isinstance(value, datetime) else value


def test_a_transfer_broken_anywhere_resumes_without_loss_or_duplicates(
    engine: Engine, tmp_path: Path
) -> None:
    asset = logs_asset(frozenset({"ORD-1", "ORD-2"}), None)
    agreement = to_agreement(asset.offer, "agr-t", "sunarc")
    request = Request(Action.STREAM, T0, asset.fields, purpose="qa")
    consumer_db = create_engine(f"sqlite:///{tmp_path / 'consumer.db'}")
    ensure_schema(consumer_db)
    store = ContractStore(consumer_db, b"k" * 32)
    hold_agreement(store, agreement, asset)
    opening = TransferRequest("m1", "tx", "sunarc", "agr-t", "cellex", T0, "qa")
    provider = open_transfer(opening, Role.PROVIDER)
    consumer = open_transfer(opening, Role.CONSUMER)
    store.save_transfer(None, consumer)
    start = TransferStart("m2", "tx", "cellex", Checkpoint.genesis("tx"), T0)
    provider = apply_transfer(provider, start)
    before = store.load_transfer("tx")
    store.save_transfer(before, apply_transfer(before, start))
    attempt = 0
    while True:
        gate = ReleaseGate(asset, agreement, request, Pseudonymizer(SECRET, "agr-t"))
        finished = False
        batches = stream_batches(provider, engine, gate, batch_rows=2)
        for count, (batch, sent) in enumerate(batches):
            provider = sent  # the provider has sent it ...
            if count == 1 + attempt:  # ... but the connection breaks before it arrives
                break
            current = store.load_transfer("tx")
            advanced = accept_batch(current, batch)
            incoming = [
                IncomingRow(batch.first_offset + i, r.order_id, r.payload)
                for i, r in enumerate(batch.rows)
            ]
            store.commit_transfer_batch(current, advanced, incoming, T0)
            finished = batch.last
        if finished:
            break
        attempt += 1
        pause = TransferSuspension(f"s{attempt}", "tx", "sunarc", "broken", T0)
        resume_at = store.load_transfer("tx")
        paused = apply_transfer(resume_at, pause)
        store.save_transfer(resume_at, paused)
        resume = TransferStart(f"r{attempt}", "tx", "sunarc", paused.checkpoint, T0)
        provider = apply_transfer(apply_transfer(provider, pause), resume)
        store.save_transfer(paused, apply_transfer(paused, resume))
    received = [_content(r.decode()) for r in store.received_rows("agr-t")]
    pseudo = Pseudonymizer(SECRET, "agr-t")
    expected = [
        {k: (pseudo.pseudonym(v) if k == "operator_id" else v) for k, v in row.items()}
        for _, row in read_asset(engine, asset, None, OPERATOR_LOG_FIELDS)
        if row["order_id"] in {"ORD-1", "ORD-2"}
    ]
    for row in expected:
        row["logged_at"] = row["logged_at"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert attempt >= 2
    assert received == expected
    assert store.load_transfer("tx").offset == len(expected)
    consumer_db.dispose()


@pytest.fixture
def qdm(
    db_backend: str, tmp_path: Path, postgres_schema: Callable[[str], Engine]
) -> Iterator[QualityStore]:
    """An empty QDM on SQLite, or in a fresh PostgreSQL schema (``tests/conftest.py``)."""
    if db_backend == "sqlite":
        store = open_store(f"sqlite:///{tmp_path / 'qdm.sqlite'}")
        yield store
        store.close()
        return
    engine = postgres_schema("views")
    migrate(engine)
    yield QualityStore(engine)


def test_pages_split_into_exactly_their_rows_whatever_the_strings_hold(qdm: QualityStore) -> None:
    """JSON lines from one page encoding: quotes, braces, newlines and non-ASCII in values
    neither merge nor split rows, and each line is the row's wire bytes (as the row-by-row
    path makes them), on SQLite and PostgreSQL."""
    store = qdm
    tricky = ['x},{"y', "a\nb", 'q"},{"r', "}\n{", "Zürich ✓", "\\", "{}"]
    rows = [
        {
            "inspection_id": f"T-{n}",
            "station": value,
            "inspected_at": (T0 + timedelta(seconds=n, microseconds=999 * n)).isoformat(),
            "verdict": "ok",
            "model_version": value or None,
            "order_id": "ORD-1",
        }
        for n, value in enumerate(tricky)
    ]
    report = store.ingest_rows("inspection", list(enumerate(rows, 1)))
    assert report.accepted == len(tricky), report
    asset = Asset(
        asset_id="inspections",
        title="EL inspections",
        kind=AssetKind.INSPECTIONS_OF_ORDER,
        tables=("qdm_inspection",),
        fields=INSPECTION_FIELDS,
        offer=offer_for("inspections", frozenset({"ORD-1"}), None),
        pseudonymized=frozenset(),
    )
    agreement = to_agreement(asset.offer, "agr-s", "sunarc")
    request = Request(Action.READ, T0, asset.fields, purpose="qa", order_id="ORD-1")
    gate = ReleaseGate(asset, agreement, request, Pseudonymizer(SECRET, "agr-s"))
    opening = TransferRequest("m", "tx", "sunarc", "agr-s", "cellex", T0, "qa", "ORD-1")
    process = apply_transfer(
        open_transfer(opening, Role.PROVIDER),
        TransferStart("s", "tx", "cellex", Checkpoint.genesis("tx"), T0),
    )
    lines = [
        line
        for batch, _ in stream_batches(process, store.engine, gate, batch_rows=3)
        for line in batch.payloads()
    ]
    expected = [gate(row) for _, row in read_asset(store.engine, asset, "ORD-1", gate.query_fields)]
    assert lines == [
        row_bytes(
            {
                "@key": record_key(gate.pseudonymizer, INSPECTION_TABLE, [r["inspection_id"]]),
                "@v": 1,
                **r,
            }
        )
        for r in expected
        if r is not None
    ]
    assert [json.loads(line)["station"] for line in lines] == tricky
    assert json.loads(lines[0])["inspected_at"] == "2026-05-01T00:00:00Z"
    assert json.loads(lines[1])["inspected_at"] == "2026-05-01T00:00:01.000999Z"


def test_a_value_without_a_json_form_stops_the_page_and_names_its_row(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'qdm.sqlite'}")
    base = {"station": "EL-1", "inspected_at": T0, "verdict": "ok", "order_id": "ORD-1"}
    with store.engine.begin() as connection:
        connection.execute(
            insert(INSPECTION_TABLE),
            [
                {**base, "inspection_id": "F-1", "score": 0.5},
                {**base, "inspection_id": "F-2", "score": float("inf")},
            ],
        )
    asset = Asset(
        asset_id="inspections",
        title="EL inspections",
        kind=AssetKind.INSPECTIONS_OF_ORDER,
        tables=("qdm_inspection",),
        fields=INSPECTION_FIELDS,
        offer=offer_for("inspections", frozenset({"ORD-1"}), None),
        pseudonymized=frozenset(),
    )
    agreement = to_agreement(asset.offer, "agr-f", "sunarc")
    request = Request(Action.READ, T0, asset.fields, purpose="qa", order_id="ORD-1")
    gate = ReleaseGate(asset, agreement, request, Pseudonymizer(SECRET, "agr-f"))
    opening = TransferRequest("m", "tx", "sunarc", "agr-f", "cellex", T0, "qa", "ORD-1")
    process = apply_transfer(
        open_transfer(opening, Role.PROVIDER),
        TransferStart("s", "tx", "cellex", Checkpoint.genesis("tx"), T0),
    )
    with pytest.raises(ViewError, match=r"row 2 holds inf"):
        list(stream_batches(process, store.engine, gate))
    store.close()


@pytest.mark.parametrize("asked_order", [None, "ORD-1", "ORD-2"])
def test_orders_the_consumer_did_not_place_never_leave_whatever_the_agreement_says(
    engine: Engine, asked_order: str | None
) -> None:
    """An agreement bent to `order isNoneOf [ORD-3]` (signed before the provider checked
    operators) still releases only the orders the consumer placed, on both paths."""
    bent = Policy(
        uid="agr-bent",
        type=PolicyType.AGREEMENT,
        assigner="cellex",
        target="inspections",
        permissions=(
            Permission(
                Action.USE,
                (
                    Constraint(LeftOperand.PURPOSE, Operator.IS_ANY_OF, frozenset({"qa"})),
                    Constraint(LeftOperand.ORDER, Operator.IS_NONE_OF, frozenset({"ORD-3"})),
                ),
            ),
        ),
        assignee="sunarc",
    )
    asset = Asset(
        asset_id="inspections",
        title="EL inspections",
        kind=AssetKind.INSPECTIONS_OF_ORDER,
        tables=("qdm_inspection",),
        fields=INSPECTION_FIELDS,
        offer=offer_for("inspections", None, None),
        pseudonymized=frozenset(),
    )
    action = Action.READ if asked_order else Action.STREAM
    request = Request(action, T0, asset.fields, purpose="qa", order_id=asked_order)
    owned = frozenset({"ORD-1"})
    unchecked = ReleaseGate(asset, bent, request, Pseudonymizer(SECRET, "agr-bent"))
    gate = ReleaseGate(asset, bent, request, Pseudonymizer(SECRET, "agr-bent"), owned_orders=owned)
    assert unchecked.decision.allowed  # the agreement alone would release ORD-2
    if asked_order == "ORD-2":
        assert not gate.decision.allowed
        assert "ORD-2 is not an order you placed" in gate.decision.reason
        return
    assert gate.decision.allowed
    rows = [gate(row) for _, row in read_asset(engine, asset, asked_order, gate.query_fields)]
    released = {r["order_id"] for r in rows if r is not None}
    assert released == {"ORD-1"}
    opening = TransferRequest("m", "tx", "sunarc", "agr-bent", "cellex", T0, "qa", asked_order)
    process = apply_transfer(
        open_transfer(opening, Role.PROVIDER),
        TransferStart("s", "tx", "cellex", Checkpoint.genesis("tx"), T0),
    )
    on_wire = set()
    for batch, _ in stream_batches(process, engine, gate, batch_rows=8):
        on_wire |= {json.loads(line)["order_id"] for line in batch.payloads()}
    assert on_wire == {"ORD-1"}
