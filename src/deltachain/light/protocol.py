"""The light-client request/response protocol ``/deltachain/<genesis hash, 16 hex>/light/1``.

One canonical-CBOR request per libp2p stream, one canonical-CBOR response (framing:
``deltachain.p2p.wire``). The node serves it (``node/light_server.py``) to any peer, reserved
or not; ``light/p2p.py`` is the client. It carries exactly what ``RemoteLightClient`` asks a
node for, in binary (hashes 32 bytes, proofs and headers in their own encodings):

=====================================  ====================================================
request                                result
=====================================  ====================================================
``["genesis"]``                        genesis hash (32 bytes)
``["finalizedHead"]``                  hash of the node's finalized block
``["header", hash]``                   encoded header, or null
``["justification", hash]``            encoded justification finalizing that block, or null
``["proveFinality", number]``          justification of the newest finalized block ≤ number,
                                       or null
``["readProof", [key, ...], hash]``    one encoded trie proof per raw key (1..256 keys)
``["storage", key, hash]``             raw value, or null (absent)
``["chunkProof", model, index, hash]`` ``[index, count, chunk, [path hash, ...], record,
                                       record proof, state root, block hash]``
``["batch", [request, ...]]``          one response per request (1..16, no nested batch)
=====================================  ====================================================

A response is ``[0, result]`` or ``[1, code, message]`` with ``code`` one of
:data:`ERROR_CODES`: ``badRequest`` (malformed request or argument), ``unknownRequest``,
``notFound`` (unknown or pruned block, unknown model), ``tooLarge`` (the response would
exceed :data:`MAX_RESPONSE_BYTES`) or ``internal``. Requests over :data:`MAX_REQUEST_BYTES`
are refused by the framing before they are read.

Nothing in a response is trusted: the light client verifies every justification and proof.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltachain import codec
from deltachain.crypto.hashing import Hash32
from deltachain.errors import DecodeError
from deltachain.primitives.types import as_hash32, as_uint64

__all__ = [
    "ERROR_CODES",
    "KINDS",
    "MAX_BATCH",
    "MAX_REQUEST_BYTES",
    "MAX_RESPONSE_BYTES",
    "BadLightRequest",
    "LightRequest",
    "encode_error",
    "encode_ok",
    "encode_request",
    "light_protocol",
    "parse_request",
]

MAX_REQUEST_BYTES = 16 * 1024
MAX_RESPONSE_BYTES = 4 << 20
"""A chunk proof is ~10 kB; a batch of set proofs well under 1 MB."""
MAX_BATCH = 16
MAX_KEYS = 256
MAX_KEY_BYTES = 1024
MAX_MODEL_ID = 256

OK = 0
ERROR = 1
ERROR_CODES = ("badRequest", "unknownRequest", "notFound", "tooLarge", "internal")

KINDS: dict[str, int] = {
    "genesis": 0,
    "finalizedHead": 0,
    "header": 1,
    "justification": 1,
    "proveFinality": 1,
    "readProof": 2,
    "storage": 2,
    "chunkProof": 3,
    "batch": 1,
}
"""Request kind → number of arguments."""


def light_protocol(genesis_hash: Hash32) -> str:
    """Genesis-scoped like the sync protocol: a node of another chain refuses to negotiate it."""
    return f"/deltachain/{genesis_hash.hex()[:16]}/light/1"


class BadLightRequest(DecodeError):
    """A request the node refuses; ``code`` is the error code it answers with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LightRequest:
    """A validated request: ``kind`` and typed arguments (bytes, int, str, list of bytes)."""

    kind: str
    args: tuple[Any, ...]


def encode_request(kind: str, *args: Any) -> bytes:
    return codec.encode([kind, *args])


def encode_ok(result: Any) -> bytes:
    return codec.encode([OK, result])


def encode_error(code: str, message: str) -> bytes:
    return codec.encode(error_envelope(code, message))


def error_envelope(code: str, message: str) -> list[Any]:
    return [ERROR, code, message[:500]]


def _hash(value: Any, what: str) -> Hash32:
    if not isinstance(value, bytes) or len(value) != 32:
        raise BadLightRequest("badRequest", f"{what} must be 32 bytes")
    return as_hash32(value, what)


def _uint(value: Any, what: str) -> int:
    try:
        return as_uint64(value, what)
    except DecodeError as exc:
        raise BadLightRequest("badRequest", str(exc)) from None


def _key(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) > MAX_KEY_BYTES:
        raise BadLightRequest("badRequest", f"a state key is at most {MAX_KEY_BYTES} bytes")
    return value


def _one(obj: Any) -> LightRequest:
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        raise BadLightRequest("badRequest", "a light request is [kind, args...]")
    kind, args = obj[0], obj[1:]
    if kind not in KINDS or kind == "batch":
        raise BadLightRequest("unknownRequest", f"unknown light request {kind[:40]!r}")
    if len(args) != KINDS[kind]:
        raise BadLightRequest("badRequest", f"{kind} takes {KINDS[kind]} argument(s)")
    if kind in ("header", "justification"):
        return LightRequest(kind, (_hash(args[0], "block hash"),))
    if kind == "proveFinality":
        return LightRequest(kind, (_uint(args[0], "block number"),))
    if kind == "readProof":
        keys = args[0]
        if not isinstance(keys, list) or not 1 <= len(keys) <= MAX_KEYS:
            raise BadLightRequest("badRequest", f"readProof takes 1..{MAX_KEYS} keys")
        return LightRequest(kind, ([_key(k) for k in keys], _hash(args[1], "block hash")))
    if kind == "storage":
        return LightRequest(kind, (_key(args[0]), _hash(args[1], "block hash")))
    if kind == "chunkProof":
        model = args[0]
        if not isinstance(model, str) or not 0 < len(model) <= MAX_MODEL_ID:
            raise BadLightRequest("badRequest", f"a model id is 1..{MAX_MODEL_ID} characters")
        return LightRequest(
            kind, (model, _uint(args[1], "chunk index"), _hash(args[2], "block hash"))
        )
    return LightRequest(kind, ())


def parse_request(data: bytes) -> LightRequest | list[LightRequest]:
    """Decode and validate one request (a batch: a list of them).

    Raises BadLightRequest (``badRequest`` or ``unknownRequest``) for anything else; the CBOR
    decoder caps size (``MAX_REQUEST_BYTES``) and depth before it allocates.
    """
    try:
        obj = codec.decode(data, max_size=MAX_REQUEST_BYTES, what="light request")
    except DecodeError as exc:
        raise BadLightRequest("badRequest", str(exc)) from None
    if isinstance(obj, list) and obj and obj[0] == "batch":
        if len(obj) != 2 or not isinstance(obj[1], list) or not 1 <= len(obj[1]) <= MAX_BATCH:
            raise BadLightRequest("badRequest", f"a batch is [batch, [1..{MAX_BATCH} requests]]")
        return [_one(item) for item in obj[1]]
    return _one(obj)
