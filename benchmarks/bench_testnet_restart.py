"""`make testnet`, Ctrl-C, `make testnet` again, N times: does finality resume within seconds?

    python benchmarks/bench_testnet_restart.py [--cycles 10] [--dir DIR] [--chain genesis.json]

Each cycle runs ``deltachain testnet up --chain CHAIN --dir DIR --follow`` (what ``make testnet``
runs, on free ports so it never meets another engineer's testnet), waits until every node
reports a finalized block above the highest one seen in the previous cycle (the databases are
kept, so the chain must continue, not restart), then sends SIGINT to the ``--follow`` process
(Ctrl-C) and waits for it and its nodes to exit. Reports per cycle: seconds from ``up`` until
all four RPCs answer (process start: imports, kernels from the cache, database open) and until
every node reports finality above the previous cycle's.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_network import Rpc, free_block, pct

REPO = Path(__file__).resolve().parents[1]


def finalized(rpc: Rpc) -> int:
    try:
        return int(rpc.call("chain_getHeader", rpc.call("chain_getFinalizedHead"))["number"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--dir", help="testnet directory (default: a temporary one)")
    parser.add_argument("--chain", default=str(REPO / "genesis.json"))
    parser.add_argument("--timeout", type=float, default=120.0, help="per cycle")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    used: set[int] = set()
    p2p, rpc_base, metrics = free_block(4, used), free_block(4, used), free_block(4, used)
    with tempfile.TemporaryDirectory(prefix="bench-testnet-") as tmp:
        directory = Path(args.dir) if args.dir else Path(tmp) / "testnet"
        cmd = [
            sys.executable, "-m", "deltachain.node.cli", "testnet", "up",
            "--chain", args.chain, "--dir", str(directory), "--follow",
            "--base-port", str(p2p), "--rpc-base-port", str(rpc_base),
            "--prometheus-base-port", str(metrics),
        ]  # fmt: skip
        rpcs = [Rpc(rpc_base + i) for i in range(4)]
        top = 0  # genesis: the first cycle must finalize #1 or above
        cycles = []
        for n in range(args.cycles):
            started = time.monotonic()
            with (directory.parent / f"up-{n}.log").open("wb") as out:
                proc = subprocess.Popen(
                    cmd,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # a background job ignores SIGINT; Python then would too: restore it
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                )
            resumed = answering = None
            deadline = started + args.timeout
            while time.monotonic() < deadline and proc.poll() is None:
                heights = [finalized(r) for r in rpcs]
                if answering is None and min(heights) >= 0:
                    answering = time.monotonic() - started
                if min(heights) > top:
                    resumed = time.monotonic() - started
                    top = max(heights)
                    break
                time.sleep(0.1)
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            stopped = all(finalized(r) < 0 for r in rpcs)
            cycles.append(
                {"resumed_s": None if resumed is None else round(resumed, 2),
                 "rpc_up_s": None if answering is None else round(answering, 2),
                 "finalized": top, "up_exit": code, "nodes_stopped": stopped}
            )  # fmt: skip
            print(
                f"cycle {n + 1}: finality above the last cycle's in "
                f"{'NEVER' if resumed is None else f'{resumed:.1f} s'} (#{top}; all 4 RPCs up "
                f"after {'-' if answering is None else f'{answering:.1f}'} s); "
                f"Ctrl-C → exit {code}, nodes stopped: {stopped}",
                flush=True,
            )
        if proc.poll() is None:
            proc.kill()
        subprocess.run(
            [*cmd[:3], "testnet", "down", "--dir", str(directory)],
            check=False,
            capture_output=True,
        )
    times = [c["resumed_s"] for c in cycles if c["resumed_s"] is not None]
    ok = len(times) == len(cycles) and all(c["nodes_stopped"] for c in cycles)
    print(
        f"{len(times)}/{len(cycles)} cycles resumed finality; up → finality p50 "
        f"{pct(times, 50):.1f} s, max {max(times, default=float('nan')):.1f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"cycles": cycles, "ok": ok}, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
