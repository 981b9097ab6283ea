"""The committed anchor contract artifact stays in step with its Solidity source."""

from __future__ import annotations

import json

import pytest

from qdspace.ledger.artifact import load_artifact, source_sha256
from qdspace.ledger.compile import (
    EVM_VERSION,
    SOLC_VERSION,
    artifact_path,
    compile_artifact,
    missing_tools,
)
from qdspace.ledger.compile import render as render_artifact


def test_artifact_loads_and_records_its_source_hash() -> None:
    art = load_artifact()
    assert art.source_sha256 == source_sha256(), (
        "ledger/contracts/Anchor.sol changed since Anchor.json was compiled; "
        "run `python -m qdspace.ledger.compile`"
    )
    assert art.evm_version == EVM_VERSION
    assert art.compiler_version.startswith(SOLC_VERSION + "+")
    names = {e.get("name") for e in art.abi}
    assert {"anchor", "lookup", "Anchored", "AlreadyAnchored"} <= names
    assert art.bytecode.startswith("0x") and len(art.bytecode) > 100
    # Paris has no PUSH0 (0x5f); a stray Shanghai build would not run on older chains.
    assert json.loads(artifact_path().read_text())["settings"]["evmVersion"] == "paris"


def test_recompiling_reproduces_the_committed_artifact() -> None:
    why = missing_tools()
    if why:
        pytest.skip(f"cannot recompile the anchor contract: {why}")
    fresh = render_artifact(compile_artifact())
    assert fresh == artifact_path().read_text(encoding="utf-8"), (
        "ledger/contracts/Anchor.json drifted from a fresh compile of Anchor.sol; "
        "run `python -m qdspace.ledger.compile` and commit the result"
    )
