"""State trie: canonical roots, batch updates, structure sharing, and proofs (brief §5)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltachain.crypto.hashing import ZERO_HASH, Hash32, sha256
from deltachain.crypto.trie import (
    MemoryNodeStore,
    TrieProof,
    trie_get,
    trie_items,
    trie_node_hashes,
    trie_prove,
    trie_update,
    verify_proof,
)
from deltachain.errors import CorruptDatabase, DecodeError, ProofError

# --- helpers ----------------------------------------------------------------------------------


def h(n: int) -> Hash32:
    return sha256(b"k" + n.to_bytes(8, "big"))


def v(n: int) -> Hash32:
    return sha256(b"v" + n.to_bytes(8, "big"))


def key_with_bits(bits: str) -> Hash32:
    """A key whose leading bits are ``bits`` and the rest zero: for hand-shaped trees."""
    return Hash32(int(bits.ljust(256, "0"), 2).to_bytes(32, "big"))


def bit(key: bytes, depth: int) -> int:
    return (key[depth // 8] >> (7 - depth % 8)) & 1


def reference_root(items: Mapping[Hash32, Hash32]) -> bytes:
    """Canonical root straight from the definition, independent of the incremental code."""

    def build(keys: list[Hash32], depth: int) -> bytes:
        if not keys:
            return ZERO_HASH
        if len(keys) == 1:
            return hashlib.sha256(b"\x00" + keys[0] + items[keys[0]]).digest()
        left = [k for k in keys if bit(k, depth) == 0]
        right = [k for k in keys if bit(k, depth) == 1]
        return hashlib.sha256(b"\x01" + build(left, depth + 1) + build(right, depth + 1)).digest()

    return build(sorted(items), 0)


def apply(store: MemoryNodeStore, root: Hash32, updates: Mapping[Hash32, Hash32 | None]) -> Hash32:
    new_root, new = trie_update(store, root, updates)
    store.put_nodes(new)
    return new_root


def build(items: Mapping[Hash32, Hash32]) -> tuple[MemoryNodeStore, Hash32]:
    store = MemoryNodeStore()
    return store, apply(store, ZERO_HASH, items)


# Random keys rarely share long prefixes; clustered keys force deep paths and one-sided nodes.
random_key = st.binary(min_size=32, max_size=32).map(Hash32)
clustered_key = st.builds(
    lambda hi, lo: Hash32(bytes([hi]) + bytes(30) + bytes([lo])),
    st.sampled_from([0x00, 0x01, 0x80, 0xFF]),
    st.integers(0, 255),
)
keys_st = st.one_of(random_key, clustered_key)
values_st = st.binary(min_size=32, max_size=32).map(Hash32)
kv_st = st.dictionaries(keys_st, values_st, max_size=40)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- edge cases ---------------------------------------------------------------------------------


def test_empty_tree() -> None:
    store = MemoryNodeStore()
    assert trie_get(store, ZERO_HASH, h(1)) is None
    assert list(trie_items(store, ZERO_HASH)) == []
    assert list(trie_node_hashes(store, ZERO_HASH)) == []
    proof = trie_prove(store, ZERO_HASH, h(1))
    assert proof == TrieProof((), None, None)
    verify_proof(ZERO_HASH, h(1), None, proof)
    with pytest.raises(ProofError):
        verify_proof(ZERO_HASH, h(1), v(1), proof)
    assert trie_update(store, ZERO_HASH, {}) == (ZERO_HASH, {})
    assert trie_update(store, ZERO_HASH, {h(1): None}) == (ZERO_HASH, {})


def test_single_key_tree() -> None:
    store, root = build({h(1): v(1)})
    assert root == hashlib.sha256(b"\x00" + h(1) + v(1)).digest()
    assert len(store) == 1
    assert trie_get(store, root, h(1)) == v(1)
    assert trie_get(store, root, h(2)) is None
    proof = trie_prove(store, root, h(1))
    assert proof.siblings == ()
    verify_proof(root, h(1), v(1), proof)
    absent = trie_prove(store, root, h(2))
    assert absent.leaf_key == h(1)
    verify_proof(root, h(2), None, absent)
    assert apply(store, root, {h(1): None}) == ZERO_HASH


def test_pinned_root() -> None:
    """Catches any accidental change to the consensus node encodings or bit order."""
    items = {h(i): v(i) for i in range(5)}
    _, root = build(items)
    assert root == reference_root(items)
    assert root.hex() == "11ff79fb560e75344340c5edfe9af595ce52755515dec6a7b2d3d7345e7216b8"


def test_hand_shaped_tree() -> None:
    """Keys 00.., 01.. share bit 0, so the root is internal(internal(leaf, leaf), empty)."""
    a, b = key_with_bits("00"), key_with_bits("01")
    store, root = build({a: v(1), b: v(2)})
    la = hashlib.sha256(b"\x00" + a + v(1)).digest()
    lb = hashlib.sha256(b"\x00" + b + v(2)).digest()
    inner = hashlib.sha256(b"\x01" + la + lb).digest()
    assert root == hashlib.sha256(b"\x01" + inner + ZERO_HASH).digest()
    # Deleting b collapses everything back to the single leaf a at the root.
    assert apply(store, root, {b: None}) == la


# --- canonical roots ----------------------------------------------------------------------------


@FAST
@given(kv_st, st.randoms(use_true_random=False))
def test_root_independent_of_order_and_batching(
    items: dict[Hash32, Hash32], rnd: random.Random
) -> None:
    expected = reference_root(items)
    _, one_batch = build(items)
    assert one_batch == expected

    store = MemoryNodeStore()
    root = ZERO_HASH
    keys = list(items)
    rnd.shuffle(keys)
    while keys:
        n = rnd.randint(1, len(keys))
        chunk, keys = keys[:n], keys[n:]
        root = apply(store, root, {k: items[k] for k in chunk})
    assert root == expected


@FAST
@given(kv_st, kv_st)
def test_update_then_delete_restores_root(
    base: dict[Hash32, Hash32], extra: dict[Hash32, Hash32]
) -> None:
    store, root = build(base)
    added = {k: val for k, val in extra.items() if k not in base}
    root2 = apply(store, root, added)
    assert root2 == reference_root({**base, **added})
    assert apply(store, root2, dict.fromkeys(added)) == root

    # Overwrites restore too, and an overwrite with the same value creates nothing.
    if base:
        k = next(iter(base))
        root3 = apply(store, root, {k: v(999)})
        assert apply(store, root3, {k: base[k]}) == root
        assert trie_update(store, root, {k: base[k]}) == (root, {})


@FAST
@given(kv_st, st.lists(keys_st, max_size=10), st.data())
def test_get_items_after_mixed_batch(
    base: dict[Hash32, Hash32], new_keys: list[Hash32], data: st.DataObject
) -> None:
    store, root = build(base)
    deletes = data.draw(st.lists(st.sampled_from(sorted(base)), unique=True)) if base else []
    updates: dict[Hash32, Hash32 | None] = dict.fromkeys(deletes)
    updates.update({k: v(i) for i, k in enumerate(new_keys)})
    expected = {k: val for k, val in base.items() if k not in updates}
    expected.update({k: val for k, val in updates.items() if val is not None})

    size_before = len(store)
    new_root, new = trie_update(store, root, updates)
    assert len(store) == size_before  # never mutates the store
    store.put_nodes(new)
    assert new_root == reference_root(expected)
    for k in {*base, *new_keys}:
        assert trie_get(store, new_root, k) == expected.get(k)
    assert list(trie_items(store, new_root)) == sorted(expected.items())
    # Old version still fully readable.
    assert list(trie_items(store, root)) == sorted(base.items())


def test_delete_absent_is_noop() -> None:
    store, root = build({h(i): v(i) for i in range(50)})
    assert trie_update(store, root, {h(1000 + i): None for i in range(20)}) == (root, {})


def test_node_hashes_cover_exactly_one_version() -> None:
    store, root = build({h(i): v(i) for i in range(300)})
    hashes = list(trie_node_hashes(store, root))
    assert len(hashes) == len(set(hashes)) == len(store)
    for digest in hashes:
        enc = store.get_node(digest)
        assert enc is not None
        assert hashlib.sha256(enc).digest() == digest


def test_structure_sharing() -> None:
    """An update creates O(batch · depth) nodes and leaves the old version intact."""
    base = {h(i): v(i) for i in range(2000)}
    store, root1 = build(base)
    old_nodes = set(trie_node_hashes(store, root1))
    batch: dict[Hash32, Hash32 | None] = {
        h(i): v(i + 1) for i in range(0, 2000, 200)
    }  # 10 overwrites
    batch.update({h(5000 + i): v(i) for i in range(5)})  # 5 inserts
    batch.update(dict.fromkeys(h(i) for i in range(1, 2000, 400)))  # 5 deletes
    root2, new = trie_update(store, root1, batch)
    store.put_nodes(new)

    depth_after = {k: len(trie_prove(store, root2, k).siblings) for k in batch}
    depth_before = {k: len(trie_prove(store, root1, k).siblings) for k in batch}
    bound = sum(max(depth_after[k], depth_before[k]) + 2 for k in batch)
    assert len(new) <= bound
    assert len(new) < len(old_nodes) // 20
    new_nodes = set(trie_node_hashes(store, root2))
    assert len(new_nodes & old_nodes) > len(new_nodes) * 0.9
    assert list(trie_items(store, root1)) == sorted(base.items())


def test_missing_node_is_corruption() -> None:
    items = {h(i): v(i) for i in range(20)}
    _, root = build(items)
    partial = MemoryNodeStore({root: trie_update(MemoryNodeStore(), ZERO_HASH, items)[1][root]})
    with pytest.raises(CorruptDatabase, match="missing"):
        list(trie_items(partial, root))
    with pytest.raises(CorruptDatabase):
        trie_update(partial, root, {h(100): v(100)})
    with pytest.raises(CorruptDatabase):
        trie_get(MemoryNodeStore(), root, h(1))
    bad = MemoryNodeStore({root: b"\x07" + bytes(64)})
    with pytest.raises(CorruptDatabase, match="malformed"):
        trie_prove(bad, root, h(1))


def test_bad_update_arguments() -> None:
    store = MemoryNodeStore()
    with pytest.raises(ValueError, match="32 bytes"):
        trie_update(store, ZERO_HASH, {Hash32(b"short"): v(1)})
    with pytest.raises(ValueError, match="32 bytes"):
        trie_update(store, ZERO_HASH, {h(1): Hash32(b"short")})


# --- proofs -------------------------------------------------------------------------------------


@FAST
@given(kv_st, st.lists(keys_st, max_size=10))
def test_proofs_verify(items: dict[Hash32, Hash32], probes: list[Hash32]) -> None:
    store, root = build(items)
    for k, val in items.items():
        proof = trie_prove(store, root, k)
        verify_proof(root, k, val, proof)
        assert TrieProof.decode(proof.encode()) == proof
        with pytest.raises(ProofError):
            verify_proof(root, k, None, proof)  # claiming absence of a present key
    for k in probes:
        if k in items:
            continue
        proof = trie_prove(store, root, k)
        verify_proof(root, k, None, proof)
        assert TrieProof.decode(proof.encode()) == proof
        with pytest.raises(ProofError):
            verify_proof(root, k, v(1), proof)  # claiming presence of an absent key


def test_both_non_inclusion_terminal_kinds() -> None:
    # Hand-shaped: root = internal(internal(leaf 00.., leaf 01..), empty).
    a, b = key_with_bits("00"), key_with_bits("01")
    store, root = build({a: v(1), b: v(2)})
    empty_end = trie_prove(store, root, key_with_bits("1"))
    assert empty_end.leaf_key is None
    assert len(empty_end.siblings) == 1
    verify_proof(root, key_with_bits("1"), None, empty_end)
    other_leaf = trie_prove(store, root, key_with_bits("001"))
    assert other_leaf.leaf_key == a
    verify_proof(root, key_with_bits("001"), None, other_leaf)

    # And both occur naturally in a random tree.
    store, root = build({h(i): v(i) for i in range(500)})
    kinds = {"empty": 0, "leaf": 0}
    for i in range(500, 1500):
        proof = trie_prove(store, root, h(i))
        verify_proof(root, h(i), None, proof)
        kinds["empty" if proof.leaf_key is None else "leaf"] += 1
    assert kinds["empty"] > 0
    assert kinds["leaf"] > 0


def _deep_tree() -> tuple[MemoryNodeStore, Hash32, Hash32, Hash32]:
    items = {h(i): v(i) for i in range(200)}
    store, root = build(items)
    k = max(items, key=lambda key: len(trie_prove(store, root, key).siblings))
    return store, root, k, items[k]


def test_tampered_inclusion_proofs_rejected() -> None:
    store, root, k, val = _deep_tree()
    proof = trie_prove(store, root, k)
    verify_proof(root, k, val, proof)
    assert len(proof.siblings) >= 3

    for i in range(len(proof.siblings)):
        s = bytearray(proof.siblings[i])
        s[7] ^= 0x01
        sibs = list(proof.siblings)
        sibs[i] = Hash32(bytes(s))
        with pytest.raises(ProofError):
            verify_proof(root, k, val, TrieProof(tuple(sibs), proof.leaf_key, proof.leaf_value))

    cases = {
        "wrong value": (k, v(12345), proof),
        "wrong key": (h(9999), val, proof),
        "wrong root": (k, val, proof),
        "truncated": (k, val, TrieProof(proof.siblings[:-1], proof.leaf_key, proof.leaf_value)),
        "dropped first": (k, val, TrieProof(proof.siblings[1:], proof.leaf_key, proof.leaf_value)),
        "extra sibling": (
            k,
            val,
            TrieProof((*proof.siblings, sha256(b"x")), proof.leaf_key, proof.leaf_value),
        ),
        "extra zero sibling": (
            k,
            val,
            TrieProof((*proof.siblings, ZERO_HASH), proof.leaf_key, proof.leaf_value),
        ),
        "terminal value swapped": (k, val, TrieProof(proof.siblings, proof.leaf_key, v(12345))),
        "terminal dropped": (k, val, TrieProof(proof.siblings, None, None)),
    }
    for name, (key, value, p) in cases.items():
        target = sha256(b"other root") if name == "wrong root" else root
        with pytest.raises(ProofError):
            verify_proof(target, key, value, p)


def test_tampered_non_inclusion_proofs_rejected() -> None:
    store, root, k, val = _deep_tree()
    # A key sharing k's path except the last bit: its absence proof ends at k's leaf.
    depth = len(trie_prove(store, root, k).siblings)
    probe = Hash32((int.from_bytes(k, "big") ^ (1 << (255 - depth - 1))).to_bytes(32, "big"))
    proof = trie_prove(store, root, probe)
    assert proof.leaf_key == k
    verify_proof(root, probe, None, proof)

    # Presenting k's own inclusion proof as an absence proof for an off-path key fails.
    far = Hash32(bytes([k[0] ^ 0x80]) + k[1:])
    with pytest.raises(ProofError):
        verify_proof(root, far, None, trie_prove(store, root, k))
    # Claiming absence of a present key with its inclusion proof, or with an empty terminal.
    with pytest.raises(ProofError, match="present"):
        verify_proof(root, k, None, trie_prove(store, root, k))
    with pytest.raises(ProofError):
        verify_proof(root, k, None, TrieProof(proof.siblings, None, None))
    # Cutting the path short so a sibling subtree looks empty.
    with pytest.raises(ProofError):
        verify_proof(root, probe, None, TrieProof(proof.siblings[:-1], None, None))
    # Claiming presence of the absent key with any value.
    with pytest.raises(ProofError):
        verify_proof(root, probe, v(1), proof)
    with pytest.raises(ProofError):
        verify_proof(root, probe, val, TrieProof(proof.siblings, probe, val))


def test_proof_shape_limits() -> None:
    with pytest.raises(ProofError, match="over 256"):
        TrieProof(tuple(sha256(bytes([i % 256, i // 256])) for i in range(257)), None, None)
    with pytest.raises(ProofError):
        TrieProof((Hash32(b"short"),), None, None)
    with pytest.raises(ProofError):
        TrieProof((), h(1), None)
    with pytest.raises(ProofError):
        verify_proof(ZERO_HASH, Hash32(b"short"), None, TrieProof((), None, None))
    # 256 siblings is the legal maximum (keys differing only in the last bit).
    a = Hash32(bytes(32))
    b = Hash32(bytes(31) + b"\x01")
    store, root = build({a: v(1), b: v(2)})
    proof = trie_prove(store, root, a)
    assert len(proof.siblings) == 256
    verify_proof(root, a, v(1), proof)
    assert TrieProof.decode(proof.encode()) == proof
    assert len(proof.encode()) == 2 + 32 + 32 + 65  # 255 zero siblings cost one bit each


# --- encoding -----------------------------------------------------------------------------------


def test_encode_layout() -> None:
    s1, s2 = sha256(b"1"), sha256(b"2")
    proof = TrieProof((s1, ZERO_HASH, s2), h(1), v(1))
    assert proof.encode() == b"\x00\x03" + b"\x40" + s1 + s2 + b"\x01" + h(1) + v(1)
    assert TrieProof((), None, None).encode() == b"\x00\x00\x00"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"\x00\x00",  # no terminal
        b"\x00\x00\x02",  # bad terminal tag
        b"\x00\x00\x00\x00",  # trailing byte
        b"\x00\x00\x01" + bytes(63),  # short leaf
        b"\x00\x00\x01" + bytes(65),  # long leaf
        b"\x01\x01" + bytes(33) + b"\x00",  # 257 siblings
        b"\xff\xff\x00",
        b"\x00\x01\x00" + bytes(31) + b"\x00",  # truncated sibling
        b"\x00\x01\xc0\x00",  # padding bit set
        b"\x00\x01\x00" + bytes(32) + b"\x00",  # explicit zero sibling (non-canonical)
        b"\x00\x01\x80",  # zero sibling, no terminal
        b"\x00\x09\xff",  # truncated bitmap
    ],
)
def test_malformed_encodings_rejected(data: bytes) -> None:
    with pytest.raises(DecodeError):
        TrieProof.decode(data)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda n, rest: b"\x00" + bytes([n]) + rest, st.integers(0, 12), st.binary(max_size=200)
        ),
    )
)
def test_decode_is_canonical(data: bytes) -> None:
    """Whatever decodes re-encodes to the same bytes, so one proof has one encoding."""
    try:
        proof = TrieProof.decode(data)
    except DecodeError:
        return
    assert proof.encode() == data


def test_verifier_rejects_non_canonical_crafted_roots() -> None:
    """Checks that only matter against a malicious root: misplaced leaf, leaf beside empty."""
    k_left = key_with_bits("0")
    k_right = key_with_bits("1")
    leaf_right = hashlib.sha256(b"\x00" + k_right + v(1)).digest()
    other = sha256(b"some subtree")
    # A leaf whose key starts with 1 placed on the left of the root.
    crafted = Hash32(hashlib.sha256(b"\x01" + leaf_right + other).digest())
    with pytest.raises(ProofError, match="not on the key's path"):
        verify_proof(crafted, k_left, None, TrieProof((other,), k_right, v(1)))
    # internal(empty, leaf) is not canonical: the leaf should sit at the root.
    lonely = Hash32(hashlib.sha256(b"\x01" + ZERO_HASH + leaf_right).digest())
    with pytest.raises(ProofError, match="canonical"):
        verify_proof(lonely, k_right, v(1), TrieProof((ZERO_HASH,), k_right, v(1)))
