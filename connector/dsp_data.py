"""The bytes of the DSP binding's HTTP data plane: NDJSON groups of a header and its rows.

Why not JSON pages: the transfer's digest chain (`connector.transfer_wire`) covers the
exact bytes of each row, and a row re-encoded by a JSON parser may not be the same
bytes. So a response of ``GET /data/<pid>`` is newline-delimited: a header line, then
exactly the rows it announces, each the row's own wire bytes (JSON never holds a raw
newline). Three headers:

- ``{"batch": {...}}``: a batch of a pull, with its checkpoint (offset, digest, view
  position), the orders of its rows and whether it is the last (`RowBatch`);
- ``{"event": {"positions": [...], "orders": [...]}}``: rows of a live stream, each with
  its stream position and order;
- ``{"heartbeat": true}``: a live stream with nothing new (no rows follow).

`DataReader` parses such a body incrementally and bounds everything a hostile provider
could inflate (line length, rows per group, orders), so the consumer never holds more
than one group. Pure: the transports are `node.dsp`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from qdspace.connector.contract_errors import TransferCursorError, TransferIntegrityError
from qdspace.connector.transfer_wire import (
    BatchRow,
    Checkpoint,
    RowBatch,
    position_refusal,
    row_seqs,
)

MAX_LINE = 4 * 1024 * 1024
MAX_GROUP_ROWS = 100_000
#: the bytes of one group's rows held until its last row arrives (a group is checked and
#: committed whole, so a provider could otherwise make the consumer hold 100,000 lines of
#: 4 MiB each); the node's own batches are at most 10,000 rows of a few hundred bytes
MAX_GROUP_BYTES = 64 * 1024 * 1024
MAX_ORDERS = 10_000
MAX_TEXT = 128
HEARTBEAT = b'{"heartbeat":true}\n'


class DataPlaneFormatError(TransferIntegrityError):
    """A data-plane body that is not the format above (a broken or hostile provider)."""


@dataclass(frozen=True)
class LiveRows:
    """Rows of a live stream: each row with its stream position (empty: a heartbeat)."""

    positions: tuple[str, ...]
    rows: tuple[BatchRow, ...]


# ------------------------------------------------------------------ writing


def batch_bytes(batch: RowBatch) -> bytes:
    """One pull batch: its header line and its rows."""
    cp = batch.checkpoint
    header = {
        "batch": {
            "count": batch.count,
            "orders": list(batch.order_ids),
            "index": list(batch.order_index),
            "offset": cp.offset,
            "digest": cp.digest.hex(),
            "position": cp.position,
            "last": batch.last,
        }
    }
    head = orjson.dumps(header) + b"\n"
    return head + batch.payload + b"\n" if batch.count else head


def live_bytes(rows: Sequence[BatchRow], positions: Sequence[str]) -> bytes:
    """One group of live rows (see `LiveRows`)."""
    header = {"event": {"positions": list(positions), "orders": [r.order_id for r in rows]}}
    return orjson.dumps(header) + b"\n" + b"".join(r.payload + b"\n" for r in rows)


# ------------------------------------------------------------------ reading


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise DataPlaneFormatError(f"data plane: {where} is not a string of <= {MAX_TEXT}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise DataPlaneFormatError(f"data plane: {where} is not a list")
    return value


def _count(value: Any, where: str) -> int:
    """A whole number >= 0 as sent: a JSON integer, nothing read as one (``int`` made
    2.9 an offset of 2, ``true`` 1 and ``"2"`` 2, and -1 picked the last order)."""
    if type(value) is not int or value < 0:  # (bool is not int here)
        raise DataPlaneFormatError(
            f"data plane: {where} is {repr(value)[:40]}, not an integer >= 0"
        )
    return value


def _batch(transfer_id: str, head: Any, rows: list[bytes]) -> RowBatch:
    try:
        orders = tuple(_text(o, "an order") for o in _list(head["orders"], "orders")[:MAX_ORDERS])
        index = tuple(_count(i, f"index[{n}]") for n, i in enumerate(_list(head["index"], "index")))
        offset = _count(head["offset"], "offset")
        position = _text(head["position"], "the position")
        if (why := position_refusal(position)) is not None:
            raise DataPlaneFormatError(f"data plane: a batch's checkpoint: {why}")
        cp = Checkpoint(offset, bytes.fromhex(head["digest"]), position)
        return RowBatch(
            transfer_id, b"\n".join(rows), len(rows), orders, index, cp, head["last"] is True
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataPlaneFormatError(f"data plane: a malformed batch header: {exc}") from None


def _live(head: Any, rows: list[bytes]) -> LiveRows:
    try:
        positions = tuple(_text(p, "a position") for p in _list(head["positions"], "positions"))
        orders = [_text(o, "an order") for o in _list(head["orders"], "orders")]
    except KeyError as exc:
        raise DataPlaneFormatError(f"data plane: a malformed event header: {exc}") from None
    if not (len(positions) == len(orders) == len(rows)):
        raise DataPlaneFormatError("data plane: an event's positions, orders and rows differ")
    try:
        row_seqs(positions)
    except TransferCursorError as exc:
        raise DataPlaneFormatError(f"data plane: an event's {exc}") from None
    return LiveRows(positions, tuple(map(BatchRow, rows, orders)))


class DataReader:
    """Incremental reader of a data-plane body: feed chunks, take whole groups."""

    def __init__(self, transfer_id: str) -> None:
        self.transfer_id = transfer_id
        self._buffer = bytearray()
        self._head: Any = None
        self._want = 0
        self._rows: list[bytes] = []
        self._bytes = 0  # of the open group's rows

    def feed(self, chunk: bytes) -> Iterator[RowBatch | LiveRows]:
        self._buffer += chunk
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    raise DataPlaneFormatError(f"data plane: a line over {MAX_LINE} bytes")
                return
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            group = self._line(line)
            if group is not None:
                yield group

    def _line(self, line: bytes) -> RowBatch | LiveRows | None:
        if self._head is not None:
            self._rows.append(line)
            self._bytes += len(line)
            if self._bytes > MAX_GROUP_BYTES:
                raise DataPlaneFormatError(f"data plane: a group over {MAX_GROUP_BYTES} bytes")
            return self._close() if len(self._rows) == self._want else None
        try:
            header = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise DataPlaneFormatError("data plane: a header line is not JSON") from None
        if not isinstance(header, dict) or len(header) != 1:
            raise DataPlaneFormatError("data plane: a header is an object with one key")
        if header.get("heartbeat") is True:
            return LiveRows((), ())
        head = header.get("batch", header.get("event"))
        if not isinstance(head, dict):
            raise DataPlaneFormatError("data plane: unknown header")
        if "batch" in header:
            count = head.get("count")
        else:
            positions = head.get("positions")
            count = len(positions) if isinstance(positions, list) else None
        if type(count) is not int or not 0 <= count <= MAX_GROUP_ROWS:
            raise DataPlaneFormatError(f"data plane: a group of {count!r} rows")
        self._head, self._want, self._rows, self._bytes = header, count, [], 0
        return self._close() if count == 0 else None

    def _close(self) -> RowBatch | LiveRows:
        header, rows = self._head, self._rows
        self._head, self._want, self._rows = None, 0, []
        if "batch" in header:
            return _batch(self.transfer_id, header["batch"], rows)
        return _live(header["event"], rows)

    def finish(self) -> None:
        """The body ended: nothing may be left half-read."""
        if self._buffer or self._head is not None:
            raise DataPlaneFormatError("data plane: the body ended inside a group")
