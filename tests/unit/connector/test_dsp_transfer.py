"""The DSP transfer codec: every message the node emits validates against its DSP 2025-1
schema; what it reads is checked; the data plane's byte format round-trips and refuses
what a hostile provider could send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft201909Validator
from referencing import Registry, Resource

from qdspace.connector import dsp_transfer as wire
from qdspace.connector.dsp_codec import DspMessageError
from qdspace.connector.dsp_data import (
    HEARTBEAT,
    DataPlaneFormatError,
    DataReader,
    LiveRows,
    batch_bytes,
    live_bytes,
)
from qdspace.connector.dsp_jsonld import DspFormError
from qdspace.connector.transfer_wire import BatchRow, Checkpoint, RowBatch

SCHEMAS = Path(__file__).parents[1] / "policies" / "dsp_2025_1"
P, C = "urn:uuid:provider-1", "urn:uuid:consumer-1"
ADDRESS = wire.DataAddress("https://cellex.example/data/urn:uuid:provider-1", "tok.mac")


def _load(path: Path) -> Any:
    # the published transfer schemas write one reference as ``...json#definitions/X``
    # (errata 1), which JSON Schema reads as an anchor, not a pointer: read it as meant
    return json.loads(path.read_text().replace(".json#definitions/", ".json#/definitions/"))


def _registry() -> Registry:
    resources = []
    for path in SCHEMAS.rglob("*.json"):
        doc = _load(path)
        resources.append((doc["$id"], Resource.from_contents(doc)))
    return Registry().with_resources(resources)


def valid(body: Any, schema: str) -> None:
    doc = _load(SCHEMAS / "transfer" / schema)
    Draft201909Validator(doc, registry=_registry()).validate(body)


@pytest.mark.parametrize(
    ("body", "schema"),
    [
        (wire.request_message(C, "agr-1", "https://sunarc.example/callback"),
         "transfer-request-message-schema.json"),
        (wire.start_message(P, C, ADDRESS), "transfer-start-message-schema.json"),
        (wire.start_message(P, C, None), "transfer-start-message-schema.json"),
        (wire.process(P, C, "STARTED"), "transfer-process-schema.json"),
        (wire.completion_message(P, C), "transfer-completion-message-schema.json"),
        (wire.suspension_message(P, C, "pause"), "transfer-suspension-message-schema.json"),
        (wire.suspension_message(P, C, ""), "transfer-suspension-message-schema.json"),
        (wire.termination_message(P, C, "done"), "transfer-termination-message-schema.json"),
        (wire.error("404", "no transfer here", P, C), "transfer-error-schema.json"),
        (wire.data_address(ADDRESS), "data-address-schema.json"),
    ],
)  # fmt: skip
def test_every_message_validates(body: dict[str, Any], schema: str) -> None:
    valid(body, schema)
    json.dumps(body)


def test_a_request_reads_back() -> None:
    body = wire.request_message(C, "agr-1", "https://sunarc.example/callback/")
    ask = wire.read_request(body)
    assert (ask.consumer_pid, ask.agreement_id, ask.callback) == (
        C,
        "agr-1",
        "https://sunarc.example/callback",
    )


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"format": "HttpData-PUSH"}, "$.format"),
        ({"dataAddress": wire.data_address(ADDRESS)}, "$.dataAddress"),
        ({"callbackAddress": "http://plain.example"}, "$.callbackAddress"),
        ({"consumerPid": "x" * 129}, "$.consumerPid"),
        ({"agreementId": 7}, "$.agreementId"),
        ({"@type": "TransferStartMessage"}, "$.@type"),
        ({"@context": ["https://evil.example/context.jsonld"]}, "$.@context"),
    ],
)
def test_bad_requests_are_refused_by_field(change: dict[str, Any], where: str) -> None:
    body = {**wire.request_message(C, "agr-1", "https://sunarc.example/callback"), **change}
    # the JSON-LD form is checked first (DspFormError), then the message (DspMessageError)
    with pytest.raises((DspMessageError, DspFormError)) as caught:
        wire.read_request(body)
    assert caught.value.where == where


def test_push_is_refused_with_its_own_error() -> None:
    body = wire.request_message(C, "agr-1", "https://x.example/cb", fmt="HttpData-PUSH")
    with pytest.raises(wire.PushRefused, match="only HttpData-PULL"):
        wire.read_request(body)


def test_data_address_reads_back_and_refuses_junk() -> None:
    start = wire.start_message(P, C, ADDRESS)
    assert wire.read_data_address(start) == ADDRESS
    assert wire.read_data_address(wire.start_message(P, C, None)) is None
    bad = json.loads(json.dumps(start))
    bad["dataAddress"]["endpoint"] = "http://plain.example/data"
    with pytest.raises(DspMessageError, match="https"):
        wire.read_data_address(bad)
    bad["dataAddress"] = {"@type": "DataAddress", "endpoint": "https://x", "endpointProperties": []}
    with pytest.raises(DspMessageError, match="authorization"):
        wire.read_data_address(bad)
    with pytest.raises(DspMessageError):
        wire.process(P, C, "DANCING")


PROVIDER = "https://cellex.example:8600"


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://cellex.example:8600/data/p1",
        "https://CELLEX.example:8600/data/p1",  # a host name's case is not part of it
    ],
)
def test_a_data_address_at_the_providers_dsp_address_is_taken(endpoint: str) -> None:
    wire.check_endpoint(wire.DataAddress(endpoint, "t"), PROVIDER)
    wire.check_endpoint(wire.DataAddress("https://h.example/data/p", "t"), "https://h.example:443")
    wire.check_endpoint(wire.DataAddress("https://[::1]:8600/data/p", "t"), "https://[::1]:8600")


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://cellex.example:8601/data/p1",  # another port of the same host
        "https://10.0.0.5:8600/data/p1",  # a host inside the consumer's network
        "https://169.254.169.254:443/latest/meta-data",
        "https://cellex.example:8600@intranet.local:22/",  # user info: the host is after @
        "https://cellex.example.evil.test:8600/data/p1",
        "https://cellex.example:99999/data/p1",  # no port at all
        "https://:8600/data/p1",
    ],
)
def test_a_data_address_anywhere_else_is_refused_naming_the_providers(endpoint: str) -> None:
    with pytest.raises(DspMessageError, match=r"https://cellex\.example:8600") as refused:
        wire.check_endpoint(wire.DataAddress(endpoint, "t"), PROVIDER)
    assert refused.value.where == "$.dataAddress.endpoint"


def _batch(rows: list[bytes], last: bool) -> RowBatch:
    cp = Checkpoint.genesis("t1").extend(rows, "42")
    return RowBatch.of("t1", [BatchRow(r, "PO-1") for r in rows], cp, last)


def test_batches_round_trip_in_any_chunking() -> None:
    rows = [b'{"a":1}', b'{"b":"x\\ny"}', b'{"c":null}']
    body = batch_bytes(_batch(rows, False)) + HEARTBEAT + batch_bytes(_batch([], True))
    body += live_bytes([BatchRow(b'{"d":2}', "PO-2")], ["17"])
    for size in (1, 3, 7, len(body)):
        reader = DataReader("t1")
        got: list[Any] = []
        for i in range(0, len(body), size):
            got += list(reader.feed(body[i : i + size]))
        reader.finish()
        first, beat, empty, live = got
        assert isinstance(first, RowBatch) and first.payloads() == rows
        assert first.checkpoint == _batch(rows, False).checkpoint and not first.last
        assert beat == LiveRows((), ())
        assert isinstance(empty, RowBatch) and empty.count == 0 and empty.last
        assert live == LiveRows(("17",), (BatchRow(b'{"d":2}', "PO-2"),))


@pytest.mark.parametrize(
    "body",
    [
        b"not json\n",
        b'{"batch": {"count": -1}}\n',
        b'{"batch": {"count": 100001}}\n',
        b'{"batch": {"count": 1, "orders": [], "index": [], "offset": 1, "digest": "zz", '
        b'"position": "", "last": true}}\n{"a":1}\n',
        b'{"event": {"positions": ["1"], "orders": []}}\n{"a":1}\n',
        b'{"something": 1}\n',
        b'{"batch": {}, "event": {}}\n',
    ],
)
def test_malformed_data_is_refused(body: bytes) -> None:
    reader = DataReader("t1")
    with pytest.raises(DataPlaneFormatError):
        list(reader.feed(body))


def test_an_endless_line_and_a_cut_body_are_refused() -> None:
    reader = DataReader("t1")
    with pytest.raises(DataPlaneFormatError, match="over"):
        list(reader.feed(b"x" * (4 * 1024 * 1024 + 1)))
    cut = DataReader("t1")
    list(cut.feed(batch_bytes(_batch([b'{"a":1}', b'{"b":2}'], True))[:-9]))
    with pytest.raises(DataPlaneFormatError, match="ended"):
        cut.finish()


def test_a_group_too_big_to_hold_is_refused_before_it_is_held() -> None:
    """A provider announces 100,000 rows (allowed) and sends lines of 1 MiB each (each
    allowed): the reader refuses once the group's rows pass 64 MiB, not after holding
    100 GB of them; a group of the node's own size is read."""
    reader = DataReader("t1")
    head = b'{"event": {"positions": ["1"], "orders": ["PO-1"], "index": []}}\n'
    head = head.replace(b'["1"]', b"[" + b",".join([b'"1"'] * 100_000) + b"]")
    list(reader.feed(head))
    line = b'{"pad":"' + b"x" * (1024 * 1024) + b'"}\n'
    fed = 0
    with pytest.raises(DataPlaneFormatError, match="a group over"):
        for _ in range(80):  # (bounded: without the limit this test fails, it does not swap)
            list(reader.feed(line))
            fed += 1
    assert 60 <= fed <= 64
    rows = [b'{"k":"' + b"y" * 300 + b'"}'] * 10_000
    ok = DataReader("t1")
    (batch,) = list(ok.feed(batch_bytes(_batch(rows, True))))
    assert isinstance(batch, RowBatch) and batch.count == 10_000
