"""A 4-validator loopback testnet: finality latency, block rate, and catch-up speed.

    python benchmarks/bench_network.py [--quick] [--json FILE] [--keep DIR]

Phase 1 (1000 ms slots, ~60 s; --quick ~20 s): every node's JSON-RPC is polled every 50 ms
(best and finalized height, with a wall-clock timestamp). For each block:
  authored   the first poll at which any node's best reached it (the author sees it first),
  finalized  the first poll at which one node / every node reported it finalized.
Reports p50/p99 of authored→finalized (first node and all nodes), the same from the start of
the block's slot (slot × slot length, exact), and blocks per minute vs slots per minute.

Phase 2 (250 ms slots, so that 200 blocks pass in ~50 s; --quick: 50 blocks): one validator is
SIGKILLed, the other three author ~200 blocks, then it is restarted. Catch-up speed = blocks it
imported / time from its first imported block to reaching the head the others had when it
restarted; also the time from process start to being back at the live head.

Polling resolution is 50 ms, so latencies carry up to ~50 ms of sampling error.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deltachain.node import testnet as tn
from deltachain.primitives.chainspec import load_chain_spec

POLL_S = 0.05


def free_block(n: int, avoid: set[int]) -> int:
    for _ in range(500):
        base = random.randrange(20000, 32000 - n)
        ports = set(range(base, base + n))
        if ports & avoid:
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        avoid |= ports
        return base
    raise RuntimeError("no free port block")


class Rpc:
    """A keep-alive JSON-RPC client (one per polling thread)."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.conn: http.client.HTTPConnection | None = None

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        for attempt in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
                self.conn.request("POST", "/", body, {"Content-Type": "application/json"})
                reply = json.loads(self.conn.getresponse().read())
                return reply["result"]
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
                if attempt:
                    raise
        return None


@dataclass
class NodeTrace:
    """First wall-clock time at which this node reported each best / finalized height."""

    best_at: dict[int, float] = field(default_factory=dict)
    final_at: dict[int, float] = field(default_factory=dict)
    slot_of: dict[int, int] = field(default_factory=dict)
    best: int = -1
    finalized: int = -1


class Poller:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.traces = [NodeTrace() for _ in ports]
        self.stop_event = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(ports))
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=5)

    def _run(self, i: int) -> None:
        rpc = Rpc(self.ports[i])
        trace = self.traces[i]
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                best = rpc.call("chain_getHeader")
                fin = rpc.call("chain_getHeader", rpc.call("chain_getFinalizedHead"))
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                time.sleep(POLL_S)
                continue
            now = time.time()
            number = int(best["number"])
            trace.slot_of.setdefault(number, int(best["slot"]))
            for n in range(trace.best + 1, number + 1):
                trace.best_at.setdefault(n, now)
            trace.best = max(trace.best, number)
            fnum = int(fin["number"])
            for n in range(trace.finalized + 1, fnum + 1):
                trace.final_at.setdefault(n, now)
            trace.finalized = max(trace.finalized, fnum)
            time.sleep(max(0.0, POLL_S - (time.monotonic() - started)))


class Net:
    """Four validators from ``chain-spec new`` started with the testnet module's helpers."""

    def __init__(self, directory: Path, slot_ms: int) -> None:
        used: set[int] = set()
        self.p2p = free_block(4, used)
        self.rpc = free_block(4, used)
        self.metrics = free_block(4, used)
        self.dir = directory
        self.slot_ms = slot_ms
        tn.new_chain_spec(directory, 4, slot_ms=slot_ms, base_port=self.p2p)
        self.spec_path = directory / tn.SPEC_FILE
        spec = load_chain_spec(self.spec_path)
        self.validators = tn.find_validator_keys(spec, directory)
        keys = [tn.node_key_path(directory, i) for i in range(4)]
        addrs = [
            tn.multiaddr(self.p2p + i, tn.peer_id_of(tn.ensure_node_key(k)))
            for i, k in enumerate(keys)
        ]
        self.commands = [
            tn.node_command(
                self.spec_path,
                v,
                directory / v.name,
                self.p2p + i,
                self.rpc + i,
                keys[i],
                [a for j, a in enumerate(addrs) if j != i],
                self.metrics + i,
            )
            for i, v in enumerate(self.validators)
        ]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * 4

    @property
    def rpc_ports(self) -> list[int]:
        return [self.rpc + i for i in range(4)]

    @property
    def rpc_addrs(self) -> list[tuple[str, int]]:
        """(host, port) of every node's RPC, as in ``netns.NsNet`` (distinct hosts there)."""
        return [("127.0.0.1", port) for port in self.rpc_ports]

    def start(self, i: int) -> None:
        log = self.dir / "logs" / f"{self.validators[i].name}.log"
        self.procs[i] = tn.start_process(self.commands[i], log)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        for i in range(4):
            self.kill(i)

    def wait(self, poller: Poller, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(poller.traces):
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() not in (None, -9):
                    raise SystemExit(f"node {i} exited:\n" + tn.log_tail(self.log(i)))
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.1)

    def log(self, i: int) -> Path:
        return self.dir / "logs" / f"{self.validators[i].name}.log"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def phase_latency(root: Path, seconds: float) -> dict[str, Any]:
    net = Net(root / "latency", 1000)
    poller = Poller(net.rpc_ports)
    try:
        for i in range(4):
            net.start(i)
        poller.start()
        net.wait(poller, lambda ts: all(t.finalized >= 3 for t in ts), 120, "finality")
        t0 = time.time()
        best0 = max(t.best for t in poller.traces)
        fin0 = min(t.finalized for t in poller.traces)
        time.sleep(seconds)
        t1 = time.time()
        best1 = max(t.best for t in poller.traces)
        fin1 = min(t.finalized for t in poller.traces)
        time.sleep(2.5)  # let the last blocks of the window finalize
    finally:
        poller.stop()
        net.close()
    traces = poller.traces
    first_fin, all_fin, slot_first, slot_all = [], [], [], []
    for n in range(best0 + 1, best1 + 1):
        authored = min((t.best_at[n] for t in traces if n in t.best_at), default=None)
        finals = [t.final_at[n] for t in traces if n in t.final_at]
        slot = next((t.slot_of[n] for t in traces if n in t.slot_of), None)
        if authored is None or len(finals) < 4:
            continue
        first_fin.append(min(finals) - authored)
        all_fin.append(max(finals) - authored)
        if slot is not None:
            start = slot * net.slot_ms / 1000
            slot_first.append(min(finals) - start)
            slot_all.append(max(finals) - start)
    minutes = (t1 - t0) / 60
    return {
        "slot_ms": net.slot_ms,
        "window_s": round(t1 - t0, 1),
        "blocks": best1 - best0,
        "blocks_per_min": round((best1 - best0) / minutes, 1),
        "slots_per_min": round(60_000 / net.slot_ms, 1),
        "finalized_per_min": round((fin1 - fin0) / minutes, 1),
        "samples": len(first_fin),
        "authored_to_final_first_p50_ms": round(pct(first_fin, 50) * 1e3),
        "authored_to_final_first_p99_ms": round(pct(first_fin, 99) * 1e3),
        "authored_to_final_all_p50_ms": round(pct(all_fin, 50) * 1e3),
        "authored_to_final_all_p99_ms": round(pct(all_fin, 99) * 1e3),
        "slot_start_to_final_all_p50_ms": round(pct(slot_all, 50) * 1e3),
        "slot_start_to_final_all_p99_ms": round(pct(slot_all, 99) * 1e3),
    }


