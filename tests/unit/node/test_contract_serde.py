"""Every contract wire message survives proto encoding unchanged; bad input is refused."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from qdspace.connector.agreement import (
    AgreementTermination,
    ContractAgreement,
    DeletionReceipt,
    OrderClosed,
    SignedAgreement,
    countersign,
    sign_agreement,
    sign_receipt,
)
from qdspace.connector.assets import AssetKind, CatalogEntry
from qdspace.connector.encoding import StreamEvent, StreamRequest
from qdspace.connector.investigation import (
    ActionItem,
    ActionKind,
    CaseKind,
    CaseTerms,
    Severity,
    opening,
)
from qdspace.connector.investigation_wire import SealedEvent, open_signed_event, sign_event
from qdspace.connector.negotiation import (
    Accepted,
    Agreement,
    ContractOffer,
    ContractRequest,
    Finalized,
    Negotiation,
    NegotiationMessage,
    NegotiationState,
    Role,
    Termination,
    Verification,
)
from qdspace.connector.spc import Investigation, QualityAlert, SpcAlert, SpcPoint
from qdspace.connector.transfer import TransferProcess, TransferState
from qdspace.connector.transfer_messages import (
    TransferCompletion,
    TransferMessage,
    TransferRequest,
    TransferStart,
    TransferSuspension,
    TransferTermination,
)
from qdspace.connector.transfer_wire import BatchRow, Checkpoint, RowBatch
from qdspace.node.rpc import contracts_notification_serde as notification_serde
from qdspace.node.rpc import contracts_serde as serde
from qdspace.node.rpc import contracts_transfer_serde as transfer_serde
from qdspace.policies.model import OfferTerms, Policy, make_offer, to_agreement
from qdspace.protocols.v1 import (
    catalog_pb2,
    negotiation_pb2,
    notification_pb2,
    subscription_pb2,
    transfer_pb2,
)

#: ids as the wire takes them: printable (no control, separator or surrogate characters
#: but the plain space), 1 to 128 characters (`contracts_serde.required`)
ids = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=12,
).filter(str.isprintable)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
field_sets = st.frozensets(ids, max_size=4)
KEY = SigningKey(b"k" * 32)


@st.composite
def offers(draw: st.DrawFn) -> Policy:
    terms = OfferTerms(
        purposes=draw(st.frozensets(ids, min_size=1, max_size=3)),
        orders=draw(st.none() | st.frozensets(ids, min_size=1, max_size=3)),
        fields=draw(st.none() | field_sets),
        not_after=draw(st.none() | instants),
        retention_days=draw(st.integers(0, 3650)),
        receipt=draw(st.booleans()),
        allow_distribution=draw(st.booleans()),
    )
    return make_offer(draw(ids), draw(ids), draw(ids), terms)


@st.composite
def signed_agreements(draw: st.DrawFn) -> SignedAgreement:
    offer = draw(offers())
    agreement_id, consumer = draw(ids), draw(ids)
    requested = draw(instants)
    terms = ContractAgreement(
        agreement_id=agreement_id,
        negotiation_id=draw(ids),
        provider_id=offer.assigner,
        consumer_id=consumer,
        asset_id=offer.target,
        policy=to_agreement(offer, agreement_id, consumer),
        requested_at=requested,
        agreed_at=requested,
    )
    signed = sign_agreement(terms, KEY)
    return countersign(signed, KEY, KEY.verify_key) if draw(st.booleans()) else signed


signatures = st.binary(min_size=64, max_size=64)
#: a checkpoint's position is a view cursor ("" or a row id: `position_refusal`)
positions = st.one_of(st.just(""), st.integers(0, 2**63 - 1).map(str))
checkpoints = st.builds(
    Checkpoint, st.integers(0, 2**62), st.binary(min_size=32, max_size=32), positions
)


def head(cls: type, *rest: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.builds(cls, ids, ids, ids, *rest)


negotiation_messages: st.SearchStrategy[NegotiationMessage] = st.one_of(  # type: ignore[assignment]
    head(ContractRequest, offers(), instants),
    head(ContractOffer, offers(), instants),
    head(Accepted, instants),
    head(Agreement, signed_agreements(), instants),
    head(Verification, signatures, instants),
    head(Finalized, instants),
    head(Termination, texts, instants),
)


@given(negotiation_messages)
def test_negotiation_messages_round_trip(message: NegotiationMessage) -> None:
    wire = serde.negotiation_message_to_proto(message).SerializeToString()
    decoded = negotiation_pb2.NegotiationMessage.FromString(wire)
    assert serde.negotiation_message_from_proto(decoded) == message


@settings(max_examples=50)
@given(
    offers(),
    st.none() | signed_agreements(),
    st.sampled_from(list(NegotiationState)),
    instants,
    st.none() | texts.filter(bool),
)
def test_negotiation_status_round_trips(
    offer: Policy,
    signed: SignedAgreement | None,
    state: NegotiationState,
    at: datetime,
    reason: str | None,
) -> None:
    negotiation = Negotiation(
        "neg",
        Role.CONSUMER,
        offer.assigner,
        "c",
        offer.target,
        state,
        offer,
        at,
        at,
        signed,
        reason,
    )
    status = serde.negotiation_to_proto(negotiation)
    assert serde.negotiation_from_proto(status, Role.CONSUMER) == negotiation
    assert serde.negotiation_ack_to_proto(negotiation).state == state.value


transfer_messages: st.SearchStrategy[TransferMessage] = st.one_of(  # type: ignore[assignment]
    st.builds(
        TransferRequest,
        ids,
        ids,
        ids,
        ids,
        ids,
        instants,
        st.none() | ids,
        st.none() | ids,
        st.none() | field_sets,
        st.just("") | st.integers(0, 2**62).map(str),  # since: a watermark or none
    ),
    head(TransferStart, checkpoints, instants),
    head(TransferSuspension, texts, instants),
    head(TransferCompletion, checkpoints, instants),
    head(TransferTermination, texts, instants),
)
lines = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" "))
rows = st.lists(st.builds(BatchRow, lines, texts), max_size=5).map(tuple)
batches = st.builds(RowBatch.of, ids, rows, checkpoints, st.booleans())


@given(transfer_messages, batches)
def test_transfer_messages_and_batches_round_trip(
    message: TransferMessage, batch: RowBatch
) -> None:
    wire = transfer_serde.transfer_message_to_proto(message).SerializeToString()
    assert (
        transfer_serde.transfer_message_from_proto(transfer_pb2.TransferMessage.FromString(wire))
        == message
    )
    wire = transfer_serde.row_batch_to_proto(batch).SerializeToString()
    decoded = transfer_serde.row_batch_from_proto(transfer_pb2.RowBatch.FromString(wire))
    assert decoded == batch
    assert [(r.payload, r.order_id) for r in decoded.rows] == [
        (r.payload, r.order_id) for r in batch.rows
    ]
    pull = transfer_serde.PullRequest(batch.transfer_id, batch.checkpoint, 7)
    assert (
        transfer_serde.pull_request_from_proto(transfer_serde.pull_request_to_proto(pull)) == pull
    )


ids_up_to_128 = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp")),
    min_size=1,
    max_size=128,
).filter(str.isprintable)


@st.composite
def sized_batches(draw: st.DrawFn) -> RowBatch:
    """Batches whose lengths cross the varint widths (1 to 3 bytes) of every field."""
    count = draw(st.sampled_from([0, 1, 2, 127, 128, 300]))
    line = draw(st.sampled_from([0, 1, 60, 127, 200]))
    orders = draw(st.lists(st.text(max_size=130), min_size=1 if count else 0, max_size=140))
    many = count > 0 and len(orders) > 1
    index = tuple(i % len(orders) for i in range(count)) if many else ()
    checkpoint = Checkpoint(
        draw(st.sampled_from([0, 1, 127, 128, 2**14, 2**62])),
        draw(st.binary(min_size=32, max_size=32)),
        draw(positions),
    )
    payload = b"\n".join([b"x" * line] * count)
    if count == 1 and not payload:
        payload = b"{}"
    return RowBatch(
        draw(ids_up_to_128),  # ("é" and wider characters: past 128 bytes, a 2-byte varint)
        payload,
        count,
        tuple(orders) if count else (),
        index,
        checkpoint,
        draw(st.booleans()),
    )


@given(st.one_of(batches, sized_batches()))
def test_a_batch_serialised_around_its_payload_is_protobufs_own_bytes(batch: RowBatch) -> None:
    """The provider sends `row_batch_wire` (the payload copied once); the reference is
    protobuf's serialisation of the whole message, byte for byte."""
    expected = transfer_serde.row_batch_to_proto(batch).SerializeToString()
    assert transfer_serde.row_batch_wire(batch) == expected
    assert transfer_serde.row_batch_from_proto(transfer_pb2.RowBatch.FromString(expected)) == batch


