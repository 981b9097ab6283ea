"""Schema-generated requests to every REST route of a real running node.

The requests come from the node's own OpenAPI schema (hypothesis-jsonschema draws path
and query parameters and JSON bodies from it, schema-valid and arbitrary JSON alike, and
raw bytes in assorted content types for routes that read their body themselves). Sent
with the operator token and without, each must get an answer the caller caused: a 2xx,
3xx or 4xx, never a 5xx, and within a few seconds (no hang). The node must still be up.

The network is this module's own (an OEM and a supplier on a chain): the fuzzer moves
clocks, closes orders and ingests rows, which must not leak into other tests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from node.launcher import LocalNetwork, MemberSpec

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
        [MemberSpec("sunarc", "oem"), MemberSpec("cellex", "supplier")],
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


def with_components(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A parameter or body schema that can resolve the document's ``#/components/...``."""
    return {**schema, "components": components}


def request_strategy(
    op: dict[str, Any], components: dict[str, Any]
) -> st.SearchStrategy[dict[str, Any]]:
    """Path params, query params and a body (JSON or raw bytes) for one operation."""
    path_params: dict[str, st.SearchStrategy[Any]] = {}
    query: dict[str, st.SearchStrategy[Any]] = {}
    for param in op.get("parameters", []):
        values = from_schema(with_components(param.get("schema", {}), components))
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
            from_schema(with_components(body_schema, components)) | from_schema({}),
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


def exchange(client: httpx.Client, method: str, template: str, drawn: dict[str, Any]) -> str:
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
        failure = exchange(client, method, template, drawn)
        if failure:
            failures.append(failure)

    probe()
    return failures


def test_schema_generated_requests_get_4xx_not_5xx_and_no_hang(
    fuzz_network: LocalNetwork,
) -> None:
    member = fuzz_network["sunarc"]
    schema = httpx.get(member.api_url + "/openapi.json", timeout=10).json()
    components = schema.get("components", {})
    ops = operations(schema)
    assert len(ops) >= 30, [f"{m} {p}" for m, p, _ in ops]
    failures: list[str] = []
    authed = member.client(timeout=ANSWER_WITHIN_S + 5)
    anonymous = httpx.Client(base_url=member.api_url, timeout=ANSWER_WITHIN_S + 5)
    with authed, anonymous:
        for method, template, op in ops:
            strategy = request_strategy(op, components)
            failures += fuzz_operation(authed, method, template, strategy, EXAMPLES_WITH_TOKEN)
            failures += fuzz_operation(
                anonymous, method, template, strategy, EXAMPLES_WITHOUT_TOKEN
            )
            assert member.running, f"the node died on {method} {template}: {failures[-3:]}"
        assert authed.get("/healthz").status_code == 200
    assert not failures, "\n".join(failures[:20])
