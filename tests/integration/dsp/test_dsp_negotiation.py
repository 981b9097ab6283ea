"""Catalog and negotiation between two real nodes over the DSP 2025-1 binding alone."""

from __future__ import annotations

from typing import Any

import pytest

from qdspace.node.localnet.network import LocalNetwork

from .conftest import ingest_sample, ok, runtime_of, wait_for

pytestmark = pytest.mark.integration


def test_negotiation_reaches_finalized_over_dsp(dsp_net: LocalNetwork) -> None:
    ingest_sample(dsp_net, "cellex")  # the orders SunArc placed with Cellex
    cellex = runtime_of(dsp_net, "cellex")["dsp"]
    assert cellex.startswith("https://")
    with dsp_net["sunarc"].client() as oem:
        started = ok(
            oem.post(
                "/v1/dsp/negotiations", json={"provider_url": cellex, "dataset_id": "inspections"}
            )
        )
        nid = started["negotiation_id"]

        def finished() -> Any:
            items = ok(oem.get("/v1/contracts/negotiations"))
            mine = [n for n in items if n["negotiation_id"] == nid]
            return mine and mine[0]["state"] in ("FINALIZED", "TERMINATED") and mine[0]

        done = wait_for("the DSP negotiation to end", finished)
    assert done["state"] == "FINALIZED", done
