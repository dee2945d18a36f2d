"""Fast trimmed-sum kernels: byte-identical to :mod:`deltachain.model_state.aggregate`.

Why each piece looks the way it does:

* **Integer only, one total order.** Values are ordered by ``(value, client index)``; every
  path below realises exactly that order, so ties are broken as in the reference.
* **Dense: a data-oblivious selection network.** A block of ``_W`` columns is copied into a
  cache-resident ``n x _W`` buffer and a fixed sequence of compare-exchanges between rows
  (built once per ``(n, f)`` in Python, see :func:`selection_network`) leaves the ``f``
  smallest and ``f`` largest entries of every column on known rows. Each compare-exchange is
  an 8-lane int32 min/max over the block (AVX2 has no int64 min/max), and nothing depends on
  the data, so adversarial inputs cost the same. When a block's values fit in ``31 - bits(n)``
  bits (quantised deltas always do) the buffer holds keys ``value << bits | client``: the
  network then trims by (value, client) directly. Larger values take a "wide" path that
  selects bare values and breaks ties at the two thresholds by client order afterwards.
* **Sparse-native.** Per coordinate block (~2 MiB of entries), one counting pass over each
  client's sorted slice (senders, negatives, sent zeros per coordinate) decides most
  coordinates outright -- under zero-fill, at most f negatives and f positives means every
  non-zero is trimmed; under present-quorum, fewer than 2f + 1 senders means no move. Only the
  rest get their keys gathered (by galloping search while they are rare), sorted and trimmed.
  Cost O(nnz + d); the n x d matrix never exists. Inner loops run over 0-based slices so they
  vectorise, and the per-coordinate counters are scratch kept between calls. A block where
  nothing moves writes no output at all (``AggregateResult.written``): at 1% density that is
  every block, and the 12 bytes a coordinate of "no change" were most of the cost.
* **Deterministic under threads.** Threads own disjoint coordinate ranges; per-client counts
  are per-thread and summed at the end, so the bytes do not depend on the thread count.
* **No compile in block import.** ``cache=True`` everywhere and :func:`warm_up` loads every
  kernel at node start. Thread counts are passed in: calling ``numba.get_num_threads()`` inside
  a jitted function silently disables the cache.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Final, TypeVar, cast

import numba
import numba.extending
import numpy as np
from numba import njit, prange

from deltachain.model_state.aggregate import (
    MAX_ABS_SUM,
    MAX_CLIENTS,
    PRESENT_QUORUM,
    ZERO_FILL,
    AggregateResult,
    Int32Array,
    check_dense_stack,
    check_sparse_shapes,
    check_update_inputs,
)

__all__ = [
    "apply_update",
    "selection_network",
    "trimmed_sum_dense",
    "trimmed_sum_sparse",
    "warm_up",
]

_W: Final = 128
"""Columns per dense block: the ``n x _W`` int32 buffer must stay in L1/L2 (50 KiB at n=100)."""

_SPARSE_BLOCK_ENTRIES: Final = 1 << 18
"""Entries per sparse coordinate block (2 MiB of input): a block's entries are read once from
memory and are still in cache when marked coordinates are gathered from them."""

_SPARSE_MIN_WIDTH: Final = 4096
"""Fewest coordinates in a sparse block, so per-block costs (n slice searches) stay small."""

_INSERTION_SORT_MAX: Final = 24
"""Columns with at most this many senders are insertion-sorted; longer ones use quicksort."""

_PARALLEL_MIN_WORK: Final = 1 << 21
"""Below this much work (~ns on one core: n*d dense, 5*nnz + d sparse) one thread is used.

A fork/join costs tens of microseconds on bare metal, so ~2 ms of work is where a second
thread starts to pay. (On the shared 2-vCPU VM this was tuned on, waking a worker that had
slept for 100 ms measured ~8 ms; the results never depend on the thread count.)
"""

_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _jit(*, parallel: bool = False) -> Callable[[_Fn], _Fn]:
    """``numba.njit`` for our kernels: GIL released, on-disk cache, typed for mypy."""
    return cast(Callable[[_Fn], _Fn], njit(nogil=True, cache=True, parallel=parallel))


_INT32_MIN: Final = np.int64(-(2**31))
_INT32_MAX: Final = np.int64(2**31 - 1)

# Comparator kinds in a selection network (see selection_network).
_CMP_BOTH: Final = 0
_CMP_MIN_ONLY: Final = 1
_CMP_MAX_ONLY: Final = 2


@contextmanager
def _threads_for(work: int) -> Iterator[int]:
    """Run the enclosed kernel on all of numba's threads only if ``work`` is large enough."""
    available = numba.get_num_threads()
    use = available if work >= _PARALLEL_MIN_WORK else 1
    if use != available:
        numba.set_num_threads(use)  # thread-local in numba: other callers are unaffected
    try:
        yield use
    finally:
        if use != available:
            numba.set_num_threads(available)


# --- selection network (built in Python, once per (n, f)) ----------------------------------


def _batcher_sort(n: int) -> list[tuple[int, int]]:
    """Batcher's odd-even merge sort on n wires (next power of two, then truncated)."""
    size = 1
    while size < n:
        size *= 2
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    # Wires >= n act as +inf at the top: every comparator touching one is a no-op.
    return [(a, b) for a, b in pairs if b < n]


def _odd_even_merge(lo: int, hi: int, r: int, out: list[tuple[int, int]]) -> None:
    step = r * 2
    if step < hi - lo:
        _odd_even_merge(lo, hi, step, out)
        _odd_even_merge(lo + r, hi, step, out)
        out.extend((i, i + r) for i in range(lo + r, hi - r, step))
    else:
        out.append((lo, lo + r))


def _merge(a: list[int], b: list[int], out: list[tuple[int, int]]) -> list[int]:
    """Emit a merge of sorted wire lists a and b; the result is sorted along a + b."""
    if not a or not b:
        return a + b
    size = 1
    while size < max(len(a), len(b)):
        size *= 2
    # a sits at the top of the lower half (padded below with -inf), b at the bottom of the
    # upper half (padded above with +inf): comparators touching padding are no-ops.
    where = {size - len(a) + k: w for k, w in enumerate(a)}
    where.update({size + k: w for k, w in enumerate(b)})
    pairs: list[tuple[int, int]] = []
    _odd_even_merge(0, 2 * size - 1, 1, pairs)
    out.extend((where[x], where[y]) for x, y in pairs if x in where and y in where)
    return a + b


