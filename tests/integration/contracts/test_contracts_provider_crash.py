"""The provider is SIGKILLed in the middle of a large transfer and restarted; the consumer
resumes from the checkpoint it committed: no row lost, none duplicated, both chained
digests equal (the provider's saved cursor may be ahead of what the consumer stored)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.localnet.network import LocalNetwork

from .conftest import assert_faithful_copy, oem_and_supplier, ok, start_big_transfer, wait_for
from .test_contracts_resume import ROWS, _big_inspection_file

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """Its own OEM and supplier, so killing the supplier disturbs no other test."""
    yield from oem_and_supplier(tmp_path_factory, "provider-crash")


def test_provider_sigkilled_mid_transfer_then_restarted_loses_and_duplicates_nothing(
    pair: LocalNetwork, tmp_path: Path
) -> None:
    agreement, tid = start_big_transfer(pair, _big_inspection_file(tmp_path / "bulk.jsonl"), 50)

    pair.kill("cellex")  # SIGKILL the provider: no shutdown, no goodbye
    with pair["sunarc"].client() as oem:
        broken = wait_for(
            "the consumer to notice the provider is gone",
            lambda: (t := ok(oem.get(f"/v1/contracts/transfers/{tid}")))["error"] and t,
        )
    assert broken["state"] == "STARTED" and broken["offset"] < ROWS
    pair.start(["cellex"])

    with pair["sunarc"].client(timeout=120) as oem:
        done = ok(oem.post(f"/v1/contracts/transfers/{tid}/resume"))  # `qdspace transfer --resume`
        if done["state"] != "COMPLETED":
            done = ok(oem.get(f"/v1/contracts/transfers/{tid}", params={"wait_s": 90}))
    assert_faithful_copy(pair, agreement, done)
    assert done["offset"] == ROWS
