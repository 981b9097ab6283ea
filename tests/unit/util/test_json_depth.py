"""Peer and caller JSON is read only once its nesting is known to be shallow, and a node's
recursion limit stays where the C stack holds it (`util.json_depth`, `util.recursion`).

The deep documents here are run with the recursion limit py_ecc sets (100,000): on the
old parsers each of them overflowed the C stack and killed the test process."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from qdspace.connector.agreement import AgreementError, agreement_from_bytes
from qdspace.connector.investigation_wire import CaseFormatError, event_from_bytes
from qdspace.federation.versions import ModelVersion, VersionError
from qdspace.policies.codec import parse_policy
from qdspace.policies.errors import PolicySyntaxError
from qdspace.policies.odrl.jsonld import decode
from qdspace.util.json_depth import JsonTooDeep, json_too_deep, loads

BOMB = b"[" * 300_000


@pytest.fixture
def raised_limit() -> Iterator[None]:
    """The process as py_ecc leaves it."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def test_loads_refuses_deeper_than_its_limit_and_reads_the_rest() -> None:
    assert loads(b'{"a": [[1, "[[[[["]]}') == {"a": [[1, "[[[[["]]}
    assert not json_too_deep("[" * 32 + "]" * 32) and json_too_deep("[" * 33 + "]" * 33)
    with pytest.raises(JsonTooDeep, match="deeper than 4"):
        loads("[[[[[1]]]]]", limit=4)
    assert isinstance(JsonTooDeep("x"), ValueError)  # every reader's malformed-JSON path
    assert loads(bytearray(b'"\\"["'), limit=0) == '"['  # brackets inside strings


@pytest.mark.parametrize(
    ("parse", "error"),
    [
        (parse_policy, PolicySyntaxError),
        (decode, PolicySyntaxError),
        (agreement_from_bytes, AgreementError),
        (event_from_bytes, CaseFormatError),
        (ModelVersion.from_bytes, VersionError),
    ],
    ids=["policy", "dsp-json", "agreement", "case-event", "model-version"],
)
def test_wire_parsers_refuse_a_nesting_bomb(
    raised_limit: None, parse: Callable[[bytes], object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        parse(BOMB)


def test_a_node_process_holds_its_recursion_limit_whatever_it_imports_later() -> None:
    """In a fresh interpreter: py_ecc raised the limit to 100,000 at import; after
    `hold_recursion_limit` it is 1,000 and stays there (py_ecc raises it once, at its
    first import), so a deep document is a RecursionError, not a dead process."""
    code = (
        "import sys, json\n"
        "from qdspace.util.recursion import hold_recursion_limit\n"
        "hold_recursion_limit()\n"
        "import qdspace.ledger.client\n"
        "print(sys.getrecursionlimit())\n"
        "try:\n"
        "    json.loads(b'[' * 300000)\n"
        "except RecursionError:\n"
        "    print('refused')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1000", "refused"]


@pytest.mark.timeout(30)  # a hang guard, not a timing: the old pattern took ~15 minutes
@pytest.mark.parametrize("unit", ['\\"', '"\\', '\\\\"', "\\"])
def test_quotes_without_an_end_are_read_in_one_pass(unit: str) -> None:
    """512 kB of escaped quotes and no closing one: the string pattern rescanned the rest
    of the text from every quote (64 kB: 13 s on the event loop of the API's JSON gate
    and the MQTT listener); brackets after an unterminated quote are inside the string."""
    text = '"' + unit * (512_000 // len(unit))
    assert not json_too_deep(text)
    assert not json_too_deep(text + "[" * 100)
    assert json_too_deep("[" * 40 + text)
