"""Canonical CBOR with hard limits (brief §7): round trips of our data model, and hostile input
that must always end in a DecodeError subclass, quickly and without allocating what it claims."""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltachain.codec import DEFAULT_MAX_SIZE, MAX_DEPTH, decode, encode
from deltachain.errors import DecodeError, DeltachainError, NonCanonicalError, OversizeError

pytestmark = pytest.mark.timeout(60)

INT_MIN = -(2**64)
INT_MAX = 2**64 - 1


def head(major: int, value: int, size: int | None = None) -> bytes:
    """A CBOR head with an explicit argument size (1, 2, 4, 8 bytes) or the minimal one."""
    if size is None:
        if value < 24:
            return bytes([major << 5 | value])
        size = next(s for s in (1, 2, 4, 8) if value < 1 << (8 * s))
    info = {1: 24, 2: 25, 4: 26, 8: 27}[size]
    return bytes([major << 5 | info]) + value.to_bytes(size, "big")


def nested_arrays(depth: int) -> bytes:
    return b"\x81" * depth + b"\x00"


def nested_maps(depth: int) -> bytes:
    return b"\xa1\x61k" * depth + b"\x00"


# --- the data model round-trips ---------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(INT_MIN, INT_MAX)
    | st.sampled_from(
        [
            0,
            23,
            24,
            255,
            256,
            65535,
            65536,
            2**32 - 1,
            2**32,
            INT_MAX,
            -1,
            -24,
            -25,
            -256,
            -257,
            INT_MIN,
        ]
    )
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
map_keys = st.text(max_size=8) | st.integers(INT_MIN, INT_MAX)


def values(depth: int) -> st.SearchStrategy[Any]:
    """Objects of our data model with at most ``depth`` nested containers."""
    if depth == 0:
        return scalars
    inner = values(depth - 1)
    return scalars | st.lists(inner, max_size=4) | st.dictionaries(map_keys, inner, max_size=4)


@given(values(MAX_DEPTH))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(obj: Any) -> None:
    data = encode(obj)
    back = decode(data)
    assert back == obj
    assert encode(back) == data  # also catches bool/int confusion, which == would hide


