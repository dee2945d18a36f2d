"""Shared test helpers: an in-memory chain that authors and imports blocks without storage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deltachain.chain import construct_runtime
from deltachain.consensus.aura import seal_header, verify_header
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.keys import Keypair
from deltachain.primitives.block import Block, Header
from deltachain.primitives.chainspec import ChainSpec, dev_chain_spec
from deltachain.primitives.transaction import SignedTransaction, sign_transaction
from deltachain.primitives.types import Address, BlockNumber, Signature, Slot
from deltachain.runtime import system
from deltachain.runtime.executive import (
    BlockOutput,
    Runtime,
    apply_block,
    build_block,
    build_genesis,
)
from deltachain.runtime.module import BlockEnv
from deltachain.runtime.state import MemoryStateStore, State

ALICE = Keypair.dev("alice")
BOB = Keypair.dev("bob")
CHARLIE = Keypair.dev("charlie")
DAVE = Keypair.dev("dave")


class MemChain:
    """Genesis + blocks over a MemoryStateStore; the single authority //alice authors."""

    def __init__(
        self, spec: ChainSpec | None = None, runtime: Runtime | None = None, author: Keypair = ALICE
    ) -> None:
        self.spec = spec or dev_chain_spec(slot_ms=1000)
        self.runtime = runtime or construct_runtime()
        self.store = MemoryStateStore()
        genesis = build_genesis(self.runtime, self.spec, self.store)
        self.store.apply(genesis.diff)
        self.genesis_hash = genesis.hash
        self.headers: list[Header] = [genesis.header]
        self.author = author

    @property
    def head(self) -> Header:
        return self.headers[-1]

    def state(self) -> State:
        return State(self.store, self.head.state_root)

    def nonce(self, key: Keypair) -> int:
        return system.get_nonce(self.state(), key.address)

    def tx(
        self,
        key: Keypair,
        module: str,
        function: str,
        args: dict[str, Any],
        nonce: int | None = None,
    ) -> SignedTransaction:
        n = self.nonce(key) if nonce is None else nonce
        return sign_transaction(key, self.genesis_hash, n, module, function, args)

    def build(self, txs: Sequence[SignedTransaction], slot: int | None = None) -> tuple[Block, Any]:
        """Author (but do not import) a block on the head; returns the block and build result."""
        parent = self.head
        env = BlockEnv(
            self.genesis_hash,
            parent.hash,
            BlockNumber(parent.number + 1),
            Slot(slot if slot is not None else parent.slot + 1),
            self.author.address,
        )
        built = build_block(
            self.runtime, State(self.store, parent.state_root), env, txs, max_txs=10_000
        )
        header = seal_header(built.header, self.author, self.genesis_hash)
        return Block(header, built.transactions), built

    def import_block(self, block: Block) -> BlockOutput:
        parent = self.head
        authorities = system.get_authorities(State(self.store, parent.state_root))
        verify_header(block.header, parent, authorities, self.genesis_hash, now_slot=None)
        output = apply_block(
            self.runtime, State(self.store, parent.state_root), block, self.genesis_hash
        )
        self.store.apply(output.diff)
        self.headers.append(block.header)
        return output

    def produce(self, txs: Sequence[SignedTransaction]) -> Block:
        block, _ = self.build(txs)
        self.import_block(block)
        return block


def realistic_header(number: int = 10_000_000) -> Header:
    """Worst-case field sizes: a large block number and a unix-ms-sized slot, a full seal."""
    return Header(
        Hash32(b"\x11" * 32),
        BlockNumber(number),
        Slot(1_760_000_000_000 // 6000),
        Hash32(b"\x22" * 32),
        Hash32(b"\x33" * 32),
        Address(b"\x44" * 32),
        Signature(b"\x55" * 64),
    )
