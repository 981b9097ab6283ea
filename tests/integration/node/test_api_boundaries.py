"""The operator API against a hostile caller, on a real node process over real HTTP.

Bad input is a 4xx ``application/problem+json`` naming what was wrong (field paths for
validation problems), never a 5xx or a hung connection; the credential is checked from
the headers before any body is read; bodies are capped before they are parsed; ingest
decodes exactly what the upload declares and reports every line it cannot take.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from qdspace.node.localnet.network import LocalNetwork, MemberProcess

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
MiB = 1 << 20


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """The response's RFC 9457 body, after checking its status and media type."""
    assert response.status_code == status, f"HTTP {response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= body.keys(), body
    assert body["instance"] == response.request.url.path
    return body


def raw_exchange(member: MemberProcess, head: bytes, timeout: float = 5.0) -> bytes:
    """Send only a request head over a bare TLS socket; what the node answers before any body."""
    answer = b""
    tls = ssl.create_default_context(cafile=member.ca_file)
    with (
        socket.create_connection(("127.0.0.1", member.api_port), timeout=timeout) as raw,
        tls.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(head)
        try:
            # The head and the body of the answer may arrive in separate segments: read
            # until the head is complete and as many body bytes as it declares are here.
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return answer
                answer += chunk
                head_end = answer.find(b"\r\n\r\n")
                if head_end < 0:
                    continue
                declared = re.search(rb"(?im)^content-length:\s*(\d+)", answer[:head_end])
                if declared is None or len(answer) >= head_end + 4 + int(declared.group(1)):
                    return answer
        except TimeoutError:
            return answer


# -- errors are problems, 4xx for the caller's mistakes ---------------------------------


def test_unknown_peer_names_are_404_problems(network: LocalNetwork) -> None:
    with network["sunarc"].client() as client:
        for response in (
            client.post("/v1/peers/nobody/hello"),
            client.get("/v1/peers/nobody/upstream/B-1"),
            client.get("/v1/contracts/catalog/nobody"),
            client.post(
                "/v1/contracts/negotiations",
                json={"peer": "nobody", "asset_id": "inspections", "purposes": ["qa"]},
            ),
        ):
            assert "unknown peer 'nobody'" in problem(response, 404)["detail"]


@pytest.mark.parametrize(
    "raw_body",
    [
        b'{"offset_days": NaN}',
        b'{"offset_days": Infinity}',
        b'{"offset_days": 1e308}',
        b'{"offset_days": 1e12}',
        b'{"offset_days": -1e12}',
        b'{"offset_days": "soon"}',
    ],
)
def test_absurd_clock_offsets_are_422_naming_the_field(
    network: LocalNetwork, raw_body: bytes
) -> None:
    with network["sunarc"].client() as client:
        response = client.post(
            "/v1/contracts/clock", content=raw_body, headers={"content-type": "application/json"}
        )
        body = problem(response, 422)
        assert [e["field"] for e in body["errors"]] == ["body.offset_days"]
        assert client.get("/v1/contracts/clock").json()["offset_days"] == 0  # nothing moved


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/contracts/negotiations", {"peer": "", "asset_id": "a", "purposes": ["qa"]}, "peer"),
        ("/v1/contracts/negotiations", {"peer": "cellex", "asset_id": "", "purposes": ["qa"]},
         "asset_id"),
        ("/v1/contracts/negotiations", {"peer": "cellex", "asset_id": "a", "purposes": [""]},
         "purposes.0"),
        ("/v1/contracts/negotiations", {"peer": "cellex", "asset_id": "a", "purposes": []},
         "purposes"),
        ("/v1/contracts/negotiations",
         {"peer": "cellex", "asset_id": "a", "purposes": ["qa"], "retention_days": 10**9},
         "retention_days"),
        ("/v1/contracts/transfers", {"agreement_id": "agr", "purpose": ""}, "purpose"),
        ("/v1/contracts/transfers", {"agreement_id": "", "purpose": "qa"}, "agreement_id"),
        ("/v1/contracts/transfers", {"agreement_id": "agr", "purpose": "qa", "batch_rows": 10**12},
         "batch_rows"),
        ("/v1/contracts/subscriptions", {"agreement_id": "agr", "baseline_size": 10**9},
         "baseline_size"),
        ("/v1/contracts/subscriptions", {"agreement_id": "agr\u0000"}, "agreement_id"),
    ],
)  # fmt: skip
def test_empty_or_out_of_range_fields_are_422_with_their_path(
    network: LocalNetwork, path: str, payload: dict[str, Any], field: str
) -> None:
    with network["sunarc"].client() as client:
        body = problem(client.post(path, json=payload), 422)
    assert f"body.{field}" in [e["field"] for e in body["errors"]], body


