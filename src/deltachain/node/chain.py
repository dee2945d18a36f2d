"""The node's chain: storage + runtime + Aura checks, as synchronous calls (no event loop here).

Block import reads the authority set from the parent's state, checks the header (Aura), executes
the body on a working copy of the parent state, and persists block + state in one database
transaction. Authoring uses the same path, so a node never stores a block it could not import.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from deltachain import codec
from deltachain.consensus.aura import author_of, seal_header, verify_header
from deltachain.crypto.keys import Keypair
from deltachain.crypto.trie import TrieProof, trie_prove
from deltachain.errors import AlreadyKnown, DecodeError, InvalidBlock, NotFound
from deltachain.node.storage import Storage
from deltachain.node.txpool import PoolLimits, TxPool
from deltachain.primitives.block import MAX_BLOCK_TXS, Block
from deltachain.primitives.chainspec import ChainSpec
from deltachain.primitives.transaction import MAX_TX_SIZE, SignedTransaction
from deltachain.primitives.types import Address, BlockNumber, Hash32, Slot
from deltachain.runtime import system
from deltachain.runtime.executive import (
    BlockOutput,
    Runtime,
    apply_block,
    build_block,
    build_genesis,
    check_transaction,
    env_for,
)
from deltachain.runtime.module import BlockEnv
from deltachain.runtime.state import MemoryStateStore, State, key_hash

log = logging.getLogger("deltachain.chain")

PRUNE_EVERY = 64


@dataclass(frozen=True)
class ImportResult:
    block: Block
    output: BlockOutput
    seconds: float


def events_blob(output: BlockOutput) -> bytes:
    return codec.encode(
        [[e.to_obj() for e in evs] for evs in output.tx_events]
        + [[e.to_obj() for e in output.finalize_events]]
    )


class Chain:
    def __init__(
        self,
        spec: ChainSpec,
        runtime: Runtime,
        base_path: Path,
        *,
        archive: bool = False,
        pool_limits: PoolLimits | None = None,
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        genesis = build_genesis(runtime, spec, MemoryStateStore())
        self.genesis_hash: Hash32 = genesis.hash
        self.storage = Storage.open(
            base_path, Block(genesis.header, ()), genesis.diff, spec.id, archive=archive
        )
        self.pool = TxPool(pool_limits)

    def close(self) -> None:
        self.storage.close()

    def warm_up(self) -> float:
        """Compile or load every runtime module's kernels now, never during a block import."""
        started = time.perf_counter()
        for module in self.runtime.modules.values():
            module.warm_up()
        return time.perf_counter() - started

    # --- state -----------------------------------------------------------------------------

    def state_at(self, block_hash: Hash32) -> State:
        return State(self.storage, self.storage.state_root_at(block_hash))

    def best_state(self) -> State:
        return self.state_at(self.storage.best_hash())

    def authorities_at(self, block_hash: Hash32) -> tuple[Address, ...]:
        return system.get_authorities(self.state_at(block_hash))

    def prove(self, key: bytes, block_hash: Hash32) -> TrieProof:
        """Inclusion (or non-inclusion) proof of a raw state key at a block's state root."""
        return trie_prove(self.storage, self.storage.state_root_at(block_hash), key_hash(key))

    # --- import ----------------------------------------------------------------------------

    def import_block(self, block: Block, *, now_slot: Slot | None) -> ImportResult:
        """Verify, execute and persist a block that extends the best chain.

        Raises InvalidBlock (bad header, seal, body or state root), NotFound (unknown parent).
        """
        started = time.perf_counter()
        if self.storage.has_block(block.hash):
            raise InvalidBlock(f"block #{block.number} is already imported")
        parent = self.storage.header(block.header.parent_hash)
        if parent.hash != self.storage.best_hash():
            raise InvalidBlock(
                "block does not extend the best chain (fork choice arrives with "
                "multi-validator consensus)"
            )
        authorities = self.authorities_at(parent.hash)
        verify_header(block.header, parent, authorities, self.genesis_hash, now_slot=now_slot)
        output = apply_block(self.runtime, self.state_at(parent.hash), block, self.genesis_hash)
        self._persist(block, output, authorities)
        return ImportResult(block, output, time.perf_counter() - started)

    def _persist(self, block: Block, output: BlockOutput, authorities: tuple[Address, ...]) -> None:
        # A lone authority is the whole set: its own seal is > 2/3 of the votes, so it finalizes.
        finalized = block.hash if len(authorities) == 1 else None
        self.storage.import_block(block, output.diff, events_blob(output), finalized=finalized)
        self.pool.remove(tx.hash for tx in block.transactions)
        state = State(self.storage, output.diff.root)
        self.pool.on_new_state(lambda who: system.get_nonce(state, who))
        if block.number % PRUNE_EVERY == 0:
            self.storage.prune()

    # --- authoring -------------------------------------------------------------------------

    def author_block(self, slot: Slot, keypair: Keypair) -> ImportResult | None:
        """Build, seal and import a block for ``slot`` if ``keypair`` is its author."""
        started = time.perf_counter()
        parent = self.storage.best_header()
        authorities = self.authorities_at(parent.hash)
        if author_of(slot, authorities) != keypair.address or slot <= parent.slot:
            return None
        env = BlockEnv(
            self.genesis_hash, parent.hash, BlockNumber(parent.number + 1), slot, keypair.address
        )
        built = build_block(
            self.runtime, self.state_at(parent.hash), env, self.pool.ready(), max_txs=MAX_BLOCK_TXS
        )
        for tx, exc in built.rejected:
            log.info("dropping transaction 0x%s…: %s", tx.hash.hex()[:16], exc)
        self.pool.remove(tx.hash for tx, _ in built.rejected)
        header = seal_header(built.header, keypair, self.genesis_hash)
        block = Block(header, built.transactions)
        self._persist(block, built.output, authorities)
        return ImportResult(block, built.output, time.perf_counter() - started)

    # --- transactions ----------------------------------------------------------------------

    def submit_transaction(self, raw: bytes) -> tuple[Hash32, str]:
        """Validate and pool an encoded transaction; returns its hash and "ready"/"future".

        Raises DecodeError / OversizeError, InvalidTransaction subclasses, PoolRejected subclasses.
        """
        if len(raw) > MAX_TX_SIZE:
            raise DecodeError(f"transaction is {len(raw)} bytes, over the limit of {MAX_TX_SIZE}")
        tx = SignedTransaction.decode(raw)
        if tx.hash in self.pool:
            raise AlreadyKnown(f"transaction 0x{tx.hash.hex()} is already in the pool")
        state = self.best_state()
        check_transaction(self.runtime, state, tx, self.genesis_hash, allow_future=True)
        kind = self.pool.add(tx, len(raw), system.get_nonce(state, tx.sender))
        return tx.hash, kind

    def transaction_status(self, tx_hash: Hash32) -> dict[str, object]:
        if tx_hash in self.pool:
            return {"status": "pool"}
        try:
            loc = self.storage.tx_location(tx_hash)
        except NotFound:
            return {"status": "unknown"}
        finalized = self.storage.finalized_header().number >= loc.block_number and (
            self.storage.canonical_hash(loc.block_number) == loc.block_hash
        )
        return {
            "status": "finalized" if finalized else "inBlock",
            "block": loc.block_number,
            "blockHash": "0x" + loc.block_hash.hex(),
            "index": loc.index,
        }

    def env_of(self, block: Block) -> BlockEnv:
        return env_for(block.header, self.genesis_hash)
