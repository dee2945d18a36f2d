"""Request/response framing on one libp2p stream (both the node and light clients speak it).

request  = frame
response = 1 status byte, then a frame
frame    = 4-byte big-endian payload length, then the payload

The length is checked against the reader's cap before any of the payload is read, so a peer
cannot make us buffer more than the cap. ``read`` is looped because py-libp2p's
``read_exactly`` gives up after 101 partial reads.
"""

from __future__ import annotations

import struct
from typing import Protocol

from deltachain.errors import NetworkError, RequestTooLarge

__all__ = [
    "FRAME_HEADER",
    "READ_CHUNK",
    "STATUS_ERROR",
    "STATUS_OK",
    "STATUS_TOO_LARGE",
    "Stream",
    "read_exact",
    "read_frame",
    "write_frame",
]

FRAME_HEADER = struct.Struct(">I")
STATUS_OK = 0
STATUS_ERROR = 1
STATUS_TOO_LARGE = 2
READ_CHUNK = 1 << 20
SINGLE_WRITE_MAX = 1 << 20


class Stream(Protocol):
    """What the framing needs of a libp2p ``INetStream`` (kept structural: no libp2p import)."""

    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


async def read_exact(stream: Stream, n: int) -> bytes:
    """Read exactly ``n`` bytes; ``stream.read(k)`` may return fewer, so loop.

    Raises NetworkError if the stream ends first.
    """
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(min(n - len(buf), READ_CHUNK))
        if not chunk:
            raise NetworkError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: Stream, limit: int, what: str) -> bytes:
    """One length-prefixed frame; raises RequestTooLarge before reading a payload over
    ``limit``, NetworkError if the stream ends early."""
    (length,) = FRAME_HEADER.unpack(await read_exact(stream, FRAME_HEADER.size))
    if length > limit:
        raise RequestTooLarge(f"{what} of {length} bytes is over the cap of {limit} bytes")
    return await read_exact(stream, length)


async def write_frame(stream: Stream, payload: bytes, prefix: bytes = b"") -> None:
    """One write for small frames: a separate header write waits on Nagle + delayed ACK."""
    head = prefix + FRAME_HEADER.pack(len(payload))
    if len(payload) <= SINGLE_WRITE_MAX:
        await stream.write(head + payload)
        return
    await stream.write(head)
    await stream.write(payload)