def phase_catch_up(root: Path, behind: int) -> dict[str, Any]:
    net = Net(root / "catchup", 250)
    poller = Poller(net.rpc_ports)
    lagging = 3
    try:
        for i in range(4):
            net.start(i)
        poller.start()
        net.wait(poller, lambda ts: all(t.finalized >= 3 for t in ts), 120, "finality")
        net.kill(lagging)
        stopped_at = poller.traces[lagging].best
        others = [t for i, t in enumerate(poller.traces) if i != lagging]
        net.wait(
            poller,
            lambda ts: min(t.best for t in others) >= stopped_at + behind,
            behind * 0.25 * 3 + 60,
            f"{behind} blocks",
        )
        target = max(t.best for t in others)
        restart = time.time()
        net.start(lagging)
        lag = poller.traces[lagging]
        net.wait(poller, lambda ts: lag.best >= target, 180, "catch-up")
        first = min(t for n, t in lag.best_at.items() if n > stopped_at)
        caught = lag.best_at[target]
        net.wait(
            poller,
            lambda ts: lag.best >= min(t.best for t in others) - 1,
            60,
            "the live head",
        )
        live = time.time()
        fin_target = max(t.finalized for t in others)
        net.wait(poller, lambda ts: lag.finalized >= fin_target, 60, "finality on the node")
    finally:
        poller.stop()
        net.close()
    imported = target - stopped_at
    return {
        "slot_ms": net.slot_ms,
        "blocks_behind": imported,
        "restart_to_first_import_s": round(first - restart, 2),
        "sync_s": round(caught - first, 2),
        "catch_up_blocks_per_s": round(imported / max(caught - first, 1e-9), 1),
        "restart_to_live_head_s": round(live - restart, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 s window, 50 blocks behind")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", help="keep node data and logs in this directory")
    args = parser.parse_args()
    seconds, behind = (20.0, 50) if args.quick else (60.0, 200)
    with tempfile.TemporaryDirectory(prefix="bench-network-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        tn.warm_kernels()  # once here, not cold in four nodes at once
        print(f"phase 1: 4 validators, 1000 ms slots, {seconds:.0f} s window …", flush=True)
        latency = phase_latency(root, seconds)
        print(f"phase 2: 4 validators, 250 ms slots, one restarts {behind} blocks behind …")
        catch_up = phase_catch_up(root, behind)
    rows = [
        ("window", f"{latency['window_s']} s at {latency['slot_ms']} ms slots"),
        ("slots per minute", latency["slots_per_min"]),
        ("blocks per minute (best chain)", latency["blocks_per_min"]),
        ("finalized blocks per minute", latency["finalized_per_min"]),
        ("blocks measured", latency["samples"]),
        ("authored → finalized, first node p50 / p99 (ms)",
         f"{latency['authored_to_final_first_p50_ms']} / "
         f"{latency['authored_to_final_first_p99_ms']}"),
        ("authored → finalized, all 4 nodes p50 / p99 (ms)",
         f"{latency['authored_to_final_all_p50_ms']} / {latency['authored_to_final_all_p99_ms']}"),
        ("slot start → finalized, all 4 nodes p50 / p99 (ms)",
         f"{latency['slot_start_to_final_all_p50_ms']} / "
         f"{latency['slot_start_to_final_all_p99_ms']}"),
        ("catch-up: blocks behind", catch_up["blocks_behind"]),
        ("catch-up: restart → first imported block (s)", catch_up["restart_to_first_import_s"]),
        ("catch-up: import speed (blocks/s)", catch_up["catch_up_blocks_per_s"]),
        ("catch-up: restart → at the live head (s)", catch_up["restart_to_live_head_s"]),
    ]  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print()
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"latency": latency, "catch_up": catch_up}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
