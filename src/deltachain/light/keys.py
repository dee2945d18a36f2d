"""The few state keys a light client reads, and how the trie hashes keys and values.

These are consensus facts (the runtime writes exactly these keys). They are restated here so the
light client depends on nothing but primitives, crypto and the codec — no runtime, no numpy —
and ``tests/test_light.py`` pins them to the runtime's own definitions
(``runtime.system.KEY_*``, ``runtime.state.key_hash``/``value_hash``,
``model_state.module.key_model``) so the two can never drift apart silently.
"""

from __future__ import annotations

from deltachain.crypto.hashing import PREFIX_STATE_KEY, PREFIX_STATE_VALUE, Hash32, tagged_hash

KEY_AUTHORITIES = b"system/authorities"
"""CBOR array of the current authority addresses (32 bytes each)."""

KEY_SET_ID = b"system/set_id"
"""CBOR uint, bumped at each authority-set change; absent (= 0) until the first change."""

MODEL_RECORD_PREFIX = b"model_state/model/"


def state_key_hash(key: bytes) -> Hash32:
    """Where a raw state key lives in the trie."""
    return tagged_hash(PREFIX_STATE_KEY, key)


def state_value_hash(value: bytes) -> Hash32:
    """What the trie leaf stores for a raw state value."""
    return tagged_hash(PREFIX_STATE_VALUE, value)


def key_model(model_id: str) -> bytes:
    """The state key of a model's record (config, version, weightsRoot, chunkCount, …)."""
    return MODEL_RECORD_PREFIX + model_id.encode()