@pytest.mark.parametrize(
    ("obj", "hex_encoding"),
    [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (255, "18ff"),
        (256, "190100"),
        (65536, "1a00010000"),
        (2**32, "1b0000000100000000"),
        (INT_MAX, "1bffffffffffffffff"),
        (-1, "20"),
        (-25, "3818"),
        (INT_MIN, "3bffffffffffffffff"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        (b"", "40"),
        (b"\x01\x02", "420102"),
        ("", "60"),
        ("a", "6161"),
        ("ü", "62c3bc"),
        ([], "80"),
        ([1, [2, 3]], "8201820203"),
        ({}, "a0"),
        ({"a": 1}, "a1616101"),
    ],
)
def test_known_encodings(obj: Any, hex_encoding: str) -> None:
    assert encode(obj).hex() == hex_encoding
    assert decode(bytes.fromhex(hex_encoding)) == obj


def test_map_keys_are_sorted_length_first() -> None:
    """The module documents RFC 8949 §4.2.3 (length-first) order: shorter encoded keys first,
    then bytewise. For text keys that equals §4.2.1; for mixed keys it does not."""
    assert encode({"aa": 1, "b": 2}).hex() == "a2616202626161" + "01"
    assert encode({24: 0, "": 1}).hex() == "a2" + "6001" + "181800"
    assert encode({100: 0, -1: 1, 10: 2, "z": 3}).hex() == "a4" + "0a02" + "2001" + "186400" + (
        "617a03"
    )
    assert decode(bytes.fromhex("a26001181800")) == {24: 0, "": 1}
    with pytest.raises(NonCanonicalError):
        decode(bytes.fromhex("a21818006001"))  # bytewise (§4.2.1) order is not ours


def test_integer_keyed_maps_round_trip() -> None:
    """The data model allows integer map keys; cbor2's strict_hashable_types would refuse them."""
    for obj in ({1: "a"}, {-1: b"x", 0: None}, {"x": 1, 2: [3]}, {INT_MAX: 0, INT_MIN: 1}):
        assert decode(encode(obj)) == obj


def test_accepts_bytearray_and_memoryview() -> None:
    data = encode([1, b"two", {"three": 3}])
    assert decode(bytearray(data)) == decode(memoryview(data)) == [1, b"two", {"three": 3}]


def test_depth_limit_is_exact() -> None:
    assert decode(nested_arrays(MAX_DEPTH)) is not None
    assert decode(nested_maps(MAX_DEPTH)) is not None
    assert decode(b"\x81" * (MAX_DEPTH - 1) + b"\x80") == decode(encode(_nest([], MAX_DEPTH - 1)))
    with pytest.raises(DecodeError):
        decode(nested_arrays(MAX_DEPTH + 1))
    with pytest.raises(DecodeError):
        decode(nested_maps(MAX_DEPTH + 1))
    with pytest.raises(DecodeError):
        decode(b"\x81" * MAX_DEPTH + b"\x80")  # an empty container still opens a level


def _nest(obj: Any, depth: int) -> Any:
    for _ in range(depth):
        obj = [obj]
    return obj


# --- hostile input: everything ends in DecodeError --------------------------------------------

BIG = 2**62

HOSTILE: dict[str, bytes] = {
    # nesting
    "arrays 9 deep": nested_arrays(MAX_DEPTH + 1),
    "maps 9 deep": nested_maps(MAX_DEPTH + 1),
    "arrays 100000 deep": nested_arrays(100_000),
    "maps 100000 deep": nested_maps(100_000),
    "mixed deep": (b"\x81\xa1\x61k") * 50 + b"\x00",
    # huge declared lengths (8-byte and 4-byte arguments)
    "bytes 2^62": head(2, BIG, 8),
    "text 2^62": head(3, BIG, 8),
    "array 2^62": head(4, BIG, 8),
    "map 2^62": head(5, BIG, 8),
    "bytes 2^64-1": head(2, INT_MAX, 8) + b"abc",
    "array 2^64-1": head(4, INT_MAX, 8) + b"\x00\x00",
    "map 2^63": head(5, 2**63, 8) + b"\x00\x00",
    "bytes 2^31": head(2, 2**31, 4),
    "array 2^31": head(4, 2**31, 4) + b"\x00" * 100,
    "array of huge bytes": b"\x82" + head(2, BIG, 8) + b"\x00",
    "map with huge text key": b"\xa1" + head(3, BIG, 8),
    "array one short": b"\x83\x00\x00",
    "bytes one short": b"\x43ab",
    "map value missing": b"\xa1\x61a",
    "truncated head": b"\x19\x01",
    "truncated 8-byte head": b"\x1b\x00\x00",
    # indefinite lengths
    "indefinite bytes": b"\x5f\x41a\xff",
    "indefinite text": b"\x7f\x61a\xff",
    "indefinite array": b"\x9f\x01\xff",
    "indefinite empty array": b"\x9f\xff",
    "indefinite map": b"\xbf\x61a\x01\xff",
    "indefinite in array": b"\x81\x9f\xff",
    "lone break": b"\xff",
    "break in array": b"\x82\x00\xff",
    "indefinite uint": b"\x1f",
    "indefinite negint": b"\x3f",
    # duplicate keys
    "duplicate text keys": b"\xa2\x61a\x01\x61a\x02",
    "duplicate int keys": b"\xa2\x01\x01\x01\x02",
    "duplicate keys nested": b"\x81\xa2\x20\x00\x20\x00",
    # undefined / simple values / floats
    "undefined": b"\xf7",
    "simple 0": b"\xe0",
    "simple 16": b"\xf0",
    "simple 19": b"\xf3",
    "simple 32 (two bytes)": b"\xf8\x20",
    "simple 255": b"\xf8\xff",
    "simple 20 in two bytes": b"\xf8\x14",
    "reserved 0xfc": b"\xfc",
    "reserved 0xfd": b"\xfd",
    "reserved 0xfe": b"\xfe",
    "half float 1.0": b"\xf9\x3c\x00",
    "half float NaN": b"\xf9\x7e\x00",
    "single float 1.0": b"\xfa\x3f\x80\x00\x00",
    "double float 1.0": b"\xfb\x3f\xf0\x00\x00\x00\x00\x00\x00",
    "double float truncated": b"\xfb\x3f",
    "float in array": b"\x81\xf9\x00\x00",
    "undefined in map": b"\xa1\x61a\xf7",
    # map keys that are neither text nor integers
    "bytes key": b"\xa1\x41a\x01",
    "array key": b"\xa1\x80\x01",
    "map key": b"\xa1\xa0\x01",
    "true key": b"\xa1\xf5\x01",
    "null key": b"\xa1\xf6\x01",
    "float key": b"\xa1\xf9\x3c\x00\x01",
    "tagged key": b"\xa1\xc1\x01\x01",
    "bytes key after text key": b"\xa2\x61a\x01\x41b\x02",
    # reserved additional information
    **{
        f"reserved ai {ai} major {major}": bytes([major << 5 | ai]) + b"\x00" * 9
        for major in range(8)
        for ai in (28, 29, 30)
    },
    # not UTF-8
    "text invalid continuation": b"\x62\xc3\x28",
    "text lone 0xff": b"\x61\xff",
    "text overlong slash": b"\x62\xc0\xaf",
    "text surrogate": b"\x63\xed\xa0\x80",
    "text truncated sequence": b"\x61\xe2",
    "text key not UTF-8": b"\xa1\x61\xff\x00",
    # trailing bytes
    "trailing after uint": b"\x01\x02",
    "trailing zero": b"\x00\x00",
    "trailing after array": b"\x80\x00",
    "trailing after map": b"\xa1\x61a\x01\x00",
    "trailing break": b"\x01\xff",
    "two items": encode([1, 2]) + encode({"a": 1}),
}

# Every tag is refused, whatever it wraps; the contents are the ones cbor2 would understand.
TAGS: dict[int, bytes] = {
    0: b"\x74" + b"2013-03-21T20:04:00Z",
    1: b"\x1a\x51\x4b\x67\xb0",
    2: b"\x41\x01",
    3: b"\x41\x01",
    4: b"\x82\x21\x19\x6a\xb3",
    5: b"\x82\x20\x03",
    21: b"\x41\x01",
    22: b"\x41\x01",
    23: b"\x41\x01",
    24: b"\x41\x01",
    25: b"\x00",
    26: b"\x82\x61a\x80",
    27: b"\x82\x61a\x80",
    28: b"\x81\x00",
    29: b"\x00",
    30: b"\x82\x01\x02",
    32: b"\x61a",
    33: b"\x61a",
    34: b"\x61a",
    35: b"\x61a",
    36: b"\x61a",
    37: b"\x50" + b"\x00" * 16,
    52: b"\x44\x7f\x00\x00\x01",
    54: b"\x50" + b"\x00" * 16,
    55: b"\x00",
    100: b"\x00",
    256: b"\x81\x00",
    258: b"\x80",
    260: b"\x44\x7f\x00\x00\x01",
    261: b"\xa1\x44\x7f\x00\x00\x00\x18\x18",
    1004: b"\x6a" + b"2020-01-01",
    1000: b"\x00",
    55799: b"\x00",
    2**16: b"\x00",
    2**32: b"\x00",
    2**63: b"\x00",
    2**64 - 1: b"\x00",
}
for _tag, _content in TAGS.items():
    HOSTILE[f"tag {_tag}"] = head(6, _tag) + _content
HOSTILE["tag 2 bignum of a small int"] = b"\xc2\x41\x05"
HOSTILE["tag 3 bignum of a small negative int"] = b"\xc3\x41\x05"
HOSTILE["tag 2 bignum over 64 bits"] = b"\xc2\x49\x01" + b"\x00" * 8
HOSTILE["shared self-reference"] = b"\xd8\x1c\x81\xd8\x1d\x00"
HOSTILE["tag in array"] = b"\x82\x00\xc1\x00"
HOSTILE["tag in map value"] = b"\xa1\x61a\xd9\xd9\xf7\x00"
HOSTILE["tag with non-minimal head"] = b"\xd8\x01\x00"
HOSTILE["nested tags"] = b"\xc6" * 1000 + b"\x00"


@pytest.mark.parametrize("data", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_input_raises_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


NON_CANONICAL: dict[str, bytes] = {
    "uint 1 in 1 byte": b"\x18\x01",
    "uint 23 in 1 byte": b"\x18\x17",
    "uint 1 in 2 bytes": b"\x19\x00\x01",
    "uint 255 in 2 bytes": b"\x19\x00\xff",
    "uint 1 in 4 bytes": b"\x1a\x00\x00\x00\x01",
    "uint 65535 in 4 bytes": b"\x1a\x00\x00\xff\xff",
    "uint 1 in 8 bytes": b"\x1b" + (1).to_bytes(8, "big"),
    "uint 2^32-1 in 8 bytes": b"\x1b" + (2**32 - 1).to_bytes(8, "big"),
    "negint -1 in 1 byte": b"\x38\x00",
    "negint -1 in 8 bytes": b"\x3b" + bytes(8),
    "bytes length in 1 byte": b"\x58\x01a",
    "text length in 2 bytes": b"\x79\x00\x01a",
    "array length in 1 byte": b"\x98\x01\x00",
    "map length in 1 byte": b"\xb8\x01\x61a\x00",
    "non-minimal inside array": b"\x82\x00\x18\x05",
    "unsorted text keys": b"\xa2\x61b\x01\x61a\x02",
    "longer key first": b"\xa2\x62aa\x01\x61b\x02",
    "unsorted int keys": b"\xa2\x02\x00\x01\x00",
    "negative before positive": b"\xa2\x20\x00\x01\x00",
    "text key before shorter int key": b"\xa2\x61a\x00\x01\x00",
    "unsorted nested map": b"\x81\xa2\x61b\x01\x61a\x02",
}


@pytest.mark.parametrize("data", list(NON_CANONICAL.values()), ids=list(NON_CANONICAL))
def test_non_canonical_encodings_raise_non_canonical_error(data: bytes) -> None:
    with pytest.raises(NonCanonicalError):
        decode(data)


@pytest.mark.parametrize(
    "data",
    [
        head(2, BIG, 8),
        head(3, BIG, 8),
        head(4, BIG, 8),
        head(5, BIG, 8),
        head(4, 2**31, 4) + b"\x00" * 1000,
        head(5, 2**31, 4) + b"\x00" * 1000,
    ],
    ids=["bytes", "text", "array", "map", "array 2^31", "map 2^31"],
)
def test_huge_declared_lengths_do_not_allocate(data: bytes) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


@pytest.mark.parametrize("data", [b"", bytearray(), memoryview(b"")])
def test_empty_input(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data)


@pytest.mark.parametrize("data", ["", "00", None, 0, [0], {"a": 1}])
def test_non_bytes_input(data: object) -> None:
    with pytest.raises(DecodeError):
        decode(data)  # type: ignore[arg-type]


# --- size cap ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        encode(b"x" * 200),  # valid, just too large
        b"\xff" * 200,  # garbage: parsing it would fail differently
        b"\xc1" + b"\x00" * 199,  # a tag
        head(2, BIG, 8) + b"\x00" * 191,  # a huge declared length
        b"\x81" * 200,  # deep nesting
    ],
    ids=["valid", "garbage", "tag", "huge length", "deep"],
)
def test_oversize_is_checked_before_parsing(data: bytes) -> None:
    with pytest.raises(OversizeError) as info:
        decode(data, max_size=100, what="widget")
    assert info.value.size == len(data)
    assert info.value.limit == 100
    assert info.value.what == "widget"
    assert "widget" in str(info.value)


