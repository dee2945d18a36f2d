"""State transition: valid blocks apply, every kind of bad transaction or block is rejected
with a typed error, and nothing a rejected transaction wrote survives."""

from __future__ import annotations

import copy
import dataclasses
import os
import threading

import pytest

from deltachain.consensus.aura import seal_header, verify_header
from deltachain.crypto.keys import Keypair
from deltachain.errors import (
    ChainSpecError,
    FutureNonce,
    InvalidBlock,
    InvalidCall,
    InvalidSeal,
    StaleNonce,
    Unauthorized,
    UnknownCall,
    WrongChain,
)
from deltachain.primitives.block import Block
from deltachain.primitives.chainspec import dev_chain_spec, parse_chain_spec
from deltachain.primitives.transaction import SignedTransaction, sign_transaction
from deltachain.primitives.types import Slot
from deltachain.runtime import executive, system
from deltachain.runtime.executive import apply_transaction, check_transaction, env_for
from support import ALICE, BOB, CHARLIE, DAVE, MemChain


def test_genesis_is_deterministic_and_holds_the_spec() -> None:
    a, b = MemChain(), MemChain()
    assert a.genesis_hash == b.genesis_hash
    state = a.state()
    assert system.get_admin(state) == ALICE.address
    assert system.get_authorities(state) == (ALICE.address,)
    assert system.is_client(state, BOB.address)
    assert not system.is_client(state, DAVE.address)
    other = MemChain(dev_chain_spec(slot_ms=500))
    assert other.genesis_hash != a.genesis_hash  # configuration is committed to by genesis


def test_register_then_client_can_transact() -> None:
    chain = MemChain()
    chain.produce([chain.tx(ALICE, "system", "register_client", {"client": DAVE.address})])
    assert system.is_client(chain.state(), DAVE.address)
    chain.produce([chain.tx(DAVE, "system", "remark", {"data": b"hi"})])
    assert chain.nonce(DAVE) == 1
    assert chain.nonce(ALICE) == 1
    chain.produce([chain.tx(ALICE, "system", "revoke_client", {"client": DAVE.address})])
    with pytest.raises(Unauthorized, match="not a registered client"):
        check_transaction(
            chain.runtime,
            chain.state(),
            chain.tx(DAVE, "system", "remark", {"data": b"x"}),
            chain.genesis_hash,
        )


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda c: c.tx(DAVE, "system", "remark", {"data": b""}), Unauthorized),
        (lambda c: c.tx(BOB, "system", "remark", {"data": b""}, nonce=5), FutureNonce),
        (lambda c: c.tx(ALICE, "system", "register_client", {"client": b"short"}), InvalidCall),
        (lambda c: c.tx(BOB, "system", "remark", {"data": b"x" * 5000}), InvalidCall),
        (lambda c: c.tx(BOB, "system", "remark", {"data": "text"}), InvalidCall),
        (lambda c: c.tx(BOB, "system", "remark", {"data": b"", "extra": 1}), InvalidCall),
        (lambda c: c.tx(BOB, "system", "no_such", {}), UnknownCall),
        (lambda c: c.tx(BOB, "nomodule", "remark", {}), UnknownCall),
        (
            lambda c: sign_transaction(BOB, bytes(32), 0, "system", "remark", {"data": b""}),  # type: ignore[arg-type]
            WrongChain,
        ),
    ],
)
def test_invalid_transactions_are_rejected_and_change_nothing(make, error) -> None:  # type: ignore[no-untyped-def]
    chain = MemChain()
    tx = make(chain)
    state = chain.state()
    with pytest.raises(error):
        check_transaction(chain.runtime, state, tx, chain.genesis_hash)
    with pytest.raises(error):
        apply_transaction(chain.runtime, state, tx, env_for(chain.head, chain.genesis_hash))
    assert state.pending() == {}
    assert state.commit_root().root == chain.head.state_root


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda c: c.tx(BOB, "system", "register_client", {"client": DAVE.address}), Unauthorized),
        (lambda c: c.tx(ALICE, "system", "register_client", {"client": BOB.address}), InvalidCall),
        (lambda c: c.tx(ALICE, "system", "revoke_client", {"client": DAVE.address}), InvalidCall),
    ],
)
def test_refused_calls_are_refused_by_the_pool_and_fail_in_a_block(make, error) -> None:  # type: ignore[no-untyped-def]
    """A valid transaction whose call the module refuses is not admitted to the pool; in a
    block (it may have become refusable after pooling) it uses its nonce, writes nothing
    else and records ExtrinsicFailed with the reason, as Substrate does."""
    chain = MemChain()
    tx = make(chain)
    state = chain.state()
    with pytest.raises(error) as refused:
        check_transaction(chain.runtime, state, tx, chain.genesis_hash)
    events = apply_transaction(chain.runtime, state, tx, env_for(chain.head, chain.genesis_hash))
    assert [(e.module, e.name) for e in events] == [("system", "ExtrinsicFailed")]
    assert events[0].data == {"error": error.__name__, "reason": str(refused.value)}
    diff = state.commit_root()
    assert diff.root != chain.head.state_root  # the nonce moved ...
    fresh = chain.state()
    system.bump_nonce(fresh, tx.sender)
    assert fresh.commit_root().root == diff.root  # ... and nothing else did


