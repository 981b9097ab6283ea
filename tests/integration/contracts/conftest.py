"""Usage contracts between real node processes: helpers over the operators' REST APIs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from connector.sample import write_sample_files
from node.launcher import LocalNetwork

CELLEX_ORDER = "PO-2026-0042"
POLYCELL_ORDER = "PO-2026-0043"
QA = "quality-assurance"


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