def test_oversize_counts_bytes_of_a_memoryview() -> None:
    view = memoryview(encode(b"x" * 200)).cast("B")
    with pytest.raises(OversizeError):
        decode(view, max_size=100)
    wide = memoryview(bytes(400)).cast("I")  # 100 items, 400 bytes
    with pytest.raises(OversizeError) as info:
        decode(wide, max_size=200)  # type: ignore[arg-type]
    assert info.value.size == 400


def test_size_limit_is_inclusive() -> None:
    data = encode(b"x" * 100)
    assert decode(data, max_size=len(data)) == b"x" * 100
    with pytest.raises(OversizeError):
        decode(data, max_size=len(data) - 1)


def test_default_size_limit() -> None:
    at_limit = head(2, DEFAULT_MAX_SIZE - 5, 4) + b"\x00" * (DEFAULT_MAX_SIZE - 5)
    assert len(at_limit) == DEFAULT_MAX_SIZE
    assert decode(at_limit) == bytes(DEFAULT_MAX_SIZE - 5)
    with pytest.raises(OversizeError):
        decode(at_limit + b"\x00")


def test_errors_are_in_the_tree() -> None:
    assert issubclass(NonCanonicalError, DecodeError)
    assert issubclass(OversizeError, DecodeError)
    assert issubclass(DecodeError, DeltachainError)


