"""Reference robust aggregation: coordinate-wise trimmed sums and the integer global update.

This module is the *specification* of the aggregation step (brief §4), written for reading, not
speed: every validator must reach the same bytes, so the fast kernels in
:mod:`deltachain.model_state.aggregate_numba` are tested byte-for-byte against these functions.

Everything is integer. A client's delta is a sparse vector of ``int32`` values already in model
fixed-point units. With ``n`` deltas and a Byzantine bound ``f``, each coordinate's values are
ordered by the pair ``(value, client index)`` -- a total order, so ties are broken the same way on
every machine -- and the ``f`` first and ``f`` last are dropped. The kept values are summed in
``int64``; :func:`apply_update` turns ``sum / kept`` into a weight change with one exact
round-half-to-even division and saturates at the ``int32`` range.

Two semantics (chosen per model in genesis):

* ``zero-fill`` -- a coordinate a client did not send counts as an implicit ``0`` from that
  client, ordered as ``(0, i)``. It takes part in trimming but is never credited in
  ``survived`` (it was not sent). Requires ``n >= 2f + 1``.
* ``present-quorum`` -- only the ``c_j`` senders of coordinate ``j`` count; with
  ``c_j < 2f + 1`` the coordinate does not move (``kept = 0``).

Bounds (checked; they make every ``int64`` intermediate provably safe):

* ``n <= MAX_CLIENTS = 4096`` and values are ``int32`` (the codec further limits them to
  ``|v| <= 2**30``; the arithmetic below is exact for the whole ``int32`` range anyway);
* ``1 <= eta_num, eta_den <= MAX_ETA = 2**16``.

Overflow check: ``|sums| <= n * 2**31 <= 2**43``; ``|eta_num * sums| <= 2**16 * 2**43 = 2**59``;
the divisor ``eta_den * kept <= 2**16 * 2**12 = 2**28``; the quotient has ``|q| <= 2**59`` and
``w + q`` stays below ``2**59 + 2**31 < 2**63``; twice the remainder is below ``2**29``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

ZERO_FILL: Final = "zero-fill"
PRESENT_QUORUM: Final = "present-quorum"
SEMANTICS: Final = (ZERO_FILL, PRESENT_QUORUM)

MAX_CLIENTS: Final = 4096
"""Most deltas one aggregation accepts; keeps ``n * 2**31`` and ``eta_den * n`` small."""
MAX_ABS_VALUE: Final = 2**30
"""The codec's bound on a delta value in model units (the kernels are exact beyond it)."""
MAX_ETA: Final = 2**16
"""Largest numerator or denominator of the step size ``eta = eta_num / eta_den``."""
MAX_ABS_SUM: Final = MAX_CLIENTS * 2**31
"""Largest ``|sums[j]|`` that ``n <= MAX_CLIENTS`` int32 values can produce (``2**43``)."""

INT32_MIN: Final = -(2**31)
INT32_MAX: Final = 2**31 - 1

Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]
UInt32Array = npt.NDArray[np.uint32]


class AggregateResult:
    """The trimmed sums of one round, before the step size is applied.

    ``sums`` and ``kept`` are what the update needs; ``survived`` tells, per client, how many of
    the values it actually sent were kept -- the basis for crediting useful deltas.

    A sparse round usually leaves whole blocks of coordinates untouched (every sum 0, every
    kept the same ``rest_kept``: n - 2f under zero-fill, 0 under present-quorum). The fast
    kernel then skips writing them: ``written[b]`` is False for block ``b`` (coordinates
    ``[b * block, (b + 1) * block)``), the raw arrays hold garbage there, and ``sums``/``kept``
    fill those blocks in on first access. The fast update reads the raw form and copies the
    weights of unwritten blocks, so a node never pays for the 12 bytes per coordinate of
    outputs that say "no change".
    """

    __slots__ = ("_kept", "_sums", "block", "rest_kept", "survived", "written")

    def __init__(
        self,
        sums: Int64Array,
        kept: Int32Array,
        survived: Int64Array,
        *,
        block: int = 0,
        written: npt.NDArray[np.bool_] | None = None,
        rest_kept: int = 0,
    ) -> None:
        self._sums = sums
        self._kept = kept
        self.survived = survived
        """int64[n]: per client, how many of its sent (explicit) values survived trimming."""
        self.block = block
        self.written = written
        self.rest_kept = rest_kept

    @property
    def sums(self) -> Int64Array:
        """int64[d]: per coordinate, the sum of the values kept after trimming."""
        self._fill_unwritten()
        return self._sums

    @property
    def kept(self) -> Int32Array:
        """int32[d]: how many values were kept (0 = the coordinate does not move)."""
        self._fill_unwritten()
        return self._kept

    def raw(self) -> tuple[Int64Array, Int32Array, int, npt.NDArray[np.bool_]]:
        """(sums, kept, block, written) without filling anything in; a dense result is one
        written block."""
        if self.written is None:
            return self._sums, self._kept, max(1, self._sums.shape[0]), np.ones(1, np.bool_)
        return self._sums, self._kept, self.block, self.written

    def _fill_unwritten(self) -> None:
        if self.written is None:
            return
        for b in np.flatnonzero(~self.written):
            self._sums[b * self.block : (b + 1) * self.block] = 0
            self._kept[b * self.block : (b + 1) * self.block] = self.rest_kept
        self.written = None


