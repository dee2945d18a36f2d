"""What a node shows light clients, in binary: one implementation behind two front ends.

``node/rpc.py`` (JSON-RPC, 0x-hex) and ``node/light_server.py`` (the ``…/light/1`` protocol,
CBOR) both call these, on the chain thread, so both transports prove exactly the same things.
Block hashes are explicit here; the RPC's "default: best block" stays in the RPC.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltachain.crypto.hashing import Hash32
from deltachain.errors import NotFound
from deltachain.model_state.module import ModelStateModule
from deltachain.node.chain import Chain
from deltachain.primitives.block import Header

__all__ = [
    "ChunkProofData",
    "chunk_proof",
    "header",
    "justification",
    "model_module",
    "prove_finality",
    "read_proof",
    "storage_value",
]

_SQLITE_MAX_INT = (1 << 63) - 1


def header(chain: Chain, block_hash: Hash32) -> Header | None:
    try:
        return chain.storage.header(block_hash)
    except NotFound:
        return None


def justification(chain: Chain, block_hash: Hash32) -> bytes | None:
    """The stored finality proof (encoded justification) of a block; None if none."""
    try:
        return chain.storage.justification(block_hash)
    except NotFound:
        return None


def prove_finality(chain: Chain, number: int) -> bytes | None:
    """The justification of the newest finalized canonical block at or below ``number``; None
    before anything is finalized. (Heights past SQLite's integer range mean "the newest".)"""
    try:
        return chain.storage.latest_justification(min(number, _SQLITE_MAX_INT))
    except NotFound:
        return None


def storage_value(chain: Chain, key: bytes, at: Hash32) -> bytes | None:
    """Raw state value at a block (None: absent). Raises NotFound for an unknown block."""
    return chain.state_at(at).get(key)


def read_proof(chain: Chain, keys: list[bytes], at: Hash32) -> list[bytes]:
    """Encoded trie proofs (inclusion or non-inclusion) of raw keys at a block's state root.

    Raises NotFound for an unknown (or pruned) block.
    """
    return [chain.prove(key, at).encode() for key in keys]


def model_module(chain: Chain) -> ModelStateModule | None:
    module = chain.runtime.modules.get("model_state")
    return module if isinstance(module, ModelStateModule) else None


@dataclass(frozen=True)
class ChunkProofData:
    """A weight chunk, its Merkle path to ``weightsRoot``, and the model record with its trie
    proof, at ``block_hash`` (whose state root is ``state_root``)."""

    chunk: bytes
    index: int
    count: int
    proof: list[bytes]
    record: bytes
    record_key: bytes
    record_proof: bytes
    state_root: Hash32
    block_hash: Hash32


def chunk_proof(
    chain: Chain, module: ModelStateModule, model: str, index: int, at: Hash32
) -> ChunkProofData:
    """Raises NotFound (unknown block or model), InvalidCall (index out of range)."""
    state = chain.state_at(at)
    found = module.query(state, "chunk", {"model": model, "index": index})
    chunk, record = found["chunk"], found["record"]
    if chunk is None or record is None:
        raise NotFound(f"model {model!r} chunk {index} is missing at 0x{at.hex()[:16]}")
    return ChunkProofData(
        chunk=chunk,
        index=found["index"],
        count=found["count"],
        proof=list(found["proof"]),
        record=record,
        record_key=found["recordKey"],
        record_proof=chain.prove(found["recordKey"], at).encode(),
        state_root=state.base_root,
        block_hash=at,
    )
