"""A py-evm key-value store that survives restarts: memory plus an append-only, fsynced journal.

py-evm keeps the embedded chain in a dict. This store also appends every committed write
to ``journal.bin`` as one checksummed frame per commit; on start the frames are replayed, and
a frame torn by a crash (short or with a bad checksum) is cut off, so the chain comes back as
it was at its last acknowledged request.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

from eth.db.backends.memory import MemoryDB

from qdspace.ledger.errors import LedgerError

_FRAME = struct.Struct(">Q32s")  # payload length, sha256 of payload
_RECORD = struct.Struct(">BII")  # op, key length, value length
_SET, _DELETE = 1, 2


class ChainStoreError(LedgerError):
    """The embedded chain's journal cannot be read or written."""


class JournaledMemoryDB(MemoryDB):
    """MemoryDB whose writes become durable on :meth:`commit`."""

    def __init__(self, path: Path) -> None:
        super().__init__({})
        self.path = path
        self._pending: list[bytes] = []
        self._replay()
        self._file = path.open("ab")

    @property
    def is_empty(self) -> bool:
        """True when nothing was ever committed (a fresh chain needs its genesis)."""
        return not self.kv_store

    def __setitem__(self, key: bytes, value: bytes) -> None:
        super().__setitem__(key, value)
        self._pending.append(_RECORD.pack(_SET, len(key), len(value)) + key + value)

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self._pending.append(_RECORD.pack(_DELETE, len(key), 0) + key)

    def commit(self) -> None:
        """Append the writes since the last commit as one frame and fsync it."""
        if not self._pending:
            return
        payload = b"".join(self._pending)
        self._pending.clear()
        try:
            self._file.write(_FRAME.pack(len(payload), hashlib.sha256(payload).digest()))
            self._file.write(payload)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise ChainStoreError(f"{self.path}: cannot write the chain journal: {exc}") from exc

    def close(self) -> None:
        """Commit what is pending and close the journal."""
        self.commit()
        self._file.close()

    def _replay(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        offset = 0
        while offset + _FRAME.size <= len(data):
            length, digest = _FRAME.unpack_from(data, offset)
            start, end = offset + _FRAME.size, offset + _FRAME.size + length
            if end > len(data) or hashlib.sha256(data[start:end]).digest() != digest:
                break
            self._apply(data[start:end])
            offset = end
        if offset != len(data):
            with self.path.open("r+b") as fh:  # drop a frame torn by a crash
                fh.truncate(offset)

    def _apply(self, payload: bytes) -> None:
        pos = 0
        while pos < len(payload):
            op, klen, vlen = _RECORD.unpack_from(payload, pos)
            pos += _RECORD.size
            key = payload[pos : pos + klen]
            pos += klen
            if op == _SET:
                self.kv_store[key] = payload[pos : pos + vlen]
                pos += vlen
            elif op == _DELETE:
                self.kv_store.pop(key, None)
            else:
                raise ChainStoreError(f"{self.path}: unknown journal record type {op}")
