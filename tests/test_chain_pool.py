"""The node's pool policy on a real chain (storage, runtime, pool): check once, ban forgeries
by hash *and* signature, refuse what a round cannot take, state every fate, seal in the slot."""

from __future__ import annotations

import dataclasses
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltachain import codec
from deltachain.chain import construct_runtime
from deltachain.client.fleet import device_key
from deltachain.client.load import random_delta
from deltachain.consensus.aura import seal_header, slot_at
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.errors import (
    Banned,
    DecodeError,
    InvalidBlock,
    InvalidCall,
    WrongChain,
)
from deltachain.model_state.module import DuplicateDelta, RoundFull
from deltachain.node import chain as chain_module
from deltachain.node.chain import Chain
from deltachain.node.service import MAX_TXS_PER_BATCH, TX_BATCH_BYTES, decode_tx_batch, tx_batches
from deltachain.primitives.block import Block, extrinsics_root
from deltachain.primitives.chainspec import dev_chain_spec, parse_chain_spec
from deltachain.primitives.transaction import SignedTransaction, sign_transaction
from node_process import start_node, stop_node

ALICE = Keypair.dev("alice")
DEVICES = [device_key(i) for i in range(120)]


def spec(slot_ms: int = 1000, **model: Any) -> Any:
    raw = dev_chain_spec(slot_ms=slot_ms).to_json()
    raw["genesis"]["runtime"]["system"]["clients"] += [address_to_str(k.address) for k in DEVICES]
    raw["genesis"]["runtime"]["model_state"]["models"][0].update(model)
    return parse_chain_spec(raw)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = Chain(spec(maxDeltas=3, minDeltas=2, roundLen=100), construct_runtime(), tmp_path / "db")
    try:
        yield c
    finally:
        c.close()


def model_json(chain: Chain) -> dict[str, Any]:
    module = chain.runtime.modules["model_state"]
    return dict(module.query(chain.best_state(), "get", {"model": "sine-mlp"}))


def delta_tx(chain: Chain, key: Keypair, nonce: int = 0, **changes: Any) -> SignedTransaction:
    delta = random_delta(np.random.default_rng(nonce), model_json(chain), 0.1)
    args = {**delta.to_args(), **changes}
    return sign_transaction(key, chain.genesis_hash, nonce, "model_state", "submit_delta", args)


def remark(chain: Chain, key: Keypair, nonce: int) -> SignedTransaction:
    return sign_transaction(key, chain.genesis_hash, nonce, "system", "remark", {"data": b"r"})


def author(chain: Chain, slot_ms: int = 1000) -> Any:
    slot = slot_at(int(time.time() * 1000), slot_ms)
    result = chain.author_block(slot, ALICE)
    assert result is not None
    return result


def test_a_forged_copy_is_banned_without_banning_the_honest_transaction(chain: Chain) -> None:
    """The hash covers the body only: a ban by hash alone would let anyone ban an honest
    transaction by sending it first with a broken signature."""
    honest = delta_tx(chain, DEVICES[0])
    forged = dataclasses.replace(honest, signature=bytes(64))  # type: ignore[arg-type]
    assert forged.hash == honest.hash
    with pytest.raises(WrongChain):
        chain.submit_transaction(forged.encode())
    with pytest.raises(Banned, match="banned"):
        chain.submit_transaction(forged.encode())
    assert chain.submit_transaction(honest.encode()) == (honest.hash, "ready")


def test_import_verifies_a_signature_the_pool_did_not_see(chain: Chain, tmp_path: Path) -> None:
    """Check once must not mean check never: a block carrying a pooled body under another
    signature (same hash: the hash covers the body) is verified, and refused."""
    honest = delta_tx(chain, DEVICES[0])
    chain.submit_transaction(honest.encode())
    built = author(chain).block
    assert built.transactions == (honest,)
    forged = dataclasses.replace(honest, signature=ALICE.sign(b"other"))
    header = dataclasses.replace(built.header, extrinsics_root=extrinsics_root((forged,)))
    tampered = Block(seal_header(header, ALICE, chain.genesis_hash), (forged,))
    other = Chain(chain.spec, construct_runtime(), tmp_path / "other")
    try:
        other.submit_transaction(honest.encode(), announce=False)
        with pytest.raises(InvalidBlock, match="does not verify"):
            other.import_block(tampered, now_slot=None)
        assert other.import_block(built, now_slot=None) is not None  # the honest one imports
    finally:
        other.close()


