"""Global model versions: canonical bytes, the coordinator's Ed25519 signature, the anchor.

Every global model a coordinator publishes is described by a ``ModelVersion`` (job,
round, digest of the parameters, digest of the previous version, contributing
members, privacy spent). Its canonical bytes are signed by the coordinator and
anchored on the ledger as a ``model_version`` leaf, so a member (or an auditor)
can check that the weights it is about to hot-swap are exactly the ones the
coordinator published and recorded, and that versions form an unbroken chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from numpy.typing import NDArray

from qdspace.federation.errors import VersionError
from qdspace.federation.params import params_digest
from qdspace.util.json_depth import loads as bounded_json

LEDGER_KIND = "model_version"
GENESIS_PARENT = bytes(32)
_DOMAIN = "qdspace/model-version/v1"

#: ``(kind, ref_id, record_bytes) -> anchored?`` supplied by the node (ledger proof + chain).
AnchorCheck = Callable[[str, str, bytes], bool]


def _utc(value: datetime) -> str:
    if value.tzinfo is None:
        raise VersionError("model version timestamp has no time zone")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class ModelVersion:
    """What one global model version claims; signed and anchored as canonical JSON."""

    job_id: str
    job_digest: bytes
    version: int
    round: int
    model: str
    params_digest: bytes
    parent_digest: bytes
    members: tuple[str, ...]
    coordinator: str
    created_at: datetime
    epsilon: float | None = None
    delta: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": _DOMAIN,
            "job_id": self.job_id,
            "job_digest": self.job_digest.hex(),
            "version": self.version,
            "round": self.round,
            "model": self.model,
            "params_sha256": self.params_digest.hex(),
            "parent": self.parent_digest.hex(),
            "members": sorted(self.members),
            "coordinator": self.coordinator,
            "created_at": _utc(self.created_at),
            "epsilon": self.epsilon,
            "delta": self.delta,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelVersion:
        try:
            if data["domain"] != _DOMAIN:
                raise VersionError(f"model version domain {data['domain']!r} is not {_DOMAIN}")
            return cls(
                job_id=str(data["job_id"]),
                job_digest=bytes.fromhex(data["job_digest"]),
                version=int(data["version"]),
                round=int(data["round"]),
                model=str(data["model"]),
                params_digest=bytes.fromhex(data["params_sha256"]),
                parent_digest=bytes.fromhex(data["parent"]),
                members=tuple(str(m) for m in data["members"]),
                coordinator=str(data["coordinator"]),
                created_at=datetime.fromisoformat(data["created_at"].replace("Z", "+00:00")),
                epsilon=None if data["epsilon"] is None else float(data["epsilon"]),
                delta=None if data["delta"] is None else float(data["delta"]),
            )
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            if isinstance(exc, VersionError):
                raise
            raise VersionError(f"model version record is not valid: {exc!r}") from exc

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelVersion:
        try:
            parsed = bounded_json(data)
        except ValueError as exc:
            raise VersionError("model version record is not JSON") from exc
        version = cls.from_dict(parsed)
        if version.canonical_bytes() != data:
            raise VersionError("model version record is not in canonical form")
        return version

    def digest(self) -> bytes:
        """SHA-256 of the canonical bytes: what the next version names as its parent."""
        return hashlib.sha256(self.canonical_bytes()).digest()

    @property
    def ledger_ref(self) -> str:
        """The ledger reference id of this version's leaf."""
        return f"{self.job_id}/v{self.version}"


@dataclass(frozen=True, slots=True)
class SignedVersion:
    """A version record with the coordinator's detached Ed25519 signature."""

    record: bytes
    signature: bytes

    @property
    def version(self) -> ModelVersion:
        return ModelVersion.from_bytes(self.record)


def sign_version(version: ModelVersion, key: SigningKey) -> SignedVersion:
    record = version.canonical_bytes()
    return SignedVersion(record, key.sign(record).signature)


def describe(
    *,
    job_id: str,
    job_digest: bytes,
    version: int,
    round_: int,
    model: str,
    params: Sequence[NDArray[np.float32]],
    parent: ModelVersion | None,
    members: Sequence[str],
    coordinator: str,
    created_at: datetime,
    epsilon: float | None = None,
    delta: float | None = None,
    digest: bytes | None = None,
) -> ModelVersion:
    """The record of a new global version; ``parent`` is the version it was trained from.

    ``digest``: the SHA-256 of ``params``' canonical bytes when the caller already
    hashed them (it is computed otherwise).
    """
    if parent is not None and parent.version + 1 != version:
        raise VersionError(f"version {version} cannot follow version {parent.version}")
    return ModelVersion(
        job_id,
        job_digest,
        version,
        round_,
        model,
        params_digest(params) if digest is None else digest,
        GENESIS_PARENT if parent is None else parent.digest(),
        tuple(sorted(members)),
        coordinator,
        created_at,
        epsilon,
        delta,
    )


def verify_version(
    signed: SignedVersion,
    coordinator_key: VerifyKey,
    params: Sequence[NDArray[np.float32]],
    *,
    job_id: str,
    job_digest: bytes,
    parent: ModelVersion | None = None,
    anchored: AnchorCheck | None = None,
    digest: bytes | None = None,
) -> ModelVersion:
    """Everything a member checks before hot-swapping a global model; raises ``VersionError``.

    The signature must verify under the coordinator key the member already knows
    (from the job agreement, never from the message), the record must be for this
    job's terms, the parameters must hash to what it claims, it must extend the
    member's current version, and, when ``anchored`` is given, the ledger must hold it.
    ``digest``: the SHA-256 the caller computed over the exact bytes ``params`` were
    parsed from (saves hashing a 50 MB model twice); computed from ``params`` otherwise.
    """
    try:
        coordinator_key.verify(signed.record, signed.signature)
    except BadSignatureError as exc:
        raise VersionError("model version is not signed by the job's coordinator") from exc
    version = signed.version
    if version.job_id != job_id or version.job_digest != job_digest:
        raise VersionError(f"model version is for job {version.job_id} or other terms")
    actual = params_digest(params) if digest is None else digest
    if actual != version.params_digest:
        raise VersionError(f"parameters do not match version {version.version}'s digest")
    if parent is not None and (
        version.parent_digest != parent.digest() or version.version != parent.version + 1
    ):
        raise VersionError(
            f"version {version.version} does not extend the current version {parent.version}"
        )
    if anchored is not None and not anchored(LEDGER_KIND, version.ledger_ref, signed.record):
        raise VersionError(f"version {version.ledger_ref} is not anchored on the ledger")
    return version
