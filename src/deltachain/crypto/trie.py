"""The state commitment: a binary radix Merkle tree over 32-byte hashed keys (brief §5).

Jellyfish-Merkle style: a subtree holding exactly one leaf *is* that leaf, placed at the highest
position its key prefix allows, and there are no extension nodes. Because of that canonical form
the root is a function of the key/value set alone, never of insertion order or batch history, so
every honest node computes the same state root.

Node encodings (consensus — never change):

* leaf     = ``0x00 ‖ key_hash(32) ‖ value_hash(32)``
* internal = ``0x01 ‖ left(32) ‖ right(32)``
* node hash = ``sha256(encoding)``; the empty subtree is ``ZERO_HASH`` and is never stored.

Bit ``i`` of a key is bit ``7 - i % 8`` of byte ``i // 8`` (bit 0 is the most significant bit of
byte 0); 0 goes left. A leaf's encoding does not include its depth, so a leaf can move up or down
when its neighbours change without being re-hashed.

Nodes are content-addressed, so versions share every untouched subtree: an update returns only the
new nodes and never mutates the store. The proof verifier (:func:`verify_proof`,
:meth:`TrieProof.decode`) needs nothing but hashlib, so a light client can carry it alone.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from deltachain.crypto.hashing import PREFIX_TRIE_LEAF, PREFIX_TRIE_NODE, ZERO_HASH, Hash32
from deltachain.errors import CorruptDatabase, DecodeError, ProofError

__all__ = [
    "MAX_DEPTH",
    "MemoryNodeStore",
    "NodeStore",
    "TrieProof",
    "trie_get",
    "trie_items",
    "trie_node_hashes",
    "trie_prove",
    "trie_update",
    "verify_proof",
]

MAX_DEPTH = 256
"""Keys are 256 bits: no path is longer than 256 edges (two keys differing only in bit 255)."""

_NODE_LEN = 65
_LEAF_TAG = PREFIX_TRIE_LEAF[0]
_ZERO: bytes = ZERO_HASH
_sha256 = hashlib.sha256

# Subtree kinds tracked during an update, so collapsing rarely needs a store read.
_EMPTY = 0
_LEAF = 1
_INTERNAL = 2
_UNKNOWN = 3  # an untouched subtree: its kind is read from the store only if needed


class NodeStore(Protocol):
    """Read access to content-addressed trie nodes (hash -> encoding)."""

    def get_node(self, node_hash: Hash32) -> bytes | None: ...


class MemoryNodeStore:
    """A dict-backed :class:`NodeStore` for tests, genesis building and light clients."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Mapping[Hash32, bytes] | None = None) -> None:
        self._nodes: dict[Hash32, bytes] = dict(nodes) if nodes else {}

    def get_node(self, node_hash: Hash32) -> bytes | None:
        return self._nodes.get(node_hash)

    def put_node(self, node_hash: Hash32, encoding: bytes) -> None:
        self._nodes[node_hash] = encoding

    def put_nodes(self, nodes: Mapping[Hash32, bytes]) -> None:
        """Persist the new nodes returned by :func:`trie_update` in one call."""
        self._nodes.update(nodes)

    def __len__(self) -> int:
        return len(self._nodes)


def _read(store: NodeStore, node_hash: bytes) -> bytes:
    """Fetch a node reachable from a root; absence or a bad shape means the database is damaged."""
    enc = store.get_node(Hash32(node_hash))
    if enc is None:
        raise CorruptDatabase(f"trie node {node_hash.hex()} is missing from the node store")
    if len(enc) != _NODE_LEN or enc[0] > 1:
        raise CorruptDatabase(f"trie node {node_hash.hex()} has a malformed encoding")
    return enc


def _too_deep(node_hash: bytes) -> CorruptDatabase:
    return CorruptDatabase(f"trie node {node_hash.hex()} lies deeper than {MAX_DEPTH} levels")


def _check_hash(value: object, what: str) -> bytes:
    """Reject a non-hash argument early: passing one is a caller bug, not bad input from a peer."""
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"{what} must be 32 bytes")
    return value


# --- reading ----------------------------------------------------------------------------------