def test_future_deltas_get_the_same_stateless_checks(chain: Chain) -> None:
    bad = delta_tx(chain, DEVICES[1], nonce=3, exp=60)
    with pytest.raises(InvalidCall, match="exp"):
        chain.submit_transaction(bad.encode())
    assert chain.submit_transaction(delta_tx(chain, DEVICES[1], nonce=3).encode())[1] == "future"


def test_a_round_counts_pooled_deltas_at_submission(chain: Chain) -> None:
    for key in DEVICES[:3]:  # maxDeltas 3
        chain.submit_transaction(delta_tx(chain, key).encode())
    with pytest.raises(RoundFull, match="3 waiting, maxDeltas 3"):
        chain.submit_transaction(delta_tx(chain, DEVICES[3]).encode())
    with pytest.raises(DuplicateDelta, match="waiting in the pool"):
        chain.submit_transaction(delta_tx(chain, DEVICES[0], nonce=1).encode())
    assert len(chain.pool) == 3
    result = author(chain)
    assert len(result.block.transactions) == 3
    # the round closed at maxDeltas: the next delta is welcome again
    chain.submit_transaction(delta_tx(chain, DEVICES[3]).encode())


def test_every_fate_is_stated(chain: Chain) -> None:
    """Included (with the failed call's reason), removed on request, or unknown."""
    keep = delta_tx(chain, DEVICES[0])
    chain.submit_transaction(keep.encode())
    gone = remark(chain, DEVICES[5], 0)
    chain.submit_transaction(gone.encode())
    assert chain.remove_transactions([gone.hash], "removed by author_removeExtrinsic") == [
        gone.hash
    ]
    assert chain.transaction_status(gone.hash) == {
        "status": "dropped",
        "reason": "removed by author_removeExtrinsic",
    }
    # A delta whose round filled after it was pooled: included, its call failed, nonce used.
    late = [delta_tx(chain, k) for k in DEVICES[1:3]]
    for tx in late:
        chain.submit_transaction(tx.encode())
    surplus = delta_tx(chain, DEVICES[3])
    module = chain.runtime.modules["model_state"]
    # admit it as a peer's gossip would (no pending-round refusal), so the block must fail it
    chain.submit_transaction(surplus.encode(), announce=False)
    assert module.pool_claim(module.decode_call("submit_delta", surplus.call.args)) is not None
    author(chain)
    status = chain.transaction_status(surplus.hash)
    assert status["status"] == "inBlock"
    assert status["failed"]["error"] == "RoundFull"
    assert "is full" in status["failed"]["reason"]
    assert "failed" not in chain.transaction_status(keep.hash)
    assert chain.transaction_status(bytes(32)) == {"status": "unknown"}  # type: ignore[arg-type]


def test_only_own_users_transactions_are_queued_for_gossip(chain: Chain) -> None:
    mine, peers = remark(chain, DEVICES[0], 0), remark(chain, DEVICES[1], 0)
    chain.submit_transaction(mine.encode())
    counts = chain.submit_batch([peers.encode(), peers.encode(), b"\x00"])
    assert counts == {"accepted": 1, "AlreadyKnown": 1, "DecodeError": 1}
    assert list(chain.outbox) == [mine.encode()]


def test_gossip_batches_stay_under_the_message_limit() -> None:
    raws = [bytes([i % 256]) * 3000 for i in range(1000)]
    batches = tx_batches(raws)
    assert all(len(b) <= TX_BATCH_BYTES + 64 for b in batches)
    assert [raw for b in batches for raw in decode_tx_batch(b)] == raws
    with pytest.raises(DecodeError):
        decode_tx_batch(codec.encode([b"x"] * (MAX_TXS_PER_BATCH + 1)))
    with pytest.raises(DecodeError):
        decode_tx_batch(codec.encode(["not bytes"]))


