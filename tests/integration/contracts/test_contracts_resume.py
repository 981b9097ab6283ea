"""The consumer is SIGKILLed in the middle of a large transfer; restarted, it resumes it:
no row lost, none duplicated, both chained digests equal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from qdspace.node.localnet.network import LocalNetwork

from .conftest import (
    assert_faithful_copy,
    bulk_inspection,
    oem_and_supplier,
    ok,
    start_big_transfer,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: enough rows that the pull cannot finish between the poll that sees it under way and the
#: kill (at 25,000 it once did on a fast machine: ~0.2 s of rows left after the 2,000th)
ROWS = 100_000


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    """Its own OEM and supplier, so killing the OEM disturbs no other test."""
    yield from oem_and_supplier(tmp_path_factory, "resume")


def _big_inspection_file(path: Path) -> Path:
    with path.open("w") as handle:
        for i in range(ROWS):
            handle.write(json.dumps(bulk_inspection(i)) + "\n")
    return path


def test_sigkill_mid_transfer_then_resume_loses_and_duplicates_nothing(
    pair: LocalNetwork, tmp_path: Path
) -> None:
    agreement, tid = start_big_transfer(pair, _big_inspection_file(tmp_path / "bulk.jsonl"), 100)

    pair.kill("sunarc")  # SIGKILL: no shutdown, no goodbye
    pair.start(["sunarc"])  # the node resumes unfinished transfers when it starts

    with pair["sunarc"].client(timeout=120) as oem:
        # the node resumes on its own: no manual resume may rescue this test
        done = ok(oem.get(f"/v1/contracts/transfers/{tid}", params={"wait_s": 90}))
        assert done["state"] == "COMPLETED" and not done["error"], done
    assert_faithful_copy(pair, agreement, done)
    log = pair["sunarc"].log_path.read_text(errors="replace")
    assert f"resuming transfer {tid}" in log
