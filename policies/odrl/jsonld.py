"""JSON-LD processing with pyld, offline: contexts come from files in this package.

Why a loader of our own: a JSON-LD document names its contexts by URL, and a
processor that fetched them would let any peer make the node call out (and
change a context to change what a signed policy means). Only the contexts
shipped here are served, from `contexts/`; any other URL is a clear error.

A peer's document is bounded *before* pyld sees it (size, nesting depth, number
of values), because expansion is recursive and a nesting bomb must be a
refusal, not a stack overflow. Its contexts are checked before pyld too
(`check_contexts`): only packaged ones by URL, no ``@import``, at most
`MAX_CONTEXTS` of them, no scoped context and at most `MAX_INLINE_TERMS` terms
defined inline (pyld's work grows with terms times the nodes they apply to).

pyld keeps module-wide state: a cache of resolved contexts shared by every call
(keyed by URL or by an inline context's text) and a default document loader
that fetches from the network. Every call here passes its own loader and its
own `ContextResolver` with a private cache, so nothing one document defined can
be served to another and no call can reach the default loader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from importlib import resources
from typing import Any, cast

from pyld import jsonld
from pyld.context_resolver import ContextResolver

from qdspace.policies.errors import PolicySyntaxError
from qdspace.util.json_depth import loads as bounded_json

DSP_CONTEXT = "https://w3id.org/dspace/2025/1/context.jsonld"
DSP_ODRL_CONTEXT = "https://w3id.org/dspace/2025/1/odrl-profile.jsonld"
QDS_CONTEXT = "https://qdspace.dev/ns/policy/context.jsonld"
CX_CONTEXT = "https://w3id.org/catenax/policy/context.jsonld"
EDC_CONTEXT = "https://w3id.org/edc/dspace/v0.0.1"
# What every policy the node writes is compacted with.
POLICY_CONTEXT: tuple[str, ...] = (DSP_CONTEXT, DSP_ODRL_CONTEXT, QDS_CONTEXT, CX_CONTEXT)

_FILES = {
    DSP_CONTEXT: "dspace.jsonld",
    DSP_ODRL_CONTEXT: "odrl-profile.jsonld",
    "http://www.w3.org/ns/odrl.jsonld": "odrl-profile.jsonld",
    "https://www.w3.org/ns/odrl.jsonld": "odrl-profile.jsonld",
    QDS_CONTEXT: "qdspace-policy.jsonld",
    CX_CONTEXT: "cx-policy.jsonld",
    "https://w3id.org/catenax/2025/9/policy/context.jsonld": "cx-policy.jsonld",
    # EDC names its own namespace beside the DSP context in every DSP message it sends;
    # the node declares only that namespace's prefix (`edc-dspace.jsonld`): an EDC
    # extension term used in a message is then refused by name, not guessed
    EDC_CONTEXT: "edc-dspace.jsonld",
}
#: every context a peer may name (by URL); anything else is refused before pyld runs
KNOWN_CONTEXTS = frozenset(_FILES)

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_VALUES = 20_000
#: contexts in one document, nested ones included (a peer's list of them is a cost it sets)
MAX_CONTEXTS = 16
#: term definitions in a document's inline contexts, all together (EDC declares a handful
#: of namespace prefixes; each definition is work pyld redoes for every node it applies to)
MAX_INLINE_TERMS = 64
#: JSON objects in one DSP message (tens in any real one): the contexts the node ships
#: scope terms to DSP types, which pyld applies again at every node of the type (~0.4 ms)
MAX_MESSAGE_OBJECTS = 1024


@cache
def _context_text(name: str) -> str:
    return resources.files("qdspace.policies.odrl").joinpath("contexts", name).read_text("utf-8")


def load_document(url: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """pyld's document loader: the packaged contexts, nothing from the network."""
    name = _FILES.get(url)
    if name is None:
        raise PolicySyntaxError("$.@context", f"context {url[:200]!r} is not known to this node")
    # a copy each time: pyld edits the documents it processes (scoped contexts' URLs,
    # ``@import`` merged in), and a shared one would carry one call's edits into the next
    return {"contextUrl": None, "documentUrl": url, "document": json.loads(_context_text(name))}


