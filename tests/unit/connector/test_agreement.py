"""Signed agreements and deletion receipts: canonical bytes, signatures, tamper refusal."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from qdspace.connector import agreement_memo
from qdspace.connector.agreement import (
    ContractAgreement,
    DeletionReceipt,
    SignedReceipt,
    agreement_from_bytes,
    build_receipt,
    countersign,
    deletion_digest,
    open_signed_agreement,
    open_signed_receipt,
    receipt_from_bytes,
    sign_agreement,
    sign_receipt,
    verify_agreement,
    verify_provider_signature,
    verify_receipt,
)
from qdspace.connector.contract_errors import (
    AgreementError,
    AgreementSignatureError,
    ReceiptSignatureError,
)
from qdspace.policies.canonical import canonical_json
from qdspace.policies.model import OfferTerms, make_offer, to_agreement

T0 = datetime(2026, 5, 1, 8, 30, tzinfo=UTC)
PROVIDER = SigningKey(bytes(range(32)))
CONSUMER = SigningKey(bytes(range(1, 33)))


def terms(
    agreement_id: str = "agr-1", orders: frozenset[str] = frozenset({"ORD-1"})
) -> ContractAgreement:
    offer = make_offer(
        "offer-1",
        "cellex-mono",
        "inspections",
        OfferTerms(purposes=frozenset({"quality-assurance"}), orders=orders),
    )
    return ContractAgreement(
        agreement_id=agreement_id,
        negotiation_id="neg-1",
        provider_id="cellex-mono",
        consumer_id="sunarc",
        asset_id="inspections",
        policy=to_agreement(offer, agreement_id, "sunarc"),
        requested_at=T0,
        agreed_at=T0 + timedelta(seconds=2),
    )


def test_both_signatures_verify_and_the_bytes_round_trip() -> None:
    signed = countersign(sign_agreement(terms(), PROVIDER), CONSUMER, PROVIDER.verify_key)
    verify_agreement(signed, PROVIDER.verify_key, CONSUMER.verify_key)
    data = signed.canonical_bytes
    assert agreement_from_bytes(data) == signed.agreement
    opened = open_signed_agreement(
        data,
        signed.provider_signature,
        signed.consumer_signature,
        PROVIDER.verify_key,
        CONSUMER.verify_key,
    )
    assert opened == signed
    assert len(signed.agreement.digest()) == 32


def test_countersigning_refuses_an_agreement_the_provider_did_not_sign() -> None:
    forged = sign_agreement(terms(), SigningKey.generate())
    with pytest.raises(AgreementSignatureError):
        countersign(forged, CONSUMER, PROVIDER.verify_key)


def test_missing_countersignature_is_refused() -> None:
    signed = sign_agreement(terms(), PROVIDER)
    with pytest.raises(AgreementSignatureError, match="not countersigned"):
        verify_agreement(signed, PROVIDER.verify_key, CONSUMER.verify_key)


def test_signatures_replayed_from_another_agreement_or_role_are_refused() -> None:
    first = countersign(sign_agreement(terms(), PROVIDER), CONSUMER, PROVIDER.verify_key)
    other = terms("agr-2")
    assert first.consumer_signature is not None
    with pytest.raises(AgreementSignatureError):
        open_signed_agreement(
            other.canonical_bytes(), first.provider_signature, None, PROVIDER.verify_key
        )
    # A provider signature is not a consumer signature, even with the same key.
    with pytest.raises(AgreementSignatureError):
        open_signed_agreement(
            first.canonical_bytes,
            first.provider_signature,
            first.provider_signature,
            PROVIDER.verify_key,
            PROVIDER.verify_key,
        )
    # A receipt signature over the same bytes is not an agreement signature.
    bogus = CONSUMER.sign(b"qdspace.v1/deletion-receipt/consumer\x00" + first.canonical_bytes)
    with pytest.raises(AgreementSignatureError):
        open_signed_agreement(
            first.canonical_bytes,
            first.provider_signature,
            bogus.signature,
            PROVIDER.verify_key,
            CONSUMER.verify_key,
        )


@settings(max_examples=60)
@given(st.data())
def test_one_altered_byte_anywhere_is_refused(data: st.DataObject) -> None:
    signed = countersign(sign_agreement(terms(), PROVIDER), CONSUMER, PROVIDER.verify_key)
    raw = bytearray(signed.canonical_bytes)
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    with pytest.raises(AgreementSignatureError):
        open_signed_agreement(
            bytes(raw),
            signed.provider_signature,
            signed.consumer_signature,
            PROVIDER.verify_key,
            CONSUMER.verify_key,
        )
    sig = bytearray(signed.provider_signature)
    sig[data.draw(st.integers(0, 63))] ^= 1
    with pytest.raises(AgreementSignatureError):
        open_signed_agreement(signed.canonical_bytes, bytes(sig), None, PROVIDER.verify_key)


def test_non_canonical_or_inconsistent_documents_are_refused() -> None:
    data = terms().canonical_bytes()
    with pytest.raises(AgreementError, match="canonical"):
        agreement_from_bytes(data.replace(b",", b", ", 1))
    with pytest.raises(AgreementError, match="keys"):
        agreement_from_bytes(b'{"schema":"qdspace.v1/agreement"}')
    with pytest.raises(AgreementError, match="malformed"):
        agreement_from_bytes(b"{")
    with pytest.raises(AgreementError, match="policy assignee"):
        replace(terms(), consumer_id="polycell")
    with pytest.raises(AgreementError, match="agreed before"):
        replace(terms(), agreed_at=T0 - timedelta(seconds=1))
    with pytest.raises(AgreementError, match="time zone"):
        replace(terms(), agreed_at=datetime(2026, 5, 2))


@pytest.mark.parametrize("text", ["x", "é€😀\u2028", '"\\', "\x00", "\u2029", "y" * 100])
def test_canonical_bytes_are_those_of_the_general_encoder(text: str) -> None:
    """The agreement's bytes are encoded without `to_jsonable`'s walk (its dict holds JSON
    types only): they must be exactly `canonical_json` of it, as signed and anchored."""
    offer = make_offer(
        f"offer-{text}",
        f"cellex-{text}",
        "inspections",
        OfferTerms(
            purposes=frozenset({"quality-assurance", text}),
            orders=frozenset({text, "ORD-1"}),
            fields=frozenset({"a", text}),
            not_before=datetime(2026, 1, 1, 0, 0, 0, 5, tzinfo=timezone(timedelta(hours=-3))),
            not_after=datetime(2027, 1, 1, tzinfo=UTC),
            retention_days=7,
            receipt=False,
        ),
    )
    agreement = ContractAgreement(
        agreement_id=f"agr-{text}",
        negotiation_id=text,
        provider_id=f"cellex-{text}",
        consumer_id=text,
        asset_id="inspections",
        policy=to_agreement(offer, f"agr-{text}", text),
        requested_at=T0.astimezone(timezone(timedelta(hours=5, minutes=30))),
        agreed_at=T0 + timedelta(microseconds=1),
    )
    assert agreement.canonical_bytes() == canonical_json(agreement.to_dict())
    assert agreement_from_bytes(agreement.canonical_bytes()) == agreement


def test_remembered_agreements_and_signatures_answer_as_computing_them_would() -> None:
    """The memos (round 3 of bench/PROFILE-negotiation.md) never change an answer: bytes
    signed here parse to what a fresh parse gives, time zones included; a time outside
    UTC is not remembered; a remembered good signature does not make another one good."""
    signed = sign_agreement(terms("agr-memo"), PROVIDER)
    data = signed.canonical_bytes
    agreement_memo.PARSED.clear()
    fresh = agreement_from_bytes(data)
    sign_agreement(fresh, PROVIDER)  # remembers `fresh` as what `data` parses to
    assert agreement_from_bytes(data) is fresh
    agreement_memo.PARSED.clear()
    assert agreement_from_bytes(data) == fresh
    # a time in another zone: the same instant, but parsing gives it in UTC
    zoned = replace(
        terms("agr-zoned"),
        agreed_at=(T0 + timedelta(hours=1)).astimezone(timezone(timedelta(hours=2))),
    )
    zoned_bytes = sign_agreement(zoned, PROVIDER).canonical_bytes
    assert agreement_from_bytes(zoned_bytes).agreed_at.tzinfo is UTC
    # the provider's signature verifies from the memo; a changed one still fails
    verify_provider_signature(signed, PROVIDER.verify_key)
    bent = bytearray(signed.provider_signature)
    bent[0] ^= 1
    with pytest.raises(AgreementSignatureError):
        verify_provider_signature(
            replace(signed, provider_signature=bytes(bent)), PROVIDER.verify_key
        )
    with pytest.raises(AgreementSignatureError):  # made by the provider, checked as the consumer's
        verify_provider_signature(signed, CONSUMER.verify_key)
    countersigned = countersign(signed, CONSUMER, PROVIDER.verify_key)
    verify_agreement(countersigned, PROVIDER.verify_key, CONSUMER.verify_key)
    with pytest.raises(AgreementSignatureError):  # the consumer's signature is not the provider's
        verify_provider_signature(
            replace(signed, provider_signature=countersigned.consumer_signature or b""),
            PROVIDER.verify_key,
        )


ROWS = [{"inspection_id": f"i{n}", "verdict": "ok", "score": n / 10} for n in range(5)]


def test_deletion_digest_ignores_order_but_not_content() -> None:
    count, digest = deletion_digest(ROWS)
    assert count == 5
    assert deletion_digest(reversed(ROWS)) == (5, digest)
    assert deletion_digest(ROWS[:4])[1] != digest
    assert deletion_digest([*ROWS[:4], {**ROWS[4], "score": 0.5}])[1] != digest
    assert deletion_digest([]) == (0, deletion_digest(())[1])


def test_receipt_signs_verifies_and_round_trips() -> None:
    receipt = build_receipt("agr-1", "sunarc", ROWS, T0 + timedelta(days=181))
    signed = sign_receipt(receipt, CONSUMER)
    verify_receipt(signed, CONSUMER.verify_key)
    assert receipt_from_bytes(receipt.canonical_bytes()) == receipt
    opened = open_signed_receipt(receipt.canonical_bytes(), signed.signature, CONSUMER.verify_key)
    assert opened == signed
    assert receipt.receipt_id.startswith("rcpt-") and len(receipt.receipt_id) == 37
    assert (
        receipt.receipt_id
        == build_receipt("agr-1", "sunarc", ROWS[::-1], receipt.deleted_at).receipt_id
    )


def test_tampered_or_foreign_receipts_are_refused() -> None:
    receipt = build_receipt("agr-1", "sunarc", ROWS, T0)
    signed = sign_receipt(receipt, CONSUMER)
    with pytest.raises(ReceiptSignatureError):
        verify_receipt(signed, PROVIDER.verify_key)
    fewer = replace(receipt, row_count=4)
    with pytest.raises(ReceiptSignatureError):
        verify_receipt(SignedReceipt(fewer, signed.signature), CONSUMER.verify_key)
    raw = bytearray(receipt.canonical_bytes())
    raw[-5] ^= 1
    with pytest.raises(ReceiptSignatureError):
        open_signed_receipt(bytes(raw), signed.signature, CONSUMER.verify_key)
    # The provider's agreement signature over receipt bytes does not make a receipt.
    agreement_sig = CONSUMER.sign(b"qdspace.v1/agreement/consumer\x00" + receipt.canonical_bytes())
    with pytest.raises(ReceiptSignatureError):
        open_signed_receipt(receipt.canonical_bytes(), agreement_sig.signature, CONSUMER.verify_key)


def test_receipt_refuses_nonsense() -> None:
    with pytest.raises(AgreementError, match="negative"):
        DeletionReceipt("agr-1", "sunarc", -1, "0" * 64, T0)
    with pytest.raises(AgreementError, match="hex"):
        DeletionReceipt("agr-1", "sunarc", 1, "XYZ", T0)
    with pytest.raises(AgreementError, match="canonical"):
        receipt_from_bytes(build_receipt("a", "c", ROWS, T0).canonical_bytes() + b" ")


def test_a_receipt_counting_more_rows_than_any_reader_holds_is_refused() -> None:
    """A consumer's signed receipt of 2**63 rows ended the provider's record_receipt in an
    OverflowError from the database (an INTERNAL answer and a traceback)."""
    fields = build_receipt("a", "c", ROWS, T0).to_dict()
    for count in (2**53, 2**63, 10**30):
        with pytest.raises(AgreementError, match="row_count is over"):
            receipt_from_bytes(canonical_json({**fields, "rowCount": count}))
    held = receipt_from_bytes(canonical_json({**fields, "rowCount": 2**53 - 1}))
    assert held.row_count == 2**53 - 1
