"""Compile ``Anchor.sol`` with the pinned ``solc`` npm package and (re)write its artifact.

Run ``python -m qdspace.ledger.compile`` after editing the contract, ``--check`` to fail when the
committed artifact differs from a fresh compile. Needs Node.js and ``npm ci --prefix
deploy/chain``; the compiler version and EVM version are pinned here and in
``deploy/chain/package.json``, so the same source always yields the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from qdspace.ledger.artifact import (
    ARTIFACT_FILE,
    CONTRACT_NAME,
    SOURCE_FILE,
    source_sha256,
    source_text,
)
from qdspace.ledger.errors import ArtifactError

SOLC_VERSION = "0.8.28"
# Paris (the Merge) has no PUSH0, so the bytecode runs on py-evm, ganache, Hardhat and on
# consortium chains (Besu, Quorum) that lag behind mainnet forks.
EVM_VERSION = "paris"
OPTIMIZER = {"enabled": True, "runs": 200}
TOOLS_ENV = "QDSPACE_CHAIN_TOOLS"
INSTALL_HINT = "run `npm ci --prefix deploy/chain` to enable"


def tools_dir() -> Path:
    """Where the pinned npm packages live (``deploy/chain`` of the checkout by default)."""
    env = os.environ.get(TOOLS_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[1] / "deploy" / "chain"


def missing_tools() -> str | None:
    """Why compiling cannot run here, or None when Node.js and solc are installed."""
    if shutil.which("node") is None:
        return f"Node.js (`node`) not found on PATH; install Node.js and {INSTALL_HINT}"
    if not (tools_dir() / "node_modules" / "solc" / "package.json").is_file():
        return f"npm package solc missing under {tools_dir()}; {INSTALL_HINT}"
    return None


def standard_input(source: str) -> dict[str, Any]:
    """The solc standard-JSON input: one source, pinned EVM version and optimizer."""
    return {
        "language": "Solidity",
        "sources": {SOURCE_FILE: {"content": source}},
        "settings": {
            "evmVersion": EVM_VERSION,
            "optimizer": OPTIMIZER,
            "outputSelection": {
                "*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}
            },
        },
    }


def compile_artifact(source: str | None = None) -> dict[str, Any]:
    """Compile with node + solc and return the artifact document (not yet written)."""
    why = missing_tools()
    if why:
        raise ArtifactError(why)
    text = source_text() if source is None else source
    proc = subprocess.run(
        ["node", str(tools_dir() / "compile.js")],
        input=json.dumps(standard_input(text)),
        capture_output=True,
        text=True,
        cwd=tools_dir(),
        check=False,
        timeout=300,
    )
    if proc.returncode != 0:
        raise ArtifactError(f"solc failed (exit {proc.returncode}): {proc.stderr.strip()}")
    out = json.loads(proc.stdout)
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise ArtifactError("\n".join(e["formattedMessage"] for e in errors))
    version = out["qdspaceCompilerVersion"]
    if not version.startswith(SOLC_VERSION + "+"):
        raise ArtifactError(f"solc {version} installed, {SOLC_VERSION} pinned; {INSTALL_HINT}")
    contract = out["contracts"][SOURCE_FILE][CONTRACT_NAME]
    return {
        "contractName": CONTRACT_NAME,
        "sourceName": SOURCE_FILE,
        "sourceSha256": source_sha256(text),
        "compiler": {"name": "solc", "version": version},
        "settings": {"evmVersion": EVM_VERSION, "optimizer": OPTIMIZER},
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedBytecode": "0x" + contract["evm"]["deployedBytecode"]["object"],
    }


def render(doc: dict[str, Any]) -> str:
    """The artifact's canonical text, so a byte comparison is a meaningful drift check."""
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def artifact_path() -> Path:
    """The committed artifact in the source tree."""
    return Path(__file__).resolve().parent / "contracts" / ARTIFACT_FILE


def main(argv: list[str] | None = None) -> int:
    """CLI: write the artifact, or with --check report drift (exit 1) without writing."""
    parser = argparse.ArgumentParser(prog="python -m qdspace.ledger.compile", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the artifact drifted")
    args = parser.parse_args(argv)
    try:
        fresh = render(compile_artifact())
    except ArtifactError as exc:
        print(f"ledger.compile: {exc}", file=sys.stderr)
        return 2
    path = artifact_path()
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if args.check:
        if current != fresh:
            print(f"ledger.compile: {path} differs from a fresh compile", file=sys.stderr)
            return 1
        print(f"ledger.compile: {path} is up to date")
        return 0
    path.write_text(fresh, encoding="utf-8")
    print(f"ledger.compile: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
