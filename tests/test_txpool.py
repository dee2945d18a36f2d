"""The pool: ready/future ordering, limits, duplicates and pruning after blocks."""

from __future__ import annotations

import time

import pytest

from deltachain.errors import AlreadyKnown, PoolFull, StaleNonce
from deltachain.node.txpool import PoolLimits, TxPool
from support import ALICE, BOB, CHARLIE, DAVE, MemChain


def remark(chain: MemChain, key, nonce: int, data: bytes = b"x"):  # type: ignore[no-untyped-def]
    return chain.tx(key, "system", "remark", {"data": data}, nonce=nonce)


def test_future_becomes_ready_when_gap_fills() -> None:
    chain, pool = MemChain(), TxPool()
    t0, t1, t2 = (remark(chain, BOB, n) for n in range(3))
    assert pool.add(t2, 10, 0) == "future"
    assert pool.add(t1, 10, 0) == "future"
    assert pool.ready() == []
    assert pool.add(t0, 10, 0) == "ready"
    assert pool.ready() == [t0, t1, t2]
    assert pool.stats() == {"ready": 3, "future": 0, "ready_bytes": 30, "future_bytes": 0}


def test_ready_order_is_arrival_order_across_senders() -> None:
    chain, pool = MemChain(), TxPool()
    b0, c0, b1 = remark(chain, BOB, 0), remark(chain, CHARLIE, 0), remark(chain, BOB, 1)
    for tx in (b0, c0, b1):
        pool.add(tx, 1, 0)
    assert pool.ready() == [b0, c0, b1]


def test_duplicates_and_stale_are_rejected() -> None:
    chain, pool = MemChain(), TxPool()
    tx = remark(chain, BOB, 3)
    pool.add(tx, 1, 3)
    with pytest.raises(AlreadyKnown):
        pool.add(tx, 1, 3)
    with pytest.raises(AlreadyKnown, match="nonce 3"):
        pool.add(remark(chain, BOB, 3, b"other"), 1, 3)
    with pytest.raises(StaleNonce):
        pool.add(remark(chain, BOB, 2), 1, 3)


def test_limits_by_count_and_bytes() -> None:
    chain = MemChain()
    pool = TxPool(PoolLimits(ready_count=2, ready_bytes=100, future_count=1, future_bytes=50))
    pool.add(remark(chain, BOB, 0), 10, 0)
    pool.add(remark(chain, CHARLIE, 0), 10, 0)
    with pytest.raises(PoolFull, match="ready queue is full"):
        pool.add(remark(chain, ALICE, 0), 10, 0)
    pool.add(remark(chain, BOB, 5), 10, 0)
    with pytest.raises(PoolFull, match="future queue is full"):
        pool.add(remark(chain, BOB, 7), 10, 0)
    big = TxPool(PoolLimits(ready_bytes=100))
    with pytest.raises(PoolFull, match="byte limit"):
        big.add(remark(chain, BOB, 0), 101, 0)


def test_new_state_drops_included_and_promotes() -> None:
    chain, pool = MemChain(), TxPool()
    t0, t1, t2 = (remark(chain, BOB, n) for n in range(3))
    pool.add(t0, 1, 0)
    pool.add(t2, 1, 0)
    assert pool.stats()["future"] == 1
    dropped = pool.on_new_state(lambda who: 2)  # t0, t1 included elsewhere
    assert dropped == [t0.hash]
    assert pool.ready() == [t2]
    assert pool.stats()["ready"] == 1
    pool.remove([t2.hash, t1.hash])
    assert len(pool) == 0


# --- policy: priority, fairness, per-sender limits, claims, expiry -------------------------


def test_priority_first_then_each_senders_kth_before_anyones_next_then_arrival() -> None:
    """A busy sender's queue cannot delay the others: one each, round by round."""
    chain, pool = MemChain(), TxPool()
    spam = [remark(chain, BOB, n) for n in range(4)]
    c0, c1 = remark(chain, CHARLIE, 0), remark(chain, CHARLIE, 1)
    admin = chain.tx(ALICE, "system", "register_client", {"client": DAVE.address}, nonce=0)
    for tx in spam:
        pool.add(tx, 1, 0, priority=0)
    pool.add(c0, 1, 0, priority=1)
    pool.add(c1, 1, 0, priority=1)
    pool.add(admin, 1, 0, priority=2)
    assert pool.ready() == [admin, c0, c1, *spam]
    same = TxPool()
    for tx in [*spam, c0, c1]:
        same.add(tx, 1, 0)
    assert same.ready() == [spam[0], c0, spam[1], c1, spam[2], spam[3]]


def test_one_sender_cannot_fill_the_pool_or_its_future_queue() -> None:
    chain = MemChain()
    pool = TxPool(PoolLimits(per_sender=5, per_sender_future=2))
    pool.add(remark(chain, BOB, 10), 1, 0)
    pool.add(remark(chain, BOB, 11), 1, 0)
    with pytest.raises(PoolFull, match=r"waiting behind a nonce gap .*submit nonce 0 first"):
        pool.add(remark(chain, BOB, 12), 1, 0)
    for n in range(3):
        pool.add(remark(chain, BOB, n), 1, 0)
    with pytest.raises(PoolFull, match="already has 5 transactions"):
        pool.add(remark(chain, BOB, 3), 1, 0)
    pool.add(remark(chain, CHARLIE, 0), 1, 0)  # others are unaffected


def test_claims_count_pending_senders_until_they_leave() -> None:
    chain, pool = MemChain(), TxPool()
    b0, c0 = remark(chain, BOB, 0), remark(chain, CHARLIE, 0)
    pool.add(b0, 1, 0, claim="round")
    pool.add(c0, 1, 0, claim="round")
    assert pool.claimants("round") == {BOB.address, CHARLIE.address}
    pool.on_new_state(lambda who: 1 if who == BOB.address else 0)
    assert pool.claimants("round") == {CHARLIE.address}
    pool.remove([c0.hash])
    assert pool.claimants("round") == frozenset()


def test_futures_that_wait_too_long_expire_and_bans_lapse() -> None:
    chain = MemChain()
    pool = TxPool(PoolLimits(future_seconds=10.0, ban_seconds=5.0))
    waiting, ready = remark(chain, BOB, 3), remark(chain, CHARLIE, 0)
    pool.add(waiting, 1, 0)
    pool.add(ready, 1, 0)
    assert pool.expire_futures() == []
    assert pool.expire_futures(now=time.monotonic() + 11) == [waiting.hash]
    assert pool.ready() == [ready]
    pool.ban([b"key"], now=100.0)
    assert pool.is_banned(b"key", now=104.0)
    assert not pool.is_banned(b"key", now=105.0)
