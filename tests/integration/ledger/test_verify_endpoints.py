"""``qdspace verify`` against several JSON-RPC endpoints, one of which lies consistently.

Every chain check of a proof reads what the endpoint answers, so one endpoint that forges
the receipt of a real transaction of the member (adding an ``Anchored`` log of a forged
root with the member's account as anchorer) made a forged deletion receipt VALID, the
data space's contract and the member's account pinned. Given the real chain as well, the
verdict is INVALID and says which endpoint reported what; two faithful endpoints give
VALID. The lying endpoint is a proxy in this process in front of the real dev chain that
rewrites the chain's answers as a test scripts it (on the code before, a second ``--rpc``
replaced the first, and ``verify_document`` took one URL).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from nacl.signing import SigningKey
from typer.testing import CliRunner

from qdspace.ledger.anchor_policy import AnchorPolicy
from qdspace.ledger.anchorer import Anchorer
from qdspace.ledger.client import _ANCHORED_TOPIC as ANCHORED_TOPIC
from qdspace.ledger.errors import ChainUnavailable
from qdspace.ledger.keys import ChainSigner
from qdspace.ledger.leaves import KIND_CODES, leaf_preimage
from qdspace.ledger.merkle import leaf_hash
from qdspace.ledger.passport import issue_passport
from qdspace.ledger.proofs import InclusionProof, build_proof
from qdspace.ledger.queue import LeafQueue
from qdspace.ledger.verify import verify_across, verify_document
from qdspace.node.cli.ledger import ledger_app
from qdspace.node.member_ids import member_id_for
from qdspace.util.ports import free_port

from .conftest import ChainProcess, funded_chain
from .rpc_server import JsonRpcServer

pytestmark = pytest.mark.integration

#: the chain's answer to a method, rewritten: (method, params, the chain's result) -> result
Lie = Callable[[str, list[Any], Any], Any]

RECORDS = {("inspection", f"EL-CX-{i:03d}"): b'{"verdict":"crack","n":%d}' % i for i in range(5)}
RECORDS[("agreement", "agr-1")] = b'{"offer":"el-verdicts","order":"PO-77"}'


def _faithful(method: str, params: list[Any], result: Any) -> Any:
    return result


class Proxy(JsonRpcServer):
    """A JSON-RPC endpoint that answers what the chain at `upstream` answers, each result
    passed through `lie` first (`_faithful`: an honest second endpoint)."""

    def __init__(self, upstream: str, lie: Lie = _faithful) -> None:
        self.upstream, self.lie = upstream, lie
        super().__init__()

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = httpx.post(self.upstream, json=request, timeout=10).json()
        if "result" in reply:
            params = request.get("params") or []
            reply["result"] = self.lie(request["method"], params, reply["result"])
        return reply


@dataclass
class Space:
    chain: ChainProcess
    queue: LeafQueue
    signer: ChainSigner

    @property
    def contract(self) -> str:
        return self.chain.deployment.address

    def proof(self, kind: str, ref_id: str) -> InclusionProof:
        return build_proof(self.queue, kind, ref_id, RECORDS[(kind, ref_id)])


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Space]:
    """RECORDS anchored once (inspections in two batches, one agreement) on a dev chain."""
    with funded_chain(tmp_path_factory.mktemp("endpoints")) as (chain, signer, queue):
        anchorer = Anchorer(queue, chain.client(), signer, AnchorPolicy(max_leaves=4))
        for (kind, ref), record in RECORDS.items():
            anchorer.enqueue(kind, ref, record)
        assert anchorer.flush(timeout_s=30)
        yield Space(chain, queue, signer)


@pytest.fixture
def proxies(space: Space) -> Iterator[Callable[[Lie], Proxy]]:
    """Start proxies in front of the space's chain; all closed after the test."""
    started: list[Proxy] = []

    def start(lie: Lie = _faithful) -> Proxy:
        started.append(Proxy(space.chain.url, lie))
        return started[-1]

    yield start
    for proxy in started:
        proxy.close()


def _word(n: int) -> str:
    return "0x" + n.to_bytes(32, "big").hex()


