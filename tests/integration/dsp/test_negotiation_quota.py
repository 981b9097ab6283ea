"""A member cannot fill a provider's database with negotiations: Cellex takes at most
``negotiations_per_member_hour`` (3 here) new negotiations from one member in any hour,
over DSP and gRPC together. SunArc, by hand with its own credentials, opens them over
DSP until it is refused (429, the cap named, nothing written), its node's gRPC request
is refused for the same count, Polycell's own count is untouched, a request on a
negotiation SunArc holds still passes, and once the hour has gone by (Cellex's contract
clock moved) SunArc may open one again."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import dsp_network, ingest_sample, ok
from .peer import Peer, peer_with_callbacks, request

pytestmark = pytest.mark.integration
CAP = 3


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    members = [
        MemberSpec("sunarc", "oem"),
        MemberSpec("polycell", "oem"),
        MemberSpec("cellex", "supplier"),
    ]
    yield from dsp_network(
        tmp_path_factory, members, env={"QDSPACE_NEGOTIATIONS_PER_MEMBER_HOUR": str(CAP)}
    )


def _opened_at_cellex(net: LocalNetwork, consumer: str) -> int:
    """The negotiations Cellex holds as provider with `consumer`, and its DSP bindings of
    them (one each: a refused request leaves neither)."""
    member_id = net[consumer].keys().identity.member_id
    engine = create_engine(net["cellex"].db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT count(*) FROM contract_negotiation WHERE consumer_id = :m "
                    "AND role = 'provider'"
                ),
                {"m": member_id},
            ).scalar_one()
            bound = connection.execute(
                text(
                    "SELECT count(*) FROM dsp_process WHERE peer_id = :m AND kind = 'negotiation'"
                ),
                {"m": member_id},
            ).scalar_one()
    finally:
        engine.dispose()
    assert rows == bound, (rows, bound)
    return int(rows)


def _ask(peer: Peer, offer: dict[str, Any], callback: str, cpid: str | None = None) -> Any:
    body = request(cpid or f"urn:uuid:{uuid.uuid4()}", offer, callback + "/callback")
    return peer.post("/negotiations/request", body)


def test_a_member_opens_at_most_the_cap_within_the_hour(trio: LocalNetwork) -> None:
    ingest_sample(trio, "cellex")
    with peer_with_callbacks(trio, "sunarc", "cellex") as (sunarc, callbacks):
        offer = sunarc.catalog_offer("inspections")
        first = f"urn:uuid:{uuid.uuid4()}"
        for n in range(CAP):
            asked = _ask(sunarc, offer, callbacks.url, first if n == 0 else None)
            assert asked.status_code == 201, asked.text
        assert _opened_at_cellex(trio, "sunarc") == CAP

        over = _ask(sunarc, offer, callbacks.url)
        assert over.status_code == 429, over.text
        reason = over.json()["reason"][0]
        assert f"negotiations_per_member_hour {CAP}" in reason, reason
        assert _opened_at_cellex(trio, "sunarc") == CAP  # nothing written for it

        again = _ask(sunarc, offer, callbacks.url, first)  # a retry of one it holds
        assert again.status_code in (200, 201), again.text

        # SunArc's node, over gRPC: the same count
        with trio["sunarc"].client() as oem:
            body = {"peer": "cellex", "asset_id": "inspections", "purposes": ["quality-assurance"]}
            refused = oem.post("/v1/contracts/negotiations", json=body)
        assert refused.status_code == 429, refused.text
        assert "negotiations_per_member_hour" in refused.text
        assert _opened_at_cellex(trio, "sunarc") == CAP

    with peer_with_callbacks(trio, "polycell", "cellex") as (polycell, its_callbacks):
        asked = _ask(polycell, polycell.catalog_offer("inspections"), its_callbacks.url)
        assert asked.status_code == 201, asked.text  # another member's count
    assert _opened_at_cellex(trio, "polycell") == 1

    with trio["cellex"].client() as supplier:  # the hour goes by at Cellex
        ok(supplier.post("/v1/contracts/clock", json={"offset_days": 61 / 1440}))
    try:
        with peer_with_callbacks(trio, "sunarc", "cellex") as (sunarc, callbacks):
            asked = _ask(sunarc, sunarc.catalog_offer("inspections"), callbacks.url)
            assert asked.status_code == 201, asked.text
        assert _opened_at_cellex(trio, "sunarc") == CAP + 1
    finally:
        with trio["cellex"].client() as supplier:
            ok(supplier.post("/v1/contracts/clock", json={"offset_days": 0}))
