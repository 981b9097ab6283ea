"""DSP transfer throughput: records/s of a node-to-node pull over the DSP 2025-1 binding's
HTTP data plane, against the gRPC transfer of the same rows in the same run.

Setup: a supplier node (a real ``qdspace node start`` process, its DSP listener on)
holds N inspection records of one order placed by the OEM; the OEM negotiates one
agreement for them over gRPC and one over DSP (the catalog offer; its scope is the same
rows: the OEM's orders). Then, each timed ``REPEATS`` times and the fastest counted:

1. ``grpc_pull`` (baseline): ``POST /v1/contracts/transfers`` at the OEM, which pulls
   over the gRPC Transfer stream, verifies each batch's checkpoint and commits it with
   its rows (encrypted under the agreement's key) before it answers COMPLETED.
2. ``dsp_pull``: ``POST /v1/dsp/transfers`` at the OEM: TransferRequestMessage, the
   provider's TransferStartMessage with a data address through its outbox, the
   consumer's pull of ``GET /data/<pid>`` (NDJSON batches under the same release gate
   and digest chain), committed by the same store path, then the completion message;
   timed until the OEM's transfer reads COMPLETED.

    python bench/dsp_transfer.py                 # 50k records
    python bench/dsp_transfer.py --quick --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import httpx

from qdspace.node.localnet.network import LocalNetwork, MemberSpec

ORDER = "PO-2026-0042"
BATCH_ROWS = 1000  # the DSP consumer's batch size (`node.dsp.transfer_consumer.BATCH_ROWS`)
REPEATS = 2


def _records(n: int) -> bytes:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    lines = []
    for i in range(n):
        at = (start + timedelta(seconds=i)).isoformat().replace("+00:00", "Z")
        lines.append(
            json.dumps(
                {
                    "inspection_id": f"B-{i:08d}",
                    "station": f"EL-{1 + i % 4}",
                    "inspected_at": at,
                    "verdict": "pass" if i % 23 else "fail",
                    "score": round((i % 997) / 1000, 3),
                    "model_version": "el-2026.11",
                    "image_hash": f"{i:064x}",
                    "order_id": ORDER,
                    "batch_id": f"CX-CB-{i % 12:06d}",
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def _ok(response: httpx.Response) -> Any:
    response.raise_for_status()
    return response.json()


def _wait(what: str, probe: Any, timeout: float = 600.0, step: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(step)
    raise SystemExit(f"timed out waiting for {what}")


def _setup(workdir: Path, n: int) -> tuple[LocalNetwork, str, str]:
    net = LocalNetwork(
        workdir,
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
        env={"QDSPACE_DSP_PORT": "0"},
    )
    net.create()
    net.start()
    order = {
        "order_id": ORDER,
        "customer": "sunarc",
        "supplier": "cellex",
        "product": "cells",
        "quantity": n,
        "status": "open",
        "opened_at": "2026-10-01T00:00:00Z",
    }
    with net["cellex"].client(timeout=600) as supplier:
        _ok(supplier.post("/v1/ingest/order", json={"rows": [order]}))
        _ok(
            supplier.post(
                "/v1/ingest/inspection",
                content=_records(n),
                headers={"content-type": "application/x-ndjson"},
            )
        )
    provider = json.loads(net["cellex"].layout.runtime.read_text())["dsp"]
    with net["sunarc"].client(timeout=600) as oem:
        grpc_agreement = _ok(
            oem.post(
                "/v1/contracts/negotiations",
                json={
                    "peer": "cellex",
                    "asset_id": "inspections",
                    "purposes": ["quality-assurance"],
                    "orders": [ORDER],
                },
            )
        )["agreement_id"]
        nid = _ok(
            oem.post(
                "/v1/dsp/negotiations",
                json={"provider_url": provider, "dataset_id": "inspections"},
            )
        )["negotiation_id"]

        def agreed() -> Any:
            mine = [
                x for x in _ok(oem.get("/v1/contracts/negotiations")) if x["negotiation_id"] == nid
            ]
            return mine and mine[0]["state"] == "FINALIZED" and mine[0]["agreement_id"]

        dsp_agreement = _wait("the DSP agreement", agreed, timeout=60)
    return net, str(grpc_agreement), str(dsp_agreement)


def _grpc_pull(net: LocalNetwork, agreement_id: str) -> tuple[int, float]:
    with net["sunarc"].client(timeout=600) as oem:
        started = time.perf_counter()
        done = _ok(
            oem.post(
                "/v1/contracts/transfers",
                json={
                    "agreement_id": agreement_id,
                    "purpose": "quality-assurance",
                    "order_id": ORDER,
                    "batch_rows": BATCH_ROWS,
                },
            )
        )
        elapsed = time.perf_counter() - started
    assert done["state"] == "COMPLETED", done
    return int(done["offset"]), elapsed


def _dsp_pull(net: LocalNetwork, agreement_id: str) -> tuple[int, float]:
    with net["sunarc"].client(timeout=600) as oem:
        started = time.perf_counter()
        tid = _ok(oem.post("/v1/dsp/transfers", json={"agreement_id": agreement_id}))["transfer_id"]

        def finished() -> Any:
            state = _ok(oem.get(f"/v1/dsp/transfers/{tid}"))
            if state["error"]:
                raise SystemExit(f"DSP transfer failed: {state['error']}")
            return state["state"] == "COMPLETED" and state

        done = _wait("the DSP transfer", finished)
        elapsed = time.perf_counter() - started
    return int(done["offset"]), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quick", action="store_true", help="3,000 records, one run each (CI)")
    args = parser.parse_args()
    repeats = 1 if args.quick else REPEATS
    if args.quick:
        args.records = 3_000
    results: dict[str, Any] = {
        "records": args.records,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="qdspace-bench-dsp-") as tmp:
        net, grpc_agreement, dsp_agreement = _setup(Path(tmp) / "space", args.records)
        try:
            results["loadavg_1m_before"] = os.getloadavg()[0]
            grpc_runs = [_grpc_pull(net, grpc_agreement) for _ in range(repeats)]
            dsp_runs = [_dsp_pull(net, dsp_agreement) for _ in range(repeats)]
            results["loadavg_1m"] = os.getloadavg()[0]
        finally:
            net.stop()
    grpc_rows, grpc_s = min(grpc_runs, key=lambda run: run[1])
    dsp_rows, dsp_s = min(dsp_runs, key=lambda run: run[1])
    assert grpc_rows == dsp_rows == args.records, (grpc_rows, dsp_rows)
    results["grpc_pull_records_per_s"] = grpc_rows / grpc_s
    results["dsp_pull_records_per_s"] = dsp_rows / dsp_s
    results["dsp_over_grpc_ratio"] = (
        results["dsp_pull_records_per_s"] / results["grpc_pull_records_per_s"]
    )
    print(f"dsp_transfer.records: {dsp_rows} records")
    print(f"dsp_transfer.grpc_pull: {results['grpc_pull_records_per_s']:.0f} records/s")
    print(f"dsp_transfer.dsp_pull: {results['dsp_pull_records_per_s']:.0f} records/s")
    print(f"dsp_transfer.dsp_over_grpc: {results['dsp_over_grpc_ratio']:.3f} ratio")
    print(f"dsp_transfer.cpus: {results['cpus']} cores")
    print(f"dsp_transfer.loadavg_1m: {results['loadavg_1m']:.2f} load")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