def test_non_finite_spc_limits_are_422(network: LocalNetwork) -> None:
    with network["sunarc"].client() as client:
        response = client.post(
            "/v1/contracts/subscriptions",
            content=b'{"agreement_id": "agr", "usl": Infinity, "lsl": NaN}',
            headers={"content-type": "application/json"},
        )
    fields = {e["field"] for e in problem(response, 422)["errors"]}
    assert {"body.usl", "body.lsl"} <= fields


def test_unknown_ids_are_404_problems(network: LocalNetwork) -> None:
    with network["sunarc"].client() as client:
        for response in (
            client.get("/v1/contracts/agreements/agr-none"),
            client.post("/v1/contracts/transfers", json={"agreement_id": "x", "purpose": "qa"}),
            client.get("/v1/contracts/transfers/tr-none"),
            client.post("/v1/contracts/orders/PO-none/close"),
            client.post("/v1/ingest/photos", json={"rows": []}),
            client.get("/v1/contracts/negotiations/neg-none"),
        ):
            problem(response, 404)


def test_one_negotiation_refuses_hostile_ids_and_strangers(network: LocalNetwork) -> None:
    """``GET /v1/contracts/negotiations/{id}``: over-long, control-character and
    traversing ids are 4xx problems, never a 5xx or a traceback; no token is a 401."""
    with network["sunarc"].client() as client:
        path = "/v1/contracts/negotiations/"
        for bad in ("n" * 300, "neg%00x", "neg%0A1", "..%2F..%2Fagreements", "%F0%9F%92%A5" * 40):
            response = client.get(path + bad)
            assert 400 <= response.status_code < 500, (bad, response.status_code)
            assert "Traceback" not in response.text, bad
        stranger = client.get(path + "neg-none", headers={"Authorization": "Bearer nope"})
        assert stranger.status_code == 401


# -- the credential: from the headers, before the body ---------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer t\u00f6k\u00e9n".encode("latin-1"),
        b"Bearer \xff\xfe\xfd",
        b"Bearer",
        b"Bearer a b",
        b"Basic dXNlcjpwdw==",
        b"Bearer " + b"x" * 10_000,
    ],
)
def test_non_ascii_or_malformed_tokens_are_401(network: LocalNetwork, authorization: bytes) -> None:
    member = network["sunarc"]
    with member.client(token="") as anonymous:
        for path in ("/v1/node", "/v1/ledger/status", "/v1/contracts/agreements"):
            response = anonymous.get(path, headers={"Authorization": authorization})
            problem(response, 401)
        assert anonymous.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "credential",
    ["a.b.c", "!!!.!!!.!!!", "AAAA.AAAA.AAAA", "MIIB.e30.AAAA", "..", "x" * 5000 + ".y.z"],
)
def test_garbage_regulator_credentials_are_refused_not_500(
    network: LocalNetwork, credential: str
) -> None:
    member = network["cellex"]
    with member.regulator_client(credential) as regulator:
        response = regulator.get("/v1/regulator/inspections/EL-1/proof")
    assert problem(response, response.status_code)["status"] in (401, 403)


