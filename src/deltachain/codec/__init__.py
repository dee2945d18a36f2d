"""Canonical CBOR with hard limits (brief §7).

Every object that is hashed or signed is encoded exactly one way: shortest heads, definite
lengths, and map keys sorted length-first then bytewise (RFC 8949 §4.2.3, the RFC 7049
"canonical" order, which cbor2 produces with ``canonical=True``; for text keys it is the same
order as RFC 8949 §4.2.1, for integer keys it is not).

Decoding is strict so that no two byte strings decode to the same object: the size is capped
before any parsing; then a scan of the item heads, which builds nothing, refuses tags, floats,
simple values other than false/true/null, indefinite lengths, reserved heads, non-minimal heads,
map keys other than text or integers, nesting deeper than ``MAX_DEPTH``, lengths that run past
the input and trailing bytes, all before cbor2 decodes anything. cbor2 then refuses duplicate
keys and invalid UTF-8, and the canonical re-encoding must equal the input byte for byte.

The data model: ``None``, ``bool``, integers in [-2**64, 2**64 - 1], ``bytes``, ``str``, arrays
(decoded as ``list``) and maps keyed by text or integers (decoded as ``dict``).
"""

from __future__ import annotations

import io
from typing import Any

import cbor2

from deltachain.errors import CorruptDatabase, DecodeError, NonCanonicalError, OversizeError

MAX_DEPTH = 8
"""Our wire objects nest at most a few levels; anything deeper is hostile."""

DEFAULT_MAX_SIZE = 1 << 20

_FALSE_TRUE_NULL = frozenset((20, 21, 22))
_KEY_MAJORS = frozenset((0, 1, 3))  # unsigned int, negative int, text


def encode(obj: Any) -> bytes:
    """Canonical CBOR; the only encoder used for anything hashed or signed."""
    return cbor2.dumps(obj, canonical=True)


def _scan(data: bytes, what: str) -> None:
    """Walk the item heads of ``data`` without building anything; raise unless it is exactly one
    well-formed item inside our profile. Linear in the input; nothing it allocates depends on a
    declared length."""
    n = len(data)
    pos = 0
    left = 0  # items still due in the innermost open container (maps count keys and values)
    in_map = False  # whether that container is a map (a key is due when ``left`` is even)
    outer: list[tuple[int, bool]] = []  # the same for the enclosing open containers
    while True:
        if pos >= n:
            raise DecodeError(f"{what}: truncated CBOR")
        initial = data[pos]
        pos += 1
        major = initial >> 5
        info = initial & 0x1F
        if in_map and not left & 1 and major not in _KEY_MAJORS:
            raise DecodeError(f"{what}: CBOR map keys must be text or integers")
        if info < 24 and major < 6:
            value = info
        elif major == 6:
            raise DecodeError(f"{what}: CBOR tags are not allowed")
        elif major == 7:
            if info not in _FALSE_TRUE_NULL:
                raise DecodeError(
                    f"{what}: CBOR floats, undefined, simple values and breaks are not allowed"
                )
            value = 0
        elif info < 28:
            size = 1 << (info - 24)
            if size > n - pos:
                raise DecodeError(f"{what}: truncated CBOR")
            value = int.from_bytes(data[pos : pos + size], "big")
            pos += size
            if value < (24 if size == 1 else 1 << (4 * size)):
                raise NonCanonicalError(f"{what}: non-minimal CBOR head")
        elif info == 31:
            raise DecodeError(f"{what}: indefinite-length CBOR items are not allowed")
        else:
            raise DecodeError(f"{what}: reserved CBOR additional information {info}")
        if major in (2, 3):
            if value > n - pos:
                raise DecodeError(f"{what}: CBOR string of {value} bytes runs past the input")
            pos += value
        elif major in (4, 5):
            if len(outer) + (1 if left else 0) >= MAX_DEPTH:
                raise DecodeError(f"{what}: CBOR nesting deeper than {MAX_DEPTH}")
            count = 2 * value if major == 5 else value
            if count > n - pos:  # every item takes at least one byte
                raise DecodeError(f"{what}: CBOR container of {value} items runs past the input")
            if count:
                if left:
                    outer.append((left, in_map))
                left, in_map = count, major == 5
                continue
        # One item is complete; it may complete its container, and that one its parent, ...
        while left:
            left -= 1
            if left or not outer:
                break
            left, in_map = outer.pop()
        if not left:
            break
    if pos != n:
        raise DecodeError(f"{what}: {n - pos} trailing bytes after the CBOR item")


def decode(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE, what: str = "object") -> Any:
    """Decode canonical CBOR or raise a DecodeError subclass; never returns a partial object.

    Raises OversizeError (before reading any of it) when ``data`` is longer than ``max_size``,
    NonCanonicalError for a valid but non-canonical encoding, and DecodeError otherwise.
    """
    if isinstance(data, memoryview):
        size = data.nbytes
    elif isinstance(data, bytes | bytearray):
        size = len(data)
    else:
        raise DecodeError(f"{what}: expected bytes, got {type(data).__name__}")
    if size > max_size:
        raise OversizeError(what, size, max_size)
    if not size:
        raise DecodeError(f"{what}: empty input")
    data = bytes(data)
    _scan(data, what)
    stream = io.BytesIO(data)
    try:
        obj = cbor2.CBORDecoder(
            stream,
            max_depth=MAX_DEPTH,
            allow_indefinite=False,
            allow_duplicate_keys=False,
        ).decode()
    except (
        cbor2.CBORDecodeError,
        ValueError,
        TypeError,
        OverflowError,
        MemoryError,
        RecursionError,
        EOFError,
    ) as exc:
        raise DecodeError(f"{what}: malformed CBOR ({exc})") from None
    if stream.tell() != len(data):
        raise DecodeError(f"{what}: {len(data) - stream.tell()} trailing bytes after the CBOR item")
    if encode(obj) != data:
        raise NonCanonicalError(f"{what}: not canonical CBOR (re-encoding differs)")
    return obj


def decode_stored(data: bytes, what: str = "stored value") -> Any:
    """Decode bytes this node's own runtime wrote with ``encode`` (state values), skipping the
    canonical-form checks ``decode`` makes on input from outside: the hot path of every
    transaction reads several of them. Raises CorruptDatabase if they do not decode."""
    try:
        return cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, EOFError) as exc:
        raise CorruptDatabase(
            f"{what} in the database does not decode ({exc}); the database is damaged"
        ) from None
