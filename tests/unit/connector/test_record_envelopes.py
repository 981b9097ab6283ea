"""A delivery's envelopes checked at once (`record_metas`) refuse exactly what the row by
row check (`record_meta`, orjson) refuses: a hostile provider's row must not reach the
copy in a form its readers then fail on.

`record_metas` checks a page's rows with msgspec, typed as the first row (the envelope,
every other member a JSON scalar), without a dict per row, and falls back to
`record_meta` row by row wherever msgspec does not pass a row or could differ from orjson
(non-ASCII bytes, tombstones, another shape, nesting). These tests hold the two to the
same answers on rows built to sit on those edges, and on random damage to a real row.
"""

from __future__ import annotations

import sys

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qdspace.connector.contract_errors import RecordEnvelopeError
from qdspace.connector.transfer_wire import (
    RecordMeta,
    _row_decoder,
    record_meta,
    record_metas,
    row_bytes,
    tombstone_bytes,
)

GOOD = [
    row_bytes(
        {
            "@key": f"rec_{i:032x}",
            "@v": 1 + i % 3,
            "batch_id": f"CX-{i}",
            "score": i / 7,
            "count": i,
            "image_hash": f"{i * 7919:064x}e123",  # hex text with an 'e' and three digits
            "note": None,
        }
    )
    for i in range(40)
]
H = b'{"@key":"k1","@v":1,"x":'

# rows orjson refuses (or whose envelope is bad) that msgspec alone would accept, or
# that sit on the edge of a difference; each is refused by both checks
HOSTILE = [
    H + b"1e999}",
    H + b"-1e999}",
    H + b"1E+999}",
    H + b"1e0999}",
    H + b"2.5e308}",
    H + b"[1, 1e400]}",
    H + b'{"a":{"b":-7e1000}}}',
    H + b"0." + b"0" * 300 + b"1e999}",  # 1e698
    H + b"1" + b"0" * 400 + b"}",
    H + b"1" + b"0" * 330 + b".5}",
    H + b"NaN}",
    H + b"Infinity}",
    H + b"-Infinity}",
    H + b'"\xff"}',  # not UTF-8
    H + b'"\xed\xa0\x80"}',  # a surrogate in UTF-8
    H + b'"\\ud800"}',
    H + b"[" * 1100 + b"]" * 1100 + b"}",
    H + b"1}x",
    H + b"1,}",
    b'\xef\xbb\xbf{"@key":"k1","@v":1}',
    b'{"@key":"k1","@v":1.0}',
    b'{"@key":"k1","@v":true}',
    b'{"@key":"k1","@v":0}',
    b'{"@key":"k1","@v":-1}',
    b'{"@key":"k1","@v":9223372036854775808}',  # beyond the stored BIGINT
    b'{"@key":"k1","@v":18446744073709551616}',  # orjson: a float
    b'{"@key":"k1","@v":99999999999999999999999}',
    b'{"@key":"","@v":1}',
    b'{"@key":"' + b"k" * 129 + b'","@v":1}',
    b'{"@key":"k1","@v":1,"@withdrawn":false}',
    b'{"@key":"k1","@v":1,"@withdrawn":true,"verdict":"ok"}',
    b"[1]",
    b"{}",
]

# rows both accept, on the edges: the fast path must not change their envelopes
ACCEPTED = [
    H + b"1e99}",
    H + b"1e-999}",
    H + b'"1e999"}',
    H + b'"x,1e999"}',
    H + b"1" + b"0" * 150 + b"}",
    H + b'"\\u00e9"}',
    H + b'"\xc3\xa9"}',
    H + b"[" * 200 + b"]" * 200 + b"}",
    b'{"@key":"a","@v":1,"@key":"b"}',  # the last member wins, in both
    b'{"@key":"k1","@v":1,"@v":2}',
    b'{"@key":"k1","@v":9223372036854775807}',
    H + b"18446744073709551616}",
    H + b"-0}",
    b'{"@key":"k1","@v":1,"@withdrawn":null}',
    b'{"@key":"' + b"\\u00e9" * 128 + b'","@v":1}',
    tombstone_bytes("k1", 3),
]


def exact(rows: list[bytes]) -> list[RecordMeta] | str:
    """What the row by row check says: the envelopes, or the first refusal's row."""
    for index, row in enumerate(rows):
        try:
            record_meta(row)
        except RecordEnvelopeError:
            return f"row seq {100 + index}:"
    return [record_meta(row) for row in rows]


