"""``P2pTransport``: the light client over libp2p and the light protocol (``light/protocol.py``).

It implements ``remote.Transport`` — the JSON-RPC method names ``RemoteLightClient`` calls —
by translating each call into one light request, and the binary answer back into the JSON
shape the RPC gives, so ``RemoteLightClient`` runs unchanged over either transport. A
``batch`` (the set proof's three calls) is one ``["batch", …]`` request on one stream.

It dials one node's multiaddr (``/ip4/…/tcp/…/p2p/<peer id>``, which a node logs as
"network listening on …") from a dial-only libp2p host on its own thread
(``deltachain.p2p.host.ClientHost``); never imports ``deltachain.node``. Use it as a context
manager (or call ``close``): the libp2p thread ends with it.

Nothing the node answers is trusted beyond its shape; ``RemoteLightClient``/``LightClient``
verify every justification and proof.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from deltachain import codec
from deltachain.crypto.hashing import Hash32
from deltachain.errors import DecodeError, NetworkError, UnsupportedProtocol
from deltachain.light.proofs import unhex
from deltachain.light.protocol import (
    ERROR_CODES,
    MAX_BATCH,
    MAX_RESPONSE_BYTES,
    light_protocol,
)
from deltachain.light.remote import RemoteError, Transport
from deltachain.p2p.host import ClientHost, parse_peer_address
from deltachain.p2p.wire import FRAME_HEADER
from deltachain.primitives.block import Header
from deltachain.primitives.types import as_hash32

__all__ = ["LightProtocolError", "P2pTransport", "PeerOnAnotherChain"]

Convert = Callable[[Any], Any]


class LightProtocolError(RemoteError):
    """The node answered the light request with an error; ``reason`` is its error code
    (``badRequest``, ``unknownRequest``, ``notFound``, ``tooLarge``, ``internal``)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"node error ({reason}): {message}")
        self.reason = reason


class PeerOnAnotherChain(RemoteError):
    """The peer refused this chain's (genesis-scoped) light protocol. ``hint`` says which
    setting picked the chain, so each command can point at its own flag."""

    def __init__(
        self, peer: str, genesis_hash: Hash32, hint: str = "check the genesis hash or --chain"
    ) -> None:
        super().__init__(
            f"the node at {peer} does not serve the light protocol of chain "
            f"0x{genesis_hash.hex()[:16]}…: it runs another chain ({hint}) or is not a "
            "deltachain node"
        )
        self.peer = peer
        self.genesis_hash = genesis_hash


def _0x(data: bytes) -> str:
    return "0x" + data.hex()


def _hash_param(value: Any, what: str) -> Hash32:
    return as_hash32(unhex(value, what), what)


def _opt_bytes(value: Any, what: str) -> bytes | None:
    if value is not None and not isinstance(value, bytes):
        raise DecodeError(f"{what} must be bytes or null")
    return value


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise DecodeError(f"{what} must be bytes")
    return value


def _hex_or_none(what: str) -> Convert:
    def convert(value: Any) -> Any:
        raw = _opt_bytes(value, what)
        return None if raw is None else _0x(raw)

    return convert


def _hash_hex(what: str) -> Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, bytes) or len(value) != 32:
            raise DecodeError(f"{what} must be 32 bytes")
        return _0x(value)

    return convert


def _header(value: Any) -> Any:
    """An encoded header → ``chain_getHeader``'s JSON (``remote.header_from_json`` reads it)."""
    raw = _opt_bytes(value, "header")
    if raw is None:
        return None
    header = Header.decode(raw)
    return {
        "parentHash": _0x(header.parent_hash),
        "number": header.number,
        "slot": header.slot,
        "stateRoot": _0x(header.state_root),
        "extrinsicsRoot": _0x(header.extrinsics_root),
        "author": _0x(header.author),
        "seal": _0x(header.seal),
        "hash": _0x(header.hash),
    }


def _read_proof(at: Hash32, count: int) -> Convert:
    def convert(value: Any) -> Any:
        if not isinstance(value, list) or len(value) != count:
            raise DecodeError(f"readProof must answer {count} proof(s)")
        return {"at": _0x(at), "proof": [_0x(_bytes(p, "read proof")) for p in value]}

    return convert


def _chunk_proof(value: Any) -> Any:
    """``[index, count, chunk, [path], record, record proof, state root, block hash]`` →
    ``model_getChunkProof``'s JSON (``proofs.ChunkProof.from_json`` checks it)."""
    if not isinstance(value, list) or len(value) != 8:
        raise DecodeError("a chunk proof is [index, count, chunk, path, record, proof, root, hash]")
    index, count, chunk, path, record, record_proof, state_root, block_hash = value
    if not isinstance(path, list) or len(path) > 64:
        raise DecodeError("chunk proof path must be a list of at most 64 hashes")
    return {
        "index": index,
        "count": count,
        "chunk": _0x(_bytes(chunk, "chunk")),
        "proof": [_0x(_bytes(p, "proof hash")) for p in path],
        "record": _0x(_bytes(record, "record")),
        "recordProof": _0x(_bytes(record_proof, "record proof")),
        "stateRoot": _0x(_bytes(state_root, "state root")),
        "blockHash": _0x(_bytes(block_hash, "block hash")),
    }


