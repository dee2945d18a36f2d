"""Binary Merkle tree over a list: the transactions root and the weight-chunk root (brief §5).

RFC 6962 shape (left subtree = the largest power of two strictly below n), with our SHA-256
domain prefixes instead of RFC 6962's 0x00/0x01 so a list leaf can never be read as a trie node:

* leaf  = ``sha256(0x02 ‖ item)``
* node  = ``sha256(0x03 ‖ left(32) ‖ right(32)``
* empty list root = ``ZERO_HASH`` (RFC 6962 would hash the empty string; we use one "empty" value
  across all our commitments).

That shape equals the bottom-up construction used here (pair neighbours level by level, carry an
odd last node up unchanged), which needs no recursion and gives proofs of at most
ceil(log2 n) hashes. Proofs are listed leaf first (RFC 9162 "inclusion path" order). The verifier
imports only hashlib, so a light client can check one weight chunk with O(log chunks) hashes.

As in RFC 6962 the root does not commit to the item count (index 0 of three items also verifies as
index 0 of four whose last node is item 2's leaf), so every root must travel with a count the
verifier already trusts: the header's transaction count, the model record's chunk count.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from deltachain.crypto.hashing import (
    PREFIX_LIST_LEAF,
    PREFIX_LIST_NODE,
    ZERO_HASH,
    Hash32,
    tagged_hash,
)
from deltachain.errors import ProofError

__all__ = [
    "leaf_hash",
    "merkle_proof",
    "merkle_proof_length",
    "merkle_root",
    "merkle_root_of_leaf_hashes",
    "verify_merkle_proof",
]

_sha256 = hashlib.sha256


def leaf_hash(item: bytes) -> Hash32:
    """Hash of one list item as a Merkle leaf (callers may cache it, e.g. per weight chunk)."""
    return tagged_hash(PREFIX_LIST_LEAF, item)


def _check_leaf_hashes(leaf_hashes: Sequence[bytes]) -> None:
    for h in leaf_hashes:
        if not isinstance(h, bytes) or len(h) != 32:
            raise ValueError("Merkle leaf hashes must be 32 bytes")


def _next_level(level: list[bytes]) -> list[bytes]:
    node = PREFIX_LIST_NODE
    nxt = [_sha256(node + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
    if len(level) & 1:
        nxt.append(level[-1])
    return nxt


def merkle_root_of_leaf_hashes(leaf_hashes: Sequence[Hash32]) -> Hash32:
    """Root over already-computed leaf hashes, so unchanged chunks need not be re-hashed.

    Raises ValueError if a leaf hash is not 32 bytes (a caller bug).
    """
    _check_leaf_hashes(leaf_hashes)
    if not leaf_hashes:
        return ZERO_HASH
    level: list[bytes] = list(leaf_hashes)
    while len(level) > 1:
        level = _next_level(level)
    return Hash32(level[0])


def merkle_root(items: Sequence[bytes]) -> Hash32:
    """Root over the items themselves (each hashed as a leaf); ZERO_HASH for an empty list."""
    return merkle_root_of_leaf_hashes([leaf_hash(item) for item in items])


def merkle_proof_length(index: int, count: int) -> int:
    """Exact number of hashes in the proof for leaf ``index`` of ``count`` (0 for a single leaf).

    Raises ProofError if ``index`` is not in ``range(count)``.
    """
    if not 0 <= index < count:
        raise ProofError(f"leaf index {index} is outside a list of {count} items")
    length = 0
    while count > 1:
        if index & 1 or index + 1 < count:
            length += 1
        index >>= 1
        count = (count + 1) >> 1
    return length


def merkle_proof(leaf_hashes: Sequence[Hash32], index: int) -> tuple[Hash32, ...]:
    """Sibling hashes from leaf ``index`` up to the root (leaf first).

    Takes leaf hashes, not items, so callers holding cached chunk hashes can prove without the
    data; use ``[leaf_hash(x) for x in items]`` otherwise. Raises IndexError for an index outside
    the list and ValueError for a leaf hash that is not 32 bytes (both caller bugs).
    """
    if not 0 <= index < len(leaf_hashes):
        raise IndexError(f"leaf index {index} is outside a list of {len(leaf_hashes)} items")
    _check_leaf_hashes(leaf_hashes)
    level: list[bytes] = list(leaf_hashes)
    proof: list[Hash32] = []
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(Hash32(level[sibling]))
        level = _next_level(level)
        index >>= 1
    return tuple(proof)


def verify_merkle_proof(
    root: Hash32, index: int, count: int, leaf_hash: Hash32, proof: Sequence[Hash32]
) -> None:
    """Check that ``leaf_hash`` is item ``index`` of a ``count``-item list with this ``root``.

    Pure (hashlib only). The proof length is fixed by (index, count), so padding or truncation is
    rejected before hashing. Returns None on success.

    Raises ProofError with a one-line reason otherwise (index ≥ count, wrong proof length, a hash
    that is not 32 bytes, or a recomputed root that differs).
    """
    if not isinstance(index, int) or not isinstance(count, int):
        raise ProofError("Merkle index and count must be integers")
    expected = merkle_proof_length(index, count)
    if len(proof) != expected:
        raise ProofError(f"Merkle proof has {len(proof)} hashes, expected {expected}")
    if not isinstance(leaf_hash, bytes) or len(leaf_hash) != 32:
        raise ProofError("Merkle leaf hash must be 32 bytes")
    for p in proof:
        if not isinstance(p, bytes) or len(p) != 32:
            raise ProofError("Merkle proof hash must be 32 bytes")
    node = PREFIX_LIST_NODE
    acc: bytes = leaf_hash
    pos = 0
    while count > 1:
        if index & 1:
            acc = _sha256(node + proof[pos] + acc).digest()
            pos += 1
        elif index + 1 < count:
            acc = _sha256(node + acc + proof[pos]).digest()
            pos += 1
        index >>= 1
        count = (count + 1) >> 1
    if acc != root:
        raise ProofError("Merkle proof does not lead to the expected root")
