"""A DSP message is refused by the count of its values before pyld reads it
(`connector.dsp_jsonld.check_values`), whatever its keys are called; its contexts do not
count, and the largest honest request (one constraint of 1,024 orders) passes."""

from __future__ import annotations

from typing import Any

import pytest
from pyld import jsonld

from qdspace.connector import dsp_codec as codec
from qdspace.connector.dsp_jsonld import (
    MAX_MESSAGE_VALUES,
    MAX_PLAIN_MESSAGE_VALUES,
    DspFormError,
    check_values,
)
from qdspace.policies.odrl.codec import MAX_RIGHT_VALUES

DSP = "https://w3id.org/dspace/2025/1/context.jsonld"
CTX = [
    DSP,
    "https://w3id.org/dspace/2025/1/odrl-profile.jsonld",
    "https://qdspace.dev/ns/policy/context.jsonld",
]


def message(*orders: list[str], key: str = "offer", context: Any = None) -> dict[str, Any]:
    constraints = [
        {"leftOperand": "purpose", "operator": "isAnyOf", "rightOperand": ["quality-assurance"]},
        *({"leftOperand": "order", "operator": "isAnyOf", "rightOperand": o} for o in orders),
    ]
    return {
        "@context": context or CTX,
        "@type": "ContractRequestMessage",
        "consumerPid": "urn:uuid:c-1",
        key: {
            "@id": "urn:uuid:o-1",
            "@type": "Offer",
            "assigner": "cellex",
            "target": "inspections",
            "permission": [{"action": "use", "constraint": constraints}],
        },
        "callbackAddress": "https://sunarc.example/dsp",
    }


def test_too_many_values_are_refused_before_pyld(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pyld(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pyld ran")

    monkeypatch.setattr(jsonld, "expand", no_pyld)
    three = [[f"O{j}-{i}" for i in range(1_000)] for j in range(3)]  # each within the codec's
    aliased = [*CTX, {"o": "https://w3id.org/dspace/2025/1/offer"}]
    for body in (message(*three), message(*three, key="o", context=aliased)):
        with pytest.raises(DspFormError) as refused:
            codec.read_message(body, "ContractRequestMessage")
        assert refused.value.where == f"$.{'o' if 'o' in body else 'offer'}"
        assert f"at most {MAX_MESSAGE_VALUES} JSON values" in str(refused.value)


def test_contexts_do_not_count_and_the_largest_honest_request_is_read() -> None:
    many = [f"urn:x:{i}" for i in range(2 * MAX_MESSAGE_VALUES)]  # (refused elsewhere)
    check_values({"@context": many, "@type": "X", "offer": {"@context": many}})
    orders = [f"PO-2026-{i:04d}" for i in range(MAX_RIGHT_VALUES)]
    read = codec.read_message(message(orders), "ContractRequestMessage")
    (permission,) = read["offer"]["permission"]
    assert len(permission["constraint"][1]["rightOperand"]) == MAX_RIGHT_VALUES


def test_a_message_without_a_policy_carries_few_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """A catalog request (its filter unread) or a termination carries no policy: 300
    values, which a contract request may carry, are refused before pyld; an honest one,
    with a reason of a few lines, is read."""
    bulk = {"filter": [{"x": f"v{i}"} for i in range(150)]}
    catalog = {"@context": [DSP], "@type": "CatalogRequestMessage", **bulk}
    ended = {
        "@context": [DSP],
        "@type": "ContractNegotiationTerminationMessage",
        "providerPid": "urn:uuid:p-1",
        "consumerPid": "urn:uuid:c-1",
        "reason": [f"line {i}" for i in range(300)],
    }
    assert codec.read_message(
        {"@context": [DSP], "@type": "CatalogRequestMessage"}, "CatalogRequestMessage"
    )
    honest = {**ended, "reason": ["no orders held", "ask again"]}
    assert codec.read_message(honest, "ContractNegotiationTerminationMessage")["providerPid"]

    def no_pyld(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pyld ran")

    monkeypatch.setattr(jsonld, "expand", no_pyld)
    for body in (catalog, ended):
        with pytest.raises(DspFormError) as refused:
            codec.read_message(body, str(body["@type"]))
        assert f"at most {MAX_PLAIN_MESSAGE_VALUES} JSON values" in str(refused.value)
        assert "carries a policy" in str(refused.value)