def test_forged_signature_is_rejected() -> None:
    chain = MemChain()
    good = chain.tx(BOB, "system", "remark", {"data": b"x"})
    forged = dataclasses.replace(good, signature=bytes(64))  # type: ignore[arg-type]
    with pytest.raises(WrongChain):
        check_transaction(chain.runtime, chain.state(), forged, chain.genesis_hash)
    stolen = dataclasses.replace(good, signature=CHARLIE.sign(b"anything"))
    with pytest.raises(WrongChain):
        check_transaction(chain.runtime, chain.state(), stolen, chain.genesis_hash)


def test_replay_is_stale() -> None:
    chain = MemChain()
    tx = chain.tx(BOB, "system", "remark", {"data": b"once"})
    chain.produce([tx])
    with pytest.raises(StaleNonce) as info:
        check_transaction(chain.runtime, chain.state(), tx, chain.genesis_hash)
    assert (info.value.expected, info.value.got) == (1, 0)


def test_builder_skips_invalid_and_keeps_valid() -> None:
    chain = MemChain()
    good = chain.tx(BOB, "system", "remark", {"data": b"a"})
    bad = chain.tx(DAVE, "system", "remark", {"data": b"b"})
    good2 = chain.tx(BOB, "system", "remark", {"data": b"c"}, nonce=1)
    block, built = chain.build([good, bad, good2])
    assert block.transactions == (good, good2)
    assert [type(e) for _, e in built.rejected] == [Unauthorized]
    chain.import_block(block)
    assert chain.nonce(BOB) == 2


def test_block_with_invalid_transaction_is_rejected() -> None:
    chain = MemChain()
    block, _ = chain.build([])
    bad = chain.tx(DAVE, "system", "remark", {"data": b"b"})
    forged = _reseal(chain, block, transactions=(bad,))
    with pytest.raises(InvalidBlock, match="transaction 0"):
        chain.import_block(forged)
    assert chain.head.number == 0


def test_large_block_checks_signatures_in_parallel_with_the_same_outcome() -> None:
    """A block of >= PARALLEL_VERIFY_MIN transactions verifies signatures on a thread pool
    first; the state root, and the error for a forged one (by index), stay as in line."""
    chain = MemChain()
    n = executive.PARALLEL_VERIFY_MIN + 3
    txs = [chain.tx(BOB, "system", "remark", {"data": bytes([i])}, nonce=i) for i in range(n)]
    assert len(txs) >= executive.PARALLEL_VERIFY_MIN
    ok = executive.signatures_verified(txs, chain.genesis_hash)
    assert ok == [True] * n or (os.cpu_count() or 1) < 2
    block, _ = chain.build(txs)
    forged_txs = list(block.transactions)
    forged_txs[57] = dataclasses.replace(forged_txs[57], signature=CHARLIE.sign(b"x"))
    forged = _reseal(chain, block, transactions=tuple(forged_txs))
    assert executive.signatures_verified(forged_txs, chain.genesis_hash)[57] is False
    with pytest.raises(InvalidBlock, match=r"transaction 57 .* signature does not verify"):
        chain.import_block(forged)
    assert chain.head.number == 0
    chain.import_block(block)  # the valid block's root matches the builder's (in line) root
    assert chain.nonce(BOB) == n
    assert not [t for t in threading.enumerate() if t.name.startswith("verify")]