# --- input checks (shared with the fast kernels) ------------------------------------------


def check_f(n: int, f: int, *, need_quorum: bool) -> None:
    """Check the Byzantine bound against the number of deltas.

    Raises ValueError: ``f < 0``, ``n > MAX_CLIENTS``, or (``need_quorum``) ``n < 2f + 1``.
    Genesis guarantees these; a violation here is a caller bug, so it is not a
    :class:`~deltachain.errors.DeltachainError`.
    """
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    if n > MAX_CLIENTS:
        raise ValueError(f"at most {MAX_CLIENTS} deltas per aggregation, got {n}")
    if need_quorum and n < 2 * f + 1:
        raise ValueError(f"trimming f={f} from each side needs n >= {2 * f + 1} deltas, got {n}")


def check_sparse_shapes(
    indices: Sequence[np.ndarray], values: Sequence[np.ndarray], d: int, f: int, semantics: str
) -> int:
    """Check everything about sparse inputs except index order/range; returns ``n``.

    Raises ValueError on an unknown semantics, a bad ``d`` or ``f``, or arrays of the wrong
    dtype, rank or length.
    """
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {SEMANTICS}, got {semantics!r}")
    if not 0 <= d <= 2**32:
        raise ValueError(f"d must be in [0, 2**32], got {d}")
    n = len(indices)
    if len(values) != n:
        raise ValueError(f"{n} index arrays but {len(values)} value arrays")
    check_f(n, f, need_quorum=semantics == ZERO_FILL)
    for i, (idx, val) in enumerate(zip(indices, values, strict=True)):
        if not isinstance(idx, np.ndarray) or idx.dtype != np.uint32 or idx.ndim != 1:
            raise ValueError(f"indices[{i}] must be a 1-D uint32 array")
        if not isinstance(val, np.ndarray) or val.dtype != np.int32 or val.ndim != 1:
            raise ValueError(f"values[{i}] must be a 1-D int32 array")
        if idx.shape != val.shape:
            raise ValueError(f"client {i}: {idx.size} indices but {val.size} values")
    return n


def check_dense_stack(stack: np.ndarray, f: int) -> tuple[int, int]:
    """Check a dense ``int32[n, d]`` stack; returns ``(n, d)``. Raises ValueError."""
    if not isinstance(stack, np.ndarray) or stack.dtype != np.int32 or stack.ndim != 2:
        raise ValueError("stack must be a 2-D int32 array of shape (n, d)")
    n, d = stack.shape
    check_f(n, f, need_quorum=True)
    return int(n), int(d)


def _check_index_order(indices: Sequence[np.ndarray], d: int) -> None:
    for i, idx in enumerate(indices):
        if idx.size and (int(idx[-1]) >= d or bool(np.any(idx[1:] <= idx[:-1]))):
            raise ValueError(f"indices[{i}] must be strictly increasing and < d={d}")


# --- the reference trimmed sums ------------------------------------------------------------


class _Entry(NamedTuple):
    """One value in a coordinate's multiset; ``(value, client)`` is unique and totally ordered."""

    value: int
    client: int
    sent: bool  # False for zero-fill's implicit zeros: they trim but are never credited


def _trim(
    entries: list[_Entry], f: int, j: int, result: tuple[Int64Array, Int32Array, list[int]]
) -> None:
    """Sort by (value, client), drop f from each end, record the middle for coordinate j."""
    sums, kept, survived = result
    ordered = sorted(entries, key=lambda e: (e.value, e.client))
    middle = ordered[f : len(ordered) - f]
    sums[j] = sum(e.value for e in middle)
    kept[j] = len(middle)
    for e in middle:
        if e.sent:
            survived[e.client] += 1