def _forged_deletion(space: Space) -> tuple[InclusionProof, Lie]:
    """A one-leaf proof of a deletion receipt nobody anchored, naming the member's real
    agreement transaction, and the lie that makes an endpoint confirm it: that
    transaction's receipt with one more ``Anchored`` log, of the forged root, by the
    member's account, in the transaction's own block."""
    real = space.proof("agreement", "agr-1")
    record = b'{"deletion":"never happened"}'
    sha = hashlib.sha256(record).digest()
    root = leaf_hash(leaf_preimage("deletion_receipt", "dr-victim-0001", sha))
    forged = real.model_copy(
        update={
            "kind": "deletion_receipt", "ref_id": "dr-victim-0001",
            "record_sha256": "0x" + sha.hex(), "index": 0, "size": 1, "path": "",
            "root": "0x" + root.hex(), "record_b64": base64.b64encode(record).decode(),
        }
    )  # fmt: skip
    account = "0x" + "00" * 12 + space.signer.address[2:].lower()

    def lie(method: str, params: list[Any], result: Any) -> Any:
        if method != "eth_getTransactionReceipt" or params[0] != real.tx_hash or not result:
            return result
        log = {
            "address": space.contract.lower(), "logIndex": hex(len(result["logs"])),
            "topics": [ANCHORED_TOPIC, "0x" + root.hex(),
                       _word(KIND_CODES["deletion_receipt"]), account],
            "data": _word(1) + _word(real.block_number)[2:] + _word(1_700_000_000)[2:],
            "blockNumber": result["blockNumber"], "blockHash": result["blockHash"],
            "transactionHash": real.tx_hash,
        }  # fmt: skip
        return {**result, "logs": [*result["logs"], log]}

    return forged, lie


def test_a_consistent_liar_alone_passes_a_forgery_the_real_chain_beside_it_does_not(
    space: Space, proxies: Callable[[Lie], Proxy]
) -> None:
    forged, lie = _forged_deletion(space)
    liar = proxies(lie)
    pins: dict[str, Any] = {"contract": space.contract, "anchorer": space.signer.address}
    alone = verify_document(forged.to_json(), liar.url, **pins)[1]
    assert alone.valid, alone.reason  # what one lying endpoint could do
    assert not verify_document(forged.to_json(), space.chain.url, **pins)[1].valid

    done = verify_across(forged.to_json(), [space.chain.url, liar.url], **pins)
    assert not done.verdict.valid
    reason = done.verdict.reason
    assert reason.startswith("endpoints: endpoints disagree: "), reason
    assert f"{space.chain.url} (invalid): block {forged.block_number} hash 0x" in reason
    assert "no Anchored log of the root" in reason
    assert f"{liar.url} (valid): block {forged.block_number} hash 0x" in reason
    assert f"1 leaves of kind {KIND_CODES['deletion_receipt']} anchored by" in reason
    honest, lying = done.endpoints
    assert (honest.rpc_url, honest.verdict.valid) == (space.chain.url, False)
    assert (lying.rpc_url, lying.verdict.valid) == (liar.url, True)
    endpoint_checks = [c for c in done.verdict.checks if c.name == "endpoint"]
    assert [c.ok for c in endpoint_checks] == [False, True]
    assert "did not anchor root" in endpoint_checks[0].detail
    # in either order
    flipped = verify_across(forged.to_json(), [liar.url, space.chain.url], **pins)
    assert not flipped.verdict.valid and "endpoints disagree" in flipped.verdict.reason


