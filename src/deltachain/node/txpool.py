"""The transaction pool: ready and future queues per sender, bounded, prioritised and fair.

A transaction is *ready* when its nonce continues its sender's account nonce without a gap
(counting the sender's other ready transactions); otherwise it waits in *future* until the gap
fills. Validation (signature, call, nonce not stale) happens before ``add``; the pool keeps the
checked form so the author does not decode or verify again, and only orders, bounds, bans
and forgets.

Policy, as Substrate's pool has it where it has one (see docs/rpc.md, "Pool policy"):
- **priority**: a module ranks its calls (authority and admin calls, then deltas, then
  remarks); the author takes higher classes first;
- **fairness**: within a class, every sender's first ready transaction comes before anyone's
  second, then arrival order, so one busy sender cannot delay the others;
- **per-sender limits**: a sender holds at most ``per_sender`` transactions, at most
  ``per_sender_future`` of them in future, so nobody's nonce gaps fill the shared queue;
- **bans**: hashes found invalid are refused for ``ban_seconds`` (Substrate: 30 min);
- **claims**: a transaction may claim a slot under a key (a model's round); the pool counts
  claimants so admission can refuse what the round could no longer take.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass

from deltachain.errors import AlreadyKnown, PoolFull, StaleNonce
from deltachain.primitives.transaction import SignedTransaction
from deltachain.primitives.types import Address, Hash32
from deltachain.runtime.executive import CheckedTransaction

MAX_BANNED = 65_536


@dataclass(frozen=True)
class PoolLimits:
    ready_count: int = 8192
    ready_bytes: int = 20 << 20
    future_count: int = 512
    future_bytes: int = 1 << 20
    per_sender: int = 64
    """Transactions one sender may have pooled (ready and future together)."""
    per_sender_future: int = 16
    """Of those, how many may wait behind a nonce gap."""
    ban_seconds: float = 1800.0
    future_seconds: float = 120.0
    """A transaction behind a nonce gap for this long is dropped (with a fate), so nothing
    waits for ever on a nonce its sender will never send."""


@dataclass
class _Entry:
    tx: SignedTransaction
    size: int
    seq: int
    priority: int
    claim: Hashable | None
    checked: CheckedTransaction | None
    added: float


class TxPool:
    def __init__(self, limits: PoolLimits | None = None) -> None:
        self.limits = limits or PoolLimits()
        self._entries: dict[Hash32, _Entry] = {}
        self._by_sender: dict[Address, dict[int, Hash32]] = {}
        self._account_nonce: dict[Address, int] = {}
        self._claims: dict[Hashable, set[Address]] = {}
        self._banned: OrderedDict[bytes, float] = OrderedDict()
        self._seq = itertools.count()
        self._ready = [0, 0]  # count, bytes
        self._future = [0, 0]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._entries

    def _ready_run(self, sender: Address) -> list[int]:
        nonces = self._by_sender.get(sender, {})
        run, n = [], self._account_nonce.get(sender, 0)
        while n in nonces:
            run.append(n)
            n += 1
        return run

    def _recount(self) -> None:
        """Recompute the queue totals from scratch (after removals, which may open gaps)."""
        self._ready = [0, 0]
        self._future = [0, 0]
        for sender, nonces in self._by_sender.items():
            run = set(self._ready_run(sender))
            for nonce, tx_hash in nonces.items():
                totals = self._ready if nonce in run else self._future
                totals[0] += 1
                totals[1] += self._entries[tx_hash].size

    def stats(self) -> dict[str, int]:
        return {
            "ready": self._ready[0],
            "future": self._future[0],
            "ready_bytes": self._ready[1],
            "future_bytes": self._future[1],
        }

    # --- bans --------------------------------------------------------------------------------

    def ban(self, keys: Iterable[bytes], now: float | None = None) -> None:
        """Refuse these transactions for ``ban_seconds``. A key is a transaction's hash *and*
        signature: the hash covers the body only, so banning by hash would let anyone ban an
        honest transaction by sending its body with a broken signature."""
        until = (time.monotonic() if now is None else now) + self.limits.ban_seconds
        for key in keys:
            self._banned.pop(key, None)
            self._banned[key] = until
        while len(self._banned) > MAX_BANNED:
            self._banned.popitem(last=False)

    def is_banned(self, key: bytes, now: float | None = None) -> bool:
        until = self._banned.get(key)
        if until is None:
            return False
        if (time.monotonic() if now is None else now) < until:
            return True
        del self._banned[key]
        return False

    # --- admission ---------------------------------------------------------------------------

    def claimants(self, claim: Hashable) -> frozenset[Address]:
        """Senders whose pooled transactions claim ``claim`` (e.g. a model's current round)."""
        return frozenset(self._claims.get(claim, ()))

    def add(
        self,
        tx: SignedTransaction,
        size: int,
        account_nonce: int,
        *,
        priority: int = 0,
        claim: Hashable | None = None,
        checked: CheckedTransaction | None = None,
    ) -> str:
        """Admit a validated transaction; returns "ready" or "future".

        Raises AlreadyKnown (same hash, or same sender and nonce already pooled),
        StaleNonce, PoolFull (the queue it would join, or its sender's share, is at its limit).
        """
        tx_hash = tx.hash
        if tx_hash in self._entries:
            raise AlreadyKnown(f"transaction 0x{tx_hash.hex()} is already in the pool")
        if tx.nonce < account_nonce:
            raise StaleNonce(account_nonce, tx.nonce)
        sender_txs = self._by_sender.get(tx.sender, {})
        if tx.nonce in sender_txs:
            raise AlreadyKnown(
                f"the pool already holds a transaction with nonce {tx.nonce} from "
                "this sender; wait for it to be included"
            )
        if len(sender_txs) >= self.limits.per_sender:
            raise PoolFull(
                f"this sender already has {len(sender_txs)} transactions in the pool (the "
                f"limit is {self.limits.per_sender}); wait for some to be included"
            )
        self._account_nonce[tx.sender] = account_nonce
        ready_run = len(self._ready_run(tx.sender))
        contiguous = account_nonce + ready_run
        kind = "ready" if tx.nonce == contiguous else "future"
        if kind == "future" and len(sender_txs) - ready_run >= self.limits.per_sender_future:
            raise PoolFull(
                f"this sender already has {len(sender_txs) - ready_run} transactions waiting "
                f"behind a nonce gap (the limit is {self.limits.per_sender_future}); submit "
                f"nonce {contiguous} first"
            )
        totals = self._ready if kind == "ready" else self._future
        if totals[0] + 1 > getattr(self.limits, f"{kind}_count"):
            raise PoolFull(f"the {kind} queue is full ({totals[0]} transactions); retry later")
        if totals[1] + size > getattr(self.limits, f"{kind}_bytes"):
            raise PoolFull(f"the {kind} queue is at its byte limit; retry later")
        self._entries[tx_hash] = _Entry(
            tx, size, next(self._seq), priority, claim, checked, time.monotonic()
        )
        self._by_sender.setdefault(tx.sender, {})[tx.nonce] = tx_hash
        if claim is not None:
            self._claims.setdefault(claim, set()).add(tx.sender)
        totals[0] += 1
        totals[1] += size
        if kind == "ready":  # the gap it filled may promote waiting future transactions
            n = tx.nonce + 1
            while n in self._by_sender[tx.sender]:
                promoted = self._entries[self._by_sender[tx.sender][n]].size
                self._future[0] -= 1
                self._future[1] -= promoted
                self._ready[0] += 1
                self._ready[1] += promoted
                n += 1
        return kind

    def next_nonce(self, sender: Address, account_nonce: int) -> int:
        """The nonce a new transaction from ``sender`` should use, after its pooled ones."""
        nonces = self._by_sender.get(sender, {})
        n = account_nonce
        while n in nonces:
            n += 1
        return n

    # --- reading -----------------------------------------------------------------------------

    def iter_ready(self) -> Iterator[tuple[SignedTransaction, CheckedTransaction | None]]:
        """Ready transactions with their checked form, in the order an author takes them:
        highest priority first; within it every sender's k-th before anyone's (k+1)-th; then
        arrival. Each sender's transactions stay in nonce order. Lazy, so an author that runs
        out of time or space stops paying for the rest."""
        chains = []
        for sender in self._by_sender:
            run = [self._entries[self._by_sender[sender][n]] for n in self._ready_run(sender)]
            if run:
                chains.append(run)
        heap = [(-chain[0].priority, 0, chain[0].seq, i) for i, chain in enumerate(chains)]
        heapq.heapify(heap)
        while heap:
            _, depth, _, i = heapq.heappop(heap)
            entry = chains[i][depth]
            yield entry.tx, entry.checked
            if depth + 1 < len(chains[i]):
                following = chains[i][depth + 1]
                heapq.heappush(heap, (-following.priority, depth + 1, following.seq, i))

    def ready(self) -> list[SignedTransaction]:
        return [tx for tx, _ in self.iter_ready()]

    def all(self) -> list[SignedTransaction]:
        return [e.tx for e in sorted(self._entries.values(), key=lambda e: e.seq)]

    def pending_since(self, before: float) -> list[SignedTransaction]:
        """Transactions pooled before ``before`` (time.monotonic): still waiting, so worth
        announcing again to peers that may have missed them."""
        return [e.tx for e in self._entries.values() if e.added < before]

    # --- removal -----------------------------------------------------------------------------

    def remove(self, tx_hashes: Iterable[Hash32]) -> list[SignedTransaction]:
        removed = []
        for tx_hash in tx_hashes:
            entry = self._entries.pop(tx_hash, None)
            if entry is None:
                continue
            removed.append(entry.tx)
            sender = entry.tx.sender
            sender_txs = self._by_sender[sender]
            sender_txs.pop(entry.tx.nonce, None)
            if entry.claim is not None and not any(
                self._entries[h].claim == entry.claim for h in sender_txs.values()
            ):
                claimants = self._claims[entry.claim]
                claimants.discard(sender)
                if not claimants:
                    del self._claims[entry.claim]
            if not sender_txs:
                del self._by_sender[sender]
                self._account_nonce.pop(sender, None)
        self._recount()
        return removed

    def expire_futures(self, now: float | None = None) -> list[Hash32]:
        """Drop future transactions older than ``future_seconds``; returns their hashes."""
        now = time.monotonic() if now is None else now
        expired: list[Hash32] = []
        for sender, nonces in self._by_sender.items():
            run = set(self._ready_run(sender))
            expired.extend(
                h
                for n, h in nonces.items()
                if n not in run and now - self._entries[h].added > self.limits.future_seconds
            )
        if expired:
            self.remove(expired)
        return expired

    def on_new_state(
        self, account_nonce: Callable[[Address], int], senders: Iterable[Address] | None = None
    ) -> list[Hash32]:
        """After a block: forget transactions whose nonce is used; future ones may become ready.
        ``senders``: only these accounts' nonces can have moved (default: every sender's)."""
        dropped: list[Hash32] = []
        pooled = list(self._by_sender) if senders is None else set(senders) & set(self._by_sender)
        for sender in pooled:
            nonce = account_nonce(sender)
            self._account_nonce[sender] = nonce
            dropped.extend(h for n, h in self._by_sender[sender].items() if n < nonce)
        self.remove(dropped)
        return dropped
