"""Wire protocols between nodes: gossip topics and the request/response messages they serve.

Gossip (scoped by genesis hash, so two chains never share a topic):
  ``…/blocks``          ``["block", block]``, or ``["header", header]`` when too big to gossip
  ``…/txs``             an encoded transaction
  ``…/votes``           an encoded finality vote
  ``…/justifications``  an encoded justification (helps peers that missed votes)

Request/response ``…/sync/1`` (one CBOR request, one CBOR response):
  ``["status"]``                 → ``[best number, best hash, finalized number, finalized hash]``
  ``["blocks", start, count]``   → canonical blocks from height ``start`` (at most ``count`` and
                                   MAX_RESPONSE_BYTES)
  ``["block", hash]``            → ``[block]`` or ``[]``
  ``["justification", number]``  → ``[justification]`` for the newest finalized block ≤ number,
                                   or ``[]``
  ``["votes"]``                  → encoded votes above finality that a node back from a restart
                                   needs: those that justified a block, each voter's newest
                                   (at most MAX_VOTES_PER_RESPONSE)
Every handler answers from the node's own storage and never trusts the request beyond its caps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltachain import codec
from deltachain.errors import DecodeError, NotFound
from deltachain.node.chain import Chain
from deltachain.primitives.block import MAX_BLOCK_SIZE
from deltachain.primitives.types import BlockNumber, Hash32, as_hash32, as_uint64

MAX_REQUEST_BYTES = 1024
MAX_BLOCKS_PER_RESPONSE = 256
MAX_RESPONSE_BYTES = 16 << 20
MAX_VOTES_PER_RESPONSE = 1024
GOSSIP_BLOCK_LIMIT = 900_000
"""Blocks bigger than this are announced by header and fetched with ``["block", hash]``."""


def topics(genesis_hash: Hash32) -> dict[str, str]:
    prefix = f"/deltachain/{genesis_hash.hex()[:16]}"
    return {name: f"{prefix}/{name}" for name in ("blocks", "txs", "votes", "justifications")}


def sync_protocol(genesis_hash: Hash32) -> str:
    return f"/deltachain/{genesis_hash.hex()[:16]}/sync/1"


@dataclass(frozen=True)
class PeerStatus:
    best_number: BlockNumber
    best_hash: Hash32
    finalized_number: BlockNumber
    finalized_hash: Hash32

    @classmethod
    def decode(cls, data: bytes) -> PeerStatus:
        obj = codec.decode(data, max_size=MAX_REQUEST_BYTES, what="status")
        if not isinstance(obj, list) or len(obj) != 4:
            raise DecodeError("status is [best number, best hash, finalized number, hash]")
        return cls(
            BlockNumber(as_uint64(obj[0], "best")),
            as_hash32(obj[1], "best hash"),
            BlockNumber(as_uint64(obj[2], "finalized")),
            as_hash32(obj[3], "hash"),
        )


def request_status() -> bytes:
    return codec.encode(["status"])


def request_blocks(start: int, count: int) -> bytes:
    return codec.encode(["blocks", start, count])


def request_block(block_hash: Hash32) -> bytes:
    return codec.encode(["block", block_hash])


def request_justification(number: int) -> bytes:
    return codec.encode(["justification", number])


def request_votes() -> bytes:
    return codec.encode(["votes"])


def decode_list(data: bytes, what: str) -> list[bytes]:
    obj = codec.decode(data, max_size=MAX_RESPONSE_BYTES + 1024, what=what)
    if not isinstance(obj, list) or not all(isinstance(item, bytes) for item in obj):
        raise DecodeError(f"{what} must be a list of byte strings")
    return obj


def serve(chain: Chain, request: bytes) -> bytes:
    """Answer one sync request from storage (runs on the chain thread). Raises DecodeError."""
    obj: Any = codec.decode(request, max_size=MAX_REQUEST_BYTES, what="sync request")
    if not isinstance(obj, list) or not obj or not isinstance(obj[0], str):
        raise DecodeError("a sync request is [kind, ...]")
    kind, storage = obj[0], chain.storage
    if kind == "status" and len(obj) == 1:
        best, fin = storage.best_header(), storage.finalized_header()
        return codec.encode([best.number, best.hash, fin.number, fin.hash])
    if kind == "blocks" and len(obj) == 3:
        start = as_uint64(obj[1], "start")
        count = min(as_uint64(obj[2], "count"), MAX_BLOCKS_PER_RESPONSE)
        out: list[bytes] = []
        size = 0
        for _, block_hash in storage.canonical_hashes(start, count):
            if len(out) >= count:
                break
            encoded = storage.block(block_hash).encode()
            if out and size + len(encoded) > MAX_RESPONSE_BYTES:
                break
            out.append(encoded)
            size += len(encoded)
        return codec.encode(out)
    if kind == "block" and len(obj) == 2:
        try:
            block = storage.block(as_hash32(obj[1], "block hash"))
        except NotFound:
            return codec.encode([])
        return codec.encode([block.encode()] if len(block.encode()) <= MAX_BLOCK_SIZE else [])
    if kind == "justification" and len(obj) == 2:
        try:
            return codec.encode([storage.latest_justification(as_uint64(obj[1], "number"))])
        except NotFound:
            return codec.encode([])
    if kind == "votes" and len(obj) == 1:
        votes = chain.pending_votes()[-MAX_VOTES_PER_RESPONSE:]
        return codec.encode([vote.encode() for vote in votes])
    raise DecodeError(f"unknown sync request {kind!r}")