def trie_get(store: NodeStore, root: Hash32, key_hash: Hash32) -> Hash32 | None:
    """The value hash stored under ``key_hash``, or None if absent.

    Raises CorruptDatabase if a node on the path is missing or malformed.
    """
    k = int.from_bytes(_check_hash(key_hash, "key_hash"), "big")
    h: bytes = root
    depth = 0
    while h != _ZERO:
        enc = _read(store, h)
        if enc[0] == _LEAF_TAG:
            return Hash32(enc[33:]) if enc[1:33] == key_hash else None
        if depth >= MAX_DEPTH:
            raise _too_deep(h)
        h = enc[33:] if (k >> (255 - depth)) & 1 else enc[1:33]
        depth += 1
    return None


def trie_items(store: NodeStore, root: Hash32) -> Iterator[tuple[Hash32, Hash32]]:
    """Every ``(key_hash, value_hash)`` under ``root`` in ascending key order.

    Raises CorruptDatabase if a node is missing or malformed.
    """
    stack: list[bytes] = [root] if root != _ZERO else []
    while stack:
        enc = _read(store, stack.pop())
        if enc[0] == _LEAF_TAG:
            yield Hash32(enc[1:33]), Hash32(enc[33:])
            continue
        left, right = enc[1:33], enc[33:]
        if right != _ZERO:
            stack.append(right)
        if left != _ZERO:
            stack.append(left)


def trie_node_hashes(store: NodeStore, root: Hash32) -> Iterator[Hash32]:
    """Every node hash reachable from ``root`` (each once), for pruning and copying versions.

    Each node is unique within one version: a node's hash commits to the distinct key range it
    covers. Raises CorruptDatabase if a node is missing or malformed.
    """
    stack: list[bytes] = [root] if root != _ZERO else []
    while stack:
        h = stack.pop()
        enc = _read(store, h)
        yield Hash32(h)
        if enc[0] == _LEAF_TAG:
            continue
        left, right = enc[1:33], enc[33:]
        if right != _ZERO:
            stack.append(right)
        if left != _ZERO:
            stack.append(left)


# --- writing ----------------------------------------------------------------------------------


