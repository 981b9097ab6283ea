"""The node's ledger settings and how QDM rows become leaf bytes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from qdspace.ledger.tx import ANCHOR_GAS, DEFAULT_MAX_IN_FLIGHT
from qdspace.node.errors import ConfigError
from qdspace.node.runtime.ledger import LedgerSettings, canonical_row, write_ledger_file


def test_ledger_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not LedgerSettings.load(tmp_path).enabled  # no file, no env: no anchoring
    write_ledger_file(tmp_path, "http://127.0.0.1:8545", "0x" + "11" * 20, 424242)
    (tmp_path / "chain.key").write_text("00" * 31 + "01")
    settings = LedgerSettings.load(tmp_path)
    assert settings.enabled and settings.chain_id == 424242
    assert settings.key_file == tmp_path / "chain.key"
    monkeypatch.setenv("QDSPACE_LEDGER_RPC_URL", "http://chain.internal:8545")
    monkeypatch.setenv("QDSPACE_LEDGER_MAX_LEAVES", "50")
    settings = LedgerSettings.load(tmp_path)
    assert (settings.rpc_url, settings.max_leaves) == ("http://chain.internal:8545", 50)
    assert settings.gas == ANCHOR_GAS  # a fixed gas limit unless told to estimate (0)
    monkeypatch.setenv("QDSPACE_LEDGER_GAS", "0")
    assert LedgerSettings.load(tmp_path).gas == 0
    monkeypatch.setenv("QDSPACE_LEDGER_GAS", "-1")
    with pytest.raises(ConfigError, match="gas"):
        LedgerSettings.load(tmp_path)
    monkeypatch.delenv("QDSPACE_LEDGER_GAS")
    monkeypatch.setenv("QDSPACE_LEDGER_MAX_LEAVES", "0")
    with pytest.raises(ConfigError, match="max_leaves"):
        LedgerSettings.load(tmp_path)
    monkeypatch.delenv("QDSPACE_LEDGER_MAX_LEAVES")
    assert LedgerSettings.load(tmp_path).max_in_flight == DEFAULT_MAX_IN_FLIGHT
    monkeypatch.setenv("QDSPACE_LEDGER_MAX_IN_FLIGHT", "1")  # an endpoint without batches
    assert LedgerSettings.load(tmp_path).max_in_flight == 1
    for bad in ("0", "-3", "1000"):
        monkeypatch.setenv("QDSPACE_LEDGER_MAX_IN_FLIGHT", bad)
        with pytest.raises(ConfigError, match="max_in_flight"):
            LedgerSettings.load(tmp_path)
    monkeypatch.delenv("QDSPACE_LEDGER_MAX_IN_FLIGHT")
    (tmp_path / "ledger.json").write_text(json.dumps({"rpc_url": "x", "colour": "red"}))
    with pytest.raises(ConfigError, match="colour"):
        LedgerSettings.load(tmp_path)


def test_canonical_row_is_stable_and_ignores_the_storage_id() -> None:
    row = {
        "id": 7,
        "inspection_id": "CX-EL-000007",
        "inspected_at": dt.datetime(2026, 11, 2, 8, 0, tzinfo=dt.UTC),
        "verdict": "fail",
        "score": 0.93,
        "defect_class": None,
    }
    data = canonical_row("inspection", row)
    assert data == canonical_row("inspection", dict(reversed(list({**row, "id": 99}.items()))))
    assert json.loads(data)["inspected_at"] == "2026-11-02T08:00:00+00:00"
    assert "id" not in json.loads(data) and json.loads(data)["qdm"] == "inspection"
    assert canonical_row("inspection", {**row, "verdict": "pass"}) != data


def test_a_corrected_record_is_anchored_next_to_the_version_it_replaced(tmp_path: Path) -> None:
    """Both hashes stay on the ledger: the first version under the inspection id, the
    correction and the withdrawal under ``id@vN``; an unchanged record hashes as before."""
    import hashlib

    from qdspace.connector.storage import open_store
    from qdspace.ledger.anchorer import Anchorer
    from qdspace.ledger.client import LedgerClient
    from qdspace.ledger.keys import ChainSigner
    from qdspace.ledger.queue import LeafQueue
    from qdspace.ledger.queue_schema import ensure_schema as ensure_queue
    from qdspace.node.runtime.ledger import QdmSweeper, inspection_ref

    store = open_store(f"sqlite:///{tmp_path / 'node.db'}")
    ensure_queue(store.engine)
    queue = LeafQueue(store.engine)
    client = LedgerClient("http://127.0.0.1:9", "0x" + "11" * 20)  # never called here
    anchorer = Anchorer(queue, client, ChainSigner.from_hex("22" * 32, source="test"))
    sweeper = QdmSweeper(store.engine, anchorer)
    row = {
        "inspection_id": "INS-1",
        "station": "EL-1",
        "inspected_at": "2026-11-02T08:00:00Z",
        "verdict": "pass",
    }
    store.ingest_rows("inspection", [(1, row)])
    sweeper.sweep()
    first = queue.leaf("inspection", "INS-1")
    store.ingest_rows("inspection", [(1, {**row, "verdict": "fail"})])
    sweeper.sweep()
    store.withdraw(
        "inspection", {"inspection_id": "INS-1"}, dt.datetime(2026, 11, 3, tzinfo=dt.UTC)
    )
    sweeper.sweep()
    second = queue.leaf("inspection", inspection_ref("INS-1", 2))
    third = queue.leaf("inspection", inspection_ref("INS-1", 3))
    assert len({first.record_sha256, second.record_sha256, third.record_sha256}) == 3
    assert second.enqueued_at >= first.enqueued_at
    current = sweeper.load_record("inspection", "INS-1@v3")
    assert current is not None and hashlib.sha256(current).digest() == third.record_sha256
    assert json.loads(current)["withdrawn_at"].startswith("2026-11-03")
    stored = sweeper.load_record("inspection", "INS-1")  # changed since it was anchored
    assert stored is not None and hashlib.sha256(stored).digest() != first.record_sha256
    assert "version" not in json.loads(canonical_row("inspection", {**row, "version": 1}))
    store.close()


def test_a_node_anchors_only_for_the_chain_id_it_was_told(tmp_path: Path) -> None:
    """Without ``chain_id`` a node would sign for whatever chain its endpoint names; and a
    fixed gas limit over the node's own cap is a contradiction: both refused at start."""
    from types import SimpleNamespace

    from qdspace.node.layout import NodeLayout
    from qdspace.node.runtime.ledger import attach_ledger

    ctx: Any = SimpleNamespace(directory=tmp_path, layout=NodeLayout(tmp_path))
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps({"rpc_url": "http://127.0.0.1:9", "contract": "0x" + "11" * 20}))
    with pytest.raises(ConfigError, match="no chain_id: the node signs"):
        attach_ledger(ctx)
    write_ledger_file(tmp_path, "http://127.0.0.1:9", "0x" + "11" * 20, 424242)
    settings = json.loads(path.read_text()) | {"gas": 2_000_000}
    path.write_text(json.dumps(settings))
    with pytest.raises(ConfigError, match="gas 2000000 is over max_gas 1000000"):
        attach_ledger(ctx)
    path.write_text(json.dumps(settings | {"max_fee_gwei": -1}))
    with pytest.raises(ConfigError, match="max_fee_gwei"):
        attach_ledger(ctx)
