"""A device fleet against a 4-validator loopback testnet: throughput, latency and losses.

    python benchmarks/bench_fleet.py [--devices 1200] [--seconds 60] [--slot-ms 1000]
                                     [--fault none|kill|stop|restart-all] [--json FILE]
                                     [--keep DIR]

N devices registered in genesis each submit one signed Top-P% delta per model version through
all nodes (device i through node i mod 4) for T seconds (``deltachain.client.load``). Reported,
from one run and from recorded observations only:

  accepted/s, finalized/s     submissions the pools accepted; deltas in finalized blocks
  p50/p99 submit→finalized    from the submission's reply to node 0 reporting it finalized
  aggregated                  deltas a round aggregated (provenance)
  failed_in_block             included, but the call was refused in block order (e.g. the round
                              filled through another node first): a stated fate
  fates                       accepted, later dropped or invalid, with the node's reason
  lost                        accepted and none of the above: must be 0
  finalized_reverted          a node's finalized height going down: must be 0
  finality_conflicts          two different blocks finalized at one height: must be 0
  same_weights_root           every node's weights root at node 0's final finalized block
  ceiling                     raw ed25519 verifies/s on one core × cores ÷ validators, measured
                              now: every validator verifies every delta once

``--fault`` injects, once in the middle of the run: ``kill`` (kill -9 one validator and start
it again 5 s later), ``stop`` (SIGSTOP one for 5 s), ``restart-all`` (SIGTERM every validator,
then start them all again).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from deltachain.client.load import FleetLoad, LoadConfig, describe
from deltachain.crypto.keys import Keypair, verify

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_net import FleetNet


def verify_ceiling(validators: int, seconds: float = 1.0) -> float:
    """Raw signature verifications per second on one core × cores ÷ validators."""
    key = Keypair.dev("ceiling")
    message = os.urandom(400)
    signature = key.sign(message)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            verify(key.address, message, signature)
        count += 200
    per_core = count / (time.perf_counter() - started)
    return per_core * (os.cpu_count() or 1) / validators


def inject(net: FleetNet, fault: str, at: float, stop: threading.Event) -> None:
    if stop.wait(at) or fault == "none":
        return
    victim = 1
    if fault == "kill":
        print(f"  fault: kill -9 validator {victim}", flush=True)
        net.kill(victim)
        time.sleep(5)
        net.start(victim)
    elif fault == "stop":
        print(f"  fault: SIGSTOP validator {victim} for 5 s", flush=True)
        proc = net.procs[victim]
        if proc is not None:
            proc.send_signal(signal.SIGSTOP)
            time.sleep(5)
            proc.send_signal(signal.SIGCONT)
    elif fault == "restart-all":
        print("  fault: stop every validator and start them again", flush=True)
        for i in range(net.n):
            net.kill(i, signal.SIGTERM)
        for i in range(net.n):
            net.start(i)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=1200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--slot-ms", type=int, default=1000)
    parser.add_argument("--round-len", type=int, default=2)
    parser.add_argument("--top-p", type=float, default=0.1)
    parser.add_argument("--fault", choices=["none", "kill", "stop", "restart-all"], default="none")
    parser.add_argument("--quick", action="store_true", help="300 devices for 20 s")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the testnet directory here")
    args = parser.parse_args()
    if args.quick:
        args.devices, args.seconds = 300, 20.0
    ceiling = verify_ceiling(4)
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    net = FleetNet(
        root / "net",
        slot_ms=args.slot_ms,
        devices=args.devices,
        model={
            "maxDeltas": args.devices,
            "minDeltas": max(3, args.devices // 10),
            "roundLen": args.round_len,
        },
    )
    stop = threading.Event()
    try:
        net.start_all()
        net.wait_finalized(2, timeout=180)
        print(
            f"{args.devices} devices, 4 validators, {args.slot_ms} ms slots, "
            f"{args.seconds:.0f} s, fault {args.fault}",
            flush=True,
        )
        fault = threading.Thread(
            target=inject, args=(net, args.fault, args.seconds / 2, stop), daemon=True
        )
        fault.start()
        load = FleetLoad(
            LoadConfig(
                urls=net.urls,
                genesis=net.genesis,
                model=net.model_id,
                devices=net.devices,
                seconds=args.seconds,
                top_p=args.top_p,
            ),
            say=lambda line: print(line, flush=True),
        )
        report = load.run()
        stop.set()
        fault.join(timeout=60)
    finally:
        stop.set()
        net.close()
    summary = {**report.summary(), "ceiling_per_s": round(ceiling), "errors": load.errors}
    print(describe(summary))
    if report.lost_hashes:
        print("lost:", *report.lost_hashes[:10], sep="\n  ")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    ok = report.lost == 0 and report.reverted == 0 and report.conflicts == 0
    return 0 if ok and summary["same_weights_root"] else 1


if __name__ == "__main__":
    sys.exit(main())
