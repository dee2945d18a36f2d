"""The transaction pool: ready and future queues per sender, bounded by count and bytes.

A transaction is *ready* when its nonce continues its sender's account nonce without a gap
(counting the sender's other ready transactions); otherwise it waits in *future* until the gap
fills. Validation (signature, call, nonce not stale) happens before ``add``; the pool only
orders, bounds and forgets.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from deltachain.errors import AlreadyKnown, PoolFull, StaleNonce
from deltachain.primitives.transaction import SignedTransaction
from deltachain.primitives.types import Address, Hash32


@dataclass(frozen=True)
class PoolLimits:
    ready_count: int = 8192
    ready_bytes: int = 20 << 20
    future_count: int = 512
    future_bytes: int = 1 << 20


@dataclass
class _Entry:
    tx: SignedTransaction
    size: int
    seq: int


class TxPool:
    def __init__(self, limits: PoolLimits | None = None) -> None:
        self.limits = limits or PoolLimits()
        self._entries: dict[Hash32, _Entry] = {}
        self._by_sender: dict[Address, dict[int, Hash32]] = {}
        self._account_nonce: dict[Address, int] = {}
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

    def add(self, tx: SignedTransaction, size: int, account_nonce: int) -> str:
        """Admit a validated transaction; returns "ready" or "future".

        Raises AlreadyKnown (same hash, or same sender and nonce already pooled), StaleNonce,
        PoolFull (the queue it would join is at its count or byte limit).
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
        self._account_nonce[tx.sender] = account_nonce
        contiguous = account_nonce + len(self._ready_run(tx.sender))
        kind = "ready" if tx.nonce == contiguous else "future"
        totals = self._ready if kind == "ready" else self._future
        if totals[0] + 1 > getattr(self.limits, f"{kind}_count"):
            raise PoolFull(f"the {kind} queue is full ({totals[0]} transactions); retry later")
        if totals[1] + size > getattr(self.limits, f"{kind}_bytes"):
            raise PoolFull(f"the {kind} queue is at its byte limit; retry later")
        self._entries[tx_hash] = _Entry(tx, size, next(self._seq))
        self._by_sender.setdefault(tx.sender, {})[tx.nonce] = tx_hash
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

    def ready(self) -> list[SignedTransaction]:
        """Ready transactions in arrival order, each sender's in nonce order."""
        chains = []
        for sender in self._by_sender:
            run = [self._entries[self._by_sender[sender][n]] for n in self._ready_run(sender)]
            if run:
                chains.append(run)
        heap = [(chain[0].seq, i, 0) for i, chain in enumerate(chains)]
        heapq.heapify(heap)
        out: list[SignedTransaction] = []
        while heap:
            _, i, j = heapq.heappop(heap)
            out.append(chains[i][j].tx)
            if j + 1 < len(chains[i]):
                heapq.heappush(heap, (chains[i][j + 1].seq, i, j + 1))
        return out

    def all(self) -> list[SignedTransaction]:
        return [e.tx for e in sorted(self._entries.values(), key=lambda e: e.seq)]

    def remove(self, tx_hashes: Iterable[Hash32]) -> None:
        for tx_hash in tx_hashes:
            entry = self._entries.pop(tx_hash, None)
            if entry is None:
                continue
            sender_txs = self._by_sender[entry.tx.sender]
            sender_txs.pop(entry.tx.nonce, None)
            if not sender_txs:
                del self._by_sender[entry.tx.sender]
                self._account_nonce.pop(entry.tx.sender, None)
        self._recount()

    def on_new_state(self, account_nonce: Callable[[Address], int]) -> list[Hash32]:
        """After a block: forget transactions whose nonce is used; future ones may become ready."""
        dropped: list[Hash32] = []
        for sender in list(self._by_sender):
            nonce = account_nonce(sender)
            self._account_nonce[sender] = nonce
            dropped.extend(h for n, h in self._by_sender[sender].items() if n < nonce)
        self.remove(dropped)
        return dropped