def test_a_batch_whose_rows_do_not_fit_its_count_or_orders_is_refused() -> None:
    checkpoint = Checkpoint(2, b"\1" * 32, "9")
    good = RowBatch.of("tx", (BatchRow(b"{}", "O1"), BatchRow(b"{}", "O2")), checkpoint)
    assert good.order_index == (0, 1) and good.orders() == ["O1", "O2"]
    for bad, why in (
        (transfer_pb2.RowBatch(payload=b"{}\n{}", row_count=3), "lines for 3 rows"),
        (transfer_pb2.RowBatch(payload=b"{}", row_count=1), "rows without orders"),
        (
            transfer_pb2.RowBatch(payload=b"{}\n{}", row_count=2, order_ids=["a", "b"]),
            "no order index",
        ),
        (
            transfer_pb2.RowBatch(
                payload=b"{}\n{}", row_count=2, order_ids=["a", "b"], order_index=[0, 2]
            ),
            "order index",
        ),
    ):
        bad.transfer_id = "tx"
        bad.checkpoint.CopyFrom(transfer_serde.checkpoint_to_proto(checkpoint))
        with pytest.raises(serde.WireFormatError, match=why):
            transfer_serde.row_batch_from_proto(bad)


def test_transfer_ack_carries_state_and_cursor() -> None:
    checkpoint = Checkpoint(5, b"\1" * 32, "17")
    at = datetime(2026, 5, 1, tzinfo=UTC)
    process = TransferProcess(
        "tx", "agr", Role.PROVIDER, "p", "c", TransferState.SUSPENDED, checkpoint, at, at
    )
    view = transfer_serde.transfer_ack_from_proto(transfer_serde.transfer_ack_to_proto(process))
    assert (view.transfer_id, view.state, view.checkpoint) == (
        "tx",
        TransferState.SUSPENDED,
        checkpoint,
    )


