"""List Merkle tree (transactions root, weight-chunk root): RFC 6962 shape, proofs, tampering."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltachain.crypto.hashing import ZERO_HASH, Hash32
from deltachain.crypto.merkle import (
    leaf_hash,
    merkle_proof,
    merkle_proof_length,
    merkle_root,
    merkle_root_of_leaf_hashes,
    verify_merkle_proof,
)
from deltachain.errors import ProofError


def rfc6962_root(items: list[bytes]) -> bytes:
    """The recursive definition (split at the largest power of two < n), written independently."""
    if len(items) == 1:
        return hashlib.sha256(b"\x02" + items[0]).digest()
    k = 1
    while k * 2 < len(items):
        k *= 2
    return hashlib.sha256(b"\x03" + rfc6962_root(items[:k]) + rfc6962_root(items[k:])).digest()


def items_of(n: int) -> list[bytes]:
    return [b"item-%d" % i for i in range(n)]


def test_empty_list() -> None:
    assert merkle_root([]) == ZERO_HASH
    assert merkle_root_of_leaf_hashes([]) == ZERO_HASH
    with pytest.raises(ProofError):
        verify_merkle_proof(ZERO_HASH, 0, 0, leaf_hash(b""), [])


def test_single_item_root_is_its_leaf_hash() -> None:
    assert merkle_root([b"tx"]) == leaf_hash(b"tx") == hashlib.sha256(b"\x02tx").digest()
    assert merkle_proof([leaf_hash(b"tx")], 0) == ()
    verify_merkle_proof(merkle_root([b"tx"]), 0, 1, leaf_hash(b"tx"), [])


def test_pinned_root() -> None:
    """Catches accidental changes to prefixes, split rule or leaf encoding (consensus)."""
    root = merkle_root([b"", b"a", b"abc", b"deltachain", b"\x00" * 32])
    assert root.hex() == "99dbfe0542e36b73540bfb3d0ee4a69a7b9b5d4c04dfeb5226317da7b501e9ec"
    assert merkle_root([b"tx"]).hex() == (
        "ed4f74ea26935c1c4c82db61d2335d8b8e954b76d9aaf7c073a60818d878bf58"
    )


@pytest.mark.parametrize("n", range(1, 34))
def test_proofs_for_every_index(n: int) -> None:
    items = items_of(n)
    leaves = [leaf_hash(x) for x in items]
    root = merkle_root(items)
    assert root == rfc6962_root(items) == merkle_root_of_leaf_hashes(leaves)
    max_len = (n - 1).bit_length()  # ceil(log2 n)
    for i in range(n):
        proof = merkle_proof(leaves, i)
        assert len(proof) == merkle_proof_length(i, n) <= max_len
        verify_merkle_proof(root, i, n, leaves[i], proof)

        with pytest.raises(ProofError):
            verify_merkle_proof(root, i, n, leaf_hash(b"forged"), proof)
        with pytest.raises(ProofError):
            verify_merkle_proof(Hash32(bytes(32)), i, n, leaves[i], proof)
        for j in range(len(proof)):
            tampered = list(proof)
            flipped = bytearray(tampered[j])
            flipped[31] ^= 0x80
            tampered[j] = Hash32(bytes(flipped))
            with pytest.raises(ProofError):
                verify_merkle_proof(root, i, n, leaves[i], tampered)
        with pytest.raises(ProofError):
            verify_merkle_proof(root, i, n, leaves[i], (*proof, leaves[0]))
        if proof:
            with pytest.raises(ProofError):
                verify_merkle_proof(root, i, n, leaves[i], proof[:-1])
        if merkle_proof_length(i, n + 1) != len(proof):
            with pytest.raises(ProofError):
                verify_merkle_proof(root, i, n + 1, leaves[i], proof)
        if n > 1:
            with pytest.raises(ProofError):
                verify_merkle_proof(root, (i + 1) % n, n, leaves[i], proof)


def test_index_out_of_range() -> None:
    leaves = [leaf_hash(x) for x in items_of(4)]
    root = merkle_root_of_leaf_hashes(leaves)
    proof = merkle_proof(leaves, 3)
    for index, count in [(4, 4), (-1, 4), (5, 4), (0, 0)]:
        with pytest.raises(ProofError, match="outside"):
            verify_merkle_proof(root, index, count, leaves[3], proof)
    with pytest.raises(IndexError):
        merkle_proof(leaves, 4)
    with pytest.raises(IndexError):
        merkle_proof(leaves, -1)


def test_bad_hash_lengths() -> None:
    leaves = [leaf_hash(x) for x in items_of(3)]
    root = merkle_root_of_leaf_hashes(leaves)
    proof = merkle_proof(leaves, 0)
    with pytest.raises(ProofError):
        verify_merkle_proof(root, 0, 3, Hash32(leaves[0][:31]), proof)
    with pytest.raises(ProofError):
        verify_merkle_proof(root, 0, 3, leaves[0], [Hash32(proof[0] + b"\x00"), proof[1]])
    with pytest.raises(ValueError, match="32 bytes"):
        merkle_root_of_leaf_hashes([Hash32(b"short")])


def test_count_is_not_committed_by_the_root() -> None:
    """Documented limit (as in RFC 6962): the count must come from elsewhere (header, model record).

    Index 0 of a 3-item list verifies as index 0 of a 4-item list whose last node is leaf 2.
    """
    leaves = [leaf_hash(x) for x in items_of(3)]
    root = merkle_root_of_leaf_hashes(leaves)
    verify_merkle_proof(root, 0, 4, leaves[0], merkle_proof(leaves, 0))


def test_second_preimage_leaf_vs_node() -> None:
    """An inner node's children cannot be passed off as a leaf item (distinct prefixes)."""
    items = items_of(2)
    root = merkle_root(items)
    fake_item = leaf_hash(items[0]) + leaf_hash(items[1])
    assert merkle_root([fake_item]) != root
    with pytest.raises(ProofError):
        verify_merkle_proof(root, 0, 1, leaf_hash(fake_item), [])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=16), min_size=1, max_size=300), st.data())
def test_matches_recursive_definition(items: list[bytes], data: st.DataObject) -> None:
    root = merkle_root(items)
    assert root == rfc6962_root(items)
    i = data.draw(st.integers(0, len(items) - 1))
    leaves = [leaf_hash(x) for x in items]
    verify_merkle_proof(root, i, len(items), leaves[i], merkle_proof(leaves, i))
