"""Schema-generated requests to every REST route of a real running node.

The requests come from the node's own OpenAPI schema: `from_schema` turns the JSON Schema
subset FastAPI writes (types, bounds, lengths, patterns, arrays, objects, anyOf, $ref)
into hypothesis strategies for path and query parameters and JSON bodies, drawn
schema-valid and as arbitrary JSON alike, plus raw bytes in assorted content types for
routes that read their body themselves. (hypothesis-jsonschema would do this, but its
0.23 release relies on hypothesis internals that hypothesis 6.170 no longer has.) Sent
with the operator token and without, each must get an answer the caller caused: a 2xx,
3xx or 4xx, never a 5xx, and within a few seconds (no hang). The node must still be up.

The network is this module's own (an OEM, a supplier and a regulator on a chain): the fuzzer moves
clocks, closes orders and ingests rows, which must not leak into other tests.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdspace.node.api.regulator_auth import MAX_TTL_S, issue_credential
from qdspace.node.identity.member import load_member_keys
from qdspace.node.localnet.network import LocalNetwork, MemberSpec

pytestmark = pytest.mark.integration

#: an answer slower than this is a hang (no route does real work on fuzzed input)
ANSWER_WITHIN_S = 5.0
EXAMPLES_WITH_TOKEN = 12
EXAMPLES_WITHOUT_TOKEN = 3
RAW_MEDIA = ["application/json", "text/csv", "application/x-ndjson", "text/plain", ""]


@pytest.fixture(scope="module")
def fuzz_network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    net = LocalNetwork(
        tmp_path_factory.mktemp("fuzz"),
        [
            MemberSpec("sunarc", "oem"),
            MemberSpec("cellex", "supplier"),
            MemberSpec("regulator", "regulator"),
        ],
    )
    net.create()
    net.start()
    try:
        yield net
    finally:
        net.stop()


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (method, path template, operation) of the schema."""
    return [
        (method.upper(), path, op)
        for path, item in schema["paths"].items()
        for method, op in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
ANY_JSON: st.SearchStrategy[Any] = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def from_schema(schema: dict[str, Any], components: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under ``schema`` (the JSON Schema subset of FastAPI's OpenAPI output)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return from_schema(components["schemas"][name], components)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return st.one_of(*(from_schema(s, components) for s in schema[key]))
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return from_schema(schema["allOf"][0], components)
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "const" in schema:
        return st.just(schema["const"])
    kind = schema.get("type")
    if kind == "string":
        return _strings(schema)
    if kind == "integer":
        low, high = _bounds(schema, 1)
        return st.integers(low, high)
    if kind == "number":
        low, high = _bounds(schema, 0)
        return st.floats(low, high, allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        items = from_schema(schema.get("items", {}), components)
        return st.lists(
            items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 5), 5)
        )
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: from_schema(v, components) for k, v in props.items() if k in required},
            optional={k: from_schema(v, components) for k, v in props.items() if k not in required},
        )
    return ANY_JSON


def _strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), min(schema.get("maxLength", 40), 40)
    if schema.get("format") == "date-time":
        return st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True).filter(
            lambda t: low <= len(t) <= schema.get("maxLength", 10**9)
        )
    return st.text(min_size=low, max_size=max(low, high))


def _bounds(schema: dict[str, Any], step: int) -> tuple[float | None, float | None]:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if "exclusiveMinimum" in schema and step:
        low += step
    if "exclusiveMaximum" in schema and step:
        high -= step
    return low, high


