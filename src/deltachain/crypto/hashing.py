"""SHA-256 everywhere (brief §10), domain-separated by a one-byte prefix per object kind.

Microcontrollers that verify our proofs commonly have SHA-256 in hardware; one prefix byte per
kind keeps a leaf from ever being read as an inner node or a header as a transaction.
"""

from __future__ import annotations

import hashlib
from typing import NewType

from deltachain.errors import DecodeError

Hash32 = NewType("Hash32", bytes)

ZERO_HASH = Hash32(b"\x00" * 32)

# One byte per kind of hashed object. Never reuse or renumber: these are consensus.
PREFIX_TRIE_LEAF = b"\x00"
PREFIX_TRIE_NODE = b"\x01"
PREFIX_LIST_LEAF = b"\x02"
PREFIX_LIST_NODE = b"\x03"
PREFIX_STATE_KEY = b"\x04"
PREFIX_STATE_VALUE = b"\x05"
PREFIX_HEADER = b"\x06"
PREFIX_TRANSACTION = b"\x07"
PREFIX_CHUNK = b"\x08"
PREFIX_GENESIS_FILE = b"\x09"


def sha256(data: bytes) -> Hash32:
    return Hash32(hashlib.sha256(data).digest())


def tagged_hash(prefix: bytes, *parts: bytes) -> Hash32:
    """SHA-256 over prefix ‖ parts; callers pass fixed-size parts or length-prefix them."""
    h = hashlib.sha256(prefix)
    for part in parts:
        h.update(part)
    return Hash32(h.digest())


def as_hash32(data: bytes, what: str = "hash") -> Hash32:
    """Check a 32-byte hash read from outside; raises DecodeError on a wrong length."""
    if not isinstance(data, bytes) or len(data) != 32:
        raise DecodeError(f"{what} must be 32 bytes")
    return Hash32(data)
