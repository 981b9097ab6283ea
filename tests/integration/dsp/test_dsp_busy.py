"""A consumer at the provider's cap of its streams in flight waits for a slot instead of
giving up (real node processes; Cellex allows SunArc one stream: `rpc_max_streams_per_peer`
1). SunArc's first live DSP transfer holds the slot; its second is answered 429 and says
so while it waits; once the first is suspended (its stream ends), the second streams."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from qdspace.node.cli import app
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok, runtime_of, wait_for
from .test_dsp_transfer import (
    SUNARC_ORDER,
    inspection_row,
    received,
    start_live_transfer,
    transfer_state,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    members = [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    yield from dsp_network(tmp_path_factory, members, {"QDSPACE_RPC_MAX_STREAMS_PER_PEER": "1"})


def test_a_transfer_over_the_providers_stream_cap_waits_for_a_slot(net: LocalNetwork) -> None:
    ingest_sample(net, "cellex")
    cellex = runtime_of(net, "cellex")["dsp"]
    oem_dir = str(net["sunarc"].directory)
    with net["sunarc"].client() as oem, net["cellex"].client() as supplier:
        _first_agreement, first = start_live_transfer(oem, cellex)
        second_agreement, second = start_live_transfer(oem, cellex)

        def waiting() -> Any:
            return transfer_state(oem, second)["waiting"]

        why = wait_for("the second transfer to wait for a slot", waiting)
        assert why.startswith("a stream slot at the provider"), why
        assert "HTTP 429" in why and "1 streams open" in why, why
        assert transfer_state(oem, second)["error"] == ""  # waiting, not stopped
        shown = CliRunner().invoke(app, ["dsp", "status", "--dir", oem_dir, second])
        assert shown.exit_code == 0 and "waiting for a stream slot" in shown.output, shown.output
        assert "stopped" not in shown.output, shown.output
        ok(oem.post(f"/v1/dsp/transfers/{first}/suspend", json={"reason": "make room"}))

        tag = uuid.uuid4().hex[:8]

        def streaming() -> Any:
            state = transfer_state(oem, second)
            return state["waiting"] == "" and state["error"] == ""

        wait_for("the second transfer to get the slot", streaming, timeout=60)
        row = inspection_row(tag, 1, SUNARC_ORDER)
        assert ok(supplier.post("/v1/ingest/inspection", json={"rows": [row]}))["accepted"] == 1

        def arrived() -> Any:
            ids = [r["inspection_id"] for r in received(oem, second_agreement)["rows"]]
            return any(i.startswith(f"DSP-{tag}") for i in ids)

        wait_for("a live row over the second transfer", arrived, timeout=60)