def test_the_author_seals_within_its_slot_however_full_the_pool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tenth of the slot to author in, a pool of ~0.2-0.6 s of work (fast or loaded
    machine) cannot all go in: the budget stops it, and the block is stored in its slot."""
    monkeypatch.setattr(chain_module, "AUTHOR_BUDGET", 0.1)
    slot_ms = 1000
    chain = Chain(spec(slot_ms), construct_runtime(), tmp_path / "db")
    try:
        for key in DEVICES:
            for nonce in range(60):
                chain.submit_transaction(remark(chain, key, nonce).encode())
        pooled = len(chain.pool)
        assert pooled == 7200
        now_ms = int(time.time() * 1000)
        time.sleep((slot_ms - now_ms % slot_ms + 5) / 1000)  # author at the start of a slot
        slot = slot_at(int(time.time() * 1000), slot_ms)
        started = time.monotonic()
        result = chain.author_block(slot, ALICE)
        took = time.monotonic() - started
        assert result is not None
        included = len(result.block.transactions)
        slot_end_s = (slot + 1) * slot_ms / 1000 - time.time()
        assert slot_end_s > 0, f"authoring ran past its slot ({took:.2f} s, {included} txs)"
        assert 0 < included < pooled  # the budget stopped it; the rest waits in the pool
        assert len(chain.pool) == pooled - included
    finally:
        chain.close()


def test_pool_flags_reach_the_running_node(tmp_path: Path) -> None:
    """--pool-sender-limit and --tx-ban-seconds as a user passes them (a dev node over RPC)."""
    node = start_node(tmp_path, "--pool-sender-limit", "8", "--tx-ban-seconds", "60")
    try:
        genesis = bytes.fromhex(_rpc(node.url, "chain_getGenesisHash")[2:])
        bob = Keypair.dev("bob")
        replies = [
            _rpc_raw(node.url, "author_submitExtrinsic", "0x" + tx.encode().hex())
            for tx in (
                sign_transaction(bob, genesis, n, "system", "remark", {"data": b"x"})  # type: ignore[arg-type]
                for n in (5, 6, 7)
            )
        ]
        assert ["error" in r for r in replies] == [False, False, True]
        # 8 per sender leaves 2 behind a nonce gap (a quarter, at most 16)
        assert "(the limit is 2)" in replies[2]["error"]["message"]
        forged = dataclasses.replace(
            sign_transaction(bob, genesis, 0, "system", "remark", {"data": b"y"}),  # type: ignore[arg-type]
            signature=bytes(64),
        )
        first = _rpc_raw(node.url, "author_submitExtrinsic", "0x" + forged.encode().hex())
        again = _rpc_raw(node.url, "author_submitExtrinsic", "0x" + forged.encode().hex())
        assert "does not verify" in first["error"]["message"]
        assert "banned for 60 s" in again["error"]["message"]
    finally:
        stop_node(node)


def _rpc_raw(url: str, method: str, *params: Any) -> dict[str, Any]:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def _rpc(url: str, method: str, *params: Any) -> Any:
    return _rpc_raw(url, method, *params)["result"]


def test_a_restart_keeps_the_pool(tmp_path: Path) -> None:
    """Accepted but not yet included transactions survive a stop and start (every validator
    restarted at once would otherwise lose them without a fate)."""
    chain = Chain(spec(), construct_runtime(), tmp_path / "db")
    pooled = [
        delta_tx(chain, DEVICES[0]),
        remark(chain, DEVICES[1], 0),
        remark(chain, DEVICES[1], 3),
    ]
    for tx in pooled:
        chain.submit_transaction(tx.encode())
    chain.close()
    again = Chain(spec(), construct_runtime(), tmp_path / "db")
    try:
        assert {tx.hash for tx in again.pool.all()} == {tx.hash for tx in pooled}
        assert all(again.transaction_status(tx.hash) == {"status": "pool"} for tx in pooled)
        assert sorted(again.outbox) == sorted(tx.encode() for tx in pooled)  # gossiped again
        result = author(again)
        assert len(result.block.transactions) == 2  # the future one still waits for nonce 1
    finally:
        again.close()
    (tmp_path / "db" / "txpool.cbor").write_bytes(b"\xff garbage")
    third = Chain(spec(), construct_runtime(), tmp_path / "db")  # unreadable: start empty
    third.close()
