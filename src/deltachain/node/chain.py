"""The node's chain: storage + runtime + Aura checks, as synchronous calls (no event loop here).

Block import reads the authority set from the parent's state, checks the header (Aura), executes
the body on a working copy of the parent state, and persists block + state in one database
transaction. Authoring uses the same path, so a node never stores a block it could not import.
Every block above the finalized one is kept; fork choice picks the head, and the finality
gadget's justifications and finalizations are applied here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

from deltachain import codec
from deltachain.consensus.aura import author_of, seal_header, verify_header
from deltachain.consensus.finality import (
    FinalityGadget,
    FinalityOutcome,
    Justification,
    Vote,
    VoteRecord,
    sign_vote,
    verify_justification,
)
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.crypto.trie import TrieProof, trie_prove
from deltachain.errors import (
    AlreadyKnown,
    Banned,
    DecodeError,
    DeltachainError,
    InvalidBlock,
    NotFound,
    UnknownCall,
    WrongChain,
)
from deltachain.node.signing_state import SignedRecord, SigningState
from deltachain.node.storage import Storage
from deltachain.node.txpool import PoolLimits, TxPool
from deltachain.primitives.block import MAX_BLOCK_TXS, Block, Header
from deltachain.primitives.chainspec import ChainSpec
from deltachain.primitives.transaction import MAX_TX_SIZE, SignedTransaction
from deltachain.primitives.types import Address, BlockNumber, Hash32, Slot
from deltachain.runtime import system
from deltachain.runtime.executive import (
    EXTRINSIC_FAILED,
    BlockOutput,
    CheckedTransaction,
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
MAX_FATES = 65_536
"""How many let-go transactions the node remembers the fate of (author_extrinsicStatus)."""
MAX_VERIFIED = 16_384
"""How many checked transactions (signature verified, call decoded) the node remembers, so
block import neither verifies nor decodes them again (~1 KiB each)."""
POOL_FILE = "txpool.cbor"
POOL_SAVE_EVERY_S = 5.0
MAX_POOL_FILE = 64 << 20
AUTHOR_BUDGET = 0.4
"""The share of a slot an author may spend applying pool transactions: the block, its import
and its gossip must fit in the slot however full the pool is."""


@dataclass
class ImportResult:
    block: Block
    output: BlockOutput
    seconds: float
    justified: list[Hash32] = field(default_factory=list)
    finalized: Justification | None = None
    evidence: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    vote: Vote | None = None


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
        signing_state: SigningState | None = None,
        double_sign_check_slots: int = 0,
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        genesis = build_genesis(runtime, spec, MemoryStateStore())
        self.genesis_hash: Hash32 = genesis.hash
        self.storage = Storage.open(
            base_path, Block(genesis.header, ()), genesis.diff, spec.id, archive=archive
        )
        self.pool = TxPool(pool_limits)
        self.fates: OrderedDict[Hash32, dict[str, object]] = OrderedDict()
        self._verified: OrderedDict[bytes, CheckedTransaction] = OrderedDict()
        self._finish_ratio = 1.0
        self._next_expiry = 0.0
        self.outbox: deque[bytes] = deque()
        """Transactions this node accepted from its own users, for the node to gossip."""
        self._pool_file = base_path / POOL_FILE
        self._pool_saved_at = time.monotonic()
        self._seals: dict[tuple[Slot, Address], Header] = {}
        self.evidence: list[tuple[str, bytes, bytes]] = []
        self.last_finalized_at = time.monotonic()
        set_id, authorities = self._finality_set()
        self.gadget = FinalityGadget(
            self.genesis_hash, set_id, authorities, self.storage.finalized_header()
        )
        raw = self.storage.meta_value("vote_record")
        self.vote_record = VoteRecord(*codec.decode(raw)) if raw else VoteRecord()
        self.signing_state = signing_state
        self.hold_votes_until = time.monotonic() + double_sign_check_slots * spec.slot_ms / 1000
        """``--double-sign-check``: listen this long for votes by our key before voting."""
        self.double_sign_check = double_sign_check_slots > 0
        self.foreign_vote: Vote | None = None
        self._signed_here: set[bytes] = set()
        try:
            if signing_state is not None:
                signing_state.for_chain(self.genesis_hash)
                signing_state.check_database(
                    self.storage.database_id(),
                    self.storage.finalized_header().number,
                    self.storage.path,
                )
            self._restore_finality()
        except BaseException:
            self.storage.close()
            raise
        self._restore_pool()

    def _restore_finality(self) -> None:
        """Rebuild what the gadget knew before a restart: the block justified by the newest
        stored justification, then every stored vote above finality (re-counted, so justified
        checkpoints come back) and this validator's own last vote from its signing state."""
        with contextlib.suppress(NotFound, DeltachainError):
            latest = Justification.decode(self.storage.latest_justification())
            self._settle_finality(self.gadget.learn(latest, self.storage), None)
        votes = [Vote.decode(raw) for raw in self.storage.votes()]
        if self.signing_state is not None and self.signing_state.record is not None:
            votes.append(self.signing_state.record.vote)
        for vote in votes:
            with contextlib.suppress(DeltachainError):
                self._settle_finality(self.gadget.add_vote(vote, self.storage), None)
        if votes:
            log.info(
                "finality restored: finalized #%d, %d justified above it, %d votes re-counted",
                self.gadget.finalized.number,
                sum(1 for n in self.gadget.justified.values() if n > self.gadget.finalized.number),
                len(votes),
            )

    def close(self) -> None:
        try:
            self.save_pool()
        except OSError as exc:
            log.warning("pool not saved (%s): its transactions are not restored on start", exc)
        self.storage.close()

    # --- the pool across restarts --------------------------------------------------------

    def save_pool(self) -> None:
        """Write the pool's transactions beside the database (atomic replace): a restart,
        even of every validator at once, must not lose what was accepted and not yet included.
        Written at shutdown and every POOL_SAVE_EVERY_S after a block, which bounds what a
        kill -9 of every validator at once can lose to that much submission time."""
        data = codec.encode([tx.encode() for tx in self.pool.all()])
        tmp = self._pool_file.with_name(self._pool_file.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self._pool_file)
        self._pool_saved_at = time.monotonic()

    def _restore_pool(self) -> None:
        """Pool again what the last run held, on validity alone (sender, nonce, signature):
        the block that includes a transaction states how its call fares, so none is dropped
        here without a fate. Restored transactions are gossiped again."""
        try:
            raw = self._pool_file.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the saved pool %s (%s); starting empty", self._pool_file, exc)
            return
        try:
            items = codec.decode(raw, max_size=MAX_POOL_FILE, what="saved pool")
        except DecodeError as exc:
            log.warning("ignoring the unreadable saved pool %s (%s)", self._pool_file, exc)
            return
        state = self.best_state()
        restored = 0
        for item in items if isinstance(items, list) else []:
            try:
                tx = SignedTransaction.decode(item)
                if tx.hash in self.pool or self._on_best_chain(tx.hash):
                    continue
                self._readmit(tx, state)
            except DeltachainError as exc:
                with contextlib.suppress(DeltachainError):
                    self._fate(
                        SignedTransaction.decode(item).hash,
                        "dropped",
                        f"not pooled again after a restart: {exc}",
                    )
                continue
            self.outbox.append(item)
            restored += 1
        if restored:
            log.info("%d pooled transactions restored from %s", restored, self._pool_file)

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

    def import_block(self, block: Block, *, now_slot: Slot | None) -> ImportResult | None:
        """Verify, execute and persist a block on any branch above the finalized block.

        Returns None for a block already imported. The head then follows fork choice.
        Raises InvalidBlock (bad header, seal, body or state root, or a branch that conflicts
        with finality), NotFound (unknown parent: the caller should sync).
        """
        started = time.perf_counter()
        if self.storage.has_block(block.hash):
            return None
        parent = self.storage.header(block.header.parent_hash)
        finalized = self.storage.finalized_header()
        if block.number <= finalized.number or not self.storage.is_ancestor(
            finalized.hash, parent.hash
        ):
            raise InvalidBlock(
                f"block #{block.number} is on a branch that conflicts with finalized "
                f"block #{finalized.number}"
            )
        authorities = self.authorities_at(parent.hash)
        verify_header(block.header, parent, authorities, self.genesis_hash, now_slot=now_slot)
        output = apply_block(
            self.runtime,
            self.state_at(parent.hash),
            block,
            self.genesis_hash,
            checked=self._checked,
        )
        result = ImportResult(block, output, 0.0)
        self._persist(block, output, result)
        return dataclasses.replace(result, seconds=time.perf_counter() - started)

    def _persist(self, block: Block, output: BlockOutput, result: ImportResult) -> None:
        self._note_seal(block.header, result)
        make_best = self._preferred(block.header, self.storage.best_header())
        retracted, enacted = self.storage.import_block(
            block, output.diff, events_blob(output), make_best=make_best
        )
        if make_best:  # a block on a side branch changes nothing the pool depends on
            self._after_head_change(retracted, [*enacted, block.hash], block)
        self._settle_finality(self.gadget.recheck(self.storage), result)

    def _after_head_change(
        self, retracted: list[Hash32], enacted: list[Hash32], new: Block | None = None
    ) -> None:
        """Keep the pool in step with the head: included transactions leave with their nonces
        (``on_new_state``); those of a reorged-out branch come back if still valid. Only the
        senders of the blocks that left or joined the best chain can have new nonces."""
        best = self.storage.best_hash()
        state = self.state_at(best)
        senders: set[Address] = set()
        included: set[Hash32] = set()
        for block_hash in retracted:
            for tx in self.storage.block(block_hash).transactions:
                senders.add(tx.sender)
                with contextlib.suppress(DeltachainError):
                    self._readmit(tx, state)
        for block_hash in dict.fromkeys(enacted):
            txs = new.transactions if new is not None and new.hash == block_hash else None
            for tx in txs if txs is not None else self.storage.block(block_hash).transactions:
                senders.add(tx.sender)
                included.add(tx.hash)
        dropped = self.pool.on_new_state(lambda who: system.get_nonce(state, who), senders)
        for tx_hash in dropped:
            if tx_hash not in included and not self._on_best_chain(tx_hash):
                self._fate(tx_hash, "dropped", "its nonce was used by another transaction")
        now = time.monotonic()
        if now - self._pool_saved_at > POOL_SAVE_EVERY_S:
            try:
                self.save_pool()
            except OSError as exc:
                self._pool_saved_at = now  # say it once a period, not every block
                log.warning("pool not saved (%s)", exc)
        if now < self._next_expiry:
            return
        self._next_expiry = now + 5.0
        for tx_hash in self.pool.expire_futures():
            self._fate(
                tx_hash,
                "dropped",
                f"it waited {self.pool.limits.future_seconds:.0f} s behind a nonce gap that "
                "never filled; resubmit from the account's next nonce",
            )

    def _readmit(self, tx: SignedTransaction, state: State) -> None:
        """A transaction of a block that left the best chain goes back to the pool if it is
        still valid (sender, nonce, signature). Round checks are left to its next block, which
        states their outcome: refusing it here would strand its sender's later nonces."""
        checked = check_transaction(
            self.runtime,
            state,
            tx,
            self.genesis_hash,
            allow_future=True,
            signature_verified=self._known(tx),
            dispatch=False,
        )
        self._pool(checked, len(tx.encode()), state)

    def _pool(self, checked: CheckedTransaction, size: int, state: State) -> str:
        """Queue a checked transaction with its module's priority and round claim."""
        module = self.runtime.module(checked.tx.call.module)
        return self.pool.add(
            checked.tx,
            size,
            system.get_nonce(state, checked.tx.sender),
            priority=module.priority(checked.call),
            claim=module.pool_claim(checked.call),
            checked=checked,
        )

    def _on_best_chain(self, tx_hash: Hash32) -> bool:
        try:
            loc = self.storage.tx_location(tx_hash)
        except NotFound:
            return False
        return self.storage.canonical_hash(loc.block_number) == loc.block_hash

    # --- fork choice -----------------------------------------------------------------------

    def _score(self, header: Header) -> tuple[int, int, bytes]:
        """Longest chain containing the finalized block; first the chain with the highest
        justified block, then the longest, then the lower hash (bytes inverted to sort high)."""
        justified = max(
            (
                n
                for h, n in self.gadget.justified.items()
                # the candidate may not be stored yet: ask about its parent
                if h == header.hash or self.storage.is_ancestor(h, header.parent_hash)
            ),
            default=0,
        )
        return justified, header.number, bytes(255 - b for b in header.hash)

    def _preferred(self, candidate: Header, current: Header) -> bool:
        return self._score(candidate) > self._score(current)

    def choose_head(self) -> bool:
        """Re-run fork choice over all leaves (after finality or justification changes)."""
        finalized = self.storage.finalized_header()
        leaves = [
            h
            for h in self.storage.leaves(finalized.number)
            if self.storage.is_ancestor(finalized.hash, h.hash)
        ]
        best = self.storage.best_header()
        top = max([best, *leaves], key=self._score)
        if top.hash == best.hash:
            return False
        retracted, enacted = self.storage.set_best(top.hash)
        log.info(
            "reorg: head #%d 0x%s… → #%d 0x%s…",
            best.number,
            best.hash.hex()[:12],
            top.number,
            top.hash.hex()[:12],
        )
        self._after_head_change(retracted, enacted)
        return True

    # --- equivocation ----------------------------------------------------------------------

    def _note_seal(self, header: Header, result: ImportResult) -> None:
        key = (header.slot, header.author)
        seen = self._seals.get(key)
        if seen is None:
            self._seals[key] = header
            while len(self._seals) > 4096:
                self._seals.pop(next(iter(self._seals)))
        elif seen.hash != header.hash:
            log.warning(
                "author %s sealed two blocks for slot %d",
                address_to_str(header.author),
                header.slot,
            )
            item = ("seal", seen.encode(), header.encode())
            result.evidence.append(item)
            self.evidence.append(item)  # pending for take_evidence(): the node reports it

    # --- finality --------------------------------------------------------------------------

    def _finality_set(self) -> tuple[int, tuple[Address, ...]]:
        """The voting set: the one in force at the last finalized block."""
        state = self.state_at(self.storage.finalized_hash())
        return system.get_set_id(state), system.get_authorities(state)

    def add_vote(self, vote: Vote) -> FinalityOutcome:
        """Count a gossiped vote. Raises InvalidVote for votes that do not verify."""
        outcome = self.gadget.add_vote(vote, self.storage)
        self._note_own_key(vote)
        if outcome.counted and vote.link.target.number > self.gadget.finalized.number:
            self.storage.put_vote(vote.encode(), vote.link.target.number)
        self._settle_finality(outcome, None)
        return outcome

    def _note_own_key(self, vote: Vote) -> None:
        """With --double-sign-check: a verified vote by our key, above anything this node ever
        signed and not signed by this process, means another node runs with the same key."""
        signer = self.signing_state
        if not self.double_sign_check or signer is None or self.foreign_vote is not None:
            return
        if vote.voter != signer.voter or bytes(vote.signature) in self._signed_here:
            return
        record = signer.record
        if record is None or (vote.link.set_id, vote.link.target.number) > (
            record.vote.link.set_id,
            record.vote.link.target.number,
        ):
            self.foreign_vote = vote
            log.error(
                "another node is voting with this key (a vote for #%d this node never signed); "
                "this node will not vote: stop one of the two and restart this one",
                vote.link.target.number,
            )

    def pending_votes(self) -> list[Vote]:
        """Votes above finality worth re-sending to peers that were away (``FinalityGadget``)."""
        return self.gadget.pending_votes()

    def add_justification(self, justification: Justification) -> bool:
        """Accept a peer's proof of finality for a block we have; True if it advanced ours."""
        finalized = self.storage.finalized_header()
        if justification.source.number <= finalized.number:
            return False
        if not self.storage.has_block(justification.source.hash):
            return False
        verify_justification(
            justification, self.gadget.authorities, self.gadget.set_id, self.genesis_hash
        )
        self._finalize(justification)
        return True

    def _settle_finality(self, outcome: FinalityOutcome, result: ImportResult | None) -> None:
        if result is not None:
            result.justified.extend(outcome.justified)
        for first, second, why in outcome.evidence:
            log.warning("authority %s broke a voting rule (%s)", address_to_str(first.voter), why)
            self.evidence.append(("vote", first.encode(), second.encode()))
        if outcome.justified:
            self.choose_head()
        if outcome.finalized is not None:
            self._finalize(outcome.finalized)
            if result is not None:
                result.finalized = outcome.finalized

    def _finalize(self, justification: Justification) -> None:
        block_hash = justification.source.hash
        if not self.storage.is_ancestor(block_hash, self.storage.best_hash()):
            self.choose_head()  # finality overrides the longest chain
            if not self.storage.is_ancestor(block_hash, self.storage.best_hash()):
                self.storage.set_best(block_hash)
        previous = self.storage.finalized_header().number
        self.storage.finalize(block_hash, justification.encode())
        self.last_finalized_at = time.monotonic()
        if justification.source.number // PRUNE_EVERY > previous // PRUNE_EVERY:
            self.storage.prune()  # states behind finality − PRUNE_DEPTH can go
        set_id, authorities = self._finality_set()
        if set_id != self.gadget.set_id:
            self.storage.keep_state(block_hash)  # light clients prove the new set here
            log.info(
                "authority set %d takes over finality (%d authorities)", set_id, len(authorities)
            )
            self.gadget.reset(set_id, authorities, self.storage.finalized_header())
        else:
            # its target is justified too: a node that missed the votes votes from there next
            self._settle_finality(self.gadget.learn(justification, self.storage), None)

    def vote(self, keypair: Keypair) -> Vote | None:
        """Sign this node's vote for the current head, if the rules allow one.

        The vote record is written (fsync) *before* the vote is returned for sending, so a
        restarted validator can never sign a conflicting vote.
        """
        if keypair.address not in self.gadget.authorities:
            return None
        if self.double_sign_check and (
            self.foreign_vote is not None or time.monotonic() < self.hold_votes_until
        ):
            return None  # still listening for our own key's votes, or another node has it
        link = self.gadget.proposal(self.storage.best_header(), self.storage, self.vote_record)
        if link is None:
            return None
        signer = self.signing_state
        if signer is not None and signer.voter != keypair.address:
            signer = None  # tests author for every key on one chain; a node has one key
        if signer is not None and signer.check(link) is not None:
            return None  # the database forgot a vote the signing state remembers (logged)
        vote = sign_vote(keypair, link, self.genesis_hash)
        self._signed_here.add(bytes(vote.signature))
        if signer is not None:
            signer.save(
                SignedRecord(
                    vote,
                    self.storage.finalized_header().number,
                    self.storage.database_id(),
                    self.genesis_hash,
                )
            )
        self.vote_record = VoteRecord(link.set_id, link.source.number, link.target.number)
        self.storage.put_meta_value(
            "vote_record", codec.encode([link.set_id, link.source.number, link.target.number])
        )
        self.add_vote(vote)
        return vote

    def pool_nonce(self, who: Address) -> int:
        """The next nonce for ``who`` counting its transactions already waiting in the pool."""
        return self.pool.next_nonce(who, system.get_nonce(self.best_state(), who))

    def take_evidence(self) -> list[tuple[str, bytes, bytes]]:
        found, self.evidence = self.evidence, []
        return found

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
        # The whole block (apply, commit, store) must be done by AUTHOR_BUDGET of the slot;
        # sealing and storing take about ``_finish_ratio`` times what applying took, so
        # applying stops early enough to leave them their share.
        slot_ms = self.spec.slot_ms
        budget_s = max((slot + AUTHOR_BUDGET) * slot_ms / 1000 - time.time(), 0.02)
        built = build_block(
            self.runtime,
            self.state_at(parent.hash),
            env,
            (checked for _, checked in self.pool.iter_ready() if checked is not None),
            max_txs=MAX_BLOCK_TXS,
            deadline=started + budget_s / (1 + self._finish_ratio),
        )
        applied_s = time.perf_counter() - started
        for tx, exc in built.rejected:
            log.info("dropping transaction 0x%s…: %s", tx.hash.hex()[:16], exc)
            self._fate(tx.hash, "invalid", str(exc))
        self.pool.remove(tx.hash for tx, _ in built.rejected)
        self.pool.ban(self._verified_key(tx) for tx, _ in built.rejected)
        header = seal_header(built.header, keypair, self.genesis_hash)
        block = Block(header, built.transactions)
        result = ImportResult(block, built.output, 0.0)
        self._persist(block, built.output, result)
        if len(block.transactions) >= 100:  # enough work to measure the ratio by
            ratio = (time.perf_counter() - started - applied_s) / max(applied_s, 1e-3)
            self._finish_ratio = 0.7 * self._finish_ratio + 0.3 * min(max(ratio, 0.2), 5.0)
        result.vote = self.vote(keypair)  # an author always votes for what it just built
        return dataclasses.replace(result, seconds=time.perf_counter() - started)

    # --- transactions ----------------------------------------------------------------------

    def submit_transaction(self, raw: bytes, *, announce: bool = True) -> tuple[Hash32, str]:
        """Validate and pool an encoded transaction; returns its hash and "ready"/"future".
        With ``announce`` (the node's own users: RPC, CLI, light protocol) it is queued in
        ``outbox`` for gossip; a peer's transaction is not, since gossip already spread it.

        Raises DecodeError / OversizeError, InvalidTransaction subclasses, PoolRejected
        subclasses (Banned for a hash found invalid recently).
        """
        if len(raw) > MAX_TX_SIZE:
            raise DecodeError(f"transaction is {len(raw)} bytes, over the limit of {MAX_TX_SIZE}")
        tx = SignedTransaction.decode(raw)
        if tx.hash in self.pool:
            raise AlreadyKnown(f"transaction 0x{tx.hash.hex()} is already in the pool")
        kind = self._admit(tx, raw, self.best_state(), announce=announce)
        return tx.hash, kind

    def submit_batch(self, raws: list[bytes]) -> dict[str, int]:
        """A peer's gossiped transactions: pool what is new and valid, count the rest by
        reason (one call on the chain thread for a whole batch)."""
        counts: dict[str, int] = {}
        for raw in raws:
            try:
                self.submit_transaction(raw, announce=False)
                outcome = "accepted"
            except DeltachainError as exc:
                outcome = type(exc).__name__
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def _admit(self, tx: SignedTransaction, raw: bytes, state: State, *, announce: bool) -> str:
        """Check ``tx`` against ``state`` and the pool's pending claims, then pool it."""
        if self.pool.is_banned(self._verified_key(tx)):
            raise Banned(
                f"transaction 0x{tx.hash.hex()} was found invalid recently and is banned for "
                f"{self.pool.limits.ban_seconds:.0f} s; sign a corrected one"
            )
        try:
            checked = check_transaction(
                self.runtime,
                state,
                tx,
                self.genesis_hash,
                allow_future=True,
                signature_verified=self._known(tx),
            )
        except (WrongChain, UnknownCall):
            self.pool.ban([self._verified_key(tx)])  # forged, foreign or meaningless
            raise
        module = self.runtime.module(tx.call.module)
        module.check_window(state, checked.call, self.storage.best_header().number + 1)
        claim = module.pool_claim(checked.call)
        if claim is not None and announce:
            # Only what this node's own users submit is refused for what other pools hold:
            # a peer's pool already took the transaction, so this one carries it too, and
            # whichever author includes it states its fate (ExtrinsicFailed if the round
            # filled first). Refusing it here would leave it to its first node's slot alone.
            module.validate_pending(state, tx.sender, checked.call, self.pool.claimants(claim))
        kind = self._pool(checked, len(raw), state)
        self._remember_verified(checked)
        if announce:
            self.outbox.append(raw)
        return kind

    def remove_transactions(self, tx_hashes: list[Hash32], reason: str) -> list[Hash32]:
        """Drop pooled transactions on request; their fate says who dropped them."""
        removed = [tx.hash for tx in self.pool.remove(tx_hashes)]
        for tx_hash in removed:
            self._fate(tx_hash, "dropped", reason)
        return removed

    def announce_pending(self, older_than_s: float) -> list[bytes]:
        """Encoded pool transactions waiting for longer than ``older_than_s``: a peer that was
        away when they were gossiped (a reconnect, a sync) has not seen them."""
        cutoff = time.monotonic() - older_than_s
        return [tx.encode() for tx in self.pool.pending_since(cutoff)]

    # --- what became of a transaction ------------------------------------------------------

    @staticmethod
    def _verified_key(tx: SignedTransaction) -> bytes:
        # The hash covers the body only: the signature must be part of what was verified.
        return tx.hash + tx.signature

    def _known(self, tx: SignedTransaction) -> bool:
        return self._verified_key(tx) in self._verified

    def _checked(self, tx: SignedTransaction) -> CheckedTransaction | None:
        return self._verified.get(self._verified_key(tx))

    def _remember_verified(self, checked: CheckedTransaction) -> None:
        self._verified[self._verified_key(checked.tx)] = checked
        while len(self._verified) > MAX_VERIFIED:
            self._verified.popitem(last=False)

    def _fate(self, tx_hash: Hash32, status: str, reason: str) -> None:
        self.fates.pop(tx_hash, None)
        self.fates[tx_hash] = {"status": status, "reason": reason}
        while len(self.fates) > MAX_FATES:
            self.fates.popitem(last=False)

    def transaction_status(self, tx_hash: Hash32) -> dict[str, object]:
        """pool, inBlock or finalized (with ``failed`` if its call was refused in the block),
        dropped or invalid with the reason (for what this node let go), else unknown."""
        if tx_hash in self.pool:
            return {"status": "pool"}
        try:
            loc = self.storage.tx_location(tx_hash)
        except NotFound:
            return dict(self.fates.get(tx_hash, {"status": "unknown"}))
        finalized = self.storage.finalized_header().number >= loc.block_number and (
            self.storage.canonical_hash(loc.block_number) == loc.block_hash
        )
        status: dict[str, object] = {
            "status": "finalized" if finalized else "inBlock",
            "block": loc.block_number,
            "blockHash": "0x" + loc.block_hash.hex(),
            "index": loc.index,
        }
        events = codec.decode(self.storage.block_events(loc.block_hash))
        for module, name, data in events[loc.index] if loc.index < len(events) else []:
            if (module, name) == ("system", EXTRINSIC_FAILED):
                status["failed"] = {"error": data["error"], "reason": data["reason"]}
        return status

    def env_of(self, block: Block) -> BlockEnv:
        return env_for(block.header, self.genesis_hash)
