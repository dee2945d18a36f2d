"""The weights commitment: fixed-size chunks → Merkle root, stored in the model record.

A light client checks one chunk with O(log chunks) hashes: chunk → leaf hash → Merkle path to
``weightsRoot`` → the model record → a trie proof to the state root. Only chunks whose bytes
changed are re-hashed after a round.
"""

from __future__ import annotations

import numpy as np

from deltachain.crypto.hashing import Hash32
from deltachain.crypto.merkle import leaf_hash, merkle_root_of_leaf_hashes


def chunk_bytes(weights: np.ndarray, index: int, chunk_size: int) -> bytes:
    """Chunk ``index`` as little-endian int32 bytes (the last chunk may be short)."""
    return weights[index * chunk_size : (index + 1) * chunk_size].astype("<i4").tobytes()


def chunk_count(num_params: int, chunk_size: int) -> int:
    return -(-num_params // chunk_size)


def chunk_leaves(weights: np.ndarray, chunk_size: int) -> list[Hash32]:
    return [
        leaf_hash(chunk_bytes(weights, i, chunk_size))
        for i in range(chunk_count(weights.size, chunk_size))
    ]


def changed_chunks(old: np.ndarray, new: np.ndarray, chunk_size: int) -> list[int]:
    """Indices of chunks whose contents differ (vectorised: one pass over both arrays)."""
    diff = np.flatnonzero(old != new)
    return sorted(set((diff // chunk_size).tolist()))


def weights_root(leaves: list[Hash32]) -> Hash32:
    return merkle_root_of_leaf_hashes(leaves)