@given(
    st.builds(StreamRequest, ids, ids, texts, st.none() | field_sets, texts, st.booleans()),
    ids,
    # a row's position is a row id (`row_seqs`): other text is refused where it arrives
    st.lists(
        st.tuples(st.binary(max_size=20), texts, st.integers(0, 2**63 - 1).map(str)), max_size=4
    ),
    instants,
)
def test_subscription_messages_round_trip(
    request: StreamRequest, sub_id: str, items: list[tuple[bytes, str, str]], at: datetime
) -> None:
    assert (
        transfer_serde.stream_request_from_proto(transfer_serde.stream_request_to_proto(request))
        == request
    )
    event = StreamEvent(
        sub_id, tuple(BatchRow(p, o) for p, o, _ in items), tuple(pos for _, _, pos in items), at
    )
    proto = transfer_serde.stream_event_to_proto(event)
    assert proto.heartbeat == (not items)
    assert transfer_serde.stream_event_from_proto(proto) == event


@given(ids, st.integers(0, 2**63 - 1), instants)
def test_a_heartbeat_carries_where_the_stream_stands(
    sub_id: str, position: int, at: datetime
) -> None:
    event = StreamEvent(sub_id, (), (), at, position=str(position))
    proto = transfer_serde.stream_event_to_proto(event)
    assert proto.heartbeat and proto.position == str(position)
    assert transfer_serde.stream_event_from_proto(proto) == event


