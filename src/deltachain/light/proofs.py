"""What a light client is shown besides justifications: state, authority-set and chunk proofs.

Every check here is pure (hashlib and the CBOR decoder) and takes the state root to check
against as an argument; ``client.Verifier`` supplies a trusted one.

* a **state proof** is a trie proof that raw key ``k`` holds raw value ``v`` (or nothing) under a
  state root (``crypto.trie.verify_proof`` over ``state_key_hash(k)``/``state_value_hash(v)``);
* a **set proof** is two of them, for ``system/set_id`` and (when the set changed)
  ``system/authorities``, against the state root of the block a justification finalizes;
* a **chunk proof** is a weight chunk, its Merkle path to the model's ``weightsRoot``, and the
  model record with its state proof (chunk → leaf → weightsRoot → record → state root).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deltachain import codec
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.merkle import leaf_hash, verify_merkle_proof
from deltachain.crypto.trie import TrieProof, verify_proof
from deltachain.errors import DecodeError, ProofError
from deltachain.light.keys import (
    KEY_AUTHORITIES,
    KEY_SET_ID,
    key_model,
    state_key_hash,
    state_value_hash,
)
from deltachain.primitives.types import Address, as_hash32, as_uint64

__all__ = [
    "MAX_AUTHORITIES",
    "MAX_RECORD_SIZE",
    "ChunkProof",
    "ModelRecordView",
    "SetProof",
    "as_trie_proof",
    "decode_authorities",
    "verify_set_proof",
    "verify_state_proof",
]

MAX_AUTHORITIES = 1024
MAX_RECORD_SIZE = 64 * 1024
MAX_SET_PROOF_SIZE = 128 * 1024
MAX_CHUNK_BYTES = 1 << 20


def as_trie_proof(proof: TrieProof | bytes) -> TrieProof:
    """Accept a decoded proof or its wire bytes; raises DecodeError for malformed bytes."""
    return proof if isinstance(proof, TrieProof) else TrieProof.decode(proof)


def verify_state_proof(
    state_root: Hash32, key: bytes, value: bytes | None, proof: TrieProof | bytes
) -> None:
    """Raw ``key`` holds raw ``value`` (None: is absent) under ``state_root``.

    Raises ProofError if the proof does not show exactly that, DecodeError for malformed bytes.
    """
    if not isinstance(key, bytes) or (value is not None and not isinstance(value, bytes)):
        raise ProofError("state key and value must be bytes")
    verify_proof(
        state_root,
        state_key_hash(key),
        None if value is None else state_value_hash(value),
        as_trie_proof(proof),
    )


def decode_authorities(raw: bytes) -> tuple[Address, ...]:
    """``system/authorities``: a non-empty CBOR array of distinct 32-byte addresses."""
    obj = codec.decode(raw, max_size=MAX_AUTHORITIES * 34 + 16, what="authority set")
    if not isinstance(obj, list) or not obj or len(obj) > MAX_AUTHORITIES:
        raise DecodeError(f"an authority set is a list of 1..{MAX_AUTHORITIES} addresses")
    if not all(isinstance(a, bytes) and len(a) == 32 for a in obj):
        raise DecodeError("authority addresses must be 32 bytes")
    if len(set(obj)) != len(obj):
        raise DecodeError("the authority set lists an address twice")
    return tuple(Address(a) for a in obj)


@dataclass(frozen=True)
class SetProof:
    """``system/set_id`` (and ``system/authorities``) at one block, with their state proofs.

    ``set_id_value`` None proves the key absent, i.e. set 0 (genesis never writes it). The
    authorities may be left out (both None) when the set id shows the set did not change.
    """

    set_id_value: bytes | None
    set_id_proof: TrieProof
    authorities_value: bytes | None = None
    authorities_proof: TrieProof | None = None

    def encode(self) -> bytes:
        """``CBOR([set_id value|null, proof, authorities value|null, proof|null])``."""
        return codec.encode(
            [
                self.set_id_value,
                self.set_id_proof.encode(),
                self.authorities_value,
                None if self.authorities_proof is None else self.authorities_proof.encode(),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> SetProof:
        obj = codec.decode(data, max_size=MAX_SET_PROOF_SIZE, what="set proof")
        if not isinstance(obj, list) or len(obj) != 4:
            raise DecodeError("a set proof is [set id value, proof, authorities value, proof]")
        sid_value, sid_proof, auth_value, auth_proof = obj
        for value in (sid_value, auth_value):
            if value is not None and not isinstance(value, bytes):
                raise DecodeError("set proof values must be bytes or null")
        if not isinstance(sid_proof, bytes):
            raise DecodeError("the set id proof must be bytes")
        if auth_proof is not None and not isinstance(auth_proof, bytes):
            raise DecodeError("the authorities proof must be bytes or null")
        if auth_proof is None and auth_value is not None:
            raise DecodeError("authorities given without their proof")
        return cls(
            sid_value,
            TrieProof.decode(sid_proof),
            auth_value,
            None if auth_proof is None else TrieProof.decode(auth_proof),
        )


def verify_set_proof(state_root: Hash32, proof: SetProof) -> tuple[int, tuple[Address, ...] | None]:
    """The set id and (if proven) the authority set under ``state_root``.

    Raises ProofError if a proof does not verify or proves no authorities at all, DecodeError if
    a proven value is malformed.
    """
    verify_state_proof(state_root, KEY_SET_ID, proof.set_id_value, proof.set_id_proof)
    set_id = 0
    if proof.set_id_value is not None:
        set_id = as_uint64(codec.decode(proof.set_id_value, max_size=16, what="set id"), "set id")
    if proof.authorities_proof is None:
        return set_id, None
    verify_state_proof(
        state_root, KEY_AUTHORITIES, proof.authorities_value, proof.authorities_proof
    )
    if proof.authorities_value is None:
        raise ProofError("the proven state holds no authority set")
    return set_id, decode_authorities(proof.authorities_value)


def _get(obj: Mapping[str, Any], name: str, kind: type) -> Any:
    value = obj.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DecodeError(f"model record field {name!r} is missing or not {kind.__name__}")
    return value


@dataclass(frozen=True)
class ModelRecordView:
    """The fields of a proven model record that a device needs (``model_state/model/<id>``)."""

    model_id: str
    version: int
    round_start: int
    weights_root: Hash32
    num_params: int
    chunk_count: int
    chunk_size: int
    frac_bits: int
    config: Mapping[str, Any]
    raw: bytes = field(default=b"", repr=False, compare=False)
    """The record's bytes as proven (later answers can be compared to it byte for byte)."""

    @classmethod
    def decode(cls, record: bytes) -> ModelRecordView:
        """Parse the record bytes (not yet proven: see ``Verifier.verify_record``).

        Raises DecodeError for a malformed or inconsistent record.
        """
        obj = codec.decode(record, max_size=MAX_RECORD_SIZE, what="model record")
        if not isinstance(obj, dict):
            raise DecodeError("a model record is a map")
        config = _get(obj, "config", dict)
        view = cls(
            model_id=_get(config, "id", str),
            version=as_uint64(_get(obj, "version", int), "version"),
            round_start=as_uint64(_get(obj, "roundStart", int), "roundStart"),
            weights_root=as_hash32(_get(obj, "weightsRoot", bytes), "weightsRoot"),
            num_params=as_uint64(_get(obj, "numParams", int), "numParams"),
            chunk_count=as_uint64(_get(obj, "chunkCount", int), "chunkCount"),
            chunk_size=as_uint64(_get(config, "chunkSize", int), "chunkSize"),
            frac_bits=as_uint64(_get(config, "fracBits", int), "fracBits"),
            config=config,
            raw=bytes(record),
        )
        if view.chunk_size == 0 or view.chunk_size * 4 > MAX_CHUNK_BYTES:
            raise DecodeError(f"model record chunk size {view.chunk_size} is out of range")
        if view.chunk_count != -(-view.num_params // view.chunk_size):
            raise DecodeError("model record chunk count does not match its parameter count")
        return view

    def chunk_length(self, index: int) -> int:
        """Exact byte length of chunk ``index`` (int32 params; the last chunk may be short)."""
        if not isinstance(index, int) or not 0 <= index < self.chunk_count:
            raise ProofError(
                f"chunk index {index} is outside model {self.model_id!r}'s "
                f"{self.chunk_count} chunks"
            )
        return 4 * min(self.chunk_size, self.num_params - index * self.chunk_size)

    def verify_chunk(self, index: int, chunk: bytes, merkle_proof: Sequence[bytes]) -> None:
        """Chunk ``index`` of this (already proven) record is ``chunk``: length, then the Merkle
        path from its leaf hash to ``weightsRoot``. Raises ProofError."""
        expected = self.chunk_length(index)
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise ProofError("a chunk must be bytes")
        if len(chunk) != expected:
            raise ProofError(f"chunk {index} is {len(chunk)} bytes, expected {expected}")
        verify_merkle_proof(
            self.weights_root,
            index,
            self.chunk_count,
            leaf_hash(bytes(chunk)),
            [Hash32(p) for p in merkle_proof],
        )


def verify_record(
    state_root: Hash32, model_id: str, record: bytes, record_proof: TrieProof | bytes
) -> ModelRecordView:
    """Prove ``record`` is model ``model_id``'s record under ``state_root``; return its fields.

    Raises ProofError (wrong model, proof does not verify) or DecodeError (malformed).
    """
    if not isinstance(model_id, str) or not isinstance(record, bytes):
        raise ProofError("model id must be text and the record bytes")
    view = ModelRecordView.decode(record)
    if view.model_id != model_id:
        raise ProofError(f"record is for model {view.model_id!r}, not {model_id!r}")
    verify_state_proof(state_root, key_model(model_id), record, record_proof)
    return view


def unhex(value: Any, what: str) -> bytes:
    """0x-hex from a node's JSON answer; raises DecodeError on anything else."""
    if not isinstance(value, str) or not value.startswith("0x"):
        raise DecodeError(f"{what} must be a 0x-prefixed hex string")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise DecodeError(f"{what} is not valid hex") from None


@dataclass(frozen=True)
class ChunkProof:
    """One ``model_getChunkProof`` answer: everything to check one chunk against a state root.

    ``state_root`` and ``block_hash`` are what the node *claims* it proved against; they are only
    used to tell a stale answer (StaleData) from a forged one (ProofError).
    """

    model_id: str
    index: int
    chunk: bytes
    merkle_proof: tuple[Hash32, ...]
    record: bytes
    record_proof: TrieProof
    state_root: Hash32
    block_hash: Hash32

    @classmethod
    def from_json(cls, model_id: str, obj: Any) -> ChunkProof:
        """Parse the RPC result (0x-hex fields). Raises DecodeError."""
        if not isinstance(obj, dict):
            raise DecodeError("a chunk proof is a JSON object")
        index = obj.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise DecodeError("chunk proof index must be a non-negative integer")
        path = obj.get("proof")
        if not isinstance(path, list) or len(path) > 64:
            raise DecodeError("chunk proof path must be a list of at most 64 hashes")
        return cls(
            model_id=model_id,
            index=index,
            chunk=unhex(obj.get("chunk"), "chunk"),
            merkle_proof=tuple([as_hash32(unhex(p, "proof hash"), "proof hash") for p in path]),
            record=unhex(obj.get("record"), "record"),
            record_proof=TrieProof.decode(unhex(obj.get("recordProof"), "recordProof")),
            state_root=as_hash32(unhex(obj.get("stateRoot"), "stateRoot"), "stateRoot"),
            block_hash=as_hash32(unhex(obj.get("blockHash"), "blockHash"), "blockHash"),
        )
