"""Robust aggregation kernels against Flower, scipy and the memory floor, measured in one run.

    python benchmarks/bench_aggregate.py [--quick] [--json FILE]

Dense: coordinate-wise trimmed mean of an n x d stack, f = floor(beta * n) trimmed per side.
Ours is ``trimmed_sum_dense`` (int32 in, exact int64 sums); Flower's ``aggregate_trimmed_avg``
and ``scipy.stats.trim_mean`` get float32 copies of the same values (Flower's time includes
stacking its per-client arrays, as its API requires). Values are quantised deltas as on chain
(int8 times a power of two, brief §3); the last column re-runs ours on full-range values
(|v| up to 2**30), which takes the slower "wide" path of the kernel. The floor is one
``stack.sum(axis=0, dtype=np.int64)`` (numpy) and one column-sum pass in numba (our f = 0 path).

Sparse: n = 100 clients each sending a random Top-P% of d coordinates; ours
(``trimmed_sum_sparse``, zero-fill) against densifying into an n x d stack and running our dense
kernel -- the same result. Ours leaves blocks where nothing moves unwritten (the update reads
them as "no change"); the "filled in" columns add writing them out as plain dense arrays.
Every time is the median of several runs; every ratio compares times from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numba
import numpy as np

from deltachain.model_state import aggregate_numba as fast
from deltachain.model_state.aggregate import PRESENT_QUORUM, ZERO_FILL, AggregateResult

Row = dict[str, Any]
_numba: Any = numba  # numba's bundled annotations do not export threading_layer


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def quantised(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """int8 deltas scaled by 2**8: the shape of on-chain values (v << (e + F))."""
    v = rng.integers(-127, 128, size=shape, dtype=np.int32)
    return np.left_shift(v, 8).astype(np.int32)


def load_flower() -> Callable[..., Any] | None:
    try:
        from flwr.server.strategy.aggregate import aggregate_trimmed_avg
    except Exception:  # any import failure means "not installed here"
        return None
    return aggregate_trimmed_avg


def dense_rows(quick: bool) -> list[Row]:
    from scipy.stats import trim_mean

    flower = load_flower()
    if flower is None:
        print("flwr unavailable: the Flower column is skipped")
    rng = np.random.default_rng(0)
    ns = (10, 32) if quick else (10, 32, 100)
    ds = (10**5,) if quick else (10**5, 10**6)
    rows: list[Row] = []
    for n in ns:
        for d in ds:
            stack = quantised(rng, (n, d))
            wide = rng.integers(-(2**30), 2**30 + 1, size=(n, d), dtype=np.int32)
            as_float = stack.astype(np.float32)
            per_client = [([as_float[i]], 1) for i in range(n)]
            slow_reps = 2 if quick or n * d >= 10**8 else 3
            fast_reps = 5 if quick else 9
            floor_np = median_time(partial(stack.sum, axis=0, dtype=np.int64), fast_reps)
            floor_nb = median_time(partial(fast.trimmed_sum_dense, stack, 0), fast_reps)
            for beta in (0.1, 0.2):
                f = int(beta * n)
                ours = median_time(partial(fast.trimmed_sum_dense, stack, f), fast_reps)
                ours_wide = median_time(partial(fast.trimmed_sum_dense, wide, f), fast_reps)
                sp = median_time(partial(trim_mean, as_float, beta, axis=0), slow_reps)
                fl = None
                if flower is not None:
                    fl = median_time(partial(flower, per_client, beta), slow_reps)
                    check = flower(per_client, beta)[0]
                    result = fast.trimmed_sum_dense(stack, f)
                    mean = result.sums / result.kept
                    if not np.allclose(mean, check, rtol=1e-5, atol=1e-2):
                        raise SystemExit("our trimmed mean differs from Flower's")
                rows.append(
                    {
                        "n": n,
                        "d": d,
                        "beta": beta,
                        "f": f,
                        "ours_s": ours,
                        "ours_wide_s": ours_wide,
                        "flower_s": fl,
                        "scipy_s": sp,
                        "floor_numpy_s": floor_np,
                        "floor_numba_s": floor_nb,
                    }
                )
                print_dense_row(rows[-1], flush=True)
            del stack, wide, as_float, per_client
    return rows


DENSE_HEAD = (
    f"{'n':>4} {'d':>8} {'beta':>4} {'f':>3} | {'ours':>8} {'Flower':>8} {'x':>6} "
    f"{'scipy':>8} {'x':>6} | {'np.sum':>8} {'ours/np':>7} {'nb.sum':>8} {'ours/nb':>7} | "
    f"{'ours,|v|<=2^30':>14} {'x Flower':>8}"
)


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}ms"


def print_dense_row(r: Row, flush: bool = False) -> None:
    fl = r["flower_s"]
    x_fl = "-" if fl is None else f"{fl / r['ours_s']:.1f}"
    x_fl_wide = "-" if fl is None else f"{fl / r['ours_wide_s']:.1f}"
    print(
        f"{r['n']:>4} {r['d']:>8} {r['beta']:>4} {r['f']:>3} | {ms(r['ours_s']):>8} "
        f"{ms(fl):>8} {x_fl:>6} {ms(r['scipy_s']):>8} {r['scipy_s'] / r['ours_s']:>6.1f} | "
        f"{ms(r['floor_numpy_s']):>8} {r['ours_s'] / r['floor_numpy_s']:>7.1f} "
        f"{ms(r['floor_numba_s']):>8} {r['ours_s'] / r['floor_numba_s']:>7.1f} | "
        f"{ms(r['ours_wide_s']):>14} {x_fl_wide:>8}",
        flush=flush,
    )


def densify(indices: list[np.ndarray], values: list[np.ndarray], d: int) -> np.ndarray:
    stack = np.zeros((len(indices), d), dtype=np.int32)
    for i, (idx, val) in enumerate(zip(indices, values, strict=True)):
        stack[i, idx] = val
    return stack


def densify_then_dense(
    indices: list[np.ndarray], values: list[np.ndarray], d: int, f: int
) -> object:
    return fast.trimmed_sum_dense(densify(indices, values, d), f)


def filled_in(sparse: Callable[[str], AggregateResult]) -> AggregateResult:
    """Ours, then every block it skipped filled in: what a caller that wants plain dense
    ``sums``/``kept`` arrays pays (the node's update step reads the blocks directly)."""
    result = sparse(ZERO_FILL)
    _ = result.sums, result.kept
    return result


def sparse_rows(quick: bool) -> list[Row]:
    rng = np.random.default_rng(1)
    n = 100
    d = 10**5 if quick else 10**6
    f = int(0.1 * n)
    reps = 5 if quick else 9
    rows: list[Row] = []
    for density in (0.01, 0.05, 0.1):
        k = int(d * density)
        indices = [
            np.sort(rng.choice(d, size=k, replace=False)).astype(np.uint32) for _ in range(n)
        ]
        values = []
        for _ in range(n):
            v = rng.integers(1, 128, size=k, dtype=np.int32) * rng.choice([-1, 1], size=k)
            values.append(np.left_shift(v, 8).astype(np.int32))

        dense_stack = partial(densify, indices, values, d)
        zf = fast.trimmed_sum_sparse(indices, values, d, f, ZERO_FILL)
        dense = fast.trimmed_sum_dense(dense_stack(), f)
        if not (np.array_equal(zf.sums, dense.sums) and np.array_equal(zf.kept, dense.kept)):
            raise SystemExit("sparse zero-fill differs from densify-then-dense")
        sparse = partial(fast.trimmed_sum_sparse, indices, values, d, f)
        t_zf = median_time(partial(sparse, ZERO_FILL), reps)
        t_zf_dense = median_time(partial(filled_in, sparse), reps)
        t_pq = median_time(partial(sparse, PRESENT_QUORUM), reps)
        t_densify = median_time(dense_stack, 3)
        t_both = median_time(partial(densify_then_dense, indices, values, d, f), 3)
        rows.append(
            {
                "n": n,
                "d": d,
                "f": f,
                "density": density,
                "nnz": n * k,
                "zero_fill_s": t_zf,
                "zero_fill_filled_in_s": t_zf_dense,
                "present_quorum_s": t_pq,
                "densify_s": t_densify,
                "densify_then_dense_s": t_both,
                "speedup": t_both / t_zf,
                "target": 0.5 / density,
            }
        )
        print_sparse_row(rows[-1], flush=True)
    return rows


SPARSE_HEAD = (
    f"{'n':>4} {'d':>8} {'f':>3} {'P':>4} | {'zero-fill':>9} {'filled in':>9} "
    f"{'pres-quorum':>11} | {'densify':>8} {'+dense':>8} | {'speed-up':>8} {'target':>6} "
    f"{'filled in':>9}"
)


def print_sparse_row(r: Row, flush: bool = False) -> None:
    print(
        f"{r['n']:>4} {r['d']:>8} {r['f']:>3} {r['density']:>4.0%} | {ms(r['zero_fill_s']):>9} "
        f"{ms(r['zero_fill_filled_in_s']):>9} {ms(r['present_quorum_s']):>11} | "
        f"{ms(r['densify_s']):>8} {ms(r['densify_then_dense_s']):>8} | {r['speedup']:>7.1f}x "
        f"{r['target']:>5.0f}x "
        f"{r['densify_then_dense_s'] / r['zero_fill_filled_in_s']:>8.1f}x",
        flush=flush,
    )


def compile_costs() -> Row:
    """warm_up() in fresh processes: once against an empty cache (JIT), once loading it."""
    code = (
        "import time; t = time.perf_counter(); "
        "from deltachain.model_state import aggregate_numba as a; "
        "i = time.perf_counter() - t; print(i, a.warm_up())"
    )
    out: Row = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold", "cached"):
            res = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            imp, warm = (float(x) for x in res.stdout.split())
            out[f"import_{label}_s"] = imp
            out[f"warm_up_{label}_s"] = warm
    return out


def targets(dense: list[Row], sparse: list[Row]) -> list[str]:
    failed = []
    for r in dense:
        if r["flower_s"] is None:
            continue
        need = 15.0 if (r["n"], r["d"]) == (100, 10**6) else 10.0
        if r["flower_s"] / r["ours_s"] < need:
            failed.append(f"dense n={r['n']} d={r['d']} beta={r['beta']}: < {need:.0f}x Flower")
    for r in sparse:
        if r["speedup"] < r["target"]:
            failed.append(f"sparse P={r['density']:.0%}: {r['speedup']:.1f}x < {r['target']:.0f}x")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for smoke tests")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()

    costs = compile_costs()
    fast.warm_up()
    cpu = platform.processor() or platform.machine()
    print("load average at start:", os.getloadavg())
    print(
        f"numba {numba.__version__}, {numba.get_num_threads()} threads "
        f"({os.cpu_count()} CPUs), numpy {np.__version__}, {cpu}"
    )
    print(
        f"first call: import {costs['import_cold_s']:.2f}s + "
        f"warm_up {costs['warm_up_cold_s']:.1f}s with an empty cache (JIT); "
        f"import {costs['import_cached_s']:.2f}s + "
        f"warm_up {costs['warm_up_cached_s'] * 1e3:.0f}ms from the on-disk cache"
    )
    print("\ndense (x = their time / ours; ours/floor = our time / floor time)")
    print(DENSE_HEAD)
    dense = dense_rows(args.quick)
    print("\nsparse, zero-fill vs densify-then-dense (target speed-up: 0.5 / P)")
    print(SPARSE_HEAD)
    sparse = sparse_rows(args.quick)
    print("threading layer:", _numba.threading_layer(), "| load average:", os.getloadavg())
    failed = [] if args.quick else targets(dense, sparse)
    print("\ntargets:", "all met" if not failed else "; ".join(failed))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(
                {
                    "quick": args.quick,
                    "threads": numba.get_num_threads(),
                    "threading_layer": _numba.threading_layer(),
                    "compile": costs,
                    "dense": dense,
                    "sparse": sparse,
                    "targets_missed": failed,
                },
                fh,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
