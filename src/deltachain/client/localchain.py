"""An in-process chain for experiments and tests that speaks the node's RPC method names.

The runtime is the real one (``construct_runtime(kernel)``): transactions go through real
signature, nonce and ``SubmitDelta`` validation, rounds close through the real aggregation kernel
and the weights commitment, and downloads come with real Merkle and trie proofs. There is no
storage, networking or consensus: one authority (``//alice``) authors a block whenever
:meth:`LocalChain.produce_block` is called, and every block is final at once.

Answers have the node's JSON shapes (0x-hex binaries), so a device cannot tell this chain from a
node behind ``--rpc``; only :meth:`produce_block` is extra.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from deltachain.chain import construct_runtime
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.keys import Keypair, address_to_str, parse_address
from deltachain.crypto.trie import trie_prove
from deltachain.errors import DecodeError, InvalidKey, InvalidTransaction, NotFound
from deltachain.model_state.module import ModelStateModule
from deltachain.primitives.block import Block, Header, seal_payload
from deltachain.primitives.chainspec import DEV_MODEL, ChainSpec, parse_chain_spec
from deltachain.primitives.transaction import SignedTransaction
from deltachain.primitives.types import Address, BlockNumber, Signature, Slot
from deltachain.runtime import system
from deltachain.runtime.executive import build_block, build_genesis, check_transaction
from deltachain.runtime.module import BlockEnv
from deltachain.runtime.state import MemoryStateStore, State, key_hash

from .rpc import NOT_FOUND, RpcFailed

AUTHOR = Keypair.dev("alice")
INVALID_TRANSACTION = 1010
INVALID_PARAMS = -32602

SINE_MODEL: dict[str, Any] = copy.deepcopy(DEV_MODEL)
"""The sine MLP 1→40→40→1 with a local output layer (partial local reconstruction)."""

DIGITS_MODEL: dict[str, Any] = {
    "id": "digits-mlp",
    "layers": [
        {"name": "hidden1.w", "shape": [64, 32], "kind": "global", "initStd": "1/4"},
        {"name": "hidden1.b", "shape": [32], "kind": "global", "initStd": "0/1"},
        {"name": "out.w", "shape": [32, 10], "kind": "global", "initStd": "1/4"},
        # The output bias stays on the device: it learns the device's own class prior.
        {"name": "out.b", "shape": [10], "kind": "local", "initStd": "0/1"},
    ],
    "fracBits": 16,
    "chunkSize": 256,
    "aggregation": "present-quorum",
    "trimBeta": "1/5",
    "eta": "1/1",
    "roundLen": 3,
    "minDeltas": 2,
    "maxDeltas": 32,
    "staleness": 1,
    "init": {"kind": "normal", "seed": 11},
}
"""The digits MLP 64→32→10 (softmax) with a local output bias."""

TASK_MODELS = {"sine": SINE_MODEL, "digits": DIGITS_MODEL}


def model_json(task: str, **overrides: Any) -> dict[str, Any]:
    """The genesis model entry for ``task`` with fields replaced (semantics, eta, ...)."""
    return {**copy.deepcopy(TASK_MODELS[task]), **overrides}


def local_spec(models: Sequence[Mapping[str, Any]], clients: Sequence[Address]) -> ChainSpec:
    """A one-authority chain spec (``//alice`` authors and administers) with these models."""
    alice = address_to_str(AUTHOR.address)
    return parse_chain_spec(
        {
            "name": "Deltachain Local Experiment",
            "id": "deltachain_local_experiment",
            "chainType": "Development",
            "bootNodes": [],
            "properties": {},
            "genesis": {
                "consensus": {"slotMs": 1000, "authorities": [alice]},
                "runtime": {
                    "system": {
                        "admin": alice,
                        "clients": [address_to_str(c) for c in clients],
                    },
                    "model_state": {"models": [dict(m) for m in models]},
                },
            },
        }
    )


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _json(value: Any) -> Any:
    if isinstance(value, bytes):
        return _hex(value)
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return value


def header_json(header: Header) -> dict[str, Any]:
    return {
        "parentHash": _hex(header.parent_hash),
        "number": header.number,
        "slot": header.slot,
        "stateRoot": _hex(header.state_root),
        "extrinsicsRoot": _hex(header.extrinsics_root),
        "author": address_to_str(header.author),
        "seal": _hex(header.seal),
        "hash": _hex(header.hash),
    }


class LocalChain:
    """Genesis + blocks over a MemoryStateStore; ``call`` answers like a node's JSON-RPC."""

    def __init__(self, spec: ChainSpec, kernel: str = "reference") -> None:
        self.spec = spec
        self.runtime = construct_runtime(kernel)
        self.store = MemoryStateStore()
        genesis = build_genesis(self.runtime, spec, self.store)
        self.store.apply(genesis.diff)
        self.genesis_hash = genesis.hash
        self.headers: list[Header] = [genesis.header]
        self._by_hash: dict[bytes, Header] = {genesis.hash: genesis.header}
        self.pending: list[SignedTransaction] = []
        self.rejected: list[tuple[SignedTransaction, InvalidTransaction]] = []
        self._proofs: dict[tuple[bytes, str, int], Any] = {}  # blocks are immutable: cache

    @property
    def head(self) -> Header:
        return self.headers[-1]

    def state(self, block_hash: bytes | None = None) -> State:
        header = self.head if block_hash is None else self._by_hash.get(block_hash)
        if header is None:
            raise RpcFailed(NOT_FOUND, "no such block")
        return State(self.store, header.state_root)

    @property
    def model_state(self) -> ModelStateModule:
        module = self.runtime.module("model_state")
        assert isinstance(module, ModelStateModule)
        return module

    def produce_block(self) -> Block:
        """Author one block with every pending transaction (invalid ones are dropped)."""
        parent = self.head
        env = BlockEnv(
            self.genesis_hash,
            parent.hash,
            BlockNumber(parent.number + 1),
            Slot(parent.slot + 1),
            AUTHOR.address,
        )
        built = build_block(
            self.runtime, State(self.store, parent.state_root), env, self.pending, max_txs=10_000
        )
        self.pending = []
        self.rejected.extend(built.rejected)
        header = built.header.with_seal(
            Signature(AUTHOR.sign(seal_payload(built.header, self.genesis_hash)))
        )
        self.store.apply(built.output.diff)
        self.headers.append(header)
        self._by_hash[header.hash] = header
        return Block(header, built.transactions)

    # --- the node's RPC methods ----------------------------------------------------------

    def call(self, method: str, *params: Any) -> Any:
        handler = getattr(self, "_rpc_" + method, None)
        if handler is None:
            raise RpcFailed(-32601, f"method {method!r} not found")
        try:
            return handler(*params)
        except NotFound as exc:
            raise RpcFailed(NOT_FOUND, str(exc)) from None
        except (InvalidKey, DecodeError, TypeError, ValueError) as exc:
            raise RpcFailed(INVALID_PARAMS, str(exc)) from None

    def _block(self, block: Any) -> bytes | None:
        if block is None:
            return None
        if not isinstance(block, str) or not block.startswith("0x"):
            raise ValueError("block hash must be 0x-hex")
        return bytes.fromhex(block[2:])

    def _rpc_chain_getGenesisHash(self) -> str:
        return _hex(self.genesis_hash)

    def _rpc_chain_getFinalizedHead(self) -> str:
        return _hex(self.head.hash)

    def _rpc_chain_getHeader(self, block: Any = None) -> Any:
        wanted = self._block(block)
        header = self.head if wanted is None else self._by_hash.get(wanted)
        return None if header is None else header_json(header)

    def _rpc_system_accountNextIndex(self, address: str) -> int:
        who = parse_address(address)
        queued = sum(1 for tx in self.pending if tx.sender == who)
        return system.get_nonce(self.state(), who) + queued

    def _rpc_author_submitExtrinsic(self, raw: str) -> str:
        tx = SignedTransaction.decode(bytes.fromhex(raw[2:]))
        state = self.state()
        queued = [t for t in self.pending if t.sender == tx.sender]
        try:
            if not queued:
                checked = check_transaction(self.runtime, state, tx, self.genesis_hash)
                module = self.runtime.module(tx.call.module)
                module.check_window(state, checked.call, self.head.number + 1)  # as a node's pool
            else:  # later nonces of a queued sender: full checks happen at block building
                tx.verify_signature(self.genesis_hash)
        except InvalidTransaction as exc:
            raise RpcFailed(INVALID_TRANSACTION, f"invalid transaction: {exc}") from None
        self.pending.append(tx)
        return _hex(tx.hash)

    def _rpc_runtime_query(self, module: str, name: str, args: Any = None) -> Any:
        qargs = dict(args or {})
        if "address" in qargs:
            qargs["address"] = parse_address(qargs["address"])
        return _json(self.runtime.module(module).query(self.state(), name, qargs))

    def _rpc_model_list(self) -> Any:
        return _json(self.model_state.query(self.state(), "list", {}))

    def _rpc_model_get(self, model: str) -> Any:
        return _json(
            self.model_state.query(self.state(), "get", {"model": model, "at": self.head.number})
        )

    def _rpc_model_getProvenance(self, model: str, version: int) -> Any:
        return _json(
            self.model_state.query(self.state(), "provenance", {"model": model, "version": version})
        )

    def _rpc_model_getChunkProof(self, model: str, index: int, block: Any = None) -> Any:
        wanted = self._block(block)
        key = (self.head.hash if wanted is None else wanted, model, index)
        cached = self._proofs.get(key)
        if cached is None:
            cached = self._proofs[key] = self._chunk_proof(model, index, wanted)
            if len(self._proofs) > 4096:
                self._proofs.pop(next(iter(self._proofs)))
        return copy.deepcopy(cached)

    def _chunk_proof(self, model: str, index: int, wanted: bytes | None) -> Any:
        state = self.state(wanted)
        found = self.model_state.query(state, "chunk", {"model": model, "index": index})
        proof = trie_prove(self.store, Hash32(state.base_root), key_hash(found["recordKey"]))
        header = self.head if wanted is None else self._by_hash[wanted]
        return _json(
            {
                **found,
                "recordProof": proof.encode(),
                "stateRoot": state.base_root,
                "blockHash": header.hash,
            }
        )
