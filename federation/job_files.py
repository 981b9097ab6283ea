"""A hosted job's directory and its signed model versions.

A ``JobHost`` (``host``) answers members; what it leaves on disk and what it signs is
kept here, so the rules for surviving a restart and for publishing a model are read
in one place. A job's directory holds ``job.json`` (the terms), ``checkpoint.bin``
(written between rounds by the coordinator, ``checkpoint``) and ``version.json``
(the latest signed version), so a coordinator restarted between rounds resumes
where it stopped.

Every global model the coordinator publishes is described by a ``ModelVersion``,
signed with the coordinator's Ed25519 key and handed to ``anchor`` (the node's
ledger, when it has one) as a ``model_version`` leaf.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from nacl.signing import SigningKey
from numpy.typing import NDArray

from qdspace.federation.chunks import DEFAULT_CHUNK_BYTES
from qdspace.federation.errors import CheckpointError, FederationError
from qdspace.federation.job import JobSpec
from qdspace.federation.params import (
    ChunkPrefix,
    Params,
    encode_vector_chunks,
    no_prefix,
    unflatten,
)
from qdspace.federation.rounds import Coordinator
from qdspace.federation.versions import (
    LEDGER_KIND,
    ModelVersion,
    SignedVersion,
    describe,
    sign_version,
)
from qdspace.util.files import write_atomic

logger = logging.getLogger("federation")

JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
JOB_FILE = "job.json"
CHECKPOINT_FILE = "checkpoint.bin"
VERSION_FILE = "version.json"

#: ``(kind, ref_id, record)``: called once per signed version; the node's ledger hook.
VersionAnchor = Callable[[str, str, bytes], None]


@dataclass(frozen=True, slots=True)
class Framing:
    """How a published version is cut for download: chunks of ``chunk_bytes`` of its
    canonical bytes, each in a message that starts with ``prefix(len)`` (the node's
    transport framing; bare data by default, as in-process callers want)."""

    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    prefix: ChunkPrefix = no_prefix


#: Bare chunks of ``DEFAULT_CHUNK_BYTES``.
BARE = Framing()


@dataclass(frozen=True, slots=True)
class Published:
    """A signed global version: the canonical bytes of its parameters, already in the
    download messages that carry them (``messages``; ``pieces`` are the canonical bytes'
    consecutive pieces within them), and their SHA-256."""

    signed: SignedVersion
    messages: tuple[bytes, ...]
    pieces: tuple[memoryview, ...]
    sha256: bytes

    @property
    def version(self) -> ModelVersion:
        return self.signed.version

    @property
    def payload(self) -> bytes:
        """The canonical bytes in one piece (a copy)."""
        return b"".join(self.pieces)


def check_job_id(job_id: str) -> None:
    if not JOB_ID.fullmatch(job_id):
        raise FederationError(
            f"job id {job_id!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )


def encoded(
    vector: NDArray[np.float32], job: JobSpec, framing: Framing
) -> tuple[tuple[bytes, ...], tuple[memoryview, ...], bytes]:
    """The canonical bytes of a global vector in their download messages, and their
    SHA-256 (one pass: each piece is hashed right after it is copied into its message)."""
    hasher = hashlib.sha256()
    messages, pieces = encode_vector_chunks(
        vector, job.shapes, chunk_bytes=framing.chunk_bytes, prefix=framing.prefix, hasher=hasher
    )
    return messages, pieces, hasher.digest()


def read_job_directory(directory: Path) -> tuple[JobSpec, SignedVersion]:
    """The terms and the latest signed version of a job directory."""
    try:
        job = JobSpec.from_dict(json.loads((directory / JOB_FILE).read_bytes()))
        saved = json.loads((directory / VERSION_FILE).read_text())
        signed = SignedVersion(bytes.fromhex(saved["record"]), bytes.fromhex(saved["signature"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"job directory {directory} cannot be read: {exc}") from exc
    return job, signed


def fsync_later(paths: Sequence[Path]) -> threading.Thread:
    """Flush written files (and their directory) to disk off the round's critical path;
    the thread doing it is returned (``save_checkpoint`` waits for it before the next
    checkpoint overwrites a slot).

    The checkpoint is written and renamed into place synchronously, which is what a
    restarted coordinator process needs; only the flush to stable storage (for a
    power loss) happens in the background.
    """

    def flush() -> None:
        for path in paths:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone meanwhile (the job's directory was removed)
            try:
                os.fsync(fd)
            except OSError as exc:
                logger.warning("federation: fsync of %s failed: %s", path, exc)
            finally:
                os.close(fd)

    thread = threading.Thread(target=flush, name="federation-fsync", daemon=True)
    thread.start()
    return thread


#: The background flush of each job directory's last checkpoint.
_FLUSHING: dict[Path, threading.Thread] = {}


def save_checkpoint(directory: Path, coordinator: Coordinator) -> None:
    """The coordinator's checkpoint in place now, flushed to stable storage later.

    Two slots (``checkpoint.write_checkpoint(..., keep_previous=True)``): the new
    checkpoint overwrites the one before last. That one is overwritten only once the
    last checkpoint's flush has ended (nearly always long before), so after a power
    loss one flushed checkpoint is still on disk.
    """
    path = directory / CHECKPOINT_FILE
    last = _FLUSHING.pop(directory, None)
    if last is not None:
        last.join()
    coordinator.checkpoint(path, fsync=False, keep_previous=True)
    _FLUSHING[directory] = fsync_later((path, directory))


def initial_version(
    job: JobSpec,
    initial: Sequence[NDArray[np.float32]],
    coordinator: Coordinator,
    signer: SigningKey,
    framing: Framing,
) -> Published:
    """Version 0 of a new job: its initial model, signed."""
    messages, pieces, digest = encoded(coordinator.global_vector, job, framing)
    record = describe(
        job_id=job.job_id,
        job_digest=job.digest(),
        version=0,
        round_=0,
        model=job.model,
        params=initial,
        parent=None,
        members=(),
        coordinator=job.coordinator,
        created_at=datetime.now(UTC),
        digest=digest,
    )
    return Published(sign_version(record, signer), messages, pieces, digest)


def next_version(
    coordinator: Coordinator, parent: ModelVersion, signer: SigningKey, framing: Framing
) -> Published:
    """The coordinator's current global model as the version after ``parent``, signed."""
    job = coordinator.job
    params: Params = unflatten(coordinator.global_vector, job.shapes, copy=False)
    messages, pieces, digest = encoded(coordinator.global_vector, job, framing)
    record = next(r for r in reversed(coordinator.history) if r.version == coordinator.version)
    spent = None
    if job.dp is not None:
        spent = (record.epsilon, job.dp.delta)
    version = describe(
        job_id=job.job_id,
        job_digest=job.digest(),
        version=coordinator.version,
        round_=record.round,
        model=job.model,
        params=params,
        parent=parent,
        members=record.members,
        coordinator=job.coordinator,
        created_at=datetime.now(UTC),
        epsilon=None if spent is None else spent[0],
        delta=None if spent is None else spent[1],
        digest=digest,
    )
    return Published(sign_version(version, signer), messages, pieces, digest)


def announce(directory: Path, published: Published, anchor: VersionAnchor | None) -> None:
    """Write ``version.json`` and hand the signed record to the ledger hook, if any."""
    signed = published.signed
    saved = {"record": signed.record.hex(), "signature": signed.signature.hex()}
    path = directory / VERSION_FILE
    write_atomic(path, json.dumps(saved).encode(), mode=0o644)
    if anchor is None:
        return
    version = published.version
    try:
        anchor(LEDGER_KIND, version.ledger_ref, signed.record)
    except Exception:  # the ledger queues durably; a failing hook must not stop the round
        logger.exception("federation: anchoring %s failed", version.ledger_ref)
