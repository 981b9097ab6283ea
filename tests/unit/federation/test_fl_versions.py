"""Model versions: canonical bytes, signatures, parameter digests, chain and anchor checks."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from qdspace.federation.errors import ParamsError, VersionError
from qdspace.federation.params import params_digest, params_from_bytes, params_to_bytes
from qdspace.federation.versions import (
    LEDGER_KIND,
    ModelVersion,
    SignedVersion,
    describe,
    sign_version,
    verify_version,
)
from qdspace.ledger.leaves import Leaf
from qdspace.ledger.merkle import MerkleTree, verify_inclusion

COORDINATOR = SigningKey(bytes(range(32)))
JOB_DIGEST = bytes(32)
PARAMS = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
WHEN = datetime(2025, 11, 25, 12, 0, tzinfo=UTC)


def version(n: int, params: list[np.ndarray], parent: ModelVersion | None) -> ModelVersion:
    return describe(
        job_id="el-2025-1",
        job_digest=JOB_DIGEST,
        version=n,
        round_=n,
        model="el-cnn",
        params=params,
        parent=parent,
        members=["polycell", "cellex"],
        coordinator="sunarc",
        created_at=WHEN,
        epsilon=1.5,
        delta=1e-5,
    )


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.lists(
            st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=5
        ),
        min_size=1,
        max_size=4,
    )
)
def test_params_bytes_round_trip(tensors: list[list[float]]) -> None:
    params = [np.array(t, dtype=np.float32) for t in tensors]
    data = params_to_bytes(params)
    back = params_from_bytes(data)
    assert [b.tobytes() for b in back] == [p.tobytes() for p in params]
    assert params_digest(back) == params_digest(params)


def test_params_bytes_refuse_truncation_and_junk() -> None:
    data = params_to_bytes(PARAMS)
    with pytest.raises(ParamsError, match="body has"):
        params_from_bytes(data[:-1])
    with pytest.raises(ParamsError, match="magic"):
        params_from_bytes(b"junk" + data)


def test_record_round_trips_in_canonical_form() -> None:
    v0 = version(1, PARAMS, None)
    assert ModelVersion.from_bytes(v0.canonical_bytes()) == v0
    assert v0.members == ("cellex", "polycell")
    with pytest.raises(VersionError, match="canonical"):
        ModelVersion.from_bytes(v0.canonical_bytes().replace(b",", b", ", 1))
    with pytest.raises(VersionError, match="cannot follow"):
        version(3, PARAMS, v0)


def test_member_accepts_a_signed_anchored_version_and_rejects_forgeries() -> None:
    v1 = version(1, PARAMS, None)
    signed = sign_version(v1, COORDINATOR)
    key = COORDINATOR.verify_key
    checks = {"job_id": "el-2025-1", "job_digest": JOB_DIGEST}
    assert verify_version(signed, key, PARAMS, **checks) == v1

    with pytest.raises(VersionError, match="not signed by the job's coordinator"):
        verify_version(sign_version(v1, SigningKey.generate()), key, PARAMS, **checks)
    tampered = SignedVersion(signed.record.replace(b"cellex", b"mallor"), signed.signature)
    with pytest.raises(VersionError, match="not signed"):
        verify_version(tampered, key, PARAMS, **checks)
    other = [PARAMS[0] + 1, PARAMS[1]]
    with pytest.raises(VersionError, match="do not match"):
        verify_version(signed, key, other, **checks)
    with pytest.raises(VersionError, match="other terms"):
        verify_version(signed, key, PARAMS, job_id="el-2025-1", job_digest=b"\x01" * 32)

    v2 = version(2, other, v1)
    signed2 = sign_version(v2, COORDINATOR)
    assert verify_version(signed2, key, other, parent=v1, **checks) == v2
    skipped = sign_version(replace(v2, parent_digest=bytes(32)), COORDINATOR)
    with pytest.raises(VersionError, match="does not extend"):
        verify_version(skipped, key, other, parent=v1, **checks)


def test_anchor_check_uses_a_ledger_inclusion_proof() -> None:
    v1 = version(1, PARAMS, None)
    signed = sign_version(v1, COORDINATOR)
    leaves = [Leaf.of("agreement", "a-1", b"x"), Leaf.of(LEDGER_KIND, v1.ledger_ref, signed.record)]
    tree = MerkleTree.from_leaf_hashes([leaf.hash() for leaf in leaves])
    anchored_roots = {tree.root}

    def anchored(kind: str, ref: str, record: bytes) -> bool:
        leaf = Leaf.of(kind, ref, record).hash()
        hashes = [lf.hash() for lf in leaves]
        if leaf not in hashes:
            return False
        i = hashes.index(leaf)
        path = tree.audit_path(i)
        return verify_inclusion(leaf, i, tree.size, path, tree.root) and tree.root in anchored_roots

    checks = {"job_id": "el-2025-1", "job_digest": JOB_DIGEST}
    assert verify_version(signed, COORDINATOR.verify_key, PARAMS, anchored=anchored, **checks)
    unanchored = sign_version(replace(v1, epsilon=2.0), COORDINATOR)
    with pytest.raises(VersionError, match="not anchored"):
        verify_version(unanchored, COORDINATOR.verify_key, PARAMS, anchored=anchored, **checks)
