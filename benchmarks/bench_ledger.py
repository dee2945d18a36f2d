"""Ledger core throughput, with the raw pynacl verify rate measured in the same run as the ceiling.

    python benchmarks/bench_ledger.py [--quick] [--json FILE]

Prints: transactions validated per second (decode + signature + nonce + call checks, as the pool
does), and block import time (Aura seal check + execution + state root + one SQLite transaction)
for blocks of 100 and 1000 small transactions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nacl.signing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from deltachain.chain import construct_runtime
from deltachain.node.chain import Chain
from deltachain.primitives.transaction import SignedTransaction
from deltachain.runtime import executive
from deltachain.runtime.executive import check_transaction
from support import BOB, MemChain

DEFAULT_PARALLEL_MIN = executive.PARALLEL_VERIFY_MIN
_executive: Any = executive  # the threshold is Final for the node; the bench flips it


def raw_verify_rate(n: int) -> float:
    key = nacl.signing.SigningKey.generate()
    signed = [key.sign(b"m" * 120 + i.to_bytes(4, "big")) for i in range(n)]
    verify = key.verify_key.verify
    start = time.perf_counter()
    for s in signed:
        verify(s)
    return n / (time.perf_counter() - start)


def validate_rate(chain: MemChain, encoded: list[bytes]) -> float:
    state = chain.state()
    start = time.perf_counter()
    for raw in encoded:
        tx = SignedTransaction.decode(raw)
        check_transaction(chain.runtime, state, tx, chain.genesis_hash, allow_future=True)
    return len(encoded) / (time.perf_counter() - start)


def import_times(size: int, repeats: int, *, parallel: bool = True) -> list[float]:
    """Import a block of ``size`` remarks into a fresh node; ``parallel=False`` checks the
    signatures in line (as blocks below PARALLEL_VERIFY_MIN transactions always do)."""
    _executive.PARALLEL_VERIFY_MIN = DEFAULT_PARALLEL_MIN if parallel else 1 << 62
    times = []
    for _ in range(repeats):
        mem = MemChain()
        txs = [mem.tx(BOB, "system", "remark", {"data": b"x" * 32}, nonce=n) for n in range(size)]
        block, _ = mem.build(txs)
        with tempfile.TemporaryDirectory() as tmp:
            node = Chain(mem.spec, construct_runtime(), Path(tmp))
            result = node.import_block(block, now_slot=None)
            node.close()
        times.append(result.seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    n = 500 if args.quick else 5000
    repeats = 2 if args.quick else 5

    mem = MemChain()
    encoded = [
        mem.tx(BOB, "system", "remark", {"data": b"x" * 32}, nonce=i).encode() for i in range(n)
    ]
    ceiling = raw_verify_rate(n)
    rate = validate_rate(mem, encoded)
    results = {"raw_verify_per_s": ceiling, "validated_per_s": rate}
    print(f"{'measure':<44}{'value':>14}{'vs ceiling':>12}")
    print(f"{'pynacl verify (ceiling)':<44}{ceiling:>12,.0f}/s{1.0:>11.2f}x")
    print(f"{'tx validated (decode+sig+nonce+call)':<44}{rate:>12,.0f}/s{rate / ceiling:>11.2f}x")
    for size in (100, 1000):
        inline = statistics.median(import_times(size, repeats, parallel=False))
        t = statistics.median(import_times(size, repeats))
        results[f"import_{size}_s"] = t
        results[f"import_{size}_inline_signatures_s"] = inline
        per_tx = size / t
        print(
            f"{f'block import, {size} txs (median of {repeats})':<44}{t * 1e3:>11.1f} ms"
            f"{per_tx / ceiling:>11.2f}x   signatures in line: {inline * 1e3:.1f} ms "
            f"({inline / t:.2f}x)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
