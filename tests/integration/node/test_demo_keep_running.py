"""``qdspace demo --keep-running`` leaves a whole network, chain included, and ``demo stop``
ends all of it.

Issue 21: the demo's chain died with the demo command while the nodes it left running
still pointed at it, so new records were never anchored and their proofs failed. Here
the demo process exits, a new record is ingested into the network it left, anchored,
and its proof fetched by the regulator and verified against the chain the demo printed;
``/v1/ledger/status`` tells the truth when the chain goes; ``demo stop`` leaves no
process behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qdspace.node.client import OperatorClient

pytestmark = pytest.mark.integration

RECORD_ID = "CX-EL-KEPT-000001"


def qdspace(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdspace", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not _alive(int(entry.name)):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def _record(sample_line: dict[str, object]) -> bytes:
    row = {**sample_line, "inspection_id": RECORD_ID, "frame_id": "kept-1", "score": 0.91}
    return (json.dumps(row) + "\n").encode()


def test_kept_network_anchors_new_records_and_stops_completely(tmp_path: Path) -> None:
    workdir = tmp_path / "space"
    pids: dict[str, int] = {}
    started = qdspace(
        "demo", "--keep-running", "--network-only", "--workdir", str(workdir), timeout=300
    )
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        processes = json.loads((workdir / "run" / "processes.json").read_text())
        pids = {p["name"]: p["pid"] for p in processes}
        assert set(pids) == {
            "sunarc", "cellex", "polycell", "regulator", "testhouse", "chain",
            "pecvd-tool", "cellex-opcua",  # cellex's simulated PECVD line and its connector
        }  # fmt: skip
        # the demo process is gone; everything it left runs, the chain included
        assert all(_alive(pid) for pid in pids.values()), pids
        chain_url = json.loads((workdir / "network.json").read_text())["chain"]
        assert re.search(
            rf"chain \(JSON-RPC\)\s*│\s*{pids['chain']}\s*│\s*{chain_url}", started.stdout
        )
        assert f"qdspace demo stop --workdir {workdir.resolve()}" in started.stdout
        for member in ("sunarc", "cellex", "polycell", "regulator"):  # console URL per member
            row = rf"{member} web console\s*│\s*{pids[member]}\s*│\s*https://127\.0\.0\.1:\d+/console/"
            assert re.search(row, started.stdout), started.stdout[-3000:]
        assert "log in with its operator token" in started.stdout
        cellex = workdir / "nodes" / "cellex"
        assert json.loads((cellex / "ledger.json").read_text())["rpc_url"] == chain_url

        runtime = json.loads((cellex / "run" / "runtime.json").read_text())
        sample = workdir / "sample-data" / "cellex" / "el_inspections.jsonl"
        first = json.loads(sample.read_text().splitlines()[0])
        with OperatorClient.from_directory(cellex, timeout=90) as api:
            kept = tmp_path / "kept.jsonl"
            kept.write_bytes(_record(first))
            stored = api.ingest_file("inspection", kept)
            assert stored["accepted"] == 1, stored
            flushed = api.ledger_flush(60)
            assert flushed["flushed"], flushed
            status = api.ledger_status()
            assert status["chain_reachable"] and status["chain_checked"] == "now", status

            # a command that only calls its node loads the client, not the server stack
            timed = subprocess.run(
                [
                    sys.executable,
                    "-X",
                    "importtime",
                    "-m",
                    "qdspace",
                    "contracts",
                    "--dir",
                    str(cellex),
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert timed.returncode == 0, timed.stderr[-2000:]
            loaded = {line.rpartition("|")[2].strip() for line in timed.stderr.splitlines()}
            assert "httpx" in loaded
            assert not loaded & {
                "fastapi",
                "grpc",
                "sqlalchemy",
                "web3",
                "ray",
                "torch",
                "qdspace.node.run",
            }

            proof = tmp_path / "proof.json"
            fetched = qdspace(
                "ledger", "fetch-proof",
                "--dir", str(workdir / "nodes" / "regulator"),
                "--api", str(runtime["regulator"]),
                "--kind", "inspection",
                "--id", RECORD_ID,
                "--out", str(proof),
            )  # fmt: skip
            assert fetched.returncode == 0, fetched.stderr
            verified = qdspace("verify", str(proof), "--rpc", chain_url)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert "VALID" in verified.stdout and "INVALID" not in verified.stdout

            # health tells the truth at once when the chain goes, not at the next anchoring
            os.kill(pids["chain"], signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pids["chain"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            clock = time.monotonic()
            status = api.ledger_status()
            assert time.monotonic() - clock < 5
            assert not status["chain_reachable"], status
            assert status["chain_checked"] == "now" and status["probe_error"], status
            cached = api.ledger_status(probe=False)
            assert cached["chain_checked"] == "last anchoring attempt"
    finally:
        stopped = qdspace("demo", "stop", "--workdir", str(workdir))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "cellex (stopped)" in stopped.stdout
    assert "testhouse (stopped)" in stopped.stdout  # the managed host's process too
    assert "pecvd-tool (stopped)" in stopped.stdout and "cellex-opcua (stopped)" in stopped.stdout
    assert "chain (was not running)" in stopped.stdout  # this test stopped it above
    assert not [pid for pid in pids.values() if _alive(pid)]
    assert _processes_mentioning(str(workdir.resolve())) == []
    assert not (workdir / "run" / "processes.json").exists()
    again = qdspace("demo", "stop", "--workdir", str(workdir))
    assert again.returncode == 1 and "no network left running" in again.stderr
