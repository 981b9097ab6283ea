"""Two real node processes with their DSP listeners on (and no gRPC between them)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from qdspace.connector.sample import write_sample_files
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

SCHEMAS = Path(__file__).parents[2] / "unit" / "policies" / "dsp_2025_1"


def dsp_network(
    tmp_path_factory: pytest.TempPathFactory,
    members: list[MemberSpec],
    env: dict[str, str] | None = None,
) -> Iterator[LocalNetwork]:
    """`members` as real node processes with their DSP listeners on (and `env`: more
    settings), for a module."""
    net = LocalNetwork(
        tmp_path_factory.mktemp("dsp"),
        members,
        chain=False,
        env={"QDSPACE_DSP_PORT": "0", **(env or {})},
    )
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def dsp_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from dsp_network(
        tmp_path_factory, [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    )


def rows_of(net: LocalNetwork, name: str, sql: str, **params: Any) -> list[Any]:
    """The rows `sql` reads from member `name`'s own database (a file or PostgreSQL)."""
    engine = create_engine(net[name].db_url)
    try:
        with engine.connect() as connection:
            return list(connection.execute(text(sql), params))
    finally:
        engine.dispose()


def outbox_errors(net: LocalNetwork, name: str, column: str, value: str) -> list[str]:
    """The errors of member `name`'s outbox messages whose `column` (``peer_id``,
    ``process_id``) is `value`, as recorded by its last failed delivery."""
    assert column in ("peer_id", "process_id")
    sql = (
        f"SELECT last_error FROM contract_outbox WHERE {column} = :value AND last_error IS NOT NULL"
    )
    return [str(row[0]) for row in rows_of(net, name, sql, value=value)]


def runtime_of(net: LocalNetwork, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(net[name].layout.runtime.read_text())
    return data


def ok(response: httpx.Response) -> Any:
    assert response.status_code < 400, f"HTTP {response.status_code}: {response.text}"
    return response.json()


def wait_for(what: str, probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ingest_sample(network: LocalNetwork, name: str, inspections: int | None = None) -> None:
    """The member's sample QDM files, through its REST API (its first `inspections`
    inspections only, when given)."""
    member = network[name]
    folder = network.workdir / "dsp-sample" / name
    files = write_sample_files(folder, name, member.spec.role, bad_rows=False)
    if inspections is not None:
        path = files["inspection"]
        kept = path.read_text().splitlines(keepends=True)[:inspections]
        path.write_text("".join(kept))
    with member.client() as client:
        for kind, path in files.items():
            media = "text/csv" if path.suffix == ".csv" else "application/x-ndjson"
            headers = {"content-type": media}
            params = {"source": path.name}
            ok(
                client.post(
                    f"/v1/ingest/{kind}", content=path.read_bytes(), headers=headers, params=params
                )
            )


def negotiated_over_dsp(
    net: LocalNetwork, consumer: str, provider: str, dataset: str = "inspections"
) -> dict[str, Any]:
    """``consumer``'s node negotiates for ``provider``'s ``dataset`` over DSP, through its
    operator API, on the published offer: the negotiation once it ended."""
    url = runtime_of(net, provider)["dsp"]
    with net[consumer].client() as client:
        body = {"provider_url": url, "dataset_id": dataset}
        nid = ok(client.post("/v1/dsp/negotiations", json=body))["negotiation_id"]

        def ended() -> Any:
            found = ok(client.get(f"/v1/contracts/negotiations/{nid}"))
            return found["state"] in ("FINALIZED", "TERMINATED") and found

        ended_as: dict[str, Any] = wait_for("the negotiation to end", ended, timeout=60)
        return ended_as