def trie_update(
    store: NodeStore, root: Hash32, updates: Mapping[Hash32, Hash32 | None]
) -> tuple[Hash32, dict[Hash32, bytes]]:
    """Apply a batch of writes (value hash) and deletes (None) to the tree at ``root``.

    Returns the new root and the nodes created (hash -> encoding) that the caller must persist
    before using the new root; the store itself is never mutated, so the old root stays readable
    and shares every untouched subtree. Deleting an absent key is a no-op; an unchanged tree
    returns ``root`` and no nodes.

    One recursive pass over the key-sorted batch: each touched node is read once and each new node
    hashed once, so the cost is O(batch · depth) store reads and hashes.

    Raises ValueError for keys or values that are not 32-byte hashes (a caller bug), and
    CorruptDatabase if a node reachable from ``root`` is missing or malformed.
    """
    if not updates:
        return root, {}
    ordered = sorted(updates.items())
    n = len(ordered)
    keys: list[bytes] = []
    ints: list[int] = []
    vals: list[bytes | None] = []
    # ins[i] = number of writes (non-None values) among ordered[:i]; O(1) write counts per slice.
    ins = [0] * (n + 1)
    for i, (key, value) in enumerate(ordered):
        keys.append(_check_hash(key, "update key"))
        ints.append(int.from_bytes(key, "big"))
        if value is not None:
            _check_hash(value, "update value")
        vals.append(value)
        ins[i + 1] = ins[i] + (value is not None)

    new: dict[Hash32, bytes] = {}
    leaf_prefix = PREFIX_TRIE_LEAF
    node_prefix = PREFIX_TRIE_NODE

    def make_leaf(key: bytes, value: bytes) -> bytes:
        enc = leaf_prefix + key + value
        h = _sha256(enc).digest()
        new[Hash32(h)] = enc
        return h

    def join(lh: bytes, lk: int, rh: bytes, rk: int) -> tuple[bytes, int]:
        """Parent of two canonical subtrees, collapsing to keep the canonical form."""
        if lh == _ZERO:
            if rh == _ZERO:
                return _ZERO, _EMPTY
            if rk == _UNKNOWN:
                rk = _LEAF if _read(store, rh)[0] == _LEAF_TAG else _INTERNAL
            if rk == _LEAF:
                return rh, _LEAF
        elif rh == _ZERO:
            if lk == _UNKNOWN:
                lk = _LEAF if _read(store, lh)[0] == _LEAF_TAG else _INTERNAL
            if lk == _LEAF:
                return lh, _LEAF
        enc = node_prefix + lh + rh
        h = _sha256(enc).digest()
        new[Hash32(h)] = enc
        return h, _INTERNAL

    def split(lo: int, hi: int, depth: int) -> int:
        """First index in [lo, hi) whose bit ``depth`` is 1 (the slice shares bits 0..depth-1)."""
        shift = 255 - depth
        return bisect_left(ints, ((ints[lo] >> shift) | 1) << shift, lo, hi)

    def update(h: bytes, depth: int, lo: int, hi: int) -> tuple[bytes, int]:
        """New (hash, kind) of subtree ``h`` at ``depth`` after ordered[lo:hi] (non-empty)."""
        if h == _ZERO:
            writes = ins[hi] - ins[lo]
            if writes == 0:
                return _ZERO, _EMPTY
            if writes == 1:
                i = bisect_left(ins, ins[lo] + 1, lo + 1, hi + 1) - 1
                value = vals[i]
                if value is None:  # unreachable: ins counts exactly the non-None values
                    raise RuntimeError("write index bookkeeping is inconsistent")
                return make_leaf(keys[i], value), _LEAF
            mid = split(lo, hi, depth)
            lh, lk = update(_ZERO, depth + 1, lo, mid) if mid > lo else (_ZERO, _EMPTY)
            rh, rk = update(_ZERO, depth + 1, mid, hi) if hi > mid else (_ZERO, _EMPTY)
            return join(lh, lk, rh, rk)

        enc = _read(store, h)
        if enc[0] == _LEAF_TAG:
            leaf_key = enc[1:33]
            leaf_int = int.from_bytes(leaf_key, "big")
            if depth and (leaf_int ^ ints[lo]) >> (256 - depth):
                raise CorruptDatabase(f"trie leaf {h.hex()} is not on its key's path")
            j = bisect_left(ints, leaf_int, lo, hi)
            hit = j < hi and ints[j] == leaf_int
            other_writes = ins[hi] - ins[lo] - (1 if hit and vals[j] is not None else 0)
            if other_writes == 0:
                if not hit:
                    return h, _LEAF
                value = vals[j]
                if value is None:
                    return _ZERO, _EMPTY
                if value == enc[33:]:
                    return h, _LEAF
                return make_leaf(leaf_key, value), _LEAF
            # Another key lands in this leaf's subtree: push the leaf one level down and recurse
            # until the keys part; join() collapses whatever is left single.
            mid = split(lo, hi, depth)
            if (leaf_int >> (255 - depth)) & 1:
                lh, lk = update(_ZERO, depth + 1, lo, mid) if mid > lo else (_ZERO, _EMPTY)
                rh, rk = update(h, depth + 1, mid, hi) if hi > mid else (h, _LEAF)
            else:
                lh, lk = update(h, depth + 1, lo, mid) if mid > lo else (h, _LEAF)
                rh, rk = update(_ZERO, depth + 1, mid, hi) if hi > mid else (_ZERO, _EMPTY)
            return join(lh, lk, rh, rk)

        if depth >= MAX_DEPTH:
            raise _too_deep(h)
        left, right = enc[1:33], enc[33:]
        mid = split(lo, hi, depth)
        lh, lk = update(left, depth + 1, lo, mid) if mid > lo else (left, _UNKNOWN)
        rh, rk = update(right, depth + 1, mid, hi) if hi > mid else (right, _UNKNOWN)
        if lh == left and rh == right:
            return h, _INTERNAL
        return join(lh, lk, rh, rk)

    new_root, _ = update(root, 0, 0, n)
    return Hash32(new_root), new


