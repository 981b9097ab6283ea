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

At most `MAX_MESSAGE_VALUES` JSON values outside the contexts (`check_values`; a message
that carries no policy `MAX_PLAIN_MESSAGE_VALUES`), counted
on the raw JSON before pyld runs: pyld's work grows with the values a message carries
(~25 us each to expand and compact, and the policy codec reads the offer with pyld
again, ~7 us more), and `check_bounds` admits 20,000 of them in the 256 KiB a DSP body
may be. The policy codec reads at most `MAX_RIGHT_VALUES` (1,024) values in a constraint
but 256 constraints, so 18 constraints of 1,000 orders each passed every bound: ~0.6 s
of pyld per request, before the runtime's quota or its 64 KiB policy cap
(`connector.negotiation.MAX_POLICY_BYTES`) was asked. The largest honest message is one
constraint of 1,024 values (the orders asked) beside the asset's fields, the purposes
and the message's own few dozen: twice `MAX_RIGHT_VALUES` admits it with room.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qdspace.policies.errors import PolicyError, PolicySyntaxError
from qdspace.policies.odrl.codec import MAX_RIGHT_VALUES
from qdspace.policies.odrl.jsonld import (
    MAX_MESSAGE_OBJECTS,
    POLICY_CONTEXT,
    check_bounds,
    check_contexts,
    compact,
    expand,
)
from qdspace.policies.odrl.vocab import DSPACE

#: JSON values (objects, arrays, strings, numbers...) in one DSP message, its contexts
#: aside (see the module: a constraint's most values, and room for the rest)
MAX_MESSAGE_VALUES = 2 * MAX_RIGHT_VALUES
#: the messages that carry a policy (an offer or an agreement), which `MAX_MESSAGE_VALUES`
#: is sized for; every other is a few ids, a callback, a reason or a data address, held
#: to `MAX_PLAIN_MESSAGE_VALUES` (a catalog request's body was parsed, up to 2,048
#: values and ~65 ms of pyld, for a filter the catalog does not read)
POLICY_MESSAGES = frozenset(
    {"ContractRequestMessage", "ContractOfferMessage", "ContractAgreementMessage"}
)
MAX_PLAIN_MESSAGE_VALUES = 256
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


def message_values(kind: str) -> int:
    """How many JSON values a DSP message of type `kind` may carry (`check_values`)."""
    return MAX_MESSAGE_VALUES if kind in POLICY_MESSAGES else MAX_PLAIN_MESSAGE_VALUES


def check_values(body: Mapping[str, Any], limit: int = MAX_MESSAGE_VALUES) -> None:
    """Refuse a message of more than `limit` JSON values outside its ``@context``s
    (`DspFormError` at the top-level key where the count passed it), before pyld sees it.

    Counted by value, not by byte: pyld's work is per value, and a byte limit does not
    bound it: an honest request of 1,024 orders is ~18 KB with ids of the form
    ``PO-2026-0001`` and ~45 KB with 40-character ids, and 45 KB hold 11,000
    one-character values. Every key counts, whatever it is called: a peer's inline
    context may alias any term (``"o": "dspace:offer"``), so the policy is not found by
    its key."""
    count = 0
    for key, top in body.items():
        if key == "@context":
            continue
        stack: list[Any] = [top]
        while stack:
            value = stack.pop()
            count += 1
            if count > limit:
                why = (
                    f"(a policy of up to {MAX_RIGHT_VALUES} values in a constraint, and the "
                    "message's own): ask for fewer orders at a time"
                    if limit >= MAX_MESSAGE_VALUES
                    else "(only a contract request, offer or agreement carries a policy)"
                )
                raise DspFormError(
                    f"$.{str(key)[:40]}",
                    f"a DSP message carries at most {limit} JSON values besides its @context {why}",
                )
            if isinstance(value, Mapping):
                stack.extend(v for k, v in value.items() if k != "@context")
            elif isinstance(value, list):
                stack.extend(value)


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
        check_values(body, message_values(kind))
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