def test_the_token_is_checked_before_the_body_is_read(network: LocalNetwork) -> None:
    """A head that promises 100 MB without a token is answered at once: nobody waits for it."""
    member = network["cellex"]
    started = time.monotonic()
    answer = raw_exchange(
        member,
        b"POST /v1/ingest/inspection HTTP/1.1\r\nHost: node\r\n"
        b"Content-Type: text/csv\r\nContent-Length: 100000000\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert PROBLEM.encode() in answer
    assert time.monotonic() - started < 3


# -- body size -------------------------------------------------------------------------


def test_a_declared_oversized_body_is_413_before_it_is_sent(network: LocalNetwork) -> None:
    member = network["sunarc"]
    answer = raw_exchange(
        member,
        b"POST /v1/contracts/clock HTTP/1.1\r\nHost: node\r\n"
        b"Authorization: Bearer " + member.token.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"limit of 1,048,576 bytes" in answer


def test_an_undeclared_oversized_body_is_cut_off_with_413(network: LocalNetwork) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"offset_days": 0, "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    with network["sunarc"].client() as client:
        response = client.post(
            "/v1/contracts/clock", content=chunks(), headers={"content-type": "application/json"}
        )
        assert "limit" in problem(response, 413)["detail"]
        assert client.get("/healthz").status_code == 200


# -- ingest boundaries -----------------------------------------------------------------

ENV_HEADER = "location,measured_at,temperature"


def upload(client: httpx.Client, kind: str, data: bytes, media: str = "text/csv") -> httpx.Response:
    return client.post(
        f"/v1/ingest/{kind}",
        content=data,
        headers={"content-type": media},
        params={"source": "up.csv"},
    )


def stored_locations(member: MemberProcess, prefix: str) -> list[str]:
    engine = create_engine(f"sqlite:///{member.directory / 'node.db'}")
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT location FROM qdm_environment WHERE location LIKE :p ORDER BY location"
                ),
                {"p": prefix + "%"},
            )
            return [r[0] for r in rows]
    finally:
        engine.dispose()


def env_rows(prefix: str, *names: str) -> str:
    return "".join(f"{prefix}{n},2026-11-02T08:00:00Z,21.5\r\n" for n in names)


def test_latin1_is_refused_unless_declared_and_then_decoded_as_declared(
    network: LocalNetwork,
) -> None:
    member = network["polycell"]
    prefix = f"hall-{uuid.uuid4().hex[:6]}-"
    data = (ENV_HEADER + "\r\n" + env_rows(prefix, "Süd", "Nord")).encode("latin-1")
    with member.client() as client:
        result = upload(client, "environment", data).json()
        assert result["accepted"] == 1  # Nord; Süd is not UTF-8 and is reported, not mangled
        assert result["rejected"][0]["line"] == 2
        assert "not valid utf-8: byte 0xfc" in result["rejected"][0]["reason"]
        assert "charset" in result["rejected"][0]["reason"]
        declared = upload(client, "environment", data, "text/csv; charset=ISO-8859-1").json()
        assert declared["accepted"] == 1 and declared["duplicates"] == 1, declared
        problem(upload(client, "environment", data, "text/csv; charset=utf-16"), 415)
        problem(upload(client, "environment", data, "text/csv; charset=klingon"), 415)
    assert stored_locations(member, prefix) == [prefix + "Nord", prefix + "Süd"]


def test_utf8_with_bom_and_crlf_is_read_as_text(network: LocalNetwork) -> None:
    member = network["polycell"]
    prefix = f"bom-{uuid.uuid4().hex[:6]}-"
    data = b"\xef\xbb\xbf" + (ENV_HEADER + "\r\n" + env_rows(prefix, "Zürich")).encode()
    with member.client() as client:
        result = upload(client, "environment", data).json()
    assert (result["accepted"], result["rejected"]) == (1, []), result
    assert stored_locations(member, prefix) == [prefix + "Zürich"]


def test_ragged_rows_and_nul_bytes_are_reported_by_line(network: LocalNetwork) -> None:
    member = network["polycell"]
    prefix = f"rag-{uuid.uuid4().hex[:6]}-"
    data = (
        ENV_HEADER.encode() + b"\n"
        + f"{prefix}a,2026-11-02T08:00:00Z,21.5,surplus\n".encode()
        + f"{prefix}b,2026-11-02T08:00:00Z\n".encode()
        + f"{prefix}c\x00,2026-11-02T08:00:00Z,21.5\n".encode()
        + f"{prefix}d,2026-11-02T08:00:00Z,21.5\n".encode()
    )  # fmt: skip
    jsonl = b'{"location": "' + prefix.encode() + b'e\\u0000", "measured_at": "x"}\n'
    with member.client() as client:
        result = upload(client, "environment", data).json()
        as_lines = upload(client, "environment", jsonl, "application/x-ndjson").json()
        header_nul = upload(client, "environment", b"location\x00,measured_at\n")
    assert result["accepted"] == 1
    reasons = {e["line"]: e["reason"] for e in result["rejected"]}
    assert reasons == {
        2: "expected 3 values (one per column), got 4",
        3: "expected 3 values (one per column), got 2",
        4: "NUL byte in line",
    }
    assert as_lines["rejected"][0]["reason"] == "NUL character in value"
    assert "header line: NUL byte" in problem(header_nul, 400)["detail"]
    assert stored_locations(member, prefix) == [prefix + "d"]