@pytest.mark.parametrize("bad", ["\u00b2", "\u0661\u0662", "9" * 25, "-1", "12 ", "0x10", " 7"])
def test_a_heartbeat_position_that_names_no_row_is_refused(bad: str) -> None:
    """A provider's position is sent back to it when the stream is opened again: one that
    is no view cursor is refused where it arrives, and the subscription ends saying so."""
    proto = subscription_pb2.SubscriptionEvent(
        subscription_id="sub-1", heartbeat=True, sent_at_unix_us=1, position=bad
    )
    with pytest.raises(serde.WireFormatError, match="is not a view cursor"):
        transfer_serde.stream_event_from_proto(proto)


@given(offers(), st.sampled_from(list(AssetKind)), field_sets, field_sets, texts)
def test_catalog_round_trips(
    offer: Policy, kind: AssetKind, fields: frozenset[str], pseudo: frozenset[str], text: str
) -> None:
    entry = CatalogEntry(offer.assigner, offer.target, text, kind, fields, pseudo, offer, text)
    other = dataclasses.replace(entry, asset_id=f"{entry.asset_id}-2")
    reply = serde.catalog_to_proto("cellex", [entry, other])
    decoded = catalog_pb2.CatalogReply.FromString(reply.SerializeToString())
    assert serde.catalog_from_proto(decoded) == [entry, other]
    twice = catalog_pb2.CatalogReply.FromString(
        serde.catalog_to_proto("cellex", [entry, entry]).SerializeToString()
    )
    with pytest.raises(serde.WireFormatError, match="asset id twice"):
        serde.catalog_from_proto(twice)


points = st.lists(
    st.builds(SpcPoint, st.integers(0, 10**9), st.floats(allow_nan=False), instants), max_size=4
).map(tuple)
#: what a notice's ids and codes may hold (printable: no control character, `str.isprintable`)
_printable = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp", "Zs")
) | st.just(" ")
notice_codes = st.text(_printable, max_size=16)
#: and its texts: printable but for line breaks
notice_texts = st.text(_printable | st.just("\n"), max_size=20)
bodies = st.one_of(
    st.builds(
        OrderClosed,
        ids,
        instants,
        # each agreement once: a closure naming one twice is refused where it arrives
        st.lists(st.text(_printable, min_size=1, max_size=12), max_size=3, unique=True).map(tuple),
    ),
    st.builds(AgreementTermination, ids, notice_texts, instants),
    st.builds(
        lambda agreement, count, digest, at, order: sign_receipt(
            DeletionReceipt(agreement, "sunarc", count, digest, at, order), KEY
        ),
        ids,
        st.integers(0, 10**9),
        st.text("0123456789abcdef", min_size=64, max_size=64),
        instants,
        notice_codes,
    ),
    st.builds(
        QualityAlert,
        ids,
        st.builds(
            SpcAlert, st.sampled_from(["WE1", "NELSON3", "CPK"]), notice_texts, points, instants
        ),
        notice_codes,
        notice_codes,
        notice_codes,
        notice_codes,
    ),
    st.builds(
        Investigation, ids, notice_texts, notice_texts, notice_codes, notice_codes, notice_codes
    ),
)


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (AgreementTermination("agr-1", "done\x1b[2K", datetime(2026, 1, 1, tzinfo=UTC)), "reason"),
        (Investigation("inv-1", "x\r2026-12-06 INFO forged", "d"), "investigation subject"),
        (
            QualityAlert(
                "al-1", SpcAlert("WE1", "drift\x1b[2K", (), datetime(2026, 1, 1, tzinfo=UTC))
            ),
            "quality alert description",
        ),
        (
            QualityAlert(
                "al-2", SpcAlert("WE1", "d", (), datetime(2026, 1, 1, tzinfo=UTC)), "a\tb"
            ),
            "quality alert agreement_id",
        ),
        (OrderClosed("PO-1", datetime(2026, 1, 1, tzinfo=UTC), ("agr\n1",)), "agreement_ids"),
    ],
)
def test_control_characters_in_a_notice_are_refused_where_it_arrives(body: Any, what: str) -> None:
    """A notice's texts are kept, shown and logged: a terminal escape, a carriage return
    or a line break where no text needs one is a wire error naming the field (on the old
    code each was decoded and kept as sent)."""
    note = notification_serde.Notification("n-1", "cellex", datetime(2026, 1, 1, tzinfo=UTC), body)
    wire = notification_serde.notification_to_proto(note)
    with pytest.raises(serde.WireFormatError, match=what):
        notification_serde.notification_from_proto(wire)


