"""RFC 6962 Merkle trees: known vectors, a recursive reference, and property-tested proofs."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qdspace.ledger.errors import LeafIndexError, MerkleError
from qdspace.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MerkleTree,
    leaf_hash,
    leaf_hashes,
    node_hash,
    proof_length,
    root_of,
    verify_inclusion,
)

# The leaves and tree heads of the Certificate Transparency test vectors (RFC 6962 trees).
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    bytes(range(0x50, 0x58)),
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def ref_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 MTH, written as the recursive definition."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + ref_root(leaves[:k]) + ref_root(leaves[k:])).digest()


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1 PATH(m, D[n]), bottom first."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_root(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_root(leaves[:k])]


@pytest.mark.parametrize("size", range(1, len(CT_LEAVES) + 1))
def test_certificate_transparency_vectors(size: int) -> None:
    tree = MerkleTree.from_leaves(CT_LEAVES[:size])
    assert tree.root.hex() == CT_ROOTS[size - 1]
    assert root_of(leaf_hashes(CT_LEAVES[:size])).hex() == CT_ROOTS[size - 1]


def test_empty_tree_and_domain_separation() -> None:
    assert root_of([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    # an interior node's preimage, replayed as a leaf, hashes differently
    assert leaf_hash(a + b) != node_hash(a, b)
    with pytest.raises(MerkleError, match="at least one leaf"):
        MerkleTree.from_leaf_hashes([])
    with pytest.raises(MerkleError, match="leaf hash 1 has 3 bytes"):
        MerkleTree.from_leaf_hashes([a, b"abc"])
    with pytest.raises(MerkleError, match="33 bytes, not a multiple of 32"):
        MerkleTree.from_packed(a + b"x")
    assert MerkleTree.from_packed(a + b).root == root_of([a, b]) == node_hash(a, b)
    assert MerkleTree.from_packed(a + b).leaf(1) == b


def test_index_outside_tree_names_the_size() -> None:
    tree = MerkleTree.from_leaves([b"x", b"y", b"z"])
    with pytest.raises(LeafIndexError, match="leaf index 3 outside a tree of 3 leaves"):
        tree.audit_path(3)
    with pytest.raises(IndexError):
        proof_length(3, -1)


leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=70)


@settings(max_examples=150, deadline=None)
@given(leaf_lists)
def test_root_matches_recursive_definition(leaves: list[bytes]) -> None:
    tree = MerkleTree.from_leaves(leaves)
    assert tree.root == ref_root(leaves) == root_of(leaf_hashes(leaves))
    assert tree.size == len(leaves)


@settings(max_examples=150, deadline=None)
@given(leaf_lists, st.data())
def test_every_audit_path_matches_rfc_and_verifies(
    leaves: list[bytes], data: st.DataObject
) -> None:
    tree = MerkleTree.from_leaves(leaves)
    index = data.draw(st.integers(0, len(leaves) - 1), label="index")
    path = tree.audit_path(index)
    assert list(path) == ref_path(index, leaves)
    assert len(path) == proof_length(len(leaves), index)
    assert verify_inclusion(leaf_hash(leaves[index]), index, len(leaves), path, tree.root)


@settings(max_examples=200, deadline=None)
@given(leaf_lists, st.data())
def test_any_tampering_fails_verification(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    tree = MerkleTree.from_leaves(leaves)
    index = data.draw(st.integers(0, n - 1), label="index")
    leaf, path, root = leaf_hash(leaves[index]), list(tree.audit_path(index)), tree.root
    what = data.draw(st.sampled_from(["leaf", "root", "path", "index", "drop", "add"]))
    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1), label="bit")

    def flip(h: bytes) -> bytes:
        b = bytearray(h)
        b[bit // 8] ^= 1 << (bit % 8)
        return bytes(b)

    if what == "leaf":
        leaf = flip(leaf)
    elif what == "root":
        root = flip(root)
    elif what == "path":
        if not path:
            leaf = flip(leaf)
        else:
            pos = data.draw(st.integers(0, len(path) - 1), label="pos")
            path[pos] = flip(path[pos])
    elif what == "index":
        other = data.draw(st.integers(0, n), label="other")
        if other < n and leaves[other] == leaves[index]:
            other = n  # outside the tree; the same leaf elsewhere would verify legitimately
        index = other
    elif what == "drop":
        if not path:
            root = flip(root)
        else:
            path.pop(data.draw(st.integers(0, len(path) - 1), label="pos"))
    else:
        path.append(data.draw(st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE), label="extra"))
    assert not verify_inclusion(leaf, index, n, path, root)


def test_tree_size_alone_is_not_bound_by_the_path() -> None:
    """Why the contract stores the leaf count: RFC 6962 paths do not pin the tree size.

    A 5-leaf tree's path for leaf 0 also "verifies" for a claimed size of 6, so a verifier
    must take the size from the chain (``lookup(root).leafCount``), never from the proof alone.
    """
    leaves = [bytes([i]) for i in range(5)]
    tree = MerkleTree.from_leaves(leaves)
    path = tree.audit_path(0)
    assert verify_inclusion(leaf_hash(leaves[0]), 0, 5, path, tree.root)
    assert verify_inclusion(leaf_hash(leaves[0]), 0, 6, path, tree.root)


def test_malformed_inputs_are_rejected_not_raised() -> None:
    tree = MerkleTree.from_leaves([b"a", b"b", b"c"])
    leaf, path = leaf_hash(b"a"), tree.audit_path(0)
    assert not verify_inclusion(leaf[:31], 0, 3, path, tree.root)
    assert not verify_inclusion(leaf, 0, 3, path, tree.root + b"\x00")
    assert not verify_inclusion(leaf, 0, 3, [path[0][:16], path[1]], tree.root)
    assert not verify_inclusion(leaf, -1, 3, path, tree.root)
    assert not verify_inclusion(leaf, 0, 0, path, tree.root)


def test_proof_length_at_one_million_leaves() -> None:
    assert max(proof_length(1_000_000, i) for i in (0, 499_999, 999_999)) == 20
