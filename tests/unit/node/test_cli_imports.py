"""The CLI starts without the node's server stack.

Issue 21: every ``qdspace`` command took seconds because ``node.cli`` imported the
server stack (FastAPI, gRPC, SQLAlchemy, web3, the federation room) at module level,
and the commands that talk to a running node imported ``node.run`` to find it. These
tests run the CLI in a fresh interpreter and fail if a heavy module got loaded by
``qdspace --help`` or on the way of a command that only calls its node.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]

#: top-level packages a command that only calls its node must not load
HEAVY = (
    "grpc",
    "fastapi",
    "starlette",
    "uvicorn",
    "web3",
    "eth_account",
    "ray",
    "torch",
    "onnxruntime",
    "sqlalchemy",
    "sqlmodel",
    "numpy",
    "federation",
    "ledger",
    "inference",
)
HEAVY_NODE = (
    "qdspace.node.run",
    "qdspace.node.api",
    "qdspace.node.rpc",
    "qdspace.node.context",
    "qdspace.connector.storage",
)

PROBE = """
import json, sys
from qdspace.node.cli import app
from qdspace.node.cli.dispatch import command_for
try:  # as the script runs it (`main`): only the command named is built
    command_for(app, sys.argv[1:])(sys.argv[1:], prog_name="qdspace")
except SystemExit as done:
    code = done.code
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def _run(*args: str) -> tuple[int, list[str], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    last = done.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    return int(result["code"] or 0), result["modules"], done.stdout + done.stderr


def _room(module: str) -> str:
    """The top-level name a module belongs to; ``qdspace.ledger.x`` belongs to ``ledger``."""
    parts = module.split(".")
    return parts[1] if parts[0] == "qdspace" and len(parts) > 1 else parts[0]


def _heavy(modules: list[str]) -> list[str]:
    """Loaded heavy modules; a room's package and its ``errors`` module are light."""
    light = {"federation", "ledger", "inference"}
    return [
        m
        for m in modules
        if not (
            m.removeprefix("qdspace.") in light or (_room(m) in light and m.endswith(".errors"))
        )
        and (_room(m) in HEAVY or any(m == h or m.startswith(h + ".") for h in HEAVY_NODE))
    ]


def test_help_loads_no_server_stack() -> None:
    code, modules, out = _run("--help")
    assert code == 0, out
    assert _heavy(modules) == []
    assert "httpx" not in modules  # not even the HTTP client: --help calls nothing


@pytest.mark.parametrize(
    "args",
    [
        ("contracts", "--dir", "{d}"),
        ("catalog", "--dir", "{d}", "cellex"),
        ("order", "close", "--dir", "{d}", "PO-1"),
        ("contracts", "--dir", "{d}", "sweep"),
        ("contracts", "purge", "--dir", "{d}", "--yes"),
        ("fl", "status", "--dir", "{d}"),
        ("fl", "join", "--dir", "{d}", "--job", "j", "--data", "x.npz"),
        ("dsp", "status", "--dir", "{d}", "urn:uuid:1"),
        ("dsp", "suspend", "--dir", "{d}", "urn:uuid:1", "--reason", "pause"),
    ],
)
def test_node_calling_commands_load_only_the_client(tmp_path: Path, args: tuple[str, ...]) -> None:
    # a node directory whose node is not running: the command goes all the way to the
    # client (runtime file, token, httpx) and stops there with a clear error
    (tmp_path / "operator.token").write_text("t\n")
    code, modules, out = _run(*(a.format(d=tmp_path) for a in args))
    assert code == 1 and "is not running" in out, out
    assert _heavy(modules) == []
    assert "httpx" in modules


def test_the_light_runtime_reader_reads_what_the_node_writes(tmp_path: Path) -> None:
    from qdspace.node import run
    from qdspace.node.client import runtime_file

    assert runtime_file(tmp_path) == run.runtime_file(tmp_path) == tmp_path / "run/runtime.json"


def test_a_node_without_a_chain_loads_no_chain_client() -> None:
    """``node.run`` (the node's whole server stack) loads no web3, eth_account or py_ecc:
    the chain client, the passport and the regulator's router are imported only when a
    node's routes are mounted with a ledger (about a third of a node's start-up)."""
    probe = "import json, sys, qdspace.node.run; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    modules = json.loads(done.stdout.splitlines()[-1])
    chain = ("web3", "eth_account", "eth_keyfile", "py_ecc", "eth_abi")
    assert not [m for m in modules if m.split(".")[0] in chain]
    assert "qdspace.node.api.app" in modules  # the probe did load the server stack
