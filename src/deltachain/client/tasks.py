"""Learning tasks for the device fleet: few-shot sine regression and non-IID ``digits``.

Every device owns a deterministic data stream derived from ``(seed, role, index)`` only, so a run
is reproducible and a device's data never depends on how many other devices exist.

* **sine** (the MAML/Reptile benchmark, Finn et al. 2017): device ``i`` regresses
  ``y = A·sin(x − φ)`` with its own amplitude ``A ∈ [0.1, 5]`` and phase ``φ ∈ [0, π]``; inputs
  ``x ∈ [−5, 5]``. Loss: mean squared error.
* **digits** (scikit-learn's bundled 8×8 digits, 1797 images, no download): split non-IID, each
  device sees 2–3 classes. Training devices draw from a training pool; held-out devices
  (which never train) draw from a disjoint pool. Loss: softmax cross-entropy; metric: accuracy.

A device's ``next_batch(k)`` is its online stream (each sample is used once, in one pass);
``eval_split(k, n)`` is a fixed support/query split for few-shot evaluation (the same every
call, so quality differences between rounds come from the model only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np

TRAIN = 0
HELDOUT = 1
_EVAL = 7


@dataclass(frozen=True)
class Batch:
    """``x`` float32 ``[n, in]``; ``y`` float32 ``[n, out]`` (regression) or int64 ``[n]``."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])


class DeviceData(Protocol):
    def next_batch(self, k: int) -> Batch:
        """The next ``k`` samples of this device's stream (fresh every call)."""
        ...

    def eval_split(self, k_support: int, n_query: int) -> tuple[Batch, Batch]:
        """A fixed few-shot split: ``k_support`` samples to adapt on, ``n_query`` to score."""
        ...


class Task(Protocol):
    name: str
    loss: str  # "mse" or "xent"
    metric: str  # "loss" or "accuracy"
    input_dim: int
    output_dim: int

    def device(self, index: int) -> DeviceData:
        """Training device ``index``."""
        ...

    def heldout(self, index: int) -> DeviceData:
        """Held-out device ``index`` (never trains; only adapts and is scored)."""
        ...


def _rng(seed: int, role: int, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, role, index, stream]))


# --- sine ------------------------------------------------------------------------------------

AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
X_RANGE = (-5.0, 5.0)


class SineDevice:
    def __init__(self, seed: int, role: int, index: int) -> None:
        params = _rng(seed, role, index)
        self.amplitude = float(params.uniform(*AMPLITUDE))
        self.phase = float(params.uniform(*PHASE))
        self._stream = _rng(seed, role, index, 1)
        self._key = (seed, role, index)

    def _batch(self, rng: np.random.Generator, k: int) -> Batch:
        x = rng.uniform(*X_RANGE, size=(k, 1)).astype(np.float32)
        y = (self.amplitude * np.sin(x - self.phase)).astype(np.float32)
        return Batch(x, y)

    def next_batch(self, k: int) -> Batch:
        return self._batch(self._stream, k)

    def eval_split(self, k_support: int, n_query: int) -> tuple[Batch, Batch]:
        rng = _rng(*self._key, _EVAL)
        support = self._batch(rng, k_support)
        # The query is an even grid over the whole input range: a stable, low-variance score.
        x = np.linspace(*X_RANGE, n_query, dtype=np.float32).reshape(-1, 1)
        query = Batch(x, (self.amplitude * np.sin(x - self.phase)).astype(np.float32))
        return support, query


@dataclass
class SineTask:
    seed: int = 0
    name: str = "sine"
    loss: str = "mse"
    metric: str = "loss"
    input_dim: int = 1
    output_dim: int = 1

    def device(self, index: int) -> SineDevice:
        return SineDevice(self.seed, TRAIN, index)

    def heldout(self, index: int) -> SineDevice:
        return SineDevice(self.seed, HELDOUT, index)


# --- digits ----------------------------------------------------------------------------------

DIGIT_CLASSES = 10
HELDOUT_FRACTION = 0.3


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """(x float32 [1797, 64] scaled to [0, 1], y int64) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the digits task needs scikit-learn (pip install scikit-learn); "
            "its 8x8 digits ship inside the package, nothing is downloaded"
        ) from exc
    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)
    return x, np.asarray(bunch.target, dtype=np.int64)


@lru_cache(maxsize=8)
def _pools(seed: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Per class: (training-pool indices, held-out-pool indices), disjoint, seeded shuffle."""
    _, y = _digits()
    rng = _rng(seed, 99, 0)
    train, held = [], []
    for c in range(DIGIT_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        cut = round(idx.size * (1 - HELDOUT_FRACTION))
        train.append(idx[:cut])
        held.append(idx[cut:])
    return tuple(train), tuple(held)


class DigitsDevice:
    def __init__(self, seed: int, role: int, index: int) -> None:
        rng = _rng(seed, role, index)
        count = int(rng.integers(2, 4))  # 2 or 3 classes
        self.classes = tuple(sorted(int(c) for c in rng.choice(DIGIT_CLASSES, count, False)))
        train, held = _pools(seed)
        pools = held if role == HELDOUT else train
        self._pool = np.concatenate([pools[c] for c in self.classes])
        self._stream = _rng(seed, role, index, 1)
        self._order = self._stream.permutation(self._pool)
        self._pos = 0
        self._key = (seed, role, index)

    def _take(self, indices: np.ndarray) -> Batch:
        x, y = _digits()
        return Batch(x[indices], y[indices])

    def next_batch(self, k: int) -> Batch:
        """Walk the device's pool in a shuffled order, reshuffling after each pass."""
        out: list[int] = []
        while len(out) < k:
            if self._pos >= self._order.size:
                self._order = self._stream.permutation(self._pool)
                self._pos = 0
            take = min(k - len(out), self._order.size - self._pos)
            out.extend(self._order[self._pos : self._pos + take].tolist())
            self._pos += take
        return self._take(np.array(out, dtype=np.int64))

    def eval_split(self, k_support: int, n_query: int) -> tuple[Batch, Batch]:
        order = _rng(*self._key, _EVAL).permutation(self._pool)
        support = order[:k_support]
        query = order[k_support : k_support + n_query]
        if query.size == 0:
            raise ValueError(f"device has only {order.size} samples for a {k_support}-shot split")
        return self._take(support), self._take(query)


@dataclass
class DigitsTask:
    seed: int = 0
    name: str = "digits"
    loss: str = "xent"
    metric: str = "accuracy"
    input_dim: int = 64
    output_dim: int = DIGIT_CLASSES

    def device(self, index: int) -> DigitsDevice:
        return DigitsDevice(self.seed, TRAIN, index)

    def heldout(self, index: int) -> DigitsDevice:
        return DigitsDevice(self.seed, HELDOUT, index)


TASKS = ("sine", "digits")


def make_task(name: str, seed: int = 0) -> SineTask | DigitsTask:
    if name == "sine":
        return SineTask(seed)
    if name == "digits":
        return DigitsTask(seed)
    raise ValueError(f"unknown task {name!r}: choose one of {', '.join(TASKS)}")