_Sel = tuple[list[int], list[int], list[int]]  # (fully sorted list or [], lows, highs)


def _select(wires: list[int], f: int, out: list[tuple[int, int]]) -> _Sel:
    """Emit comparators leaving the f smallest / f largest of ``wires`` sorted on known wires.

    Returns ``(sorted_all, [], [])`` while the group is small (<= 2f) and
    ``([], lows, highs)`` (disjoint, each sorted) once it is larger.
    """
    leaf = 8
    if len(wires) <= leaf:
        for a, b in _batcher_sort(len(wires)):
            out.append((wires[a], wires[b]))
        return _as_sel(list(wires), f)
    half = max(leaf, (len(wires) // 2 // leaf) * leaf)
    r1, r2 = _select(wires[:half], f, out), _select(wires[half:], f, out)
    if not r1[0] and r2[0]:
        r1, r2 = r2, r1
    if r1[0] and r2[0]:
        return _as_sel(_merge(r1[0], r2[0], out), f)
    if not r1[0]:
        return [], _merge(r1[1], r2[1], out)[:f], _merge(r1[2], r2[2], out)[-f:]
    small, lows2, highs2 = r1[0], r2[1], r2[2]
    merged = _merge(small, lows2, out)
    if len(small) >= f:
        # The top len(small) of small+lows2 hold every value of `small` that can be in the top f.
        return [], merged[:f], _merge(merged[f:], highs2, out)[-f:]
    everything = _merge(merged, highs2, out)
    return [], everything[:f], everything[-f:]


def _as_sel(sorted_wires: list[int], f: int) -> _Sel:
    if len(sorted_wires) <= 2 * f:
        return sorted_wires, [], []
    return [], sorted_wires[:f], sorted_wires[-f:]


@lru_cache(maxsize=64)
def selection_network(
    n: int, f: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A comparator network putting the f smallest values of n on ``lows``, f largest on ``highs``.

    Returns ``(a, b, kind, lows, highs)`` as int64 arrays: comparator ``c`` puts
    ``min(x[a], x[b])`` on wire ``a[c]`` and ``max`` on ``b[c]`` (``kind`` 1 / 2: only the min /
    only the max is needed later). Built by recursive halving -- sort groups of 8, then merge
    sorted lists keeping only f from each end -- and then pruned backwards: a comparator whose
    two outputs end in the same class (low / high / unused middle) cannot change the result.
    Needs ``1 <= f`` and ``n >= 2f + 1``.
    """
    if f < 1 or n < 2 * f + 1:
        raise ValueError(f"a selection network needs 1 <= f and n >= 2f + 1, got n={n}, f={f}")
    raw: list[tuple[int, int]] = []
    full, lows, highs = _select(list(range(n)), f, raw)
    if full:
        lows, highs = full[:f], full[-f:]
    # Backward pruning. Labels: 0 low set, 1 unused middle, 2 high set, >= 3 "this exact wire".
    label = [1] * n
    for w in lows:
        label[w] = 0
    for w in highs:
        label[w] = 2
    fresh = 3
    kept: list[tuple[int, int, int]] = []
    for a, b in reversed(raw):
        la, lb = label[a], label[b]
        if la == lb and la < 3:
            continue
        kind = _CMP_MAX_ONLY if la == 1 else _CMP_MIN_ONLY if lb == 1 else _CMP_BOTH
        kept.append((a, b, kind))
        label[a], label[b] = fresh, fresh + 1
        fresh += 2
    kept.reverse()
    arr = np.array(kept, dtype=np.int64).reshape(-1, 3)
    return (
        np.ascontiguousarray(arr[:, 0]),
        np.ascontiguousarray(arr[:, 1]),
        np.ascontiguousarray(arr[:, 2]),
        np.array(lows, dtype=np.int64),
        np.array(highs, dtype=np.int64),
    )


# --- dense kernel -----------------------------------------------------------------------
#
# Per block of _W columns: copy into an n x _W buffer, run the selection network, read the
# thresholds off the low / high rows, then make one more pass over the (still cached) block to
# count, per client, how many of its values were trimmed.
#
# "Packed" blocks: with b = bits(n - 1), a value with -2**(31-b) <= v < 2**(31-b) packs with
# its client index into the int32 key v * 2**b + i, whose order is exactly (v, i). Selecting
# on keys makes trimming tie-free, so a client was trimmed iff its key is <= the f-th smallest
# key or >= the f-th largest -- one compare each. n such values also sum inside int32. Blocks
# with larger values take the "wide" path: select on bare values, then break ties at the
# thresholds by client order. Both paths are exact, so the choice only changes speed.


@_jit()
def _run_network(buf: np.ndarray, ca: np.ndarray, cb: np.ndarray, ck: np.ndarray) -> None:
    """Apply the comparators to every column of ``buf`` (rows are wires)."""
    for c in range(ca.shape[0]):
        a = ca[c]
        b = cb[c]
        k = ck[c]
        if k == 0:
            for j in range(_W):
                x = buf[a, j]
                y = buf[b, j]
                lt = x < y
                buf[a, j] = x if lt else y
                buf[b, j] = y if lt else x
        elif k == 1:
            for j in range(_W):
                x = buf[a, j]
                y = buf[b, j]
                buf[a, j] = x if x < y else y
        else:
            for j in range(_W):
                x = buf[a, j]
                y = buf[b, j]
                buf[b, j] = y if x < y else x


@_jit()
def _copy_packed(
    stack: np.ndarray,
    j0: int,
    w: int,
    shift: np.int32,
    bufs: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    fits: np.ndarray,
) -> None:
    """Copy keys ``v << shift | i`` of columns [j0, j0 + w) into the blocks of ``bufs``.

    Block ``s`` of ``bufs`` takes columns ``j0 + s * _W ...``; ``fits[s]`` tells whether all
    its values were small enough to pack (if not, that block is garbage and is redone wide).
    Copying several blocks per call reads each row in longer runs: with a hundred rows in
    flight, 512-byte runs defeat the hardware prefetcher. The key arithmetic
    uses numpy ufuncs on int32 scalars: plain ``<<`` would be widened to int64 by numba and
    halve the vector width.
    """
    n = stack.shape[0]
    limit = 1 << (31 - shift)  # shift >= 2 here: n >= 2f + 1 >= 3
    nsub = (w + _W - 1) // _W
    lo[:] = 0
    hi[:] = 0
    for i in range(n):
        src = stack[i, j0 : j0 + w]
        tag = np.int32(i)
        for s in range(nsub):
            dst = bufs[s, i]
            part = src[s * _W : (s + 1) * _W]
            m = part.shape[0]
            slo = lo[s]
            shi = hi[s]
            for j in range(m):
                v = part[j]
                dst[j] = np.bitwise_or(np.left_shift(v, shift), tag)
                slo = min(slo, v)
                shi = max(shi, v)
            for j in range(m, _W):
                dst[j] = 0
            lo[s] = slo
            hi[s] = shi
    for s in range(nsub):
        fits[s] = -limit <= lo[s] and hi[s] < limit


@_jit()
def _copy_wide(stack: np.ndarray, j0: int, w: int, buf: np.ndarray, tot: np.ndarray) -> None:
    """Copy values of columns [j0, j0 + w) into buf and total them in int64."""
    n = stack.shape[0]
    tot[:] = 0
    for i in range(n):
        src = stack[i, j0 : j0 + w]
        dst = buf[i]
        for j in range(w):
            v = src[j]
            dst[j] = v
            tot[j] += v
        for j in range(w, _W):
            dst[j] = 0


@_jit()
def _finish_packed(
    stack: np.ndarray,
    j0: int,
    w: int,
    shift: np.int32,
    buf: np.ndarray,
    lows: np.ndarray,
    highs: np.ndarray,
    lo_key: np.ndarray,
    hi_key: np.ndarray,
    acc: np.ndarray,
    sums: np.ndarray,
    trimmed: np.ndarray,
) -> None:
    """Sums and per-client trim counts of a packed block after the network ran.

    A value is trimmed iff its key is <= the f-th smallest or >= the f-th largest key; the
    others are summed in int32, exact because n packed values sum to less than 2**31.
    """
    f = lows.shape[0]
    lo_key[:] = buf[lows[0]]
    hi_key[:] = buf[highs[0]]
    for m in range(1, f):
        rl = buf[lows[m]]
        rh = buf[highs[m]]
        for j in range(_W):
            lo_key[j] = max(lo_key[j], rl[j])
            hi_key[j] = min(hi_key[j], rh[j])
    acc[:] = 0
    n = stack.shape[0]
    for i in range(n):
        src = stack[i, j0 : j0 + w]
        tag = np.int32(i)
        cnt = np.int32(0)
        for j in range(w):
            v = src[j]
            key = np.bitwise_or(np.left_shift(v, shift), tag)
            cut = (key <= lo_key[j]) | (key >= hi_key[j])
            cnt = np.add(cnt, np.int32(cut))
            acc[j] = np.add(acc[j], np.int32(0) if cut else v)
        trimmed[i] += cnt
    for j in range(w):
        sums[j0 + j] = acc[j]


@_jit()
def _finish_wide(
    stack: np.ndarray,
    j0: int,
    w: int,
    buf: np.ndarray,
    tot: np.ndarray,
    lows: np.ndarray,
    highs: np.ndarray,
    lo_thr: np.ndarray,
    hi_thr: np.ndarray,
    lo_need: np.ndarray,
    hi_need: np.ndarray,
    seen: np.ndarray,
    sums: np.ndarray,
    trimmed: np.ndarray,
) -> None:
    """Sums and per-client trim counts of a wide block after the network ran on bare values.

    L = f-th smallest, H = f-th largest value. Trimmed low: v < L, or v == L for the
    ``lo_need`` lowest-index clients at L; trimmed high: v > H, or v == H for the ``hi_need``
    highest-index clients at H (the order is (value, client)).
    """
    f = lows.shape[0]
    lo_thr[:] = buf[lows[0]]
    hi_thr[:] = buf[highs[0]]
    for m in range(1, f):
        rl = buf[lows[m]]
        rh = buf[highs[m]]
        for j in range(_W):
            lo_thr[j] = max(lo_thr[j], rl[j])
            hi_thr[j] = min(hi_thr[j], rh[j])
    lo_need[:] = f
    hi_need[:] = f
    for m in range(f):
        rl = buf[lows[m]]
        rh = buf[highs[m]]
        for j in range(_W):
            vl = rl[j]
            vh = rh[j]
            tot[j] -= np.int64(vl) + np.int64(vh)
            lo_need[j] -= vl < lo_thr[j]
            hi_need[j] -= vh > hi_thr[j]
    for j in range(w):
        sums[j0 + j] = tot[j]
    n = stack.shape[0]
    seen[:] = 0
    for i in range(n):
        src = stack[i, j0 : j0 + w]
        cnt = 0
        for j in range(w):
            v = src[j]
            eq = v == lo_thr[j]
            cnt += (v < lo_thr[j]) | (eq & (seen[j] < lo_need[j]))
            seen[j] += eq
        trimmed[i] += cnt
    seen[:] = 0
    for i in range(n - 1, -1, -1):
        src = stack[i, j0 : j0 + w]
        cnt = 0
        for j in range(w):
            v = src[j]
            eq = v == hi_thr[j]
            cnt += (v > hi_thr[j]) | (eq & (seen[j] < hi_need[j]))
            seen[j] += eq
        trimmed[i] += cnt


@_jit(parallel=True)
def _dense_kernel(
    stack: np.ndarray,
    ca: np.ndarray,
    cb: np.ndarray,
    ck: np.ndarray,
    lows: np.ndarray,
    highs: np.ndarray,
    shift: np.int32,
    nsuper: int,
    sums: np.ndarray,
    trimmed: np.ndarray,
) -> None:
    """Trimmed sums of every column and, per client, how many of its values were trimmed."""
    n, d = stack.shape
    nthreads = trimmed.shape[0]
    span = nsuper * _W
    nsupers = (d + span - 1) // span
    per = (nsupers + nthreads - 1) // nthreads
    for t in prange(nthreads):
        bufs = np.empty((nsuper, n, _W), np.int32)
        lo = np.empty(nsuper, np.int32)
        hi = np.empty(nsuper, np.int32)
        fits = np.zeros(nsuper, np.bool_)
        tot64 = np.empty(_W, np.int64)
        a32 = np.empty(_W, np.int32)
        b32 = np.empty(_W, np.int32)
        c32 = np.empty(_W, np.int32)
        d32 = np.empty(_W, np.int32)
        e32 = np.empty(_W, np.int32)
        for sup in range(t * per, min(nsupers, (t + 1) * per)):
            j0 = sup * span
            _copy_packed(stack, j0, min(span, d - j0), shift, bufs, lo, hi, fits)
            for s in range(nsuper):
                js = j0 + s * _W
                if js >= d:
                    break
                w = min(_W, d - js)
                buf = bufs[s]
                if fits[s]:
                    _run_network(buf, ca, cb, ck)
                    _finish_packed(
                        stack, js, w, shift, buf, lows, highs, a32, b32, c32, sums, trimmed[t]
                    )
                else:
                    _copy_wide(stack, js, w, buf, tot64)
                    _run_network(buf, ca, cb, ck)
                    _finish_wide(
                        stack,
                        js,
                        w,
                        buf,
                        tot64,
                        lows,
                        highs,
                        a32,
                        b32,
                        c32,
                        d32,
                        e32,
                        sums,
                        trimmed[t],
                    )


@_jit(parallel=True)
def _column_sums(stack: np.ndarray, sums: np.ndarray, nthreads: int) -> None:
    """Plain column sums (f = 0: nothing is trimmed)."""
    n, d = stack.shape
    per = (d + nthreads - 1) // nthreads
    for t in prange(nthreads):
        for b0 in range(t * per, min(d, (t + 1) * per), 2048):
            b1 = min(d, (t + 1) * per, b0 + 2048)
            acc = sums[b0:b1]
            acc[:] = 0
            for i in range(n):
                src = stack[i, b0:b1]
                for j in range(b1 - b0):
                    acc[j] += src[j]


def trimmed_sum_dense(stack: np.ndarray, f: int) -> AggregateResult:
    """Fast :func:`~deltachain.model_state.aggregate.trimmed_sum_dense_reference`.

    Raises ValueError: ``stack`` not 2-D int32, ``f < 0``, ``n > MAX_CLIENTS`` or ``n < 2f + 1``.
    """
    n, d = check_dense_stack(stack, f)
    stack = np.ascontiguousarray(stack)
    kept = np.full(d, n - 2 * f, dtype=np.int32)
    sums = np.empty(d, np.int64)  # numpy-allocated: huge pages where available
    with _threads_for(n * d) as nthreads:
        if f == 0:
            _column_sums(stack, sums, nthreads)
            return AggregateResult(sums, kept, np.full(n, d, np.int64))
        ca, cb, ck, lows, highs = selection_network(n, f)
        trimmed = np.zeros((nthreads, n), np.int64)
        shift = np.int32((n - 1).bit_length())  # client tags fit in the low `shift` bits
        nsuper = 4 if n >= 32 else 1  # blocks per copy pass: long row runs pay off with many rows
        _dense_kernel(stack, ca, cb, ck, lows, highs, shift, nsuper, sums, trimmed)
    survived = np.int64(d) - trimmed.sum(axis=0, dtype=np.int64)
    return AggregateResult(sums, kept, survived)


# --- sparse kernel -----------------------------------------------------------------------
#
# Client arrays reach the kernel as (address, length) pairs viewed with ``numba.carray``: a typed
# List costs ~3 us per element per call and ~1 s of JIT at start. The wrapper checks dtype and
# contiguity and keeps the arrays referenced for the whole call; the kernel reads only inside
# [0, length).
#
# A sparse key packs one sent value as  value * 2**24 + client * 2**12 + p,  where p counts the
# senders of that coordinate with a lower client index. Numeric order of keys is exactly the
# (value, client) order, the value is ``key >> 24`` (arithmetic shift) and |key| < 2**55.


_nb: Any = numba  # numba's bundled annotations are partial; treat its JIT-only API as untyped


def _pointer_intrinsic(elem: Any, name: str) -> Any:
    """A numba intrinsic turning an int64 address into a pointer to ``elem``."""
    ptr = _nb.types.CPointer(elem)

    def typer(typingctx: Any, address: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            return builder.inttoptr(args[0], context.get_value_type(ptr))

        return ptr(_nb.types.int64), codegen

    typer.__name__ = name
    return _nb.extending.intrinsic(typer)


_u32_at: Any = _pointer_intrinsic(_nb.types.uint32, "_u32_at")
_i32_at: Any = _pointer_intrinsic(_nb.types.int32, "_i32_at")
_i64_at: Any = _pointer_intrinsic(_nb.types.int64, "_i64_at")


@_jit()
def _u32_view(address: int, length: int) -> np.ndarray:
    """The uint32[length] array at ``address`` (no copy, no ownership)."""
    view: np.ndarray = _nb.carray(_u32_at(address), length)
    return view


@_jit()
def _i32_view(address: int, length: int) -> np.ndarray:
    """The int32[length] array at ``address`` (no copy, no ownership)."""
    view: np.ndarray = _nb.carray(_i32_at(address), length)
    return view


@_jit()
def _lower_bound(a: np.ndarray, x: int) -> int:
    """First position p with a[p] >= x (len(a) if none); memory-safe even on unsorted a."""
    lo = 0
    hi = a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if np.int64(a[mid]) < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@_jit()
def _gallop(a: np.ndarray, x: int) -> int:
    """:func:`_lower_bound` by doubling from the front: O(log p) probes, all near the part of
    ``a`` about to be read, where a plain binary search's first probes miss the cache."""
    c = a.shape[0]
    if c == 0 or np.int64(a[0]) >= x:
        return 0
    lo = 0  # a[lo] < x <= a[hi] (or hi == c)
    step = 1
    hi = 1
    while hi < c and np.int64(a[hi]) < x:
        lo = hi
        step *= 2
        hi = lo + step
    if hi > c:
        hi = c
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if np.int64(a[mid]) < x:
            lo = mid
        else:
            hi = mid
    return hi


@_jit()
def _sort_run(keys: np.ndarray, s: int, e: int) -> None:
    """Sort keys[s:e] in place (keys are distinct, so any correct sort gives the same bytes)."""
    if e - s > _INSERTION_SORT_MAX:
        keys[s:e].sort()
        return
    for p in range(s + 1, e):
        k = keys[p]
        q = p - 1
        while q >= s and keys[q] > k:
            keys[q + 1] = keys[q]
            q -= 1
        keys[q + 1] = k


@_jit()
def _trim_zero_fill(keys: np.ndarray, s: int, e: int, n: int, f: int, surv: np.ndarray) -> np.int64:
    """Trimmed sum of one zero-fill coordinate whose sent keys are keys[s:e] (client order).

    The n values sort as [negatives][zeros: sent and implicit, by client][positives]; a sent
    value's rank among all n is its rank among the sent ones plus the implicit zeros below it
    (all n - c of them for a positive; ``client - p`` of them for a sent zero).
    """
    c = e - s
    neg = 0
    pos = 0
    for q in range(s, e):
        v = keys[q] >> 24
        neg += v < 0
        pos += v > 0
    if neg <= f and pos <= f:
        # Every non-zero lands in a trimmed tail, so the sum is 0; only sent zeros can survive.
        zeros_before = 0
        for q in range(s, e):
            key = keys[q]
            if key >> 24 == 0:
                i = (key >> 12) & 4095
                rank = neg + i - (key & 4095) + zeros_before
                if f <= rank < n - f:
                    surv[i] += 1
                zeros_before += 1
        return np.int64(0)
    _sort_run(keys, s, e)
    implicit = n - c
    acc = np.int64(0)
    for q in range(c):
        key = keys[s + q]
        v = key >> 24
        i = (key >> 12) & 4095
        if v > 0:
            rank = q + implicit
        elif v == 0:
            rank = q + i - (key & 4095)
        else:
            rank = q
        if f <= rank < n - f:
            acc += v
            surv[i] += 1
    return acc


@_jit()
def _trim_quorum(keys: np.ndarray, s: int, e: int, f: int, surv: np.ndarray) -> np.int64:
    """Trimmed sum of one present-quorum coordinate with at least 2f + 1 senders."""
    _sort_run(keys, s, e)
    acc = np.int64(0)
    for q in range(s + f, e - f):
        key = keys[q]
        acc += key >> 24
        surv[(key >> 12) & 4095] += 1
    return acc


# Per-coordinate int32 counter, kept in the ``kept`` output until the coordinate is decided:
# senders in bits 0-12 (n <= 4096), negatives in bits 13-25, and bit 30 once a zero was sent.
# Without a sent zero, positives = senders - negatives.
_COUNT: Final = (1 << 13) - 1
_NEG: Final = 1 << 13
_ZERO: Final = 1 << 30


# The helpers below loop over 0-based slices rather than ``range(s, e)``: with a possibly
# negative start numba keeps its negative-index wraparound inside the loop, which blocks
# vectorisation (the check measured 7x slower, the counting 1.5x).


@_jit()
def _check_slice(ix: np.ndarray, vx: np.ndarray, lo: int, hi: int) -> int:
    """-1 unless ``ix`` is strictly increasing inside [lo, hi); else how many of ``vx`` are
    zero. Both loops vectorise, so checking costs far less than counting."""
    c = ix.shape[0]
    if c == 0:
        return 0
    if np.int64(ix[0]) < lo or np.int64(ix[c - 1]) >= hi:
        return -1
    after = ix[1:]
    before = ix[: c - 1]
    unordered = 0
    for k in range(c - 1):
        unordered += after[k] <= before[k]
    if unordered:
        return -1
    zeros = 0
    for k in range(c):
        zeros += vx[k] == 0
    return zeros


@_jit()
def _count_signs(ix: np.ndarray, vx: np.ndarray, counter: np.ndarray) -> None:
    """Count senders and negatives of a slice with no zero value (the common case)."""
    for k in range(ix.shape[0]):
        counter[ix[k]] += 1 + ((vx[k] >> 31) & _NEG)


@_jit()
def _count_signs_and_zeros(ix: np.ndarray, vx: np.ndarray, counter: np.ndarray) -> None:
    """:func:`_count_signs` for a slice that sends zeros: also sets their coordinates' flag."""
    for k in range(ix.shape[0]):
        v = vx[k]
        col = ix[k]
        counter[col] = (counter[col] + 1 + _NEG * (v < 0)) | (_ZERO * (v == 0))


@_jit()
def _count_and_sum(ix: np.ndarray, vx: np.ndarray, counter: np.ndarray, sums: np.ndarray) -> None:
    """f = 0: nothing is trimmed, so count senders and add every value directly."""
    for k in range(ix.shape[0]):
        col = ix[k]
        counter[col] += 1
        sums[col] += vx[k]


@_jit()
def _gather_scan(
    ix: np.ndarray,
    vx: np.ndarray,
    client: int,
    mark: np.ndarray,
    slot: np.ndarray,
    fill: np.ndarray,
    keys: np.ndarray,
) -> None:
    """:func:`_gather` by one pass over the client's entries, for when many coordinates are
    marked: ``mark[coordinate]`` is -1 - (its position in the marked list), or >= 0."""
    for k in range(ix.shape[0]):
        m = mark[ix[k]]
        if m < 0:  # most entries stop here
            m = -1 - m
            at = fill[m]
            keys[at] = (np.int64(vx[k]) << 24) | (client << 12) | (at - slot[m])
            fill[m] = at + 1


@_jit()
def _gather(
    ix: np.ndarray,
    vx: np.ndarray,
    client: int,
    marked: np.ndarray,
    slot: np.ndarray,
    fill: np.ndarray,
    keys: np.ndarray,
) -> None:
    """Append the keys of one client's entries at the (sorted) marked coordinates.

    Each marked coordinate is found by galloping forward from the previous one: a round with
    few marked coordinates costs O(marked * log(entries / marked)) per client instead of a pass
    over every entry (a 5%-dense round has ~1 in 10^4 coordinates marked).
    """
    c = ix.shape[0]
    p = 0
    for m in range(marked.shape[0]):
        if p >= c:
            return
        target = marked[m]
        p += _gallop(ix[p:], target)
        if p < c and np.int64(ix[p]) == target:
            at = fill[m]
            keys[at] = (np.int64(vx[p]) << 24) | (client << 12) | (at - slot[m])
            fill[m] = at + 1
            p += 1


@_jit()
def _largest_count(counter: np.ndarray, zero_fill: bool) -> np.int32:
    """The largest count that decides whether a coordinate needs its keys: zero-fill, the
    larger of its negatives and its other senders (>= 2**13 if it has a sent zero), compared
    with f + 1; present-quorum, its senders, compared with 2f + 1. A max reduction vectorises
    (a per-coordinate test with a tally measured 3x slower); the test runs per coordinate
    only when this says one needs it."""
    largest = np.int32(0)
    if zero_fill:
        for j in range(counter.shape[0]):
            cnt = counter[j]
            neg = (cnt >> np.int32(13)) & np.int32(_COUNT)
            others = (cnt & np.int32(_COUNT)) - neg
            largest = max(largest, max(neg, others) | ((cnt >> np.int32(30)) << np.int32(13)))
    else:
        for j in range(counter.shape[0]):
            largest = max(largest, counter[j] & np.int32(_COUNT))
    return largest


@_jit()
def _needs_keys(cnt: int, f: int, zero_fill: bool) -> bool:
    """Whether a coordinate's result is not implied by its counts (see :func:`_sparse_block`)."""
    senders = cnt & _COUNT
    if zero_fill:
        neg = (cnt >> 13) & _COUNT
        return neg > f or senders - neg > f or cnt >= _ZERO
    return senders >= 2 * f + 1


@_jit()
def _sparse_block(
    idx_addr: np.ndarray,
    val_addr: np.ndarray,
    lengths: np.ndarray,
    pos: np.ndarray,
    stop: np.ndarray,
    b0: int,
    b1: int,
    f: int,
    zero_fill: bool,
    sums: np.ndarray,
    kept: np.ndarray,
    counter: np.ndarray,
    surv: np.ndarray,
    written: np.ndarray,
    b: int,
) -> int:
    """Aggregate coordinates [b0, b1) (block ``b``) from client i's entries pos[i] .. (before
    stop[i]) and advance pos past them; returns 1 + a client whose entries there are not
    strictly increasing inside [b0, b1), else 0. A block whose counts decide every coordinate
    writes no output and clears ``written[b]`` (see :class:`AggregateResult`).

    (1) client by client (indices are sorted, so the counters are walked forwards): check the
        slice, then count senders, negatives and sent zeros per coordinate into ``counter``;
        for f = 0 add values directly;
    (2) decide every coordinate its counts imply -- zero-fill: at most f negatives and f
        positives and no sent zero (every non-zero is trimmed, the sum is 0); present-quorum:
        fewer than 2f + 1 senders (no move) -- and mark the rest (usually none);
    (3) only if some are marked, find them in each client's slice again (still in cache: a
        block holds ~_SPARSE_BLOCK_ENTRIES entries), gather their keys, sort and trim them.
    """
    n = lengths.shape[0]
    counter[b0:b1] = 0
    if f == 0:
        sums[b0:b1] = 0  # summed into directly below
    ends = np.empty(n, np.int64)
    entries = 0
    for i in range(n):
        ix = _u32_view(idx_addr[i], lengths[i])
        vx = _i32_view(val_addr[i], lengths[i])
        s = pos[i]
        if s > stop[i]:  # a binary search over unsorted indices put the slices out of order
            return i + 1
        e = s + _gallop(ix[s : stop[i]], b1)
        ends[i] = e
        entries += e - s
        zeros = _check_slice(ix[s:e], vx[s:e], b0, b1)
        if zeros < 0:
            return i + 1
        if f == 0:
            _count_and_sum(ix[s:e], vx[s:e], counter, sums)
        elif zeros == 0:
            _count_signs(ix[s:e], vx[s:e], counter)
        else:
            _count_signs_and_zeros(ix[s:e], vx[s:e], counter)
    mine = counter[b0:b1]
    if f == 0:
        if zero_fill:
            kept[b0:b1] = n
        else:
            kept[b0:b1] = mine  # nothing trimmed: every sender is kept
        pos[:] = ends
        return 0
    # (2) decide from the counts: a vectorised check first, usually that all are decided
    if _largest_count(mine, zero_fill) < (f + 1 if zero_fill else 2 * f + 1):
        written[b] = False
        pos[:] = ends
        return 0
    sums[b0:b1] = 0
    if zero_fill:
        kept[b0:b1] = n - 2 * f  # zero-fill divides every coordinate by n - 2f
    else:
        kept[b0:b1] = 0  # marked coordinates get theirs in step (3)
    nmarked = 0
    total = 0
    for j in range(b1 - b0):
        if _needs_keys(mine[j], f, zero_fill):
            nmarked += 1
            total += mine[j] & _COUNT
    marked = np.empty(nmarked, np.int64)
    slot = np.empty(nmarked, np.int64)
    fill = np.empty(nmarked, np.int64)
    keys = np.empty(total, np.int64)
    # Galloping to each marked coordinate beats a pass over all entries while marked
    # coordinates are rarer than ~1 in 16 of a client's entries.
    scan = nmarked * 16 * n > entries
    m = 0
    at = 0
    for j in range(b1 - b0):
        if _needs_keys(mine[j], f, zero_fill):
            marked[m] = b0 + j
            slot[m] = at
            fill[m] = at
            at += mine[j] & _COUNT
            if scan:
                mine[j] = -1 - m
            m += 1
        elif scan:
            mine[j] = 0
    # (3) gather, sort and trim the marked coordinates
    for i in range(n):
        ix = _u32_view(idx_addr[i], lengths[i])
        vx = _i32_view(val_addr[i], lengths[i])
        s = pos[i]
        e = ends[i]
        if scan:
            _gather_scan(ix[s:e], vx[s:e], i, counter, slot, fill, keys)
        else:
            _gather(ix[s:e], vx[s:e], i, marked, slot, fill, keys)
    for m in range(nmarked):
        j = marked[m]
        s = slot[m]
        e = fill[m]
        if zero_fill:
            sums[j] = _trim_zero_fill(keys, s, e, n, f, surv)
        else:
            kept[j] = e - s - 2 * f
            sums[j] = _trim_quorum(keys, s, e, f, surv)
    pos[:] = ends
    return 0


@_jit(parallel=True)
def _sparse_kernel(
    idx_addr: np.ndarray,
    val_addr: np.ndarray,
    lengths: np.ndarray,
    d: int,
    f: int,
    zero_fill: bool,
    width: int,
    sums: np.ndarray,
    kept: np.ndarray,
    survived: np.ndarray,
    counter: np.ndarray,
    written: np.ndarray,
) -> np.ndarray:
    """Each thread owns a range of whole blocks of ``width`` coordinates and, per client, the
    slice of entries inside it, and aggregates it block by block (:func:`_sparse_block`).

    ``counter`` is scratch of length >= d; every output is written here, in parallel.
    """
    n = lengths.shape[0]
    nthreads = survived.shape[0]
    bad = np.zeros(nthreads, np.int64)  # 1 + a client whose indices are unsorted or >= d
    # Thread t owns coordinates [bounds[t], bounds[t + 1]) and, per client, entries
    # starts[t, i] .. starts[t + 1, i]. Each block checks that its slices are strictly
    # increasing inside it before using them, and each thread that its blocks consumed exactly
    # its entries: together that validates every index.
    per = (written.shape[0] + nthreads - 1) // nthreads * width
    bounds = np.empty(nthreads + 1, np.int64)
    for t in range(nthreads + 1):
        bounds[t] = min(d, t * per)
    starts = np.empty((nthreads + 1, n), np.int64)
    for i in range(n):
        ix = _u32_view(idx_addr[i], lengths[i])
        for t in range(nthreads):
            starts[t, i] = _lower_bound(ix, bounds[t])
        starts[nthreads, i] = lengths[i]
    for t in prange(nthreads):
        pos = starts[t].copy()
        stop = starts[t + 1]
        for b0 in range(bounds[t], bounds[t + 1], width):
            b1 = min(bounds[t + 1], b0 + width)
            bad[t] = _sparse_block(
                idx_addr,
                val_addr,
                lengths,
                pos,
                stop,
                b0,
                b1,
                f,
                zero_fill,
                sums,
                kept,
                counter,
                survived[t],
                written,
                b0 // width,
            )
            if bad[t] != 0:
                break
        if bad[t] == 0:
            for i in range(n):
                if pos[i] != stop[i]:  # entries left over: unsorted, or >= d
                    bad[t] = i + 1
                    break
    return bad


def _find_data_offset() -> int | None:
    """Where an ndarray's C struct keeps its data pointer (``PyArrayObject_fields.data``,
    right after ``PyObject_HEAD``), checked on probe arrays; None if not 16 (e.g. not CPython,
    whose ``id`` is the object's address, or a free-threaded build with a longer header)."""
    if sys.implementation.name != "cpython":
        return None
    probes = [np.arange(3, dtype=np.uint32), np.zeros(7, np.int32)[2:]]
    offset = 16
    for probe in probes:
        if ctypes.c_void_p.from_address(id(probe) + offset).value != probe.ctypes.data:
            return None
    return offset


_DATA_OFFSET: Final = _find_data_offset()


@_jit()
def _data_pointers(ids: np.ndarray, offset: int) -> np.ndarray:
    """The data pointer of each ndarray whose ``id`` is given (see :func:`_find_data_offset`)."""
    out = np.empty(ids.shape[0], np.int64)
    for i in range(ids.shape[0]):
        out[i] = _i64_at(ids[i] + offset)[0]
    return out


def _addresses(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Data addresses of C-contiguous versions of ``arrays``, and the arrays they point into:
    the caller keeps that list referenced until the kernel returns.

    Reading the pointers from the array structs in one jitted call costs ~5 us for 100
    clients' arrays; ``__array_interface__`` costs ~3 us per array, a quarter of the whole
    aggregation of a 1%-dense round.
    """
    held = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
    if _DATA_OFFSET is None:
        return np.array([a.__array_interface__["data"][0] for a in held], np.int64), held
    return _data_pointers(np.fromiter(map(id, held), np.int64, len(held)), _DATA_OFFSET), held


_scratch = threading.local()


def _counter_scratch(d: int) -> np.ndarray:
    """This thread's int32 counters for :func:`_sparse_kernel`, kept between calls: a fresh
    4 MB array costs more in page faults and cold cache (1.2 ms at d = 1e6) than counting
    a 1% delta round does. Never shared: numba threads only see the calling thread's."""
    buf: np.ndarray | None = getattr(_scratch, "counter", None)
    if buf is None or buf.shape[0] < d:
        buf = np.empty(max(d, 1), np.int32)
        _scratch.counter = buf
    return buf


def trimmed_sum_sparse(
    indices: Sequence[np.ndarray],
    values: Sequence[np.ndarray],
    d: int,
    f: int,
    semantics: str,
) -> AggregateResult:
    """Fast :func:`~deltachain.model_state.aggregate.trimmed_sum_sparse_reference`.

    Cost O(nnz + d) for typical sparse deltas; a coordinate whose result is not implied by its
    sign counts also pays a sort of its senders (insertion sort up to ``_INSERTION_SORT_MAX``,
    quicksort above). Dense deltas belong in :func:`trimmed_sum_dense`.

    Raises ValueError: as the reference (including unsorted or out-of-range indices).
    """
    n = check_sparse_shapes(indices, values, d, f, semantics)
    # The kernel reads raw memory: C order (a copy only for odd views), and every array the
    # addresses point into stays referenced (by the *_held lists) until the kernel has returned.
    idx_addr, idx_held = _addresses(indices)
    val_addr, val_held = _addresses(values)
    lengths = np.array([a.shape[0] for a in indices], dtype=np.int64)
    nnz = int(lengths.sum())
    # The kernel writes the outputs itself, in parallel, and only in blocks where something
    # moves (np.zeros alone measured +1.1 ms at d = 1e6; see AggregateResult).
    sums = np.empty(d, np.int64)
    kept = np.empty(d, np.int32)
    with _threads_for(5 * nnz + d) as nthreads:
        width = _SPARSE_BLOCK_ENTRIES * d // max(nnz, 1)
        width = max(_SPARSE_MIN_WIDTH, min(width, -(-d // nthreads)))  # every thread a block
        written = np.ones(-(-d // width), np.bool_)
        survived = np.zeros((nthreads, n), np.int64)
        bad = _sparse_kernel(
            idx_addr,
            val_addr,
            lengths,
            d,
            f,
            semantics == ZERO_FILL,
            width,
            sums,
            kept,
            survived,
            _counter_scratch(d),
            written,
        )
    del idx_held, val_held
    if bad.any():
        client = int(bad[bad > 0].min()) - 1
        raise ValueError(f"indices[{client}] must be strictly increasing and < d={d}")
    if f == 0:
        return AggregateResult(sums, kept, lengths)  # nothing is trimmed: every sent value counts
    return AggregateResult(
        sums,
        kept,
        survived.sum(axis=0, dtype=np.int64),
        block=width,
        written=written,
        rest_kept=n - 2 * f if semantics == ZERO_FILL else 0,
    )


# --- the global update --------------------------------------------------------------------


@_jit()
def _update_range(
    weights: np.ndarray,
    sums: np.ndarray,
    kept: np.ndarray,
    out: np.ndarray,
    eta_num: int,
    eta_den: int,
    max_kept: int,
    max_abs_sum: int,
) -> bool:
    """The update rule on one written range (``out``/inputs already sliced); False on a
    ``kept`` or ``sums`` out of bounds (that coordinate keeps its weight)."""
    ok = True
    for j in range(weights.shape[0]):
        k = np.int64(kept[j])
        s = sums[j]
        w = np.int64(weights[j])
        if k < 0 or k > max_kept or s > max_abs_sum or s < -max_abs_sum:
            ok = False
            out[j] = weights[j]
            continue
        if k > 0:
            num = eta_num * s
            den = eta_den * k
            q = num // den  # floor: den > 0
            twice_r = 2 * (num - q * den)
            if twice_r > den or (twice_r == den and (q & 1) == 1):
                q += 1
            w += q
            if w < _INT32_MIN:
                w = _INT32_MIN
            elif w > _INT32_MAX:
                w = _INT32_MAX
        out[j] = np.int32(w)
    return ok


@_jit(parallel=True)
def _update_kernel(
    weights: np.ndarray,
    sums: np.ndarray,
    kept: np.ndarray,
    block: int,
    written: np.ndarray,
    eta_num: int,
    eta_den: int,
    max_kept: int,
    max_abs_sum: int,
    nthreads: int,
) -> tuple[np.ndarray, bool]:
    """Threads take whole blocks; an unwritten block's weights are copied (nothing moved)."""
    d = weights.shape[0]
    out = np.empty(d, np.int32)
    bad = np.zeros(nthreads, np.bool_)
    nblocks = written.shape[0]
    per = (nblocks + nthreads - 1) // nthreads
    for t in prange(nthreads):
        for b in range(t * per, min(nblocks, (t + 1) * per)):
            j0 = b * block
            j1 = min(d, j0 + block)
            if j0 >= j1:
                continue
            if not written[b]:
                out[j0:j1] = weights[j0:j1]
            elif not _update_range(
                weights[j0:j1],
                sums[j0:j1],
                kept[j0:j1],
                out[j0:j1],
                eta_num,
                eta_den,
                max_kept,
                max_abs_sum,
            ):
                bad[t] = True
    return out, bool(bad.any())


def apply_update(
    weights: np.ndarray, result: AggregateResult, eta_num: int, eta_den: int
) -> Int32Array:
    """Fast :func:`~deltachain.model_state.aggregate.apply_update` (one fused pass, skipping
    the blocks a sparse result left unwritten).

    Raises ValueError: as the reference.
    """
    check_update_inputs(weights, result, eta_num, eta_den)
    sums, kept, block, written = result.raw()
    d = weights.shape[0]
    if written.shape[0] == 1 and written[0] and d > 0:  # dense: split it between threads
        block = -(-d // max(1, numba.get_num_threads()))
        written = np.ones(-(-d // block), np.bool_)
    with _threads_for(8 * d) as nthreads:
        out, bad = _update_kernel(
            np.ascontiguousarray(weights),
            np.ascontiguousarray(sums),
            np.ascontiguousarray(kept),
            block,
            written,
            eta_num,
            eta_den,
            MAX_CLIENTS,
            MAX_ABS_SUM,
            nthreads,
        )
    if bad:
        raise ValueError(f"kept must be in [0, {MAX_CLIENTS}] and |sums| <= {MAX_ABS_SUM}")
    result_weights: Int32Array = out
    return result_weights


# --- warm-up --------------------------------------------------------------------------------


def warm_up() -> float:
    """Compile or load from cache every kernel on tiny inputs; returns the seconds it took.

    The node calls this at start so that no block import ever waits for the JIT. Read-only
    arrays (e.g. ``np.frombuffer`` over a block) are a different numba type, so the dense
    kernels are loaded for both; sparse inputs reach the kernel as addresses either way.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    stack = rng.integers(-8, 8, size=(5, 2 * _W + 3), dtype=np.int32)
    stack[0, -1] = 2**30  # the last block takes the wide path
    frozen = stack.copy()
    frozen.setflags(write=False)
    weights = np.zeros(stack.shape[1], np.int32)
    frozen_weights = weights.copy()
    frozen_weights.setflags(write=False)
    for s in (stack, frozen):
        trimmed_sum_dense(s, 0)
        result = trimmed_sum_dense(s, 2)
    for w in (weights, frozen_weights):
        apply_update(w, result, 1, 2)
    idx = [np.flatnonzero(row).astype(np.uint32) for row in stack]
    val = [row[row != 0] for row in stack]
    for semantics in (ZERO_FILL, PRESENT_QUORUM):
        for f in (0, 1):
            trimmed_sum_sparse(idx, val, stack.shape[1], f, semantics)
    return time.perf_counter() - start
