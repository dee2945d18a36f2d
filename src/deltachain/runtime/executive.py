"""The state transition, top to bottom: genesis, transactions, blocks.

``apply_block`` checks the body against the header, applies every transaction in a write layer,
runs each module's ``on_finalize``, folds the writes into a new state root and rejects the block
if any step disagrees with the header. It changes a working copy only; the caller persists the
returned diff. Consensus checks (slot, author, seal) live in ``consensus/`` and run first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final

from deltachain import codec
from deltachain.errors import (
    ChainSpecError,
    CryptoError,
    FutureNonce,
    InvalidBlock,
    InvalidTransaction,
    StaleNonce,
    Unauthorized,
    UnknownCall,
    WrongChain,
)
from deltachain.primitives.block import Block, Header, extrinsics_root, genesis_header
from deltachain.primitives.chainspec import ChainSpec
from deltachain.primitives.transaction import SignedTransaction
from deltachain.primitives.types import Hash32, Signature
from deltachain.runtime import system
from deltachain.runtime.authority import AuthorityModule
from deltachain.runtime.module import BlockEnv, Event, Module
from deltachain.runtime.state import State, StateDiff, StateStore


class Runtime:
    """The modules a chain runs, by name; ``system`` is always first."""

    def __init__(self, modules: Sequence[Module]) -> None:
        self.modules: dict[str, Module] = {}
        for module in (system.SystemModule(), AuthorityModule(), *modules):
            if module.name in self.modules:
                raise ValueError(f"duplicate runtime module {module.name!r}")
            self.modules[module.name] = module

    def module(self, name: str) -> Module:
        try:
            return self.modules[name]
        except KeyError:
            raise UnknownCall(f"this chain has no module {name!r}") from None


@dataclass(frozen=True)
class Genesis:
    header: Header
    diff: StateDiff

    @property
    def hash(self) -> Hash32:
        return self.header.hash


def build_genesis(runtime: Runtime, spec: ChainSpec, store: StateStore) -> Genesis:
    """Genesis state from the spec; raises ChainSpecError on a bad or unknown module section."""
    unknown = set(spec.runtime) - set(runtime.modules)
    if unknown:
        raise ChainSpecError(f"chain spec: no runtime module named {sorted(unknown)[0]!r}")
    state = State(store)
    state.set(system.KEY_AUTHORITIES, codec.encode(list(spec.authorities)))
    state.set(system.KEY_SET_ID, codec.encode(0))
    # Chain id and slot length live in state so the genesis hash (hence every signature) commits
    # to them: two chains that differ only in configuration never accept each other's transactions.
    state.set(system.KEY_CHAIN, codec.encode({"id": spec.id, "slotMs": spec.slot_ms}))
    for name, module in runtime.modules.items():
        module.build_genesis(state, spec.runtime.get(name, {}))
    diff = state.commit_root()
    return Genesis(genesis_header(diff.root), diff)


@dataclass(frozen=True)
class CheckedTransaction:
    tx: SignedTransaction
    call: object


def check_transaction(
    runtime: Runtime,
    state: State,
    tx: SignedTransaction,
    genesis_hash: Hash32,
    *,
    allow_future: bool = False,
    signature_verified: bool = False,
    dispatch: bool = True,
    call: object | None = None,
) -> CheckedTransaction:
    """Everything that decides whether ``tx`` may be applied now (or, with allow_future, later).
    ``signature_verified`` skips only the signature check, which the caller already passed;
    ``call`` is the call this transaction already decoded to (decoding is a pure function).

    Validity (decoding, sender, nonce, signature) always runs. The module's checks run too,
    unless ``dispatch`` is False (block execution, where ``dispatch_call`` runs them in block
    order): ``precheck_call`` for any nonce -- what the model's configuration alone decides --
    and ``validate_call`` (round state) only for the next nonce, since earlier transactions
    may change the state it reads.

    Raises: UnknownCall / InvalidCall (bad call), Unauthorized (sender not on this permissioned
    chain, or not allowed this call), StaleNonce / FutureNonce, WrongChain (signature does not
    verify for this chain's genesis hash: either forged or signed for another chain).
    """
    module = runtime.module(tx.call.module)
    if call is None:
        call = module.decode_call(tx.call.function, tx.call.args)
    if not system.may_transact(state, tx.sender):
        raise Unauthorized("sender is not a registered client; ask the chain admin to register it")
    expected = system.get_nonce(state, tx.sender)
    if tx.nonce < expected:
        raise StaleNonce(expected, tx.nonce)
    if tx.nonce > expected and not allow_future:
        raise FutureNonce(expected, tx.nonce)
    if not signature_verified:
        try:
            tx.verify_signature(genesis_hash)
        except CryptoError:
            raise WrongChain(
                "signature does not verify for this chain (wrong key or wrong genesis hash)"
            ) from None
    if dispatch:
        module.precheck_call(state, tx.sender, call)
        if tx.nonce == expected:
            module.validate_call(state, tx.sender, call)
    return CheckedTransaction(tx, call)


EXTRINSIC_FAILED: Final = "ExtrinsicFailed"


def dispatch_call(
    runtime: Runtime, state: State, checked: CheckedTransaction, env: BlockEnv
) -> list[Event]:
    """Run a valid transaction's call. A call the module refuses (a full round, a stale base,
    a non-admin registering a client) is still included, as Substrate includes a failed
    extrinsic: the nonce is used, nothing else is written, and an ``ExtrinsicFailed`` event
    records why. So a transaction that was valid when it was pooled always reaches a block
    with a stated outcome, and no later nonce of its sender is stranded behind it."""
    tx = checked.tx
    module = runtime.module(tx.call.module)
    try:
        with state.layer():
            module.precheck_call(state, tx.sender, checked.call)
            module.validate_call(state, tx.sender, checked.call)
            return module.apply_call(state, tx.sender, checked.call, env, tx.hash)
    except InvalidTransaction as exc:
        return [
            Event(
                "system",
                EXTRINSIC_FAILED,
                {"error": type(exc).__name__, "reason": str(exc)},
            )
        ]


def apply_transaction(
    runtime: Runtime,
    state: State,
    tx: SignedTransaction,
    env: BlockEnv,
    *,
    signature_verified: bool = False,
    call: object | None = None,
) -> list[Event]:
    """Check and apply one transaction. An invalid one (InvalidTransaction: bad sender, nonce
    or signature) writes nothing; a valid one uses its nonce, whatever its call does."""
    checked = check_transaction(
        runtime,
        state,
        tx,
        env.genesis_hash,
        signature_verified=signature_verified,
        dispatch=False,
        call=call,
    )
    with state.layer():
        system.bump_nonce(state, tx.sender)
        return dispatch_call(runtime, state, checked, env)


def finalize_block(runtime: Runtime, state: State, env: BlockEnv) -> list[Event]:
    events: list[Event] = []
    for module in runtime.modules.values():
        events.extend(module.on_finalize(state, env))
    return events


@dataclass
class BlockOutput:
    diff: StateDiff
    tx_events: list[list[Event]] = field(default_factory=list)
    finalize_events: list[Event] = field(default_factory=list)


def env_for(header: Header, genesis_hash: Hash32) -> BlockEnv:
    return BlockEnv(genesis_hash, header.parent_hash, header.number, header.slot, header.author)


PARALLEL_VERIFY_MIN: Final = 128
"""Blocks with at least this many transactions check their signatures on every core first
(1000 transactions: 192 -> 148 ms on 2 cores; at 100 the pool costs what it saves)."""


def _verify_all(txs: Sequence[SignedTransaction], genesis_hash: Hash32) -> list[bool]:
    ok = []
    for tx in txs:
        try:
            tx.verify_signature(genesis_hash)
            ok.append(True)
        except CryptoError:
            ok.append(False)
    return ok


def signatures_verified(txs: Sequence[SignedTransaction], genesis_hash: Hash32) -> list[bool]:
    """Which transactions' signatures verify, checked on a thread per core (libsodium releases
    the GIL; signatures are ~70% of a large import). A False only means "check it in line":
    apply_transaction then verifies it itself, so errors and their order do not change. The
    pool lives for one call, so no thread outlives the import."""
    workers = min(os.cpu_count() or 1, len(txs) // 64)
    if len(txs) < PARALLEL_VERIFY_MIN or workers < 2:
        return [False] * len(txs)
    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
        parts = list(
            pool.map(
                _verify_all, [txs[w::workers] for w in range(workers)], [genesis_hash] * workers
            )
        )
    verified = [False] * len(txs)
    for w, part in enumerate(parts):
        verified[w::workers] = part
    return verified


def apply_block(
    runtime: Runtime,
    state: State,
    block: Block,
    genesis_hash: Hash32,
    *,
    checked: Callable[[SignedTransaction], CheckedTransaction | None] | None = None,
) -> BlockOutput:
    """Execute ``block`` on ``state`` (its parent's state); raises InvalidBlock on any mismatch.

    ``checked(tx)`` is this node's own checked form of exactly this transaction (its pool
    verified the signature for this chain and decoded the call), or None: those found are
    not verified or decoded again. Nonce and state checks run as ever, so the outcome, the
    errors and the state root are the same with or without it."""
    header = block.header
    if header.extrinsics_root != extrinsics_root(block.transactions):
        raise InvalidBlock("extrinsics root does not match the block body")
    if state.get(system.KEY_AUTHORITIES) is None:
        raise InvalidBlock("parent state has no authority set")
    env = env_for(header, genesis_hash)
    output = BlockOutput(diff=StateDiff(root=state.base_root))
    already = [None if checked is None else checked(tx) for tx in block.transactions]
    unknown = [tx for tx, done in zip(block.transactions, already, strict=True) if done is None]
    fresh = iter(signatures_verified(unknown, genesis_hash))
    verified = [done is not None or next(fresh) for done in already]
    for index, tx in enumerate(block.transactions):
        known = already[index]
        try:
            output.tx_events.append(
                apply_transaction(
                    runtime,
                    state,
                    tx,
                    env,
                    signature_verified=verified[index],
                    call=None if known is None else known.call,
                )
            )
        except InvalidTransaction as exc:
            raise InvalidBlock(
                f"transaction {index} ({tx.hash.hex()[:16]}…) is invalid: {exc}"
            ) from None
    output.finalize_events = finalize_block(runtime, state, env)
    output.diff = state.commit_root()
    if output.diff.root != header.state_root:
        raise InvalidBlock(
            f"state root mismatch: header says {header.state_root.hex()}, "
            f"execution gives {output.diff.root.hex()}"
        )
    return output


@dataclass
class BuiltBlock:
    header: Header  # unsealed
    transactions: tuple[SignedTransaction, ...]
    output: BlockOutput
    rejected: list[tuple[SignedTransaction, InvalidTransaction]]


def build_block(
    runtime: Runtime,
    state: State,
    env: BlockEnv,
    candidates: Iterable[SignedTransaction | CheckedTransaction],
    *,
    max_txs: int,
    deadline: float | None = None,
) -> BuiltBlock:
    """Author a block body: apply candidates in order, skipping (and reporting) invalid ones.

    A ``CheckedTransaction`` candidate (from the pool) is not decoded or signature-checked
    again; nonce and state checks still run in block order. With ``deadline``
    (time.perf_counter()), no candidate starts after it: the block is sealed in its slot
    whatever the pool holds, and the rest waits for the next block."""
    included: list[SignedTransaction] = []
    output = BlockOutput(diff=StateDiff(root=state.base_root))
    rejected: list[tuple[SignedTransaction, InvalidTransaction]] = []
    for candidate in candidates:
        if len(included) >= max_txs or (deadline is not None and time.perf_counter() > deadline):
            break
        if isinstance(candidate, CheckedTransaction):
            tx, call, verified = candidate.tx, candidate.call, True
        else:
            tx, call, verified = candidate, None, False
        try:
            output.tx_events.append(
                apply_transaction(runtime, state, tx, env, signature_verified=verified, call=call)
            )
        except InvalidTransaction as exc:
            rejected.append((tx, exc))
            continue
        included.append(tx)
    output.finalize_events = finalize_block(runtime, state, env)
    output.diff = state.commit_root()
    txs = tuple(included)
    header = Header(
        env.parent_hash,
        env.number,
        env.slot,
        output.diff.root,
        extrinsics_root(txs),
        env.author,
        Signature(b""),
    )
    return BuiltBlock(header, txs, output, rejected)