def request_strategy(
    op: dict[str, Any], components: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Path params, query params and a body (JSON or raw bytes) for one operation."""
    path_params: dict[str, st.SearchStrategy[Any]] = {}
    query: dict[str, st.SearchStrategy[Any]] = {}
    for param in op.get("parameters", []):
        values = from_schema(param.get("schema", {}), components)
        if param["in"] == "path":
            path_params[param["name"]] = values
        elif param["in"] == "query":
            query[param["name"]] = values if param.get("required") else st.none() | values
    body_schema = (
        op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    )
    if body_schema is not None:
        body = st.tuples(
            st.just("application/json"),
            from_schema(body_schema, components) | ANY_JSON,
        ).map(lambda mb: (mb[0], json.dumps(mb[1]).encode()))
    else:
        body = st.tuples(st.sampled_from(RAW_MEDIA), st.binary(max_size=2048))
    return st.fixed_dictionaries(
        {
            "path": st.fixed_dictionaries(path_params),
            "query": st.fixed_dictionaries(query),
            "body": body,
        }
    )


def url_of(template: str, params: dict[str, Any]) -> str:
    for name, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value)
        template = template.replace("{" + name + "}", quote(text, safe="") or "%20")
        template = template.replace("{" + name + ":path}", quote(text, safe="") or "%20")
    return template


def query_of(values: dict[str, Any]) -> dict[str, str]:
    return {
        k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items() if v is not None
    }


def exchange(
    client: httpx.Client, method: str, template: str, drawn: dict[str, Any], seen: Counter[int]
) -> str:
    """Send one drawn request; a failure message, or '' when the answer is acceptable."""
    url = url_of(template, drawn["path"])
    media, content = drawn["body"]
    headers = {"content-type": media} if media else {}
    started = time.monotonic()
    try:
        response = client.request(
            method, url, params=query_of(drawn["query"]), content=content, headers=headers
        )
    except httpx.TimeoutException:
        return f"{method} {url}: no answer within {ANSWER_WITHIN_S} s"
    except httpx.TransportError as exc:
        return f"{method} {url}: connection failed: {exc!r}"
    took = time.monotonic() - started
    seen[response.status_code] += 1
    if response.status_code >= 500:
        return f"{method} {url} {drawn}: HTTP {response.status_code}: {response.text[:300]}"
    if took > ANSWER_WITHIN_S:
        return f"{method} {url}: answered after {took:.1f} s"
    return ""


def fuzz_operation(
    client: httpx.Client,
    method: str,
    template: str,
    strategy: st.SearchStrategy[dict[str, Any]],
    examples: int,
    seen: Counter[int],
) -> list[str]:
    """Send ``examples`` drawn requests for one operation; the failures found."""
    failures: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(drawn=strategy)
    def probe(drawn: dict[str, Any]) -> None:
        failure = exchange(client, method, template, drawn, seen)
        if failure:
            failures.append(failure)

    probe()
    return failures


def test_schema_generated_requests_get_4xx_not_5xx_and_no_hang(
    fuzz_network: LocalNetwork,
) -> None:
    """Both listeners of a node, each from its own schema: the operator API with the
    operator token, the regulator API with a regulator credential; and both without."""
    member = fuzz_network["sunarc"]
    timeout = ANSWER_WITHIN_S + 5
    with member.client(timeout=10, token="") as probe:
        audience = probe.get("/healthz").json()["member_id"]
    credential = issue_credential(
        load_member_keys(fuzz_network["regulator"].directory), audience, ttl_s=MAX_TTL_S
    )
    listeners = [
        (member.client(timeout=timeout), member.client(timeout=timeout, token="")),
        (
            member.regulator_client(credential, timeout=timeout),
            member.regulator_client(timeout=timeout),
        ),
    ]
    failures: list[str] = []
    seen: dict[str, Counter[int]] = {"with": Counter(), "without": Counter()}
    total = 0
    for authorised, anonymous in listeners:
        with authorised, anonymous:
            schema = anonymous.get("/openapi.json").json()
            components = schema.get("components", {})
            ops = operations(schema)
            total += len(ops)
            for method, template, op in ops:
                strategy = request_strategy(op, components)
                failures += fuzz_operation(
                    authorised, method, template, strategy, EXAMPLES_WITH_TOKEN, seen["with"]
                )
                failures += fuzz_operation(
                    anonymous, method, template, strategy, EXAMPLES_WITHOUT_TOKEN, seen["without"]
                )
                assert member.running, f"the node died on {method} {template}: {failures[-3:]}"
            assert authorised.get("/healthz").status_code == 200
    assert total >= 30, total
    assert not failures, "\n".join(failures[:20])
    # the credentials opened the routes: many answers got past authentication
    assert sum(n for code, n in seen["with"].items() if code < 300) >= total, seen
    assert set(seen["without"]) <= {200, 401}, seen["without"]  # only open paths answer 200