def test_endpoints_that_each_confirm_but_report_another_anchor_disagree(
    space: Space, proxies: Callable[[Lie], Proxy]
) -> None:
    """A genuine proof: one endpoint names another hash for the transaction's block (which
    no check of a proof compares: alone, it is VALID), another moves the transaction into
    the next block (alone, INVALID); beside the real chain, both are named."""
    proof = space.proof("inspection", "EL-CX-001")

    def other_hash(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getTransactionReceipt" and result:
            return {**result, "blockHash": _word(0xFEED)}
        return result

    def next_block(method: str, params: list[Any], result: Any) -> Any:
        if method != "eth_getTransactionReceipt" or not result:
            return result
        moved = hex(int(result["blockNumber"], 16) + 1)
        logs = [
            {**log, "blockNumber": moved,
             "data": log["data"][:66] + _word(int(moved, 16))[2:] + log["data"][130:]}
            for log in result["logs"]
        ]  # fmt: skip
        return {**result, "blockNumber": moved, "logs": logs}

    forked, mover = proxies(other_hash), proxies(next_block)
    assert verify_document(proof.to_json(), forked.url)[1].valid
    assert "another block" in verify_document(proof.to_json(), mover.url)[1].reason

    done = verify_across(proof.to_json(), [space.chain.url, forked.url])
    assert not done.verdict.valid
    assert [e.verdict.valid for e in done.endpoints] == [True, True]
    assert done.endpoints[0].report != done.endpoints[1].report
    assert f"{forked.url} (valid): block {proof.block_number} hash {_word(0xFEED)}" in (
        done.verdict.reason
    )
    done = verify_across(proof.to_json(), [space.chain.url, mover.url])
    assert not done.verdict.valid
    assert f"{mover.url} (invalid): block {proof.block_number + 1} hash" in done.verdict.reason


def test_two_faithful_endpoints_agree_and_an_unreachable_one_is_not_skipped(
    space: Space, proxies: Callable[[Lie], Proxy]
) -> None:
    proof = space.proof("inspection", "EL-CX-004").to_json()
    faithful = proxies(_faithful)
    done = verify_across(proof, [space.chain.url, faithful.url], contract=space.contract)
    assert done.verdict.valid, done.verdict.reason
    assert [e.rpc_url for e in done.endpoints] == [space.chain.url, faithful.url]
    assert done.endpoints[0].report == done.endpoints[1].report
    assert done.verdict.checks[0].name == "endpoints"
    assert done.verdict.checks[0].detail.startswith("all 2 endpoints report block ")
    # one endpoint: its verdict as before, no agreement check
    single = verify_across(proof, [space.chain.url], contract=space.contract)
    assert single.verdict == single.endpoints[0].verdict
    assert "endpoints" not in {c.name for c in single.verdict.checks}
    # the same endpoint twice is one witness
    twice = verify_across(proof, [space.chain.url, space.chain.url])
    assert len(twice.endpoints) == 1

    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ChainUnavailable, match=f"chain at {dead} is unreachable"):
        verify_across(proof, [space.chain.url, dead])


def test_a_passport_needs_every_endpoint_to_report_the_same_events(
    space: Space, proxies: Callable[[Lie], Proxy]
) -> None:
    """The liar changes the transaction of the member's first inspection batch in its
    logs, one the passport does not name (a later batch is the latest): alone VALID."""
    key = SigningKey.generate()
    member = member_id_for("cellex", bytes(key.verify_key))
    client = space.chain.client()
    passport = issue_passport(space.queue, client, key, member, space.signer.address)
    assert passport.activity["inspection"].batches == 2
    text = passport.to_json()

    def other_tx(method: str, params: list[Any], result: Any) -> Any:
        if method == "eth_getLogs" and result:
            return [{**result[0], "transactionHash": _word(0xBAD)}, *result[1:]]
        return result

    liar, faithful = proxies(other_tx), proxies(_faithful)
    assert verify_document(text, liar.url)[1].valid
    agreed = verify_across(text, [space.chain.url, faithful.url])
    assert agreed.verdict.valid, agreed.verdict.reason
    assert "anchors by" in agreed.endpoints[0].report
    done = verify_across(text, [space.chain.url, liar.url])
    assert not done.verdict.valid and "endpoints disagree" in done.verdict.reason


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(ledger_app, list(args))
    return result.exit_code, result.output


