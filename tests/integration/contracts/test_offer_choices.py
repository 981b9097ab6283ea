"""A supplier chooses what leaves its hands (the node setting ``offers``), and the choice
holds on the wire: Cellex shares its inspections without the scores, for 90 days, and
does not offer its operator log. SunArc's node (real processes, mTLS) finds the chosen
offer in Cellex's catalog and no operator log; asking for the scores gets the chosen
terms back, the agreement grants no score, and the rows pulled under it carry none."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qdspace.node.config import NodeSettings, OfferSetting
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

from .conftest import CELLEX_ORDER, QA, ingest_sample

pytestmark = pytest.mark.integration
SHARED = ["inspection_id", "order_id", "station", "verdict", "inspected_at"]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    network = LocalNetwork(
        tmp_path_factory.mktemp("offer-choices"),
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
        chain=False,
    )
    network.create()
    settings = NodeSettings.load(network["cellex"].directory)
    offers = {
        "inspections": OfferSetting(fields=SHARED, retention_days=90),
        "operator-log": OfferSetting(offered=False),
    }
    settings.model_copy(update={"offers": offers}).save()
    network.start()
    try:
        ingest_sample(network, "cellex")
        yield network
    finally:
        network.stop()


def test_the_chosen_offer_is_what_a_customer_finds_agrees_to_and_receives(
    net: LocalNetwork,
) -> None:
    with net["sunarc"].operator(timeout=120) as sunarc:
        catalog = {a["asset_id"]: a for a in sunarc.catalog("cellex")}
        assert "operator-log" not in catalog and "inspections" in catalog
        agreed = sunarc.negotiate(
            "cellex", "inspections", [QA], orders=[CELLEX_ORDER], fields=[*SHARED, "score"]
        )
        assert agreed["state"] == "FINALIZED", agreed
        policy = sunarc.agreement(agreed["agreement_id"])["policy"]
        pulled = sunarc.transfer(agreed["agreement_id"], QA, order_id=CELLEX_ORDER)
        assert pulled["offset"] > 0, pulled
        rows = sunarc.received(agreed["agreement_id"])["rows"]
    (permission,) = policy["permission"]
    granted = {c["leftOperand"]: c["rightOperand"] for c in permission["constraint"]}
    assert sorted(granted["fields"]) == sorted(SHARED)  # the score was asked, not granted
    (duty,) = permission["duty"]
    assert duty["constraint"][0]["rightOperand"] == 90  # the provider's chosen retention
    assert rows and all("score" not in r for r in rows), rows[0]
    assert {"verdict", "inspection_id"} <= set(rows[0]), rows[0]
