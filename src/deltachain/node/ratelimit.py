"""Token buckets for the node's front doors (JSON-RPC, the open light protocol).

One implementation so every limit means the same thing: ``per_minute`` calls, refilled
continuously, with a burst of at most ``per_minute``. Not thread-safe: each bucket belongs to
one event loop (asyncio for RPC, trio for libp2p).
"""

from __future__ import annotations

import time
from collections.abc import Hashable

__all__ = ["KeyedBuckets", "TokenBucket"]


class TokenBucket:
    """``per_minute`` calls a minute, refilled continuously."""

    __slots__ = ("per_minute", "stamp", "tokens")

    def __init__(self, per_minute: int) -> None:
        if per_minute < 1:
            raise ValueError("a rate limit is at least 1 call a minute")
        self.per_minute = per_minute
        self.tokens = float(per_minute)
        self.stamp = time.monotonic()

    def take(self, n: int = 1) -> bool:
        """Spend ``n`` calls if the budget holds them; False (and nothing spent) if not."""
        now = time.monotonic()
        self.tokens = min(
            float(self.per_minute), self.tokens + (now - self.stamp) * self.per_minute / 60.0
        )
        self.stamp = now
        if self.tokens < n:
            return False
        self.tokens -= n
        return True


class KeyedBuckets:
    """A bucket per key (an IP, a peer id), at most ``max_keys`` of them.

    When full, every bucket is forgotten at once: that only ever forgives callers, and keeps
    memory bounded whatever keys an attacker invents.
    """

    def __init__(self, per_minute: int, max_keys: int = 4096) -> None:
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._buckets: dict[Hashable, TokenBucket] = {}

    def take(self, key: Hashable, n: int = 1) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.clear()
            bucket = self._buckets[key] = TokenBucket(self.per_minute)
        return bucket.take(n)

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)

    def __len__(self) -> int:
        return len(self._buckets)
