"""Usage contracts between real node processes: helpers over the operators' REST APIs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import grpc
import httpx
import pytest
from sqlalchemy import create_engine, text

from qdspace.connector.sample import write_sample_files
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.node.rpc.server import server_credentials
from qdspace.protocols.v1 import transfer_pb2

CELLEX_ORDER = "PO-2026-0042"
POLYCELL_ORDER = "PO-2026-0043"
QA = "quality-assurance"


class RogueProvider:
    """Cellex's certificate on Cellex's address (its node stopped), answering
    ``Transfer/Pull`` with a subclass's `_pull`; serves while open as a context."""

    def __init__(self, net: LocalNetwork) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "qdspace.v1.Transfer",
            {
                "Pull": grpc.unary_stream_rpc_method_handler(
                    self._pull,
                    request_deserializer=transfer_pb2.PullRequest.FromString,
                    response_serializer=transfer_pb2.RowBatch.SerializeToString,
                )
            },
        )
        self.server.add_generic_rpc_handlers((handler,))
        cellex = net["cellex"]
        self.server.add_secure_port(cellex.grpc_address, server_credentials(cellex.keys()))

    def _pull(
        self, request: transfer_pb2.PullRequest, context: Any
    ) -> Iterator[transfer_pb2.RowBatch]:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(0)


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 400, f"HTTP {response.status_code}: {response.text}"
    return response.json()


def ingest_sample(network: LocalNetwork, name: str) -> None:
    """The member's sample QDM files, through its REST API (idempotent)."""
    member = network[name]
    folder = network.workdir / "contracts-sample" / name
    files = write_sample_files(folder, name, member.spec.role, bad_rows=False)
    with member.client() as client:
        for kind, path in files.items():
            media = "text/csv" if path.suffix == ".csv" else "application/x-ndjson"
            ok(
                client.post(
                    f"/v1/ingest/{kind}",
                    content=path.read_bytes(),
                    headers={"content-type": media},
                    params={"source": path.name},
                )
            )


#: the order SunArc places with Cellex in the two-member networks of the crash tests
BIG_ORDER = {
    "order_id": CELLEX_ORDER,
    "customer": "sunarc",
    "supplier": "cellex",
    "product": "mono PERC cell M10",
    "quantity": 240000,
    "status": "open",
    "opened_at": "2026-10-19T06:00:00Z",
}


def bulk_inspection(i: int, prefix: str = "BULK", verdict: str | None = None) -> dict[str, Any]:
    """Inspection number `i` of the big order (one second apart, every 17th a fail)."""
    at = datetime(2026, 11, 20, tzinfo=UTC) + timedelta(seconds=i)
    return {
        "inspection_id": f"{prefix}-{i:06d}",
        "station": f"EL-{1 + i % 2}",
        "inspected_at": at.isoformat().replace("+00:00", "Z"),
        "verdict": verdict or ("pass" if i % 17 else "fail"),
        "score": round((i % 100) / 250, 4),
        "model_version": "el-2026.11",
        "order_id": CELLEX_ORDER,
        "batch_id": "CX-CB-260003",
    }


def ingest_inspections(client: httpx.Client, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Post inspection rows as JSON lines to a member's ingest route."""
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    headers = {"content-type": "application/x-ndjson"}
    result: dict[str, Any] = ok(client.post("/v1/ingest/inspection", content=body, headers=headers))
    return result


def oem_and_supplier(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[LocalNetwork]:
    """A network of its own (SunArc and Cellex, no chain), for a test that kills a node."""
    net = LocalNetwork(
        tmp_path_factory.mktemp(name),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
    )
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()


def start_big_transfer(network: LocalNetwork, rows: Path, batch_rows: int) -> tuple[str, str]:
    """Ingest the big order's inspections (`rows`, JSON lines) at Cellex, agree on them and
    start SunArc's pull; returns (agreement id, transfer id) once it is under way, not done."""
    with network["cellex"].client(timeout=120) as supplier:
        ok(supplier.post("/v1/ingest/order", json={"rows": [BIG_ORDER]}))
        headers = {"content-type": "application/x-ndjson"}
        data = rows.read_bytes()
        stored = ok(supplier.post("/v1/ingest/inspection", content=data, headers=headers))
        assert stored["accepted"] == data.count(b"\n")
    with network["sunarc"].client() as oem:
        agreement = negotiate(oem, "cellex", "inspections", orders=[CELLEX_ORDER])
        body = {
            "agreement_id": agreement["agreement_id"],
            "purpose": QA,
            "order_id": CELLEX_ORDER,
            "wait": False,
            "batch_rows": batch_rows,
        }
        tid = ok(oem.post("/v1/contracts/transfers", json=body))["transfer_id"]
        midway = wait_for(
            "the transfer to be underway",
            lambda: (t := ok(oem.get(f"/v1/contracts/transfers/{tid}")))["offset"] >= 2000 and t,
        )
    assert midway["state"] == "STARTED", "the transfer finished before it could be interrupted"
    return agreement["agreement_id"], tid


def assert_faithful_copy(network: LocalNetwork, agreement_id: str, done: dict[str, Any]) -> None:
    """SunArc holds every row of the big order that Cellex holds, each once, and both sides
    finished the transfer with the same chained digest."""
    with network["sunarc"].client(timeout=120) as oem:
        params: dict[str, Any] = {"agreement_id": agreement_id, "limit": 100_000}
        received = ok(oem.get("/v1/contracts/received", params=params))
    held = provider_rows(
        network,
        "cellex",
        "SELECT inspection_id FROM qdm_inspection WHERE order_id = :o",
        o=CELLEX_ORDER,
    )
    assert done["state"] == "COMPLETED", done
    ids = [r["inspection_id"] for r in received["rows"]]
    assert len(ids) == len(set(ids)) == received["total"]  # nothing duplicated
    assert set(ids) == {r["inspection_id"] for r in held}  # nothing lost
    assert done["offset"] == len(held)
    with network["cellex"].client() as supplier:
        theirs = ok(supplier.get("/v1/contracts/transfers"))
    provider_side = next(t for t in theirs if t["transfer_id"] == done["transfer_id"])
    assert provider_side["state"] == "COMPLETED"
    assert provider_side["digest"] == done["digest"]  # the same rows, in the same order


def provider_rows(
    network: LocalNetwork, name: str, sql: str, **params: Any
) -> list[dict[str, Any]]:
    """Read the provider's own database: what it holds, independently of the services."""
    engine = create_engine(network[name].db_url)
    try:
        with engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(text(sql), params)]
    finally:
        engine.dispose()


def negotiate(client: httpx.Client, peer: str, asset: str, **terms: Any) -> dict[str, Any]:
    body = {"peer": peer, "asset_id": asset, "purposes": [QA], **terms}
    result: dict[str, Any] = ok(client.post("/v1/contracts/negotiations", json=body))
    return result


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll until `probe` returns something truthy (real processes take their time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Space:
    network: LocalNetwork

    def client(self, name: str) -> httpx.Client:
        return self.network[name].client()

    def directory(self, name: str) -> Path:
        return self.network[name].directory


@pytest.fixture(scope="session")
def space(network: LocalNetwork) -> Iterator[Space]:
    """The session network with both suppliers' sample data ingested."""
    for name in ("cellex", "polycell"):
        ingest_sample(network, name)
    yield Space(network)
    for name in network.members:  # leave the clocks as we found them
        if network[name].running:
            with network[name].client() as client:
                client.post("/v1/contracts/clock", json={"offset_days": 0})
