"""The node's ledger settings and how QDM rows become leaf bytes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from ledger.client import ANCHOR_GAS
from node.anchoring import LedgerSettings, canonical_row, write_ledger_file
from node.errors import ConfigError


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