def test_what_names_the_object_in_messages() -> None:
    with pytest.raises(DecodeError, match="transaction body"):
        decode(b"\xf7", what="transaction body")


# --- fuzzing: decode succeeds exactly on canonical encodings ----------------------------------


def check_strict(data: bytes) -> None:
    """decode(data) either returns an object whose encoding is exactly ``data`` or raises a
    DecodeError subclass; any other exception fails the test."""
    try:
        obj = decode(data)
    except DecodeError:
        return
    assert encode(obj) == data


@given(st.binary(max_size=64))
@settings(max_examples=1500, deadline=None)
def test_fuzz_random_bytes(data: bytes) -> None:
    check_strict(data)


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(values(2))))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data.insert(at, draw(st.integers(0, 255)))
        elif kind == "delete" and data:
            del data[at]
        elif kind == "truncate":
            del data[at + 1 :]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=9))
    return bytes(data)


@given(mutated_encodings())
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutated_encodings(data: bytes) -> None:
    check_strict(data)


@given(st.integers(0, 7), st.integers(0, 31), st.binary(max_size=12))
@settings(max_examples=500, deadline=None)
def test_fuzz_every_initial_byte(major: int, info: int, rest: bytes) -> None:
    check_strict(bytes([major << 5 | info]) + rest)


@given(st.integers(0, 2**64 - 1), values(1))
@settings(max_examples=200, deadline=None)
def test_fuzz_any_tag_is_refused(tag: int, content: Any) -> None:
    with pytest.raises(DecodeError):
        decode(head(6, tag) + encode(content))
    with pytest.raises(DecodeError):
        decode(b"\x82\x00" + head(6, tag) + encode(content))