def trimmed_sum_sparse_reference(
    indices: Sequence[np.ndarray],
    values: Sequence[np.ndarray],
    d: int,
    f: int,
    semantics: str,
) -> AggregateResult:
    """Coordinate-wise trimmed sums of ``n`` sparse deltas (the readable specification).

    ``indices[i]`` (uint32, strictly increasing, ``< d``) and ``values[i]`` (int32) are client
    ``i``'s delta. Costs O(n * d) Python work under zero-fill: for tests and vectors only.

    Raises ValueError: bad shapes/dtypes, unsorted or out-of-range indices, ``f < 0``,
    ``n > MAX_CLIENTS``, unknown semantics, or zero-fill with ``n < 2f + 1``.
    """
    n = check_sparse_shapes(indices, values, d, f, semantics)
    _check_index_order(indices, d)
    columns: list[list[_Entry]] = [[] for _ in range(d)]
    for i, (idx, val) in enumerate(zip(indices, values, strict=True)):
        for j, v in zip(idx.tolist(), val.tolist(), strict=True):
            columns[j].append(_Entry(v, i, sent=True))

    result = (np.zeros(d, np.int64), np.zeros(d, np.int32), [0] * n)
    for j, column in enumerate(columns):
        if semantics == ZERO_FILL:
            senders = {e.client for e in column}
            implicit = [_Entry(0, i, sent=False) for i in range(n) if i not in senders]
            _trim(column + implicit, f, j, result)
        elif len(column) >= 2 * f + 1:
            _trim(column, f, j, result)
        # else present-quorum without quorum: sums 0, kept 0 -- the coordinate stays put
    sums, kept, survived = result
    return AggregateResult(sums, kept, np.array(survived, dtype=np.int64))


def trimmed_sum_dense_reference(stack: np.ndarray, f: int) -> AggregateResult:
    """Coordinate-wise trimmed sums of a dense ``int32[n, d]`` stack (every value is sent).

    Raises ValueError: ``stack`` not 2-D int32, ``f < 0``, ``n > MAX_CLIENTS`` or ``n < 2f + 1``.
    """
    n, d = check_dense_stack(stack, f)
    result = (np.zeros(d, np.int64), np.zeros(d, np.int32), [0] * n)
    for j in range(d):
        column = [_Entry(v, i, sent=True) for i, v in enumerate(stack[:, j].tolist())]
        _trim(column, f, j, result)
    sums, kept, survived = result
    return AggregateResult(sums, kept, np.array(survived, dtype=np.int64))


# --- the global update ------------------------------------------------------------------


def check_update_inputs(
    weights: np.ndarray, result: AggregateResult, eta_num: int, eta_den: int
) -> None:
    """Check the preconditions that keep :func:`apply_update` inside int64. Raises ValueError."""
    if not isinstance(weights, np.ndarray) or weights.dtype != np.int32 or weights.ndim != 1:
        raise ValueError("weights must be a 1-D int32 array")
    d = weights.shape[0]
    sums, kept, block, written = result.raw()
    if sums.dtype != np.int64 or kept.dtype != np.int32 or sums.shape != (d,) or kept.shape != (d,):
        raise ValueError(f"result must hold int64 sums and int32 kept of length {d}")
    if written.shape[0] * block < d:
        raise ValueError(f"result blocks cover {written.shape[0] * block} of {d} coordinates")
    if not (1 <= eta_num <= MAX_ETA and 1 <= eta_den <= MAX_ETA):
        raise ValueError(f"eta_num and eta_den must be in [1, {MAX_ETA}]")


def round_half_even_div(num: np.ndarray, den: np.ndarray | int) -> Int64Array:
    """``num / den`` rounded half to even, exactly, for int64 arrays; ``den`` must be > 0.

    The one rounding rule of consensus math: the update step and seeded genesis weights use it.
    """
    q, r = np.divmod(num, den)  # num = q * den + r with 0 <= r < den
    twice_r = 2 * r
    rounded: Int64Array = q + ((twice_r > den) | ((twice_r == den) & ((q & 1) == 1)))
    return rounded


def apply_update(
    weights: np.ndarray, result: AggregateResult, eta_num: int, eta_den: int
) -> Int32Array:
    """New weights: ``w + round_half_even(eta_num * sums / (eta_den * kept))``, saturated.

    Coordinates with ``kept == 0`` are returned unchanged. Exact integer arithmetic in int64
    (see the module docstring for why it cannot overflow). Returns a new int32 array.

    Raises ValueError: wrong dtypes/shapes, ``eta`` out of ``[1, MAX_ETA]``, ``kept`` outside
    ``[0, MAX_CLIENTS]`` or ``|sums| > MAX_ABS_SUM``.
    """
    check_update_inputs(weights, result, eta_num, eta_den)
    sums, kept = result.sums, result.kept
    if kept.size and (int(kept.min()) < 0 or int(kept.max()) > MAX_CLIENTS):
        raise ValueError(f"kept must be in [0, {MAX_CLIENTS}]")
    if sums.size and (int(sums.min()) < -MAX_ABS_SUM or int(sums.max()) > MAX_ABS_SUM):
        raise ValueError(f"|sums| must be <= {MAX_ABS_SUM}")

    moved = kept > 0
    num = np.int64(eta_num) * sums[moved]
    den = np.int64(eta_den) * kept[moved].astype(np.int64)  # > 0, so divmod floors
    out = weights.astype(np.int64)
    out[moved] += round_half_even_div(num, den)
    np.clip(out, INT32_MIN, INT32_MAX, out=out)
    return out.astype(np.int32)
