"""CPU of the negotiation code alone: both sides in one process, no gRPC, no HTTP.

The two node processes of ``bench/negotiation.py`` spend most of their CPU outside the
negotiation code (gRPC's asyncio machinery, the HTTP layer), and on shared cores their
/proc figure moves by +-2 ms run to run. This runs what the two nodes run for a
negotiation and nothing else: the provider's ``handle_negotiation`` (decode, decide,
sign, store) behind a proto round trip, the consumer's loop of
``ContractClient._negotiate`` (store, decode, verify, countersign, store), each side on
its own SQLite file in WAL mode with the node's pragmas. Each side keeps memos of its
own (`connector.agreement_memo`), as two processes would, and each side's transactions run
on one held connection, as a node's event loop does (`connector.held_connection`; HOLD=0:
through the pool, as before round 6). Prints the process CPU time
per negotiation; run it on two trees alternately to compare them
(bench/PROFILE-negotiation.md, round 3).

    PYTHONPATH=. python bench/profile/negotiation_code.py           # 300 negotiations
    PYTHONPATH=/tmp/old python bench/profile/negotiation_code.py 100
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nacl.signing import SigningKey
from sqlalchemy import insert

from qdspace.connector import negotiation as negotiation_module
from qdspace.connector.assets import Asset, AssetKind
from qdspace.connector.contract_store import ContractStore, ensure_schema
from qdspace.connector.negotiation import (
    ContractRequest,
    NegotiationState,
    PartyKeys,
    Role,
    apply,
    open_negotiation,
)
from qdspace.connector.paging import INSPECTION_FIELDS
from qdspace.connector.qdm import Order
from qdspace.connector.storage import create_store_engine
from qdspace.node.identity.certs import MemberIdentity
from qdspace.node.member_ids import member_id_for
from qdspace.node.rpc.contracts_serde import (
    negotiation_ack_to_proto,
    negotiation_message_from_proto,
    negotiation_message_to_proto,
)
from qdspace.node.runtime.contracts import ContractRuntime
from qdspace.node.runtime.contracts_clock import ContractClock
from qdspace.policies.model import OfferTerms, make_offer
from qdspace.protocols.v1 import negotiation_pb2

# an older tree has neither of these: it then parses and verifies as it always did
EXPECT: Callable[..., Any] | None = getattr(negotiation_module, "expect_agreement", None)
try:
    from qdspace.connector import agreement_memo
    from qdspace.connector.contract_store import negotiations

    MEMOS: list[Any] = [agreement_memo.PARSED, agreement_memo.VERIFIED, negotiations._OFFERS]
except ImportError:
    MEMOS = []
SIDES: dict[str, list[dict[Any, Any]]] = {side: [{} for _ in MEMOS] for side in ("p", "c")}


def _side(name: str) -> None:
    for memo, items in zip(MEMOS, SIDES[name], strict=True):
        memo._items = items


def _identity(name: str, role: str, key: SigningKey) -> MemberIdentity:
    vk = bytes(key.verify_key)
    expires = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    return MemberIdentity(member_id_for(name, vk), name, role, vk, 1, expires, name)


def _runtime(tmp: Path, name: str, role: str, key: SigningKey, assets: Any) -> ContractRuntime:
    engine = create_store_engine(f"sqlite:///{tmp / (name + '.db')}")
    ensure_schema(engine)
    clock = ContractClock(tmp / f"{name}-clock", control=False)
    me = _identity(name, role, key)
    return ContractRuntime(
        me, key, ContractStore(engine, bytes(32)), engine, clock, bytes(32), assets
    )


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    tmp = Path(tempfile.mkdtemp(prefix="qdspace-negotiation-code-"))
    pkey, ckey = SigningKey(b"p" * 32), SigningKey(b"c" * 32)
    pid = _identity("cellex", "supplier", pkey).member_id
    terms = OfferTerms(purposes=frozenset({"quality-assurance"}))
    asset = Asset(
        asset_id="inspections",
        title="inspections",
        kind=AssetKind.INSPECTIONS_OF_ORDER,
        tables=("qdm_inspection",),
        fields=INSPECTION_FIELDS,
        offer=make_offer("offer-inspections", pid, "inspections", terms),
        pseudonymized=frozenset(),
        audience=frozenset({"oem"}),
    )
    provider = _runtime(tmp, "cellex", "supplier", pkey, {"inspections": asset})
    consumer = _runtime(tmp, "sunarc", "oem", ckey, {})
    with provider.qdm.begin() as connection:
        opened = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
        row = dict(order_id="PO-1", customer="sunarc", supplier="cellex", product="cells")
        row.update(quantity=1, status="open", opened_at=opened)
        connection.execute(insert(Order.__table__).values(**row))  # type: ignore[attr-defined]
    keys = PartyKeys(pkey.verify_key, ckey.verify_key)
    asked_terms = OfferTerms(
        purposes=frozenset({"quality-assurance"}),
        orders=frozenset({"PO-1"}),
        fields=frozenset(INSPECTION_FIELDS),
    )

    def send(wire: negotiation_pb2.NegotiationMessage) -> negotiation_pb2.NegotiationAck:
        """The provider's servicer, behind a proto round trip."""
        _side("p")
        try:
            received = negotiation_pb2.NegotiationMessage.FromString(wire.SerializeToString())
            message = negotiation_message_from_proto(received)
            state, replies = provider.handle_negotiation(consumer.me, message)
            ack = negotiation_ack_to_proto(state)
            ack.replies.extend(negotiation_message_to_proto(r) for r in replies)
            return negotiation_pb2.NegotiationAck.FromString(ack.SerializeToString())
        finally:
            _side("c")

    def negotiate() -> None:
        nid = f"neg-{uuid.uuid4().hex}"
        asked = make_offer(f"{nid}:request", pid, "inspections", asked_terms)
        message: Any = ContractRequest(
            f"{nid}:c0", nid, consumer.me.member_id, asked, consumer.clock.now()
        )
        n = open_negotiation(message, Role.CONSUMER)
        consumer.store.save_negotiation(None, n)
        saved = n
        while True:
            for reply in send(negotiation_message_to_proto(message)).replies:
                if EXPECT is not None and reply.WhichOneof("body") == "agreement":
                    EXPECT(n, reply.agreement.agreement.agreement_json)
                n = apply(n, negotiation_message_from_proto(reply), keys)
            answer = consumer.consumer_answer(n, asked, pkey.verify_key)
            if answer is not None:
                n = apply(n, answer, keys)
            if n != saved:
                consumer.store.save_negotiation(saved, n)
                saved = n
            if answer is None:
                if n.state is not NegotiationState.FINALIZED:
                    raise SystemExit(f"negotiation ended {n.state}")
                consumer.record_agreement(n)
                return
            message = answer

    if os.environ.get("HOLD", "1") == "1":
        try:  # as a node's event loop does (round 6); older trees have no such module
            from qdspace.connector import held_connection
        except ImportError:
            pass
        else:
            held_connection.hold(provider.store.engine)
            held_connection.hold(consumer.store.engine)
    _side("c")
    for _ in range(30):  # warm-up
        negotiate()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(runs):
        negotiate()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"negotiation_code.runs: {runs} negotiations")
    print(f"negotiation_code.cpu_per_negotiation: {cpu / runs * 1000:.3f} ms")
    print(f"negotiation_code.wall_per_negotiation: {wall / runs * 1000:.3f} ms")
    print(f"negotiation_code.loadavg_1m: {os.getloadavg()[0]:.2f} load")


if __name__ == "__main__":
    main()
