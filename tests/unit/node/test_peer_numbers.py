"""Numbers a peer controls in its replies and stream data are read exactly or refused.

A provider writes the positions of a live stream's rows, the times of its replies and
events, and the offsets and order indexes of a DSP batch. Before, each was read loosely
where the consumer decoded it: ``int`` made ``"-5"``, ``"1_000"``, ``" 7 "`` and
``"٣"`` seqs (stored), a position beyond 64 bits an OverflowError in the store; a time
of ±2**62 or the year 10000 an OverflowError; a batch offset of 2.9, ``true`` or
``"2"`` 2, 1 and 2, and an order index of -1 the last order. Each is now refused where
it is decoded, with a wire-format error naming the field. (The consumer's whole path,
against a real rogue provider, is tests/integration/dsp/test_provider_numbers.py.)
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from qdspace.connector.contract_errors import TransferCursorError, TransferIntegrityError
from qdspace.connector.dsp_data import (
    DataPlaneFormatError,
    DataReader,
    LiveRows,
    batch_bytes,
    live_bytes,
)
from qdspace.connector.transfer_wire import BatchRow, Checkpoint, RowBatch, row_seqs
from qdspace.node.errors import WireFormatError
from qdspace.node.rpc import contracts_serde as serde
from qdspace.node.rpc import contracts_transfer_serde as transfer_serde
from qdspace.protocols.v1 import negotiation_pb2, subscription_pb2, transfer_pb2

#: positions that name no row, each read as one before (or raising in the store)
NOT_ROWS = ["-5", "1_000", " 7 ", "\u0663", "99999999999999999999", str(2**63), "", "+1", "0x1"]
#: the first and the last microsecond of the years 1 to 9999, since the epoch
MIN_US, MAX_US = -62_135_596_800_000_000, 253_402_300_799_999_999
#: times no `datetime` holds: ±2**62 µs, the first microsecond of the year 10000, year 0
NOT_TIMES = [2**62, -(2**62), MAX_US + 1, MIN_US - 1, 2**63 - 1, -(2**63)]


# ------------------------------------------------------------------- positions


def test_row_positions_are_row_ids() -> None:
    assert row_seqs(["1", "0", "42", str(2**63 - 1)]) == [1, 0, 42, 2**63 - 1]
    assert row_seqs([]) == []


@pytest.mark.parametrize("bad", NOT_ROWS)
def test_a_row_position_that_names_no_row_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(TransferCursorError, match=r"positions\[1\]: position .* is not a view"):
        row_seqs(["3", bad])


@pytest.mark.parametrize("bad", NOT_ROWS)
def test_a_stream_event_with_such_a_position_is_a_wire_format_error(bad: str) -> None:
    event = subscription_pb2.SubscriptionEvent(
        subscription_id="sub-1",
        rows=[transfer_pb2.Row(json=b'{"a":1}', order_id="PO-1")] * 2,
        positions=["7", bad],
        sent_at_unix_us=1_764_655_200_000_000,
    )
    with pytest.raises(WireFormatError, match=r"positions\[1\]"):
        transfer_serde.stream_event_from_proto(event)


# ----------------------------------------------------------------------- times


def test_the_times_a_datetime_holds_are_read() -> None:
    assert serde.datetime_from_us(MAX_US) == datetime.max.replace(tzinfo=UTC)
    assert serde.datetime_from_us(MIN_US) == datetime.min.replace(tzinfo=UTC)
    assert serde.datetime_from_us(0) == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("bad", NOT_TIMES)
def test_a_time_no_datetime_holds_is_a_wire_format_error_naming_the_field(bad: int) -> None:
    with pytest.raises(WireFormatError, match="not a time between the years 1 and 9999"):
        serde.datetime_from_us(bad)
    reply = negotiation_pb2.NegotiationMessage(
        message_id="n:p1", negotiation_id="n", sender_id="cellex", at_unix_us=bad
    )
    reply.termination.reason = "x"
    with pytest.raises(WireFormatError, match="at_unix_us is"):
        serde.negotiation_message_from_proto(reply)
    message = transfer_pb2.TransferMessage(
        message_id="t:p1", transfer_id="t", sender_id="cellex", at_unix_us=bad
    )
    message.termination.reason = "x"
    with pytest.raises(WireFormatError, match="at_unix_us is"):
        transfer_serde.transfer_message_from_proto(message)
    event = subscription_pb2.SubscriptionEvent(subscription_id="sub-1", sent_at_unix_us=bad)
    with pytest.raises(WireFormatError, match="sent_at_unix_us is"):
        transfer_serde.stream_event_from_proto(event)


# ------------------------------------------------------------ DSP data plane


def _header(rows: list[bytes], **change: object) -> bytes:
    """A batch header line of `rows` (one order, from the genesis of ``t1``), changed."""
    cp = Checkpoint.genesis("t1").extend(rows, "42")
    batch = RowBatch.of("t1", [BatchRow(r, "PO-1") for r in rows], cp, True)
    head = orjson.loads(batch_bytes(batch).split(b"\n", 1)[0])
    head["batch"].update(change)
    return orjson.dumps(head) + b"\n" + b"".join(r + b"\n" for r in rows)


def test_a_batch_header_as_the_node_writes_it_is_read() -> None:
    (batch,) = DataReader("t1").feed(_header([b'{"a":1}', b'{"b":2}']))
    assert isinstance(batch, RowBatch) and batch.checkpoint.offset == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"offset": 2.9}, "offset"),
        ({"offset": True}, "offset"),
        ({"offset": "2"}, "offset"),
        ({"offset": -1}, "offset"),
        ({"orders": ["PO-1", "PO-2"], "index": [-1, -2]}, r"index\[0\]"),
        ({"orders": ["PO-1", "PO-2"], "index": [True, False]}, r"index\[0\]"),
        ({"orders": ["PO-1", "PO-2"], "index": ["1", "0"]}, r"index\[0\]"),
        ({"orders": ["PO-1", "PO-2"], "index": [1.0, 0]}, r"index\[0\]"),
        ({"index": "01"}, "index is not a list"),
        ({"orders": "PO"}, "orders is not a list"),
        ({"position": "\u00b2"}, "is not a view cursor"),
        ({"position": "-1"}, "is not a view cursor"),
    ],
)
def test_a_batch_header_number_read_loosely_before_is_refused_naming_it(
    change: dict[str, object], field: str
) -> None:
    body = _header([b'{"a":1}', b'{"b":2}'], **change)
    with pytest.raises(DataPlaneFormatError, match=field):
        list(DataReader("t1").feed(body))


@pytest.mark.parametrize("bad", NOT_ROWS)
def test_a_live_group_with_a_position_that_names_no_row_is_refused(bad: str) -> None:
    body = live_bytes([BatchRow(b'{"a":1}', "PO-1"), BatchRow(b'{"b":2}', "PO-1")], ["5", bad])
    with pytest.raises(DataPlaneFormatError, match=r"positions\[1\]: position"):
        list(DataReader("t1").feed(body))
    (good,) = DataReader("t1").feed(live_bytes([BatchRow(b'{"a":1}', "PO-1")], ["5"]))
    assert good == LiveRows(("5",), (BatchRow(b'{"a":1}', "PO-1"),))


def test_a_row_batch_with_a_negative_order_index_is_refused() -> None:
    cp = Checkpoint.genesis("t1").extend([b"{}"])
    with pytest.raises(TransferIntegrityError, match="order index does not fit"):
        RowBatch("t1", b"{}", 1, ("PO-1", "PO-2"), (-1,), cp)
