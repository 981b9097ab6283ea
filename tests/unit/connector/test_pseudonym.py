"""Keyed pseudonyms: stable within an agreement, unlinkable across, never the raw id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qdspace.connector.contract_errors import PseudonymError
from qdspace.connector.pseudonym import PSEUDONYM_PREFIX, Pseudonymizer, derive_agreement_key

SECRET = bytes(range(32))


def test_stable_per_agreement_and_different_across_agreements() -> None:
    a1, a1_again, a2 = (
        Pseudonymizer(SECRET, "agr-1"),
        Pseudonymizer(SECRET, "agr-1"),
        Pseudonymizer(SECRET, "agr-2"),
    )
    assert a1.pseudonym("op-7") == a1_again.pseudonym("op-7")
    assert a1.pseudonym("op-7") != a2.pseudonym("op-7")
    assert a1.pseudonym("op-7") != a1.pseudonym("op-8")
    assert a1.pseudonym("op-7") != Pseudonymizer(b"x" * 32, "agr-1").pseudonym("op-7")
    value = a1.pseudonym("op-7")
    assert value.startswith(PSEUDONYM_PREFIX) and len(value) == len(PSEUDONYM_PREFIX) + 32
    assert a1.pseudonym(7) == a1.pseudonym("7")
    assert a1.pseudonym(b"7") != a1.pseudonym("7")


def test_rows_are_pseudonymised_and_dropped_fields_removed() -> None:
    p = Pseudonymizer(SECRET, "agr-1")
    rows = [
        {"operator_id": "op-7", "action": "rework", "station": "EL-2"},
        {"operator_id": None, "action": "scrap", "station": "EL-2"},
    ]
    out = list(p.apply_rows(rows, ["operator_id"], drop=["station"]))
    assert out == [
        {"operator_id": p.pseudonym("op-7"), "action": "rework"},
        {"operator_id": None, "action": "scrap"},
    ]
    assert rows[0]["operator_id"] == "op-7"  # the input is not modified
    assert "agr-1" in repr(p)
    key = derive_agreement_key(SECRET, "agr-1")
    shown = repr(p) + str(p) + repr(vars(p).get("agreement_id"))
    for secret in (SECRET, key):  # neither the provider secret nor the derived key, in any form
        for form in (repr(secret), secret.hex(), secret.decode("latin-1")):
            assert form not in shown
        assert repr(list(secret)) not in shown


def test_weak_secrets_and_odd_values_are_refused() -> None:
    with pytest.raises(PseudonymError, match="at least 32"):
        Pseudonymizer(b"short", "agr-1")
    with pytest.raises(PseudonymError, match="agreement id"):
        derive_agreement_key(SECRET, "")
    with pytest.raises(PseudonymError, match="float"):
        Pseudonymizer(SECRET, "agr-1").pseudonym(1.5)


@given(st.sets(st.text(min_size=1, max_size=20), min_size=2, max_size=30))
def test_distinct_ids_get_distinct_hex_pseudonyms(operator_ids: set[str]) -> None:
    p = Pseudonymizer(SECRET, "agr-1")
    values = {p.pseudonym(operator_id) for operator_id in operator_ids}
    assert len(values) == len(operator_ids)
    for value in values:
        int(value.removeprefix(PSEUDONYM_PREFIX), 16)
        assert value not in operator_ids