def test_cli_takes_several_endpoints_and_shows_each(
    space: Space, proxies: Callable[[Lie], Proxy], tmp_path: Path
) -> None:
    forged, lie = _forged_deletion(space)
    liar, faithful = proxies(lie), proxies(_faithful)
    path = tmp_path / "forged.json"
    path.write_text(forged.to_json())
    pins = ("--contract", space.contract, "--anchorer", space.signer.address)
    code, out = _cli("verify", str(path), "--rpc", liar.url, *pins, "--json")
    assert code == 0, out  # one lying endpoint: VALID
    code, out = _cli("verify", str(path), "--rpc", space.chain.url, "--rpc", liar.url, *pins,
                     "--json")  # fmt: skip
    assert code == 1, out
    verdict = json.loads(out)
    assert verdict["valid"] is False
    assert [e["rpc_url"] for e in verdict["endpoints"]] == [space.chain.url, liar.url]
    assert [e["valid"] for e in verdict["endpoints"]] == [False, True]
    assert "no Anchored log of the root" in verdict["endpoints"][0]["report"]
    assert verdict["checks"][0]["name"] == "endpoints" and not verdict["checks"][0]["ok"]
    assert "endpoints disagree" in verdict["checks"][0]["detail"]

    genuine = tmp_path / "proof.json"
    genuine.write_text(space.proof("agreement", "agr-1").to_json())
    code, out = _cli("verify", str(genuine), "--rpc", space.chain.url, "--rpc-url",
                     faithful.url, *pins)  # fmt: skip
    assert code == 0, out
    flat = " ".join(out.split())
    for url in (space.chain.url, faithful.url):
        assert f"endpoint {url}: VALID" in flat, out
    assert "ok endpoints: all 2 endpoints report block" in flat
    assert "VALID qdspace.inclusion-proof" in flat
    code, out = _cli("verify", str(genuine), "--rpc", space.chain.url, *pins, "--json")
    assert code == 0 and len(json.loads(out)["endpoints"]) == 1, out

    dead = f"http://127.0.0.1:{free_port()}"
    code, out = _cli("verify", str(genuine), "--rpc", space.chain.url, "--rpc", dead, *pins)
    assert code == 2 and dead in " ".join(out.split()), out


def _keyed(url: str) -> tuple[str, tuple[str, ...]]:
    """`url` as a hosted endpoint is written (an API key in the path and in the query, a
    user and password), and the secrets in it (the proxy ignores all of them)."""
    key, token, password = "9aa3d95b3bc440fa88ea12eaa4456161", "Qx7Zr2LmNpW4tYv8", "hunter2-s3cret"
    host = url.removeprefix("http://")
    return f"http://alice:{password}@{host}/v3/{key}?apikey={token}", (key, token, password)


def test_the_cli_never_shows_an_endpoints_api_key_password_or_query(
    space: Space, proxies: Callable[[Lie], Proxy], tmp_path: Path
) -> None:
    """Hosted endpoints carry their API key in the URL; what `verify` prints (text or
    JSON, a disagreement, an unreachable endpoint) ends up in tickets: each endpoint is
    named by scheme, host and port (and a path's short words) only."""
    forged, lie = _forged_deletion(space)
    liar, liar_secrets = _keyed(proxies(lie).url)
    faithful, faithful_secrets = _keyed(proxies(_faithful).url)
    secrets = (*liar_secrets, *faithful_secrets)
    shown = [u.split("@")[1].split("/")[0] for u in (liar, faithful)]  # 127.0.0.1:PORT
    forged_file, genuine_file = tmp_path / "forged.json", tmp_path / "proof.json"
    forged_file.write_text(forged.to_json())
    genuine_file.write_text(space.proof("agreement", "agr-1").to_json())
    pins = ("--contract", space.contract, "--anchorer", space.signer.address)

    code, out = _cli("verify", str(forged_file), "--rpc", space.chain.url, "--rpc", liar, *pins,
                     "--json")  # fmt: skip
    assert code == 1, out
    verdict = json.loads(out)
    assert verdict["endpoints"][1]["rpc_url"] == f"http://{shown[0]}/v3/…?…"
    assert f"http://{shown[0]}/v3/…?… (valid)" in verdict["checks"][0]["detail"]
    outputs = [out]
    for args in [
        ("verify", str(forged_file), "--rpc", space.chain.url, "--rpc", liar, *pins),
        ("verify", str(genuine_file), "--rpc", liar, "--rpc", faithful, *pins),
    ]:
        code, out = _cli(*args)
        assert code in (0, 1), out
        outputs.append(out)
    assert f"endpoint http://{shown[1]}/v3/…?…: VALID" in " ".join(outputs[2].split())

    dead, dead_secrets = _keyed(f"http://127.0.0.1:{free_port()}")
    code, out = _cli("verify", str(genuine_file), "--rpc", faithful, "--rpc", dead, *pins)
    assert code == 2, out
    flat = " ".join(out.split())
    assert f"chain at http://{dead.split('@')[1].split('/')[0]}/v3/…?… is unreachable" in flat
    for printed in [*outputs, out]:
        leaked = [s for s in (*secrets, *dead_secrets) if s in printed]
        assert not leaked, (leaked, printed)