def check_bounds(document: Any, path: str = "$", max_objects: int | None = None) -> None:
    """Refuse documents too deep or too large to process safely (iteratively, no recursion);
    with `max_objects` (a DSP message: `MAX_MESSAGE_OBJECTS`), more JSON objects than that
    too (each may be a node pyld processes with its type's scoped context)."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    count = objects = 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise PolicySyntaxError(path, f"document has more than {MAX_VALUES} values")
        if depth > MAX_DEPTH:
            raise PolicySyntaxError(path, f"document is nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, Mapping):
            objects += 1
            if max_objects is not None and objects > max_objects:
                raise PolicySyntaxError(path, f"document has more than {max_objects} objects")
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, float) and (value != value or abs(value) == float("inf")):
            raise PolicySyntaxError(path, "NaN and infinity are not JSON")


def _reject_constant(name: str) -> Any:
    raise PolicySyntaxError("$", f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise PolicySyntaxError("$", f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def decode(text: str | bytes) -> Any:
    """Decode a peer's JSON text with the bounds above; duplicate keys and NaN refused."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise PolicySyntaxError("$", f"document is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        value = bounded_json(
            text,
            limit=MAX_DEPTH,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except PolicySyntaxError:
        raise
    except RecursionError:
        raise PolicySyntaxError("$", f"document is nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PolicySyntaxError("$", f"malformed JSON: {exc}") from None
    check_bounds(value)
    return value


def _policy_cause(exc: BaseException) -> PolicySyntaxError | None:
    """The `PolicySyntaxError` our loader raised, however pyld wrapped it."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        if isinstance(current, PolicySyntaxError):
            return current
        seen.append(current)
        details = getattr(current, "details", None)
        nested = details.get("cause") if isinstance(details, dict) else None
        current = nested or current.__cause__ or current.__context__
    return None


def _options(**extra: Any) -> dict[str, Any]:
    """pyld options for one call: our loader, and a resolver whose cache is this call's."""
    resolver = ContextResolver({}, load_document)
    return {"documentLoader": load_document, "contextResolver": resolver, "base": None, **extra}


def check_contexts(document: Any, path: str = "$") -> None:
    """Refuse contexts this node will not process: a URL it does not ship (never fetched),
    ``@import``, a context that is not a string, object or null, more than `MAX_CONTEXTS`,
    a scoped context (a term definition with a ``@context`` of its own), more than
    `MAX_INLINE_TERMS` inline term definitions.

    Why scoped contexts are refused: pyld processes a type-scoped context again for every
    node of that type, so a 32 KB message with a thousand-term context scoped to a type
    and a thousand nodes of it kept the node's event loop busy for seconds (and minutes
    within `MAX_DOCUMENT_BYTES`). The contexts the node ships may scope terms; a peer's
    inline context only names prefixes and terms."""
    stack: list[tuple[Any, str]] = [(document, path)]
    count = terms = 0
    while stack:
        value, where = stack.pop()
        if isinstance(value, list):
            stack.extend((item, where) for item in value)
            continue
        if not isinstance(value, Mapping):
            continue
        for key, item in value.items():
            if key == "@context":
                # a term's own (scoped) context is refused in `_check_context`: none nests
                for context in item if isinstance(item, list) else [item]:
                    count += 1
                    _check_context(context, f"{where}.@context")
                    terms += len(context) if isinstance(context, Mapping) else 0
                if count > MAX_CONTEXTS:
                    raise PolicySyntaxError(where, f"more than {MAX_CONTEXTS} contexts")
                if terms > MAX_INLINE_TERMS:
                    raise PolicySyntaxError(
                        where, f"more than {MAX_INLINE_TERMS} term definitions in inline contexts"
                    )
            elif isinstance(item, Mapping | list):
                stack.append((item, f"{where}.{key[:40]}"))


def _check_context(context: Any, where: str) -> None:
    if isinstance(context, str):
        if context not in KNOWN_CONTEXTS:
            raise PolicySyntaxError(
                where, f"context {context[:200]!r} is not known to this node (none is fetched)"
            )
    elif isinstance(context, Mapping):
        if "@import" in context:
            raise PolicySyntaxError(where, "@import is not accepted (no context is fetched)")
        for term, definition in context.items():
            if isinstance(definition, Mapping) and "@context" in definition:
                raise PolicySyntaxError(
                    f"{where}.{term[:40]}",
                    "a scoped context (a term's own @context) is not accepted",
                )
    elif context is not None:
        raise PolicySyntaxError(where, "a context is a URL, an object or null")


@contextmanager
def _refused_by_pyld() -> Iterator[None]:
    """What pyld refuses, as a `PolicySyntaxError` (our loader's own, however pyld wrapped
    it, or the JSON-LD error's type and code)."""
    try:
        yield
    except PolicySyntaxError:
        raise
    except jsonld.JsonLdError as exc:
        cause = _policy_cause(exc)
        if cause is not None:
            raise cause from None
        raise PolicySyntaxError("$", f"not valid JSON-LD: {exc.type}: {exc.code}") from None
    except RecursionError:
        raise PolicySyntaxError("$", "document is nested too deeply") from None


def expand(document: Mapping[str, Any], default_context: tuple[str, ...] | None) -> list[Any]:
    """Expand `document`; `default_context` applies when it carries none of its own."""
    check_bounds(document)
    check_contexts(document)
    doc = dict(document)
    if "@context" not in doc and default_context is not None:
        doc["@context"] = list(default_context)
    dropped: list[str] = []

    def on_dropped(term: str | None) -> None:
        dropped.append(str(term))

    with _refused_by_pyld():
        expanded = jsonld.expand(doc, _options(), on_property_dropped=on_dropped)
    if dropped:
        # A term without a definition vanishes in expansion; the node refuses rather than
        # ignore a part of a policy (it could be the part that forbids).
        raise PolicySyntaxError("$", f"term {dropped[0][:80]!r} not understood by this node")
    return cast(list[Any], expanded)


def compact(expanded: Any, context: tuple[str, ...] = POLICY_CONTEXT) -> dict[str, Any]:
    """Compact an expanded document with `context` (the DSP 2025-1 one plus our profile)."""
    ctx = {"@context": list(context)}
    with _refused_by_pyld():  # a peer's node our contexts cannot compact is refused too
        return cast(dict[str, Any], jsonld.compact(expanded, ctx, _options(compactArrays=True)))