def fast(rows: list[bytes]) -> list[RecordMeta] | str:
    try:
        return record_metas(rows, list(range(100, 100 + len(rows))))
    except RecordEnvelopeError as exc:
        return str(exc).split(":", 1)[0] + ":"


@pytest.mark.parametrize("bad", HOSTILE, ids=lambda b: repr(b[:40]))
def test_a_hostile_row_among_good_ones_is_refused_naming_its_seq(bad: bytes) -> None:
    for at in (0, 17, len(GOOD)):
        rows = [*GOOD[:at], bad, *GOOD[at:]]
        assert exact(rows) == f"row seq {100 + at}:"
        assert fast(rows) == f"row seq {100 + at}:"


@pytest.mark.parametrize("row", ACCEPTED, ids=lambda b: repr(b[:40]))
def test_edge_rows_both_checks_accept_keep_their_envelopes(row: bytes) -> None:
    rows = [*GOOD, row]
    assert isinstance(exact(rows), list)
    assert fast(rows) == exact(rows)


def test_a_page_of_good_rows_takes_the_fast_path_and_reads_the_same() -> None:
    decoder = _row_decoder(GOOD[0])
    assert decoder is not None  # else this test would not test the fast path
    for row in GOOD:
        decoder.decode(row)
    assert record_metas(GOOD) == [record_meta(row) for row in GOOD]
    assert record_metas([]) == []


def test_the_fast_path_alone_refuses_numbers_beyond_a_double() -> None:
    """msgspec itself, typed as the page's first row, refuses the numbers orjson refuses
    (a skipped member would pass them), and nested values, which it leaves to orjson."""
    decoder = _row_decoder(GOOD[0])
    assert decoder is not None
    for value in (b"1e999", b"-2.5E+308", b"1" + b"0" * 400, b"NaN", b"Infinity"):
        row = b'{"@key":"k1","@v":1,"score":' + value + b"}"
        with pytest.raises((msgspec.ValidationError, msgspec.DecodeError)):
            decoder.decode(row)
        with pytest.raises(RecordEnvelopeError):
            record_meta(row)
    for value in (b"[1]", b'{"a":1}'):
        row = b'{"@key":"k1","@v":1,"score":' + value + b"}"
        with pytest.raises(msgspec.ValidationError):
            decoder.decode(row)
        assert record_metas([*GOOD, row])[-1] == record_meta(row)


def test_a_bad_number_is_named_by_its_field() -> None:
    row = b'{"@key":"k1","@v":1,"batch_id":"b","score":1e999,"z":1}'
    with pytest.raises(RecordEnvelopeError, match=r"row seq 7: .*'score'.*infinity"):
        record_metas([*GOOD, row], [*range(100, 100 + len(GOOD)), 7])
    with pytest.raises(RecordEnvelopeError, match=r"row seq 3: .*'score'"):
        record_metas([GOOD[0], b'{"@key":"k1","@v":1,"score":NaN}'], [2, 3])


def test_deeper_nesting_than_orjson_takes_is_refused_under_a_raised_recursion_limit() -> None:
    """msgspec's own depth limit is Python's recursion limit: raised past orjson's 1024,
    a deep row must still be refused (the page type takes no nesting at all)."""
    row = H + b"[" * 1100 + b"]" * 1100 + b"}"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(5000)
    try:
        assert fast([*GOOD, row]) == f"row seq {100 + len(GOOD)}:"
    finally:
        sys.setrecursionlimit(limit)


_NOISE = st.sampled_from(
    [b"e", b"E", b"9", b"0", b"+", b"-", b".", b",", b":", b'"', b"\\", b"{", b"}", b"[",
     b"]", b" ", b"\xff", b"\xc3", b"n", b"u", b"1e999", b"NaN", b"@withdrawn", b"true"]
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    row=st.sampled_from([*GOOD[:8], tombstone_bytes("k9", 2)]),
    edits=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 2), _NOISE), min_size=1, max_size=4
    ),
)
def test_damaged_rows_get_the_same_answer_from_both_checks(
    row: bytes, edits: list[tuple[int, int, bytes]]
) -> None:
    data = bytearray(row)
    for where, cut, noise in edits:
        at = where % (len(data) + 1)
        data[at : at + cut] = noise
    damaged = bytes(data).replace(b"\n", b" ")
    rows = [*GOOD[:5], damaged, *GOOD[5:10]]
    assert fast(rows) == exact(rows)
