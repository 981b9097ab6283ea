"""Every JSON-LD form of a DSP message reads as the compacted one; hostile JSON-LD is refused."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from qdspace.connector import dsp_codec as codec
from qdspace.connector import dsp_negotiation as wire
from qdspace.connector.dsp_jsonld import DspFormError, normalise
from qdspace.connector.offers import standard_assets
from qdspace.policies.odrl.jsonld import expand
from qdspace.policies.odrl.vocab import DSPACE

DSP = "https://w3id.org/dspace/2025/1/context.jsonld"
ODRL = "http://www.w3.org/ns/odrl/2/"
OFFER = standard_assets("prov")[0].offer
KIND = "ContractRequestMessage"


def compacted() -> dict[str, Any]:
    return codec.request_message("urn:uuid:c-1", OFFER, "https://consumer.example/cb")


def expanded() -> list[Any]:
    # the node's own expansion (pyld's shared caches are what the node avoids)
    return expand(compacted(), None)


def _read(body: Any) -> tuple[str, str, Any]:
    message = codec.read_message(body, KIND)
    offer = codec.read_policy(message, "offer", wire.PolicyKind.OFFER)
    return codec.text(message, "consumerPid"), codec.callback(message, required=True), offer


def _full_iri_keys() -> dict[str, Any]:
    node = expanded()[0]
    return {"@context": [DSP], **node}


def _prefixed() -> dict[str, Any]:
    body = compacted()
    return {
        "@context": [DSP, {"edc": "https://w3id.org/edc/v0.0.1/ns/"}],
        "@type": "dspace:ContractRequestMessage",
        "dspace:consumerPid": body["consumerPid"],
        "dspace:callbackAddress": body["callbackAddress"],
        "dspace:offer": {"@context": codec._ctx(True), **body["offer"]},
    }


def _edc_contexts() -> dict[str, Any]:
    body = compacted()
    body["@context"] = [*body["@context"], "https://w3id.org/edc/dspace/v0.0.1"]
    return body


@pytest.mark.parametrize(
    "form",
    [
        lambda: expanded(),
        lambda: expanded()[0],
        _full_iri_keys,
        _prefixed,
        _edc_contexts,
        lambda: {**compacted(), "@context": DSP, "offer": {"@context": codec._ctx(True),
                                                          **compacted()["offer"]}},
    ],
    ids=["expanded-list", "expanded-node", "iri-keys", "prefixed-inline", "edc-context",
         "offer-own-context"],
)  # fmt: skip
def test_each_form_reads_as_the_compacted_one(form: Any) -> None:
    body = form()
    if isinstance(body, list):
        with pytest.raises(DspFormError, match="JSON object"):
            _read(body)
        return
    assert _read(body) == _read(compacted())


def _hostile(kind: str) -> Any:
    body = compacted()
    if kind == "remote":
        body["@context"] = [DSP, "https://evil.example/ctx.jsonld"]
    elif kind == "import":
        body["@context"] = [DSP, {"@import": DSP}]
    elif kind == "nested-remote":
        body["@context"] = [*body["@context"], {"x": {"@id": "dspace:x", "@context": "https://e/"}}]
    elif kind == "many":
        body["@context"] = [*body["@context"], *({f"t{i}": f"urn:t{i}"} for i in range(16))]
    elif kind == "graph":
        body = {"@context": [DSP], "@graph": [compacted(), compacted()]}
    elif kind == "included":
        body["@included"] = [{"@type": "ContractRequestMessage"}]
    elif kind == "deep":
        inner: dict[str, Any] = {}
        for _ in range(40):
            inner = {"dspace:x": inner}
        body["offer"] = inner
    elif kind == "wrong-type":
        body["@type"] = "ContractOfferMessage"
    elif kind == "undefined-term":
        body["sneaky"] = "x"
    elif kind == "redefine-protected":
        body["@context"] = [DSP, {"offer": "https://evil.example/offer"}]
    elif kind == "two-types":
        body["@type"] = [KIND, "dspace:ContractOfferMessage"]
    return body


@pytest.mark.parametrize(
    "kind",
    ["remote", "import", "nested-remote", "many", "graph", "included", "deep", "wrong-type",
     "undefined-term", "redefine-protected", "two-types"],
)  # fmt: skip
def test_hostile_json_ld_is_refused(kind: str) -> None:
    with pytest.raises(ValueError) as refused:
        _read(_hostile(kind))
    assert isinstance(refused.value, DspFormError | codec.DspMessageError), refused.value


def test_no_state_leaks_between_documents() -> None:
    """An inline context one document defined is not served to the next by pyld's caches."""
    first = compacted()
    first["@context"] = [*codec._ctx(True), {"sneaky": "dspace:consumerPid"}]
    first.pop("consumerPid")
    first["sneaky"] = "urn:uuid:c-2"
    assert codec.text(normalise(first, KIND), "consumerPid") == "urn:uuid:c-2"
    second = copy.deepcopy(first)
    second["@context"] = codec._ctx(True)
    with pytest.raises(DspFormError, match="sneaky"):
        normalise(second, KIND)
    assert DSPACE + KIND in str(expanded())


def test_pyld_does_not_edit_the_packaged_contexts() -> None:
    """pyld merges a type's scoped terms into the context document it was handed: a loader
    serving one shared object would leak DSP message terms into every later policy."""
    from qdspace.policies.odrl import jsonld as packaged

    for url in packaged.KNOWN_CONTEXTS:
        packaged.load_document(url)
    _read(compacted())
    _read(_prefixed())
    for url in packaged.KNOWN_CONTEXTS:
        name = packaged._FILES[url]
        assert packaged.load_document(url)["document"] == json.loads(packaged._context_text(name))
    with pytest.raises(ValueError, match="consumerPid"):  # no DSP term leaked into ODRL's
        packaged.expand(
            {"consumerPid": "x"}, ("https://w3id.org/dspace/2025/1/odrl-profile.jsonld",)
        )