def _translate(method: str, params: list[Any]) -> tuple[list[Any], Convert]:
    """A JSON-RPC call → (light request, converter of its result to the RPC's JSON)."""
    if method == "chain_getGenesisHash" and not params:
        return ["genesis"], _hash_hex("genesis hash")
    if method == "chain_getFinalizedHead" and not params:
        return ["finalizedHead"], _hash_hex("finalized head")
    if method == "chain_getHeader" and len(params) == 1:
        return ["header", _hash_param(params[0], "block hash")], _header
    if method == "chain_getJustification" and len(params) == 1:
        block = _hash_param(params[0], "block hash")
        return ["justification", block], _hex_or_none("justification")
    if method == "finality_proveFinality" and len(params) == 1:
        return ["proveFinality", params[0]], _hex_or_none("justification")
    if method == "state_getReadProof" and len(params) == 2 and isinstance(params[0], list):
        at = _hash_param(params[1], "block hash")
        keys = [unhex(k, "storage key") for k in params[0]]
        return ["readProof", keys, at], _read_proof(at, len(keys))
    if method == "state_getStorage" and len(params) == 2:
        key, at = unhex(params[0], "storage key"), _hash_param(params[1], "block hash")
        return ["storage", key, at], _hex_or_none("storage value")
    if method == "model_getChunkProof" and len(params) == 3:
        block = _hash_param(params[2], "block hash")
        return ["chunkProof", params[0], params[1], block], _chunk_proof
    raise RemoteError(
        f"{method} with {len(params)} parameter(s) is not part of the light protocol "
        "(use the node's JSON-RPC for it)"
    )


def _unwrap(envelope: Any) -> Any:
    """``[0, result]`` → result; ``[1, code, message]`` → LightProtocolError."""
    if isinstance(envelope, list) and len(envelope) == 2 and envelope[0] == 0:
        return envelope[1]
    if (
        isinstance(envelope, list)
        and len(envelope) == 3
        and envelope[0] == 1
        and envelope[1] in ERROR_CODES
        and isinstance(envelope[2], str)
    ):
        raise LightProtocolError(envelope[1], envelope[2][:500])
    raise DecodeError("a light response is [0, result] or [1, code, message]")


class P2pTransport(Transport):
    """``Transport`` over the light protocol to the node at ``peer`` (a ``/p2p/`` multiaddr).

    ``genesis_hash`` picks the protocol id (genesis-scoped, so a node of another chain
    refuses it). ``timeout`` bounds each request, dial included. Counts ``requests`` and the
    framed ``bytes_sent``/``bytes_received`` (payloads plus our length and status bytes;
    libp2p's Noise and yamux headers come on top).
    """

    def __init__(
        self,
        peer: str,
        genesis_hash: Hash32,
        *,
        timeout: float = 10.0,
        max_response: int = MAX_RESPONSE_BYTES,
    ) -> None:
        try:
            self.peer = parse_peer_address(peer)
        except NetworkError as exc:
            raise RemoteError(str(exc)) from None
        self.genesis_hash = as_hash32(genesis_hash, "genesis hash")
        self.protocol = light_protocol(self.genesis_hash)
        self.timeout = timeout
        self.max_response = max_response
        self.requests = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._host = ClientHost()

    def __enter__(self) -> P2pTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the libp2p host and join its thread (idempotent)."""
        self._host.close()

    def _exchange(self, request: list[Any]) -> Any:
        data = codec.encode(request)
        self.requests += 1
        self.bytes_sent += FRAME_HEADER.size + len(data)
        try:
            reply = self._host.request(
                self.peer,
                self.protocol,
                data,
                timeout=self.timeout,
                max_response=self.max_response,
            )
        except UnsupportedProtocol:
            raise PeerOnAnotherChain(self.peer.text, self.genesis_hash) from None
        except NetworkError as exc:
            raise RemoteError(str(exc)) from None
        self.bytes_received += 1 + FRAME_HEADER.size + len(reply)
        return codec.decode(reply, max_size=self.max_response, what="light response")

    def call(self, method: str, params: list[Any]) -> Any:
        request, convert = _translate(method, params)
        return convert(_unwrap(self._exchange(request)))

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        if len(calls) == 1:
            return [self.call(*calls[0])]
        if not calls or len(calls) > MAX_BATCH:
            return super().batch(calls)
        translated = [_translate(method, params) for method, params in calls]
        answers = _unwrap(self._exchange(["batch", [request for request, _ in translated]]))
        if not isinstance(answers, list) or len(answers) != len(translated):
            raise DecodeError("a batch response must answer every request")
        return [convert(_unwrap(a)) for (_, convert), a in zip(translated, answers, strict=True)]
