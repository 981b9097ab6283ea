"""Every JSON-LD form of a DSP message, read as one: the compacted form `dsp_codec` reads.

Why a step of its own: the Dataspace Protocol sends JSON-LD, and a message means the
same in each of its forms: compacted with the DSP 2025-1 context (what the node itself
writes), expanded, with prefixed (``dspace:consumerPid``) or full-IRI keys, with inline
contexts beside the DSP one (EDC names its own namespace there), or with an offer that
carries no context of its own. Reading the keys of one form only would refuse a
well-formed message, or worse, read a key of another vocabulary that happens to share a
name. So each peer message is expanded (its meaning, by IRI) and compacted again with
the node's contexts (`POLICY_CONTEXT`); the codec then reads one form.

A peer's JSON-LD is hostile until checked, before pyld sees it: bounded size and depth
(`check_bounds`), at most `MAX_MESSAGE_OBJECTS` objects (`check_bounds` too: the node's own
contexts scope terms to DSP types, and pyld applies a scoped context again at each node
of its type), no scoped context and few terms of its own, only contexts the node ships,
by URL, never fetched, no ``@import``, at most `MAX_CONTEXTS` contexts
(`check_contexts`), and no ``@graph`` or ``@included`` (a message is one node; several
could smuggle a second message past the type check).
After expansion the document must be exactly one node of the DSP type expected.
A term without a definition is refused by name rather than dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qdspace.policies.errors import PolicyError, PolicySyntaxError
from qdspace.policies.odrl.jsonld import (
    MAX_MESSAGE_OBJECTS,
    POLICY_CONTEXT,
    check_bounds,
    check_contexts,
    compact,
    expand,
)
from qdspace.policies.odrl.vocab import DSPACE

#: keywords that make a document more than one node
_MULTI_NODE = ("@graph", "@included")
#: DSP properties whose value the DSP context reads as an IRI (``@type: @id``) or a DSP
#: vocabulary term (``@vocab``): a peer that wrote them with a prefixed or full-IRI key
#: and a plain string (EDC's DSP 0.8 habit) meant the same identifier or term
_IDS = frozenset(DSPACE + t for t in ("providerPid", "consumerPid", "agreementId", "participantId"))
_TERMS = frozenset(DSPACE + t for t in ("eventType", "state", "endpointType"))


class DspFormError(ValueError):
    """A DSP message in a JSON-LD form the node refuses; `where` is its JSON path."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.reason = message


def _no_multiple_nodes(document: Any) -> None:
    stack: list[tuple[Any, str]] = [(document, "$")]
    while stack:
        value, where = stack.pop()
        if isinstance(value, list):
            stack.extend((item, where) for item in value)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if key in _MULTI_NODE:
                    raise DspFormError(f"{where}.{key}", "a DSP message is a single node")
                if key != "@context":
                    stack.append((item, f"{where}.{str(key)[:40]}"))


def _identifier(prop: str, value: Any) -> Any:
    text = value.get("@value") if isinstance(value, Mapping) and len(value) == 1 else None
    if not isinstance(text, str):
        return value
    if prop in _TERMS:
        if text.startswith("dspace:"):
            text = DSPACE + text[len("dspace:") :]
        elif ":" not in text:
            text = DSPACE + text
    return {"@id": text}


def _identifiers(node: Mapping[str, Any]) -> dict[str, Any]:
    """`node` with the pids and DSP terms given as plain strings read as identifiers."""
    out = dict(node)
    for prop in (_IDS | _TERMS) & set(node):
        values = node[prop]
        out[prop] = [_identifier(prop, v) for v in values] if isinstance(values, list) else values
    return out


def _compact_type(body: Mapping[str, Any], kind: str) -> None:
    """A compacted message naming another type is refused at `$.@type` before expansion
    (expanding it would read its terms in that type's scope and blame the first term)."""
    given = body.get("@type")
    if isinstance(given, str) and given not in (kind, f"dspace:{kind}", DSPACE + kind):
        raise DspFormError("$.@type", f"expected {kind}, got {given[:80]}")


def normalise(body: Any, kind: str) -> dict[str, Any]:
    """The DSP message `body` of type `kind` (``ContractRequestMessage``), compacted with
    the node's contexts; `DspFormError` (400) for any form the node refuses."""
    if not isinstance(body, Mapping):
        raise DspFormError("$", "a DSP message is a JSON object")
    _compact_type(body, kind)
    try:
        check_bounds(body, max_objects=MAX_MESSAGE_OBJECTS)
        check_contexts(body)
        _no_multiple_nodes(body)
        expanded = expand(body, None)
        if len(expanded) != 1 or not isinstance(expanded[0], Mapping):
            raise DspFormError("$", f"a DSP message is a single node, found {len(expanded)}")
        node = expanded[0]
        types = node.get("@type") or []
        if types != [DSPACE + kind]:
            got = ", ".join(str(t)[:80] for t in types) or "none"
            raise DspFormError("$.@type", f"expected {kind} ({DSPACE + kind}), got {got}")
        return compact(_identifiers(node), POLICY_CONTEXT)
    except PolicySyntaxError as exc:
        raise DspFormError(exc.path, exc.problem) from None
    except PolicyError as exc:
        raise DspFormError("$", str(exc)) from None