# --- proofs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrieProof:
    """The path from the root towards one key: sibling hashes and what the path ends in.

    ``siblings[i]`` is the hash of the subtree beside the path at depth ``i`` (root first). The
    path ends in a leaf (``leaf_key``/``leaf_value`` set: the key itself, or for a non-inclusion
    proof another key sharing the path) or in an empty subtree (both None).

    Raises ProofError at construction for a shape no tree can produce (over 256 siblings, hashes
    that are not 32 bytes, a leaf key without a value or the reverse).
    """

    siblings: tuple[Hash32, ...]
    leaf_key: Hash32 | None
    leaf_value: Hash32 | None

    def __post_init__(self) -> None:
        if not isinstance(self.siblings, tuple):
            raise ProofError("proof siblings must be a tuple")
        if len(self.siblings) > MAX_DEPTH:
            raise ProofError(f"proof has {len(self.siblings)} siblings, over {MAX_DEPTH}")
        for s in self.siblings:
            if not isinstance(s, bytes) or len(s) != 32:
                raise ProofError("proof sibling is not a 32-byte hash")
        if (self.leaf_key is None) != (self.leaf_value is None):
            raise ProofError("proof leaf needs both a key and a value, or neither")
        for part in (self.leaf_key, self.leaf_value):
            if part is not None and (not isinstance(part, bytes) or len(part) != 32):
                raise ProofError("proof leaf key and value must be 32-byte hashes")

    def encode(self) -> bytes:
        """Compact wire form; ZERO_HASH siblings (common deep in the path) cost one bit each.

        Format::

            count(2, big-endian, 0..256)
            ‖ bitmap(ceil(count / 8))   bit i (MSB-first within each byte) set = siblings[i] is
                                        ZERO_HASH; unused trailing bits are zero
            ‖ the non-zero siblings, 32 bytes each, root first
            ‖ terminal: 0x00 (empty subtree) | 0x01 ‖ leaf_key(32) ‖ leaf_value(32)

        The encoding is canonical: :meth:`decode` accepts exactly the bytes this produces.
        """
        count = len(self.siblings)
        bitmap = bytearray((count + 7) // 8)
        parts: list[bytes] = [count.to_bytes(2, "big"), b""]
        for i, s in enumerate(self.siblings):
            if s == _ZERO:
                bitmap[i >> 3] |= 0x80 >> (i & 7)
            else:
                parts.append(s)
        parts[1] = bytes(bitmap)
        if self.leaf_key is None or self.leaf_value is None:
            parts.append(b"\x00")
        else:
            parts.append(b"\x01" + self.leaf_key + self.leaf_value)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> TrieProof:
        """Parse :meth:`encode` output; raises DecodeError if malformed or non-canonical."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("trie proof must be bytes")
        data = bytes(data)
        if len(data) < 3:
            raise DecodeError("trie proof is truncated")
        count = int.from_bytes(data[:2], "big")
        if count > MAX_DEPTH:
            raise DecodeError(f"trie proof has {count} siblings, over {MAX_DEPTH}")
        pos = 2 + (count + 7) // 8
        bitmap = data[2:pos]
        if len(bitmap) != (count + 7) // 8:
            raise DecodeError("trie proof bitmap is truncated")
        if count & 7 and bitmap[-1] & (0xFF >> (count & 7)):
            raise DecodeError("trie proof bitmap has non-zero padding bits")
        zeros = sum(bin(b).count("1") for b in bitmap)
        nonzero = count - zeros
        terminal_at = pos + 32 * nonzero
        if len(data) <= terminal_at:
            raise DecodeError("trie proof is truncated")
        tag = data[terminal_at]
        if tag == 0:
            expected_len = terminal_at + 1
        elif tag == 1:
            expected_len = terminal_at + 65
        else:
            raise DecodeError(f"trie proof terminal tag {tag} is not 0 or 1")
        if len(data) != expected_len:
            raise DecodeError(f"trie proof is {len(data)} bytes, expected exactly {expected_len}")
        siblings: list[Hash32] = []
        for i in range(count):
            if bitmap[i >> 3] & (0x80 >> (i & 7)):
                siblings.append(ZERO_HASH)
            else:
                s = data[pos : pos + 32]
                if s == _ZERO:
                    raise DecodeError("trie proof lists a zero sibling outside the bitmap")
                siblings.append(Hash32(s))
                pos += 32
        if tag == 0:
            return cls(tuple(siblings), None, None)
        return cls(
            tuple(siblings),
            Hash32(data[terminal_at + 1 : terminal_at + 33]),
            Hash32(data[terminal_at + 33 : terminal_at + 65]),
        )


def trie_prove(store: NodeStore, root: Hash32, key_hash: Hash32) -> TrieProof:
    """An inclusion proof if ``key_hash`` is present, otherwise a non-inclusion proof.

    Raises CorruptDatabase if a node on the path is missing or malformed.
    """
    k = int.from_bytes(_check_hash(key_hash, "key_hash"), "big")
    siblings: list[Hash32] = []
    h: bytes = root
    depth = 0
    while h != _ZERO:
        enc = _read(store, h)
        if enc[0] == _LEAF_TAG:
            return TrieProof(tuple(siblings), Hash32(enc[1:33]), Hash32(enc[33:]))
        if depth >= MAX_DEPTH:
            raise _too_deep(h)
        if (k >> (255 - depth)) & 1:
            siblings.append(Hash32(enc[1:33]))
            h = enc[33:]
        else:
            siblings.append(Hash32(enc[33:]))
            h = enc[1:33]
        depth += 1
    return TrieProof(tuple(siblings), None, None)


def verify_proof(
    root: Hash32, key_hash: Hash32, value_hash: Hash32 | None, proof: TrieProof
) -> None:
    """Check that ``proof`` shows ``key_hash -> value_hash`` under ``root`` (None: key absent).

    Pure (hashlib only), for light clients. Soundness rests on the recomputed root: by collision
    resistance every hash on the path is then the real node there, so the terminal is the real
    leaf or empty subtree that ``key_hash`` routes to. Returns None on success.

    Raises ProofError with a one-line reason if the proof does not show exactly that.
    """
    if not isinstance(key_hash, bytes) or len(key_hash) != 32:
        raise ProofError("key hash must be 32 bytes")
    if value_hash is not None and (not isinstance(value_hash, bytes) or len(value_hash) != 32):
        raise ProofError("value hash must be 32 bytes")
    siblings = proof.siblings
    depth = len(siblings)
    if depth > MAX_DEPTH:
        raise ProofError(f"proof has {depth} siblings, over {MAX_DEPTH}")
    leaf_key, leaf_value = proof.leaf_key, proof.leaf_value
    if (leaf_key is None) != (leaf_value is None):
        raise ProofError("proof leaf needs both a key and a value, or neither")
    k = int.from_bytes(key_hash, "big")

    if value_hash is None:
        if leaf_key is not None:
            if leaf_key == key_hash:
                raise ProofError("proof shows the key is present, not absent")
            if depth and (k ^ int.from_bytes(leaf_key, "big")) >> (256 - depth):
                raise ProofError("proof ends at a leaf that is not on the key's path")
    else:
        if leaf_key is None:
            raise ProofError("proof shows the key is absent, not present")
        if leaf_key != key_hash:
            raise ProofError("proof ends at a different key's leaf")
        if leaf_value != value_hash:
            raise ProofError("proof shows a different value for the key")

    # Canonical form: a leaf or empty subtree never sits beside an empty sibling.
    if depth and siblings[-1] == _ZERO:
        raise ProofError("proof path is not in canonical form (empty last sibling)")

    if leaf_key is None or leaf_value is None:
        acc: bytes = _ZERO
    else:
        acc = _sha256(PREFIX_TRIE_LEAF + leaf_key + leaf_value).digest()
    for d in range(depth - 1, -1, -1):
        if (k >> (255 - d)) & 1:
            acc = _sha256(PREFIX_TRIE_NODE + siblings[d] + acc).digest()
        else:
            acc = _sha256(PREFIX_TRIE_NODE + acc + siblings[d]).digest()
    if acc != root:
        raise ProofError("proof does not lead to the expected root")
