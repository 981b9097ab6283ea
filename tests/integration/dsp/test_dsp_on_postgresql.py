"""The DSP binding's heart once more with both members' databases on PostgreSQL, and a
member's termination whose reason carries a NUL.

The pull and the live stream (with suspension, resume and termination) are the SQLite
suite's own tests, run here against this module's `dsp_net` (real node processes, each
with a schema of its own on the server of ``QDSPACE_TEST_PG_URL``); they skip with the
how-to when no server is configured. PostgreSQL refuses a NUL in any string, where
SQLite stores it: a reason a peer wrote is kept with the process, so a NUL in it (or any
control character) is made a space before it is stored, and the termination is taken.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from qdspace.connector import dsp_transfer as wire
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import ingest_sample, ok, runtime_of, wait_for
from .peer import Peer
from .test_dsp_transfer import (
    negotiate,
    test_live_stream_suspend_resume_terminate_over_dsp,
    test_pull_transfer_over_dsp_alone,
)

pytestmark = pytest.mark.integration

__all__ = [
    "test_live_stream_suspend_resume_terminate_over_dsp",
    "test_pull_transfer_over_dsp_alone",
]


@pytest.fixture(scope="module")
def dsp_net(pg_networks: Callable[..., LocalNetwork]) -> LocalNetwork:
    members = [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")]
    return pg_networks(members, {"QDSPACE_DSP_PORT": "0"})


def test_a_termination_whose_reason_holds_a_nul_is_taken(dsp_net: LocalNetwork) -> None:
    ingest_sample(dsp_net, "cellex")
    with dsp_net["sunarc"].client() as oem:
        agreement = negotiate(oem, runtime_of(dsp_net, "cellex")["dsp"], "live-inspections")
    hostile = Peer(dsp_net, "sunarc", "cellex")
    try:
        cpid = f"urn:uuid:{uuid.uuid4()}"
        asked = wire.request_message(cpid, agreement, "https://127.0.0.1:9")
        ack = hostile.post("/transfers/request", asked)
        assert ack.status_code == 201, ack.text
        ppid = ack.json()["providerPid"]
        ended = hostile.post(
            f"/transfers/{ppid}/termination",
            {
                "@context": "https://w3id.org/dspace/2025/1/context.jsonld",
                "@type": "TransferTerminationMessage",
                "providerPid": ppid,
                "consumerPid": cpid,
                "code": "x",
                "reason": ["done\x00 here\nINFO forged log line"],
            },
        )
        assert ended.status_code == 200, ended.text
        assert hostile.get(f"/transfers/{ppid}").json()["state"] == "TERMINATED"
    finally:
        hostile.http.close()
    with dsp_net["cellex"].client() as supplier:
        transfers = ok(supplier.get("/v1/contracts/transfers"))
        (mine,) = [t for t in transfers if t["transfer_id"] == cpid]
        assert mine["state"] == "TERMINATED"
        assert mine["reason"] == "done  here INFO forged log line", mine
    log = dsp_net["cellex"].log_path.parent / "node.log"
    wait_for("the termination in the log", lambda: cpid in log.read_text())
    assert "\nINFO forged log line" not in log.read_text()
