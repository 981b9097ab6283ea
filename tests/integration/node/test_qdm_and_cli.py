"""QDM ingest through a running node's REST API and the CLI, genealogy over mTLS gRPC,
and the CLI's one-line errors for broken setups."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from qdspace.connector.sample import sold_batch, write_sample_files
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

pytestmark = pytest.mark.integration


def qdspace(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "qdspace", *args], capture_output=True, text=True, timeout=timeout
    )


def test_rest_ingest_reports_bad_rows_and_stores_nothing_twice(
    network: LocalNetwork, tmp_path: Path
) -> None:
    # the network is shared by the whole session: other tests may have ingested Cellex's
    # sample already, so count what this ingest adds rather than what the node holds
    files = write_sample_files(tmp_path / "cellex", "cellex", "supplier", bad_rows=True)
    with network["cellex"].operator() as client:
        before = client.qdm_counts()
        first = {kind: client.ingest_file(kind, path) for kind, path in files.items()}
        counts = client.qdm_counts()
        again = {kind: client.ingest_file(kind, path) for kind, path in files.items()}
        assert client.qdm_counts() == counts
    for kind, result in first.items():
        assert counts[kind] - before.get(kind, 0) == result["accepted"], kind
    inspection = first["inspection"]
    assert inspection["accepted"] + inspection["duplicates"] == 2997
    assert again["inspection"]["accepted"] == 0
    assert again["inspection"]["duplicates"] == 2997
    rejected = first["inspection"]["rejected"]
    assert rejected[0] == {
        "source": "el_inspections.jsonl", "line": 11, "field": "score",
        "reason": "1.7 is above the maximum 1",
    }  # fmt: skip
    assert len(rejected) == 4


def test_rest_ingest_of_json_rows_and_unknown_kind(network: LocalNetwork) -> None:
    row = {"location": "hall", "measured_at": "2026-11-02T08:00:00Z", "humidity": "0.4",
           "humidity_unit": "fraction"}  # fmt: skip
    with network["polycell"].client() as client:
        r = client.post("/v1/ingest/environment", json={"rows": [row, {**row, "location": ""}]})
        assert r.status_code == 200
        assert r.json()["accepted"] == 1
        assert r.json()["rejected"][0]["field"] == "location"
        r = client.post("/v1/ingest/photos", json={"rows": []})
        assert r.status_code == 404
        assert "unknown kind 'photos'" in r.text


def test_genealogy_hop_over_mtls_answers_only_the_customer(
    network: LocalNetwork, tmp_path: Path
) -> None:
    files = write_sample_files(tmp_path / "cellex2", "cellex", "supplier")
    with network["cellex"].operator() as api:
        for kind in ("batch", "genealogy"):
            api.ingest_file(kind, files[kind])
    batch = sold_batch("cellex", "sunarc")
    with network["sunarc"].operator() as api:
        body = api.upstream("cellex", batch)
        assert body["batch"]["producer"] == "cellex"
        assert [p["producer"] for p in body["parents"]] == ["siliwafer", "siliwafer"]
    with network["polycell"].client() as client:
        r = client.get(f"/v1/peers/cellex/upstream/{batch}")
        assert r.status_code == 403
        assert "was not sold to polycell" in r.text
    with network["regulator"].client() as client:
        r = client.get(f"/v1/peers/cellex/upstream/{batch}")
        assert r.status_code == 403
        assert "PERMISSION_DENIED" in r.text or "not allowed" in r.text


@pytest.fixture
def stopped_node(tmp_path: Path) -> Path:
    """A node created with the CLI (authority + node init), not running."""
    authority = tmp_path / "authority"
    assert qdspace("authority", "init", "--dir", str(authority)).returncode == 0
    node = tmp_path / "wafer"
    r = qdspace(
        "node", "init", "--dir", str(node), "--name", "siliwafer", "--role", "supplier",
        "--authority", str(authority), "--grpc-port", str(free_port()),
        "--api-port", str(free_port()), "--regulator-port", str(free_port()),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return node


def test_cli_ingest_reports_lines_and_exits_non_zero(stopped_node: Path, tmp_path: Path) -> None:
    rows = tmp_path / "env.csv"
    rows.write_text(
        "location,measured_at,temperature\n"
        "hall,2026-11-02T08:00:00Z,21.5\n"
        "hall,2026-11-02T09:00:00,21.7\n"
        "hall,2026-11-02T10:00:00Z,warm\n"
    )
    r = qdspace("ingest", "--dir", str(stopped_node), str(rows), "--kind", "environment")
    assert r.returncode == 2
    assert "env.csv:3: measured_at: time '2026-11-02T09:00:00' has no zone" in r.stderr
    assert "env.csv:4: temperature:" in r.stderr
    assert "1 stored, 0 already present, 2 rejected" in r.stdout
    r = qdspace("ingest", "--dir", str(stopped_node), str(rows), "--kind", "environment")
    assert "0 stored, 1 already present, 2 rejected" in r.stdout
    r = qdspace("node", "info", "--dir", str(stopped_node))
    assert r.returncode == 0 and "  environment: 1" in r.stdout, r.stderr
    assert "free; keeps 1.0 GiB for its own records" in r.stdout, r.stdout  # its disk


def test_cli_errors_are_one_line_naming_the_file_or_port(stopped_node: Path) -> None:
    # a port already in use
    settings = json.loads((stopped_node / "node.json").read_text())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", settings["api_port"]))
        busy.listen()
        r = qdspace("node", "start", "--dir", str(stopped_node))
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [r.stderr.strip().splitlines()[-1]], r.stderr
    assert str(settings["api_port"]) in errors[0]
    # a corrupt key file
    key = stopped_node / "keys" / "signing.key"
    if not key.exists():
        key = next(p for p in stopped_node.rglob("*.key"))
    key.write_text("not a key")
    r = qdspace("node", "info", "--dir", str(stopped_node))
    assert r.returncode != 0
    assert key.name in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # a missing directory
    r = qdspace("node", "info", "--dir", str(stopped_node.parent / "nowhere"))
    assert r.returncode != 0
    assert "nowhere" in r.stderr


def test_sigterm_stops_a_node_cleanly(tmp_path: Path) -> None:
    net = LocalNetwork(tmp_path / "one", [MemberSpec("solo", "supplier")])
    net.create()
    net.start()
    process = net["solo"].process
    assert process is not None
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(30) == 0
    time.sleep(0.1)
    assert "stopped" in net["solo"].log_path.read_text()
    with pytest.raises(httpx.HTTPError), net["solo"].client(timeout=2) as gone:
        gone.get("/healthz")
