"""State: a key-value view over the Merkle trie, with nested write layers for rollback.

Writes go to an in-memory overlay; nothing touches the trie until ``commit_root`` folds the
overlay into new trie nodes. A transaction runs inside ``state.layer()``: if it raises, its
writes vanish (execution-specs' begin/commit/rollback_transaction). The runtime never sees
SQLite: it reads through the ``StateStore`` protocol and hands back the new nodes and values
for the node to persist in the same database transaction as the block.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from deltachain.crypto.hashing import (
    PREFIX_STATE_KEY,
    PREFIX_STATE_VALUE,
    ZERO_HASH,
    Hash32,
    tagged_hash,
)
from deltachain.crypto.trie import NodeStore, trie_get, trie_items, trie_update
from deltachain.errors import CorruptDatabase

_DELETED = None


def key_hash(key: bytes) -> Hash32:
    return tagged_hash(PREFIX_STATE_KEY, key)


def value_hash(value: bytes) -> Hash32:
    return tagged_hash(PREFIX_STATE_VALUE, value)


class StateStore(NodeStore, Protocol):
    """What the state reads: trie nodes, values by hash, and key preimages (for listing)."""

    def get_value(self, value_hash: Hash32) -> bytes | None: ...

    def get_key(self, key_hash: Hash32) -> bytes | None: ...


@dataclass
class StateDiff:
    """Everything a committed state adds to the store; persisted atomically with its block."""

    root: Hash32
    nodes: dict[Hash32, bytes] = field(default_factory=dict)
    values: dict[Hash32, bytes] = field(default_factory=dict)
    keys: dict[Hash32, bytes] = field(default_factory=dict)


class MemoryStateStore:
    """A dict-backed store: genesis construction, tests and the state-transition tool."""

    def __init__(self) -> None:
        self.nodes: dict[Hash32, bytes] = {}
        self.values: dict[Hash32, bytes] = {}
        self.keys: dict[Hash32, bytes] = {}

    def get_node(self, node_hash: Hash32) -> bytes | None:
        return self.nodes.get(node_hash)

    def get_value(self, value_hash: Hash32) -> bytes | None:
        return self.values.get(value_hash)

    def get_key(self, key_hash: Hash32) -> bytes | None:
        return self.keys.get(key_hash)

    def apply(self, diff: StateDiff) -> None:
        self.nodes.update(diff.nodes)
        self.values.update(diff.values)
        self.keys.update(diff.keys)


class State:
    """A mutable working copy of the state at ``base_root``."""

    def __init__(self, store: StateStore, base_root: Hash32 = ZERO_HASH) -> None:
        self.store = store
        self.base_root = base_root
        self._layers: list[dict[bytes, bytes | None]] = [{}]
        self._read_cache: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        for layer in reversed(self._layers):
            if key in layer:
                return layer[key]
        if key in self._read_cache:
            return self._read_cache[key]
        vh = trie_get(self.store, self.base_root, key_hash(key))
        value = None if vh is None else self.store.get_value(vh)
        if vh is not None and value is None:
            raise CorruptDatabase(f"state value {vh.hex()} is missing from the store")
        self._read_cache[key] = value
        return value

    def set(self, key: bytes, value: bytes) -> None:
        self._layers[-1][key] = value

    def delete(self, key: bytes) -> None:
        self._layers[-1][key] = _DELETED

    @contextmanager
    def layer(self) -> Iterator[None]:
        """Run a block of writes that is kept only if it does not raise."""
        self._layers.append({})
        try:
            yield
        except BaseException:
            self._layers.pop()
            raise
        top = self._layers.pop()
        self._layers[-1].update(top)

    def pending(self) -> dict[bytes, bytes | None]:
        merged: dict[bytes, bytes | None] = {}
        for layer in self._layers:
            merged.update(layer)
        return merged

    def iter_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Live (key, value) pairs under a prefix, sorted. Walks the whole trie: queries only."""
        pending = self.pending()
        found: dict[bytes, bytes] = {}
        for kh, vh in trie_items(self.store, self.base_root):
            key = self.store.get_key(kh)
            if key is None:
                raise CorruptDatabase(f"state key preimage {kh.hex()} is missing")
            if key.startswith(prefix) and key not in pending:
                value = self.store.get_value(vh)
                if value is None:
                    raise CorruptDatabase(f"state value {vh.hex()} is missing from the store")
                found[key] = value
        for key, maybe in pending.items():
            if key.startswith(prefix) and maybe is not None:
                found[key] = maybe
        return iter(sorted(found.items()))

    def commit_root(self) -> StateDiff:
        """Fold every pending write into new trie nodes; the state then reads from the new root."""
        pending = self.pending()
        diff = StateDiff(root=self.base_root)
        updates: dict[Hash32, Hash32 | None] = {}
        for key, value in pending.items():
            kh = key_hash(key)
            if value is None:
                updates[kh] = None
            else:
                vh = value_hash(value)
                updates[kh] = vh
                diff.values[vh] = value
                diff.keys[kh] = key
        diff.root, diff.nodes = trie_update(self.store, self.base_root, updates)
        return diff

    def rebase(self, diff: StateDiff) -> None:
        """Once the diff is persisted in ``store``, go on from its root with no pending writes."""
        self.base_root = diff.root
        self._layers = [{}]
        self._read_cache = {}
