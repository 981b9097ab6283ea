"""A hosted tenant anchors (issue 14 items 2 and 5), all real processes: the embedded EVM
chain, a self-hosted provider (not anchoring) and a host whose tenant is given its chain
account with `qdspace host tenant ledger` while the host serves (the key sealed like its
other secrets; the tenant is opened again and anchors from then on). The tenant's
agreement is anchored from its own account; when it leaves, its removal waits until the
signed deletion receipt is anchored too, since the anchoring queue lives in the database
that removal deletes. Assertions poll with a deadline; nothing is timed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qdspace.connector.sample import write_sample_files
from qdspace.ledger.client import LedgerClient
from qdspace.ledger.keys import new_key_file
from qdspace.ledger.leaves import KIND_CODES
from qdspace.node.host.sealing import FILE_MAGIC
from qdspace.node.init import add_peers
from qdspace.node.localnet.chain import MEMBER_FUNDS_WEI
from qdspace.node.localnet.network import LocalNetwork, MemberSpec
from qdspace.util.ports import free_port

from .conftest import Host, eventually, qdspace

pytestmark = pytest.mark.integration

QA = "quality-assurance"
PROVIDER = "cellex"
LEAVER = "leaver"
ORDER = "PO-ANCHOR-1"


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Host, str]]:
    from qdspace.ledger.deploy import fund_from_dev_account

    workdir = tmp_path_factory.mktemp("host-anchoring")
    net = LocalNetwork(workdir, members=(MemberSpec(PROVIDER, "supplier"),), chain=True)
    net.create()
    assert net.chain is not None
    # the provider anchors nothing here: both parties anchor the same agreement and receipt
    # bytes, and the chain then holds the provider's transaction, not the tenant's
    (net[PROVIDER].directory / "ledger.json").unlink()
    port = free_port()
    hosted = Host(workdir, workdir / "H", net, free_port(), {LEAVER: port})
    try:
        done = qdspace("host", "init", "--dir", str(hosted.directory), "--api-port",
                       str(hosted.api_port))  # fmt: skip
        assert done.returncode == 0, done.stderr
        done = qdspace("host", "tenant", "add", "--dir", str(hosted.directory), "--name", LEAVER,
                       "--role", "oem", "--authority", str(net.authority_dir),
                       "--grpc-port", str(port))  # fmt: skip
        assert done.returncode == 0, done.stderr
        token = workdir / "leaver.token"
        done = qdspace("host", "tenant", "token", "--dir", str(hosted.directory), "--name",
                       LEAVER, "--out", str(token))  # fmt: skip
        assert done.returncode == 0, done.stderr
        hosted.tokens[LEAVER] = token.read_text().strip()
        add_peers(hosted.directory / "tenants" / LEAVER, {PROVIDER: net[PROVIDER].grpc_address})
        add_peers(net[PROVIDER].directory, {LEAVER: f"127.0.0.1:{port}"})

        chain = net.chain
        ledger_args = ["--rpc-url", chain.url, "--contract", chain.deployment.address,
                       "--chain-id", str(chain.deployment.chain_id)]  # fmt: skip
        bad = workdir / "bad.key"
        bad.write_text("not a key\n")
        done = qdspace("host", "tenant", "ledger", "--dir", str(hosted.directory), "--name",
                       LEAVER, *ledger_args, "--key-file", str(bad))  # fmt: skip
        assert done.returncode == 1 and "not a 32-byte hex private key" in done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        tenant_dir = hosted.directory / "tenants" / LEAVER
        assert not (tenant_dir / "chain.key").exists() and not (tenant_dir / "ledger.json").exists()

        net.start()
        with net[PROVIDER].operator(timeout=120) as provider:
            for kind, path in write_sample_files(
                workdir / "sample", PROVIDER, "supplier", bad_rows=False
            ).items():
                provider.ingest_file(kind, path)
            provider.ingest_rows("order", [{
                "order_id": ORDER, "customer": LEAVER, "supplier": PROVIDER,
                "product": "mono PERC cell M10", "quantity": 10, "status": "open",
                "opened_at": "2026-11-01T06:00:00Z", "closed_at": None}])  # fmt: skip
            provider.ingest_rows("inspection", [{
                "inspection_id": f"AN-EL-{i:04d}", "station": "EL-1", "verdict": "pass",
                "inspected_at": f"2026-11-03T06:00:{i:02d}Z", "score": 0.1,
                "order_id": ORDER, "model_version": "el-1", "image_hash": "ab" * 32,
                "batch_id": "CX-CB-260001"} for i in range(5)])  # fmt: skip
        hosted.start()
        # the chain account is given while the host serves: the tenant anchors from now
        key = workdir / "leaver-chain.key"
        address = new_key_file(key).address
        fund_from_dev_account(chain.url, address, MEMBER_FUNDS_WEI)
        done = qdspace("host", "tenant", "ledger", "--dir", str(hosted.directory), "--name",
                       LEAVER, *ledger_args, "--key-file", str(key))  # fmt: skip
        assert done.returncode == 0 and address in done.stdout, done.stderr
        assert "anchoring now" in done.stdout, done.stdout
        assert (tenant_dir / "chain.key").read_bytes().startswith(FILE_MAGIC)  # sealed
        key.unlink()  # what its operator may do now
        yield hosted, address
    finally:
        hosted.stop()
        net.stop()


def _kinds(client: LedgerClient, address: str) -> set[int]:
    return {e.kind for e in client.anchored_by(address, 0, client.latest_block())}


def test_a_hosted_tenant_anchors_and_leaves_only_once_its_receipt_is_anchored(
    host: tuple[Host, str],
) -> None:
    hosted, address = host
    chain = hosted.net.chain
    assert chain is not None
    client = LedgerClient(chain.url, chain.deployment.address)
    with hosted.operator(LEAVER) as leaver:
        agreed = leaver.negotiate(PROVIDER, "inspections", [QA], orders=[ORDER])
        assert agreed["state"] == "FINALIZED", agreed
        pulled = leaver.transfer(agreed["agreement_id"], QA, order_id=ORDER)
        assert pulled["offset"] == 5, pulled
    eventually(
        lambda: KIND_CODES["agreement"] in _kinds(client, address) or None,
        "the tenant's agreement anchored from its own account",
    )
    assert KIND_CODES["deletion_receipt"] not in _kinds(client, address)

    done = qdspace("host", "tenant", "remove", "--dir", str(hosted.directory), "--name",
                   LEAVER, "--yes")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "leaver removed" in done.stdout, done.stdout
    # removed only once the receipt was on the chain: it is there now, not eventually
    assert KIND_CODES["deletion_receipt"] in _kinds(client, address)
    assert not (hosted.directory / "tenants" / LEAVER).exists()
