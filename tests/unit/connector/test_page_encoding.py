"""The transfer's page encoder (column by column) against the row-at-a-time gate and the
page encoder it replaced: byte for byte the same lines, and nothing outside the agreement.

Rows of any content (strings with quotes, braces, newlines, non-ASCII; missing values;
floats; timestamps with and without microseconds; several orders; corrected versions and
withdrawn records) are encoded three ways for every agreement, request and page size
drawn: `PageEncoder.encode` (what a transfer sends: JSON written column by column,
`connector.page_json`), the row-at-a-time path that runs
`ReleaseGate` on each row (`PageEncoder._encode_per_row`) and `previous_encoding`, the
page encoder this one replaced (a dict per row, kept here verbatim as the reference).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import count, repeat
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from qdspace.connector.assets import Asset, AssetKind
from qdspace.connector.contract_errors import ViewError
from qdspace.connector.encoding import EncodedPage, PageEncoder, wire_timestamps
from qdspace.connector.paging import (
    INSPECTION_FIELDS,
    INSPECTION_TABLE,
    MEASUREMENT_TABLE,
    asset_source,
    read_pages,
)
from qdspace.connector.pseudonym import PSEUDONYM_PREFIX, Pseudonymizer
from qdspace.connector.release_gate import ReleaseGate
from qdspace.connector.storage import QualityStore, open_store
from qdspace.connector.transfer_wire import KEY_FIELD, VERSION_FIELD, WITHDRAWN_FIELD
from qdspace.policies.evaluate import Request
from qdspace.policies.model import Action, OfferTerms, make_offer, to_agreement

T0 = datetime(2026, 5, 1, tzinfo=UTC)
ORDERS = ["ORD-1", "ORD-2"]
SECRET = b"s" * 32
GRANTABLE = sorted(INSPECTION_FIELDS)
TEXT_FIELDS = ["station", "serial", "batch_id", "model_version", "frame_id", "defect_class"]
ENVELOPE = {KEY_FIELD, VERSION_FIELD, WITHDRAWN_FIELD}
_ids = count()


def previous_encoding(encoder: PageEncoder, page: list[Sequence[Any]]) -> EncodedPage:
    """The page encoder before the column-wise one (the uniform path), verbatim in effect:
    a dict per row, the envelope merged in per row, one JSON call per page."""
    order = encoder.gate.request.order_id
    assert order is not None
    if encoder.attributed is None:
        at = encoder.read_fields.index(encoder.order_key)
        page = [row for row in page if row[at] == order]
    if not page:
        return EncodedPage(b"", 0, (), ())
    names = encoder.fields
    rows: list[dict[str, Any]] = list(map(dict, map(zip, repeat(names), page)))
    for name in names:
        if _is_stamp(name):
            at = encoder.read_fields.index(name)
            for row, stamp in zip(rows, wire_timestamps([r[at] for r in page]), strict=True):
                row[name] = stamp
    if encoder.attributed is not None and encoder.order_key in names:
        for row in rows:
            row[encoder.order_key] = encoder.attributed
    for name in names:
        if name in encoder.gate.asset.pseudonymized:
            for row in rows:
                if row[name] is not None:
                    row[name] = encoder.gate.pseudonymizer.pseudonym(row[name])
    key_at = [encoder.read_fields.index(n) for n in ("inspection_id",)]
    version_at = encoder.read_fields.index("version")
    withdrawn_at = encoder.read_fields.index("withdrawn_at")
    out = []
    for raw, row in zip(page, rows, strict=True):
        key = encoder._keys([raw[i] for i in key_at])
        if raw[withdrawn_at] is not None:
            out.append({KEY_FIELD: key, VERSION_FIELD: raw[version_at], WITHDRAWN_FIELD: True})
        else:
            out.append({KEY_FIELD: key, VERSION_FIELD: raw[version_at], **row})
    payload = orjson.dumps(out)[1:-1].replace(b'},{"', b'}\n{"')
    return EncodedPage(payload, len(out), (order,), ())


def _is_stamp(name: str) -> bool:
    return name in ("inspected_at", "withdrawn_at")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QualityStore]:
    path: Path = tmp_path_factory.mktemp("page-encoding") / "qdm.sqlite"
    opened = open_store(f"sqlite:///{path}")
    yield opened
    opened.close()


text = st.text(
    st.characters(blacklist_categories=("Cs",)) | st.sampled_from(list('"{},\n\\%:')), max_size=12
)
record = st.fixed_dictionaries(
    {
        "station": text,
        "offset_us": st.integers(0, 10**9),
        "verdict": st.sampled_from(["ok", "ng"]),
        "defect_class": st.none() | text,
        "score": st.none() | st.floats(allow_nan=False, allow_infinity=False),
        "model_version": st.none() | text,
        "serial": st.none() | text,
        "batch_id": st.none() | text,
        "order": st.sampled_from(ORDERS),
        "version": st.integers(1, 3),
        "withdrawn": st.booleans(),
    }
)


def _insert(store: QualityStore, records: list[dict[str, Any]], whole: bool = False) -> None:
    """`whole`: times in whole seconds (most stored rows; the vectorised wire form)."""
    rows = []
    for r in records:
        offset = r["offset_us"] - r["offset_us"] % 1_000_000 if whole else r["offset_us"]
        at = T0 + timedelta(microseconds=offset)
        rows.append(
            {
                "inspection_id": f"I-{next(_ids)}-{r['station'][:4]}",
                "station": r["station"],
                "inspected_at": at,
                "verdict": r["verdict"],
                "defect_class": r["defect_class"],
                "score": r["score"],
                "model_version": r["model_version"],
                "serial": r["serial"],
                "batch_id": r["batch_id"],
                "order_id": r["order"],
                "version": r["version"],
                "withdrawn_at": at + timedelta(days=1) if r["withdrawn"] else None,
            }
        )
    with store.engine.begin() as connection:
        connection.execute(delete(INSPECTION_TABLE))
        if rows:
            connection.execute(insert(INSPECTION_TABLE), rows)


def _asset(
    orders: frozenset[str] | None, fields: frozenset[str] | None, pseudonymized: frozenset[str]
) -> Asset:
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=orders, fields=fields)
    return Asset(
        asset_id="inspections",
        title="EL inspections",
        kind=AssetKind.INSPECTIONS_OF_ORDER,
        tables=("qdm_inspection",),
        fields=INSPECTION_FIELDS,
        offer=make_offer("offer-inspections", "cellex", "inspections", terms),
        pseudonymized=pseudonymized,
    )


def _three_ways(
    store: QualityStore, gate: ReleaseGate, page_size: int
) -> list[tuple[EncodedPage, EncodedPage, EncodedPage]]:
    table, where, attributed = asset_source(store.engine, gate.asset, gate.request.order_id)
    encoder = PageEncoder(gate, table, attributed)
    pages = read_pages(store.engine, table, encoder.read_fields, where, page_size=page_size)
    return [
        (encoder.encode(page), encoder._encode_per_row(page), previous_encoding(encoder, page))
        for page, _ in pages
    ]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    records=st.lists(record, max_size=30),
    orders=st.none() | st.frozensets(st.sampled_from(ORDERS), min_size=1),
    fields=st.none() | st.frozensets(st.sampled_from(GRANTABLE), min_size=1),
    asked_order=st.sampled_from(ORDERS),
    asked_fields=st.none() | st.frozensets(st.sampled_from(GRANTABLE), min_size=1, max_size=5),
    pseudonymized=st.frozensets(st.sampled_from(TEXT_FIELDS), max_size=3),
    page_size=st.integers(1, 12),
    whole_seconds=st.booleans(),
)
def test_column_pages_are_the_row_gates_bytes_and_hold_nothing_outside_the_agreement(
    store: QualityStore,
    records: list[dict[str, Any]],
    orders: frozenset[str] | None,
    fields: frozenset[str] | None,
    asked_order: str,
    asked_fields: frozenset[str] | None,
    pseudonymized: frozenset[str],
    page_size: int,
    whole_seconds: bool,
) -> None:
    _insert(store, records, whole_seconds)
    asset = _asset(orders, fields, pseudonymized)
    agreement = to_agreement(asset.offer, "agr-p", "sunarc")
    request = Request(
        Action.READ, T0, asset.fields, purpose="qa", order_id=asked_order, fields=asked_fields
    )
    gate = ReleaseGate(asset, agreement, request, Pseudonymizer(SECRET, "agr-p"))
    if not gate.decision.allowed:
        with pytest.raises(ViewError):  # a denied request encodes nothing
            _three_ways(store, gate, page_size)
        return
    granted = (fields if fields is not None else INSPECTION_FIELDS) & (
        asked_fields if asked_fields is not None else INSPECTION_FIELDS
    )
    expected = [r for r in records if r["order"] == asked_order]
    lines: list[bytes] = []
    for new, by_row, previous in _three_ways(store, gate, page_size):
        assert (new.payload, new.count, new.order_ids, new.order_index) == (
            by_row.payload,
            by_row.count,
            by_row.order_ids,
            by_row.order_index,
        )
        assert (new.payload, new.count, new.order_ids) == (
            previous.payload,
            previous.count,
            previous.order_ids,
        )
        lines.extend(new.payload.split(b"\n") if new.count else [])
    assert len(lines) == len(expected)  # every row of the order, none of another
    for line, source in zip(lines, expected, strict=True):
        row = json.loads(line)
        assert row[VERSION_FIELD] == source["version"]
        if source["withdrawn"]:
            assert set(row) == ENVELOPE
            continue
        assert set(row) - {KEY_FIELD, VERSION_FIELD} == granted
        for name in granted & pseudonymized:
            assert row[name] is None or row[name].startswith(PSEUDONYM_PREFIX)
        if "station" in granted and "station" not in pseudonymized:
            assert row["station"] == source["station"]


def test_an_attributed_view_encodes_like_the_row_gate(store: QualityStore) -> None:
    """Process data along a genealogy: every row is attributed to the order it is read for."""
    rows = [
        {
            "equipment": "PECVD-1",
            "parameter": "vacuum",
            "element_id": "E1",
            "measured_at": T0 + timedelta(minutes=n, microseconds=n * 7),
            "value": 1.0 + n / 3,
            "unit": "Pa",
            "raw_value": str(n),
            "raw_unit": "Pa",
            "batch_id": "CB-0" if n % 2 else None,
            "order_id": None if n % 2 else "ORD-1",
            "withdrawn_at": T0 if n % 5 == 4 else None,
        }
        for n in range(23)
    ]
    with store.engine.begin() as connection:
        connection.execute(delete(MEASUREMENT_TABLE))
        connection.execute(insert(MEASUREMENT_TABLE), rows)
    fields = frozenset(c.name for c in MEASUREMENT_TABLE.columns) - {
        "id",
        "version",
        "withdrawn_at",
    }
    terms = OfferTerms(purposes=frozenset({"qa"}), orders=None, fields=None)
    asset = Asset(
        asset_id="process",
        title="Process data",
        kind=AssetKind.PROCESS_ALONG_GENEALOGY,
        tables=("qdm_measurement",),
        fields=fields,
        offer=make_offer("offer-process", "cellex", "process", terms),
        pseudonymized=frozenset({"equipment"}),
    )
    agreement = to_agreement(asset.offer, "agr-g", "sunarc")
    request = Request(Action.READ, T0, asset.fields, purpose="qa", order_id="ORD-1")
    gate = ReleaseGate(asset, agreement, request, Pseudonymizer(SECRET, "agr-g"))
    table, where, attributed = asset_source(store.engine, asset, "ORD-1")
    assert attributed == "ORD-1"
    encoder = PageEncoder(gate, table, attributed)
    sent = 0
    for page, _ in read_pages(store.engine, table, encoder.read_fields, where, page_size=4):
        new, by_row = encoder.encode(page), encoder._encode_per_row(page)
        assert (new.payload, new.count, new.order_ids) == (
            by_row.payload,
            by_row.count,
            by_row.order_ids,
        )
        for line in new.payload.split(b"\n") if new.count else []:
            row = json.loads(line)
            assert set(row) - ENVELOPE <= fields
            assert WITHDRAWN_FIELD in row or row["order_id"] == "ORD-1"
            assert WITHDRAWN_FIELD in row or row["equipment"].startswith(PSEUDONYM_PREFIX)
        sent += new.count
    assert sent == 12  # the rows of ORD-1 itself, none of CB-0 (not in its genealogy here)