def _reseal(
    chain: MemChain,
    block: Block,
    transactions: tuple[SignedTransaction, ...] | None = None,
    **fields: object,
) -> Block:
    from deltachain.primitives.block import extrinsics_root

    txs = block.transactions if transactions is None else transactions
    header = dataclasses.replace(block.header, extrinsics_root=extrinsics_root(txs), **fields)
    return Block(seal_header(header, chain.author, chain.genesis_hash), txs)


def test_wrong_state_root_is_rejected() -> None:
    chain = MemChain()
    block, _ = chain.build([chain.tx(BOB, "system", "remark", {"data": b"a"})])
    with pytest.raises(InvalidBlock, match="state root mismatch"):
        chain.import_block(_reseal(chain, block, state_root=bytes(32)))


def test_body_not_matching_extrinsics_root_is_rejected() -> None:
    chain = MemChain()
    block, _ = chain.build([chain.tx(BOB, "system", "remark", {"data": b"a"})])
    with pytest.raises(InvalidBlock, match="extrinsics root"):
        chain.import_block(Block(block.header, ()))


def test_aura_rejects_wrong_author_future_slot_bad_seal_and_old_slot() -> None:
    spec = parse_chain_spec({**dev_chain_spec().to_json()})
    chain = MemChain(spec)
    block, _ = chain.build([], slot=10)
    parent = chain.head
    auth = (ALICE.address,)
    verify_header(block.header, parent, auth, chain.genesis_hash, now_slot=Slot(10))
    with pytest.raises(InvalidBlock, match="future"):
        verify_header(block.header, parent, auth, chain.genesis_hash, now_slot=Slot(8))
    with pytest.raises(InvalidSeal, match="belongs to"):
        verify_header(block.header, parent, (BOB.address,), chain.genesis_hash, now_slot=None)
    with pytest.raises(InvalidSeal, match="does not verify"):
        verify_header(
            block.header.with_seal(bytes(64)),
            parent,
            auth,
            chain.genesis_hash,  # type: ignore[arg-type]
            now_slot=None,
        )
    with pytest.raises(InvalidSeal, match="does not verify"):  # a seal for another chain
        verify_header(
            seal_header(block.header, ALICE, bytes(32)),
            parent,
            auth,  # type: ignore[arg-type]
            chain.genesis_hash,
            now_slot=None,
        )
    chain.import_block(block)
    stale, _ = chain.build([], slot=10)
    with pytest.raises(InvalidBlock, match="not after"):
        chain.import_block(stale)
    two = Keypair.dev("eve")
    impostor = MemChain(spec, author=two)
    forged, _ = impostor.build([], slot=11)
    with pytest.raises(InvalidSeal):
        chain.import_block(
            dataclasses.replace(
                forged,
                header=dataclasses.replace(
                    forged.header, parent_hash=chain.head.hash, number=chain.head.number + 1
                ),
            )
        )


def test_chain_spec_rejects_bad_input() -> None:
    good = dev_chain_spec().to_json()
    for mutate, message in [
        (lambda s: s.pop("genesis"), "missing genesis"),
        (lambda s: s.update(chainType="Prod"), "chainType"),
        (lambda s: s["genesis"]["consensus"].update(slotMs=10), "slotMs"),
        (lambda s: s["genesis"]["consensus"].update(authorities=[]), "at least one"),
        (lambda s: s["genesis"]["consensus"].update(authorities=["0x12"]), "bad authority"),
    ]:
        spec = copy.deepcopy(good)
        mutate(spec)
        with pytest.raises(ChainSpecError, match=message):
            parse_chain_spec(spec)
    spec = copy.deepcopy(good)
    spec["genesis"]["runtime"]["unknown_module"] = {}
    with pytest.raises(ChainSpecError, match="unknown_module"):
        MemChain(parse_chain_spec(spec))
    spec = copy.deepcopy(good)
    spec["genesis"]["runtime"]["system"]["clients"] = ["0x" + "00" * 31]
    with pytest.raises(ChainSpecError):
        MemChain(parse_chain_spec(spec))
