"""Canonical CBOR with hard limits (brief §7).

Every object that is hashed or signed is encoded exactly one way (RFC 8949 §4.2.1 core
deterministic encoding, which cbor2 produces with ``canonical=True``). Decoding is strict so that
no two byte strings decode to the same object: the size is capped before any parsing, nesting
depth is small, indefinite lengths, duplicate map keys, tags and floats are refused, and the
canonical re-encoding must equal the input byte for byte.
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from deltachain.errors import DecodeError, NonCanonicalError, OversizeError

MAX_DEPTH = 8
"""Our wire objects nest at most a few levels; anything deeper is hostile."""

DEFAULT_MAX_SIZE = 1 << 20

_INT_MIN = -(1 << 64)
_INT_MAX = (1 << 64) - 1


def encode(obj: Any) -> bytes:
    """Canonical CBOR; the only encoder used for anything hashed or signed."""
    return cbor2.dumps(obj, canonical=True)


def _no_tags(decoder: Any, tag: Any) -> Any:
    raise DecodeError(f"CBOR tag {tag.tag} is not allowed")


def _check_types(obj: Any, depth: int = 0) -> None:
    """Allow only the CBOR data model we use: ints, bytes, text, arrays, text/int-keyed maps."""
    if depth > MAX_DEPTH:
        raise DecodeError(f"CBOR nesting deeper than {MAX_DEPTH}")
    if obj is None or isinstance(obj, bool | bytes | str):
        return
    if isinstance(obj, int):
        if not _INT_MIN <= obj <= _INT_MAX:
            raise DecodeError("CBOR integer out of the 64-bit range")
        return
    if isinstance(obj, list):
        for item in obj:
            _check_types(item, depth + 1)
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise DecodeError("CBOR map keys must be text or integers")
            _check_types(value, depth + 1)
        return
    raise DecodeError(f"CBOR item of type {type(obj).__name__} is not allowed")


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, what: str = "object") -> Any:
    """Decode canonical CBOR or raise a DecodeError subclass; never returns a partial object."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise OversizeError(what, len(data), max_size)
    if not data:
        raise DecodeError(f"{what}: empty input")
    stream = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(
            stream,
            tag_hook=_no_tags,
            semantic_decoders={},
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
            strict_hashable_types=True,
        ).decode()
    except DecodeError:
        raise
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, MemoryError,
            RecursionError, EOFError) as exc:
        raise DecodeError(f"{what}: malformed CBOR ({exc})") from None
    if stream.tell() != len(data):
        raise DecodeError(f"{what}: {len(data) - stream.tell()} trailing bytes after the CBOR item")
    _check_types(obj)
    if encode(obj) != data:
        raise NonCanonicalError(f"{what}: not canonical CBOR (re-encoding differs)")
    return obj
