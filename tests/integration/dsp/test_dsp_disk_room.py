"""A DSP consumer with no room on its disk for a provider's rows (real SunArc and Cellex
processes with their DSP listeners, a real SQLite file, the real filesystem's free space):
while SunArc's ``min_free_disk_mib`` asks for more than its disk has free, its pull waits
(saying why), nothing stored; with the setting lowered and the node restarted, it asks
Cellex for a new data address and the pull completes with every row once. Cellex
completes a pull when it has sent the last batch, stored or not: the restarted consumer's
request for a new address of a pull Cellex completed is answered too (a single batch, so
that Cellex completes it before SunArc refuses it, every time)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok, runtime_of, wait_for
from .test_dsp_transfer import completed, gate_rows, negotiate, received, transfer_state

pytestmark = pytest.mark.integration

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    yield from dsp_network(
        tmp_path_factory, [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    )


@pytest.fixture(scope="module")
def one_batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """A pair whose provider holds fewer inspections than one batch of a pull."""
    yield from dsp_network(
        tmp_path_factory, [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    )


def _keep_free(net: LocalNetwork, mib: int) -> None:
    """SunArc's ``min_free_disk_mib``, for its next start."""
    path = net["sunarc"].directory / "node.json"
    settings = json.loads(path.read_text())
    settings["min_free_disk_mib"] = mib
    path.write_text(json.dumps(settings, indent=2))


def test_a_dsp_pull_with_no_room_on_the_consumer_s_disk_waits_for_it(pair: LocalNetwork) -> None:
    ingest_sample(pair, "cellex")
    _waits_for_room_then_completes(pair)


def test_a_pull_the_provider_completed_but_the_consumer_could_not_store_completes(
    one_batch: LocalNetwork,
) -> None:
    ingest_sample(one_batch, "cellex", inspections=400)
    _waits_for_room_then_completes(one_batch, provider_completed=True)


def _waits_for_room_then_completes(pair: LocalNetwork, provider_completed: bool = False) -> None:
    free = shutil.disk_usage(pair["sunarc"].directory).free // MIB
    pair.stop(["sunarc"])
    _keep_free(pair, free + 100_000)  # more than this disk has free
    pair.start(["sunarc"])
    cellex = runtime_of(pair, "cellex")["dsp"]
    with pair["sunarc"].client() as oem:
        agreement = negotiate(oem, cellex, "inspections")
        tid = ok(oem.post("/v1/dsp/transfers", json={"agreement_id": agreement}))["transfer_id"]
        waiting = wait_for(
            "the pull to wait for room",
            lambda: "min_free_disk_mib" in (s := transfer_state(oem, tid))["waiting"] and s,
        )
        assert waiting["state"] == "STARTED" and not waiting["error"], waiting
        assert waiting["waiting"].startswith("room to store the rows"), waiting
        assert received(oem, agreement)["total"] == 0
    if provider_completed:  # the one batch went out: Cellex's record says so
        with pair["cellex"].client() as supplier:
            sent = transfer_state(supplier, tid)
        assert sent["state"] == "COMPLETED" and sent["offset"] > 0, sent

    # the consumer restarts on the same DSP address (the provider calls it back there)
    port = urlsplit(runtime_of(pair, "sunarc")["dsp"]).port
    pair.stop(["sunarc"])
    _keep_free(pair, 1)
    pair.env["QDSPACE_DSP_PORT"] = str(port)
    try:
        pair.start(["sunarc"])  # asks Cellex for a new address, then pulls from its checkpoint
    finally:
        pair.env["QDSPACE_DSP_PORT"] = "0"
    with pair["sunarc"].client() as oem:
        done = completed(oem, tid)
        got = received(oem, agreement)
    ids = [r["inspection_id"] for r in got["rows"]]
    assert len(ids) == len(set(ids)) == got["total"] == done["offset"] > 0
    assert set(ids) == gate_rows(pair)
