"""The committed, compiled anchor contract: loaded from package data, never compiled at run time.

Nodes must not need Node.js or a Solidity compiler; they deploy and call the bytecode and ABI
that `python -m qdspace.ledger.compile` wrote and that a test keeps in step with the source.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from qdspace.ledger.errors import ArtifactError

CONTRACT_NAME = "Anchor"
SOURCE_FILE = "Anchor.sol"
ARTIFACT_FILE = "Anchor.json"


@dataclass(frozen=True, slots=True)
class ContractArtifact:
    """ABI, creation and runtime bytecode of the anchor contract, with how they were built."""

    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    compiler_version: str
    evm_version: str
    source_sha256: str


def source_text() -> str:
    """The Solidity source shipped in the package."""
    return (resources.files("qdspace.ledger.contracts") / SOURCE_FILE).read_text(encoding="utf-8")


def source_sha256(text: str | None = None) -> str:
    """Hex SHA-256 of the source, recorded in the artifact to detect drift without a compiler."""
    data = (source_text() if text is None else text).encode("utf-8")
    return hashlib.sha256(data).hexdigest()


def load_artifact() -> ContractArtifact:
    """Read ``ledger/contracts/Anchor.json``; ArtifactError when it is missing or corrupt."""
    path = resources.files("qdspace.ledger.contracts") / ARTIFACT_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return ContractArtifact(
            abi=list(doc["abi"]),
            bytecode=str(doc["bytecode"]),
            deployed_bytecode=str(doc["deployedBytecode"]),
            compiler_version=str(doc["compiler"]["version"]),
            evm_version=str(doc["settings"]["evmVersion"]),
            source_sha256=str(doc["sourceSha256"]),
        )
    except FileNotFoundError as exc:
        raise ArtifactError(
            f"{path}: artifact missing; run `python -m qdspace.ledger.compile`"
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: artifact is corrupt ({exc!r})") from exc
