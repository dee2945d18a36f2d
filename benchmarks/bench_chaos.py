"""Perturbations on a 4-validator loopback testnet, checked from recorded observations.

    python benchmarks/bench_chaos.py [--quick] [--slot-ms 500] [--resume-slots N] [--json FILE]
                                     [--keep DIR] [--seed S]

In the style of CometBFT's test/e2e runner: start → light load → perturb → wait → check.
Load is one ``system.remark`` a second from validator-0, sent to whichever node answers. The
perturbations, in order (each waits for finality to move again before the next):

  kill-1      SIGKILL one validator just after it logged a block, restart it at once
  pause-1     SIGSTOP one validator for 8 slots, then SIGCONT
  kill-2      SIGKILL two validators (finality must halt), restart both after 6 slots
  kill-all    SIGKILL all four just after a slot boundary, restart all
  stop-all    SIGINT all four (Ctrl-C) just after a slot boundary, restart all
  wipe-1      SIGKILL one validator, move its chain database aside (its signing state stays),
              restart it: it resyncs and must not sign a conflicting vote

A thread polls every node's finalized head (hash and height) every 100 ms and records, for every
finalized height it saw, which hash each node gave. Checks, from those records:
  * agreement   no two nodes ever finalized different blocks at one height;
  * monotonic   no node's finalized height ever went down (across its restarts too, except
                the one whose database was moved aside);
  * liveness    after each perturbation, every running node finalized 2 blocks past where
                finality stood, within --resume-slots slots of the recovery action;
  * no equivocation logged by any node ("broke a voting rule").
Exit status 1 if a check failed. Resume times include process start (loading the kernels).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_network import Net, Rpc
from deltachain.crypto.keys import address_to_str
from deltachain.crypto.keystore import read_key_file
from deltachain.primitives.transaction import sign_transaction
from deltachain.primitives.types import Hash32

POLL_S = 0.1


@dataclass
class Observations:
    """What the observer saw: finalized hash by height per node, and finalized over time."""

    hashes: dict[int, dict[int, str]] = field(default_factory=dict)  # height -> node -> hash
    finalized: list[list[tuple[float, int]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def current(self, i: int) -> int:
        with self.lock:
            return self.finalized[i][-1][1] if self.finalized[i] else -1


class Observer:
    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.obs = Observations(finalized=[[] for _ in ports])
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
        while not self.stop_event.wait(POLL_S):
            try:
                fin_hash = str(rpc.call("chain_getFinalizedHead"))
                number = int(rpc.call("chain_getHeader", fin_hash)["number"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            with self.obs.lock:
                self.obs.finalized[i].append((time.monotonic(), number))
                self.obs.hashes.setdefault(number, {}).setdefault(i, fin_hash)


@dataclass
class Step:
    name: str
    stood: int
    recovered_at: float
    resumed_s: float | None = None


class Chaos:
    def __init__(self, root: Path, slot_ms: int, rng: random.Random) -> None:
        self.net = Net(root, slot_ms)
        self.slot_s = slot_ms / 1000
        self.rng = rng
        self.observer = Observer(self.net.rpc_ports)
        self.steps: list[Step] = []
        self.running = [True] * 4
        self.wiped_at: dict[int, float] = {}
        self.submitted = 0
        self.load_error = ""
        self._stop_load = threading.Event()

    # --- helpers -----------------------------------------------------------------------------

    def finalized_min(self, which: list[int]) -> int:
        return min(self.observer.obs.current(i) for i in which)

    def finalized_max(self) -> int:
        return max(self.observer.obs.current(i) for i in range(4))

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def blocks_logged(self, i: int) -> int:
        text = self.net.log(i).read_text(errors="replace")
        return text.count("authored #") + text.count("imported #")

    def after_a_block(self, i: int) -> None:
        seen = self.blocks_logged(i)
        self.wait(lambda: self.blocks_logged(i) > seen, 10 * self.slot_s)

    def after_slot_boundary(self) -> None:
        slot_ms = int(self.slot_s * 1000)
        while not 10 <= (time.time_ns() // 1_000_000) % slot_ms <= 60:
            time.sleep(0.002)

    def kill(self, which: list[int], sig: int = signal.SIGKILL) -> None:
        for i in which:
            proc = self.net.procs[i]
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)
        for i in which:
            proc = self.net.procs[i]
            if proc is not None:
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:  # a clean stop that hangs: force it
                    proc.kill()
                    proc.wait(timeout=10)
            self.running[i] = False

    def start(self, which: list[int]) -> None:
        for i in which:
            self.net.start(i)
            self.running[i] = True

    def signal(self, i: int, sig: int) -> None:
        proc = self.net.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def load(self) -> None:
        """One remark a second from validator-0 (an authority may transact) to the first node
        that answers."""
        alice = read_key_file(Path(self.net.validators[0].key), None)
        genesis: bytes | None = None
        while not self._stop_load.wait(1.0):
            for i in range(4):
                if not self.running[i]:
                    continue
                rpc = Rpc(self.net.rpc_ports[i])
                try:
                    if genesis is None:
                        genesis = bytes.fromhex(str(rpc.call("chain_getGenesisHash"))[2:])
                    nonce = int(rpc.call("system_accountNextIndex", address_to_str(alice.address)))
                    tx = sign_transaction(
                        alice, Hash32(genesis), nonce, "system", "remark", {"data": b"chaos"}
                    )
                    rpc.call("author_submitExtrinsic", "0x" + tx.encode().hex())
                    self.submitted += 1
                    break
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    self.load_error = f"{type(exc).__name__}: {exc}"
                    continue

    # --- the run -----------------------------------------------------------------------------

    def perturb(self, name: str, action: Callable[[], None]) -> None:
        stood = self.finalized_max()
        print(f"  {name}: finality stood at #{stood} …", end="", flush=True)
        action()
        step = Step(name, stood, time.monotonic())
        self.steps.append(step)
        up = [i for i in range(4) if self.running[i]]
        if self.wait(lambda: self.finalized_min(up) >= stood + 2, 120):
            step.resumed_s = time.monotonic() - step.recovered_at
            print(f" resumed in {step.resumed_s:.1f} s ({step.resumed_s / self.slot_s:.0f} slots)")
        else:
            print(" did NOT resume within 120 s")

    def run(self, quick: bool) -> None:
        tn_dir = self.net.dir
        (tn_dir / "logs").mkdir(exist_ok=True)
        self.start(list(range(4)))
        self.observer.start()
        if not self.wait(lambda: self.finalized_min(list(range(4))) >= 3, 180):
            raise SystemExit("the testnet did not finalize #3 within 180 s")
        loader = threading.Thread(target=self.load, daemon=True)
        loader.start()
        pick = self.rng.sample(range(4), 4)

        def kill_one() -> None:
            self.after_a_block(pick[0])
            self.kill([pick[0]])
            self.start([pick[0]])

        def pause_one() -> None:
            self.signal(pick[1], signal.SIGSTOP)
            time.sleep(8 * self.slot_s)
            self.signal(pick[1], signal.SIGCONT)

        def kill_two() -> None:
            self.after_a_block(pick[2])
            self.kill([pick[2], pick[3]])
            time.sleep(6 * self.slot_s)
            self.start([pick[2], pick[3]])

        def stop_all(sig: int) -> Callable[[], None]:
            def action() -> None:
                self.after_slot_boundary()
                self.kill(list(range(4)), sig)
                self.start(list(range(4)))

            return action

        def wipe_one() -> None:
            i = pick[0]
            self.after_a_block(i)
            self.kill([i])
            self.wiped_at[i] = time.monotonic()
            aside = tn_dir / f"wiped-{i}"
            aside.mkdir(exist_ok=True)
            for path in (tn_dir / self.net.validators[i].name).glob("chain.sqlite*"):
                shutil.move(path, aside / path.name)
            self.start([i])

        self.perturb("kill-1", kill_one)
        self.perturb("pause-1", pause_one)
        self.perturb("kill-2", kill_two)
        self.perturb("kill-all", stop_all(signal.SIGKILL))
        if not quick:
            self.perturb("stop-all", stop_all(signal.SIGINT))
            self.perturb("wipe-1", wipe_one)
        self._stop_load.set()
        loader.join(timeout=5)
        self.observer.stop()

    def check(self, resume_slots: int) -> dict[str, Any]:
        obs = self.observer.obs
        forks = {h: sorted(set(by.values())) for h, by in obs.hashes.items()}
        disagreements = {h: v for h, v in forks.items() if len(v) > 1}
        decreases = []
        for i, series in enumerate(obs.finalized):
            top = -1
            wiped = self.wiped_at.get(i)
            for at, number in series:
                if wiped is not None and at > wiped:
                    top, wiped = -1, None  # its database was moved aside: it starts over
                if number < top:
                    decreases.append(f"node {i}: #{top} → #{number}")
                top = max(top, number)
        equivocations = [
            self.net.validators[i].name
            for i in range(4)
            if "broke a voting rule" in self.net.log(i).read_text(errors="replace")
        ]
        bound = resume_slots * self.slot_s
        late = [s.name for s in self.steps if s.resumed_s is None or s.resumed_s > bound]
        return {
            "slot_ms": int(self.slot_s * 1000),
            "steps": [
                {
                    "name": s.name,
                    "finalized_before": s.stood,
                    "resumed_s": None if s.resumed_s is None else round(s.resumed_s, 2),
                    "resumed_slots": None
                    if s.resumed_s is None
                    else round(s.resumed_s / self.slot_s, 1),
                }
                for s in self.steps
            ],
            "heights_observed": len(obs.hashes),
            "remarks_submitted": self.submitted,
            "last_load_error": self.load_error,
            "agreement_violations": {str(h): v for h, v in disagreements.items()},
            "finality_decreases": decreases,
            "equivocations_logged_by": equivocations,
            "late_or_stuck": late,
            "resume_bound_slots": resume_slots,
            "ok": not (disagreements or decreases or equivocations or late),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="kill-1, pause-1, kill-2, kill-all")
    parser.add_argument("--slot-ms", type=int, default=500)
    parser.add_argument("--resume-slots", type=int, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", help="keep node data and logs in this directory")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    from deltachain.node import testnet as tn

    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        tn.warm_kernels()
        chaos = Chaos(root, args.slot_ms, random.Random(seed))
        print(f"4 validators, {args.slot_ms} ms slots, seed {seed}")
        try:
            chaos.run(args.quick)
        finally:
            chaos.net.close()
        result = chaos.check(args.resume_slots)
    result["seed"] = seed
    print(
        f"\nheights observed {result['heights_observed']}; agreement violations "
        f"{len(result['agreement_violations'])}; finality decreases "
        f"{len(result['finality_decreases'])}; equivocations {result['equivocations_logged_by']}"
        f"; late or stuck {result['late_or_stuck']} (bound {args.resume_slots} slots)"
    )
    print("OK" if result["ok"] else "FAILED")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
