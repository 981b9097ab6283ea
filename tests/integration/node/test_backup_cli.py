"""`qdspace node backup` next to a serving node: the copy holds what the node committed.

A real node ingests inspections through its API, the CLI backs its store up while it
keeps serving, and the backup file (opened with plain sqlite3) holds every row, passes
its integrity check, and is refused as a destination the second time.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from qdspace.node.localnet.network import LocalNetwork, MemberSpec

pytestmark = pytest.mark.integration
ROWS = 40


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("backup"), [MemberSpec("cellex", "supplier")], chain=False
    )
    network.create()
    try:
        network.start()
        yield network
    finally:
        network.stop()


def test_backup_of_a_serving_node_holds_every_committed_row(
    net: LocalNetwork, tmp_path: Path
) -> None:
    member = net["cellex"]
    start = datetime(2026, 11, 20, tzinfo=UTC)
    rows = [
        {
            "inspection_id": f"BK-{i:04d}",
            "station": "EL-1",
            "inspected_at": (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
            "verdict": "pass",
            "score": 0.1,
            "model_version": "el-2026.11",
            "order_id": "PO-BK-1",
            "batch_id": "CX-BK-1",
        }
        for i in range(ROWS)
    ]
    with member.client() as client:
        response = client.post("/v1/ingest/inspection", json={"rows": rows})
        assert response.status_code == 200, response.text
    out = tmp_path / "cellex.db"
    command = [sys.executable, "-m", "qdspace", "node", "backup", "--dir", str(member.directory)]
    done = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "integrity check ok" in done.stdout
    copy = sqlite3.connect(out)
    ids = {r[0] for r in copy.execute("SELECT inspection_id FROM qdm_inspection")}
    copy.close()
    assert {r["inspection_id"] for r in rows} <= ids
    again = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert again.returncode != 0 and "never overwrites" in again.stderr
    assert "Traceback" not in again.stderr