def test_empty_and_header_only_uploads(network: LocalNetwork) -> None:
    with network["polycell"].client() as client:
        assert "empty" in problem(upload(client, "environment", b""), 400)["detail"]
        blank = problem(upload(client, "environment", b"\r\n"), 400)
        assert "up.csv" in blank["detail"] and "/tmp" not in blank["detail"]
        header_only = upload(client, "environment", ENV_HEADER.encode() + b"\r\n")
        assert header_only.status_code == 200, header_only.text
        assert header_only.json()["accepted"] == 0 and header_only.json()["rejected"] == []


def test_wrong_content_type_is_415_and_an_oversized_upload_413(network: LocalNetwork) -> None:
    member = network["polycell"]
    with member.client() as client:
        problem(upload(client, "environment", b"<rows/>", "application/xml"), 415)
        problem(upload(client, "environment", b"a", ""), 415)
        # ingest takes more than the 1 MiB of other routes
        prefix = f"big-{uuid.uuid4().hex[:6]}-"
        big = (ENV_HEADER + "\n" + env_rows(prefix, *map(str, range(60_000)))).encode()
        assert len(big) > 2 * MiB
        assert upload(client, "environment", big).json()["accepted"] == 60_000
    answer = raw_exchange(
        member,
        b"POST /v1/ingest/environment HTTP/1.1\r\nHost: node\r\n"
        b"Authorization: Bearer " + member.token.encode() + b"\r\n"
        b"Content-Type: text/csv\r\nContent-Length: 999999999999\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# -- JSON nesting ----------------------------------------------------------------------


def test_deeply_nested_json_is_refused_and_the_node_survives(network: LocalNetwork) -> None:
    """~400 kB of brackets used to overflow the C stack of the JSON decoder: the node died."""
    member = network["polycell"]
    deep = b"[" * 200_000 + b"]" * 200_000
    with member.client() as client:
        body = problem(
            client.post(
                "/v1/contracts/clock", content=deep, headers={"content-type": "application/json"}
            ),
            400,
        )
        assert "nested deeper than 32 levels" in body["detail"]
        rows = b'{"rows": [' + b"[" * 200_000 + b"]" * 200_000 + b"]}"
        problem(upload(client, "environment", rows, "application/json"), 422)
        line = upload(client, "environment", deep + b"\n", "application/x-ndjson").json()
        assert line["rejected"][0]["reason"] == "JSON nested deeper than 32 levels"
        assert client.get("/healthz").status_code == 200
    assert member.running


def test_the_defects_chart_refuses_hostile_queries(network: LocalNetwork) -> None:
    """``/v1/inspection/defects``: zone-less, backwards or absurd windows, a non-finite or
    out-of-range standard, a chart of no or of absurdly many batches, overlong or
    control-character names are 4xx problems naming the field; no token is a 401; an
    honest query of an empty window a 404."""
    with network["sunarc"].client() as client:
        path = "/v1/inspection/defects"
        for params, field in (
            ({"since": "2026-06-01T08:00:00"}, "since"),
            ({"until": "not a time"}, "until"),
            ({"since": "99999-01-01T00:00:00Z"}, "since"),
            ({"since": "1700000000"}, "since"),  # was read as seconds after 1970
            ({"standard": "nan"}, "standard"),
            ({"standard": "-0.1"}, "standard"),
            ({"standard": "1e308"}, "standard"),
            ({"batches": "0"}, "batches"),
            ({"batches": "-5"}, "batches"),
            ({"batches": "1e9"}, "batches"),
            ({"batches": "99999999999999999999999"}, "batches"),
            ({"station": "x" * 10_000}, "station"),
            ({"order": "PO\x00-1"}, "order"),
        ):
            body = problem(client.get(path, params=params), 422)
            assert field in str(body), (params, body)
        backwards = {"since": "2026-06-02T00:00:00Z", "until": "2026-06-01T00:00:00Z"}
        assert "since" in problem(client.get(path, params=backwards), 422)["detail"]
        empty = {"since": "1990-01-01T00:00:00Z", "until": "1990-01-02T00:00:00Z"}
        assert "no inspection verdicts" in problem(client.get(path, params=empty), 404)["detail"]
        assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401


#: cursors this node never handed out: not base64, a negative position, noise, and
#: positions past 64 bits (that one reached the database driver as an overflow: a 500)
FORGED_CURSORS = (
    "not-a-cursor!",
    "eyJvIjotMX0",
    "A" * 190,
    "eyJvIjo5MjIzMzcyMDM2ODU0Nzc1ODA4fQ",  # {"o":9223372036854775808}
    "eyJvIjoxZSszMH0",  # {"o":1e+30}
)


def test_the_paged_retention_and_case_lists_refuse_hostile_queries(
    network: LocalNetwork,
) -> None:
    """The lists read a page at a time in SQL (deletion duties, their counts, closures,
    receipts, cases): a status that is none, a flag that is no boolean, a page of zero,
    of a billion or NaN rows, a forged, negative or 64-bit-overflowing cursor are 4xx
    problems naming the field; no token is a 401; the node answers honest queries
    afterwards. The received rows' pages (by cursor since 0021) are abused the same way."""
    with network["sunarc"].client() as client:
        lists = (
            "/v1/contracts/duties",
            "/v1/contracts/closures",
            "/v1/contracts/receipts",
            "/v1/investigations",
        )
        for path in lists:
            for params, field in (
                ({"limit": "0"}, "limit"),
                ({"limit": "-1"}, "limit"),
                ({"limit": "1000000000"}, "limit"),
                ({"limit": "nan"}, "limit"),
                ({"limit": "9" * 400}, "limit"),
            ):
                body = problem(client.get(path, params=params), 422)
                assert field in str(body), (path, params, body)
            for cursor in FORGED_CURSORS:
                problem(client.get(path, params={"cursor": cursor}), 400)
            assert client.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        received, mine = "/v1/contracts/received", {"agreement_id": "agr-none"}
        for params, field in (
            ({"limit": "0"}, "limit"),
            ({"limit": "100001"}, "limit"),
            ({"limit": "nan"}, "limit"),
            ({"agreement_id": "x" * 300}, "agreement_id"),
            ({"agreement_id": ""}, "agreement_id"),
            ({"order_id": "o" * 300}, "order_id"),
            ({"cursor": "c" * 201}, "cursor"),
        ):
            body = problem(client.get(received, params=mine | params), 422)
            assert field in str(body), (params, body)
        for cursor in FORGED_CURSORS:
            problem(client.get(received, params=mine | {"cursor": cursor}), 400)
        assert (
            client.get(received, params=mine, headers={"Authorization": "Bearer x"}).status_code
            == 401
        )
        nothing = client.get(received, params=mine | {"limit": "1"})
        assert nothing.status_code == 200 and nothing.json()["rows"] == [], nothing.text
        duties = "/v1/contracts/duties"
        for params, field in (
            ({"status": "late"}, "status"),
            ({"status": "OVERDUE\x00"}, "status"),
            ({"attention_first": "maybe"}, "attention_first"),
        ):
            body = problem(client.get(duties, params=params), 422)
            assert field in str(body), (params, body)
        counts = "/v1/contracts/duties/counts"
        assert client.get(counts, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.post(counts).status_code == 405
        for path in lists:  # the node survived and pages as asked
            page = client.get(path, params={"limit": "2"})
            assert page.status_code == 200 and len(page.json()) <= 2, (path, page.text)
        answer = client.get(duties, params={"attention_first": "true", "status": "pending"})
        assert answer.status_code == 200 and all(d["status"] == "pending" for d in answer.json())
        total = client.get(counts).json()
        assert total["total"] == sum(v for k, v in total.items() if k != "total")
