"""Named types for every id on the wire, with range checks at the boundary."""

from __future__ import annotations

from typing import NewType

from deltachain.crypto.hashing import ZERO_HASH, Hash32, as_hash32
from deltachain.crypto.keys import Address, Signature
from deltachain.errors import DecodeError

BlockNumber = NewType("BlockNumber", int)
Slot = NewType("Slot", int)
Nonce = NewType("Nonce", int)

UINT64_MAX = (1 << 64) - 1

__all__ = [
    "UINT64_MAX",
    "ZERO_HASH",
    "Address",
    "BlockNumber",
    "Hash32",
    "Nonce",
    "Signature",
    "as_address",
    "as_hash32",
    "as_uint64",
]


def as_uint64(value: object, what: str) -> int:
    """Accept only a non-negative int below 2^64 (bool is not an int here)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= UINT64_MAX:
        raise DecodeError(f"{what} must be an unsigned 64-bit integer")
    return value


def as_address(value: object, what: str = "address") -> Address:
    if not isinstance(value, bytes) or len(value) != 32:
        raise DecodeError(f"{what} must be 32 bytes")
    return Address(value)