@given(
    st.builds(
        notification_serde.Notification, ids, ids, instants, bodies, st.one_of(st.just(""), ids)
    )
)
def test_notifications_round_trip(notification: notification_serde.Notification) -> None:
    wire = notification_serde.notification_to_proto(notification).SerializeToString()
    decoded = notification_pb2.NotificationMessage.FromString(wire)
    assert notification_serde.notification_from_proto(decoded) == notification


def test_undecodable_input_is_refused_with_a_reason() -> None:
    with pytest.raises(serde.WireFormatError, match="has no body"):
        serde.negotiation_message_from_proto(
            negotiation_pb2.NegotiationMessage(message_id="m", negotiation_id="n", sender_id="s")
        )
    with pytest.raises(serde.WireFormatError, match="message_id is missing"):
        transfer_serde.transfer_message_from_proto(transfer_pb2.TransferMessage())
    bad_policy = negotiation_pb2.NegotiationMessage(
        message_id="m", negotiation_id="n", sender_id="s"
    )
    bad_policy.request.offer_json = b'{"@type": "Offer"}'
    with pytest.raises(serde.WireFormatError, match="policy"):
        serde.negotiation_message_from_proto(bad_policy)
    with pytest.raises(serde.WireFormatError, match="unknown kind"):
        serde.catalog_entry_from_proto(catalog_pb2.Asset(provider_id="p", asset_id="a", kind="x"))
    with pytest.raises(serde.WireFormatError, match="checkpoint"):
        transfer_serde.checkpoint_from_proto(transfer_pb2.Checkpoint(offset=1, digest=b"short"))
    broken = negotiation_pb2.SignedAgreement(agreement_json=b"{}", provider_signature=b"x")
    with pytest.raises(serde.WireFormatError, match="agreement"):
        serde.signed_agreement_from_proto(broken)
    with pytest.raises(serde.WireFormatError, match="no body"):
        notification_serde.notification_from_proto(
            notification_pb2.NotificationMessage(notification_id="n", sender_id="s")
        )
    with pytest.raises(serde.WireFormatError, match="time zone"):
        serde.datetime_to_us(datetime(2026, 1, 1))
    assert serde.datetime_from_us(
        serde.datetime_to_us(datetime(1969, 12, 31, tzinfo=UTC))
    ) == datetime(1969, 12, 31, tzinfo=UTC)


def test_a_quality_case_event_travels_sealed_and_opens_as_signed() -> None:
    key = SigningKey(b"k" * 32)
    action = ActionItem("A1", ActionKind.ROOT_CAUSE, "cellex-000000000002", date(2026, 12, 9))
    terms = CaseTerms(
        CaseKind.ALERT,
        "sunarc-000000000001",
        "cellex-000000000002",
        Severity.LIFE_THREATENING,
        "suspect parts",
        actions=(action,),
    )
    signed = sign_event(opening("qc-9", terms, datetime(2026, 12, 1, tzinfo=UTC))[0], key)
    note = notification_serde.Notification("n-1", "sunarc-000000000001", signed.event.at, signed)
    wire = notification_serde.notification_to_proto(note).SerializeToString()
    decoded = notification_serde.notification_from_proto(
        notification_pb2.NotificationMessage.FromString(wire)
    )
    assert isinstance(decoded.body, SealedEvent)
    assert open_signed_event(decoded.body.data, decoded.body.signature, key.verify_key) == signed
    with pytest.raises(serde.WireFormatError, match="without its bytes"):
        notification_serde.notification_from_proto(
            notification_pb2.NotificationMessage(
                notification_id="n",
                sender_id="s",
                quality_case_event=notification_pb2.QualityCaseEvent(event_json=b"{}"),
            )
        )
