"""Perturbations on a 4-validator testnet, checked from recorded observations.

    python benchmarks/bench_chaos.py [--quick] [--slot-ms 500] [--resume-slots N] [--json FILE]
                                     [--keep DIR] [--seed S] [--netns auto|yes|no]
                                     [--random N [--max-minutes M] | --restart-all-cycles N]

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

--random N --seed S draws N perturbations instead of the fixed sequence (the same seed draws
the same sequence of kinds, targets and delays), from:

  kill-1       SIGKILL one validator (half the time just after it logged a block), restart it
  pause-1      SIGSTOP one for 3–12 slots, SIGCONT
  restart-2    SIGKILL two, restart both after 1–8 slots
  restart-all  SIGKILL (or, one time in three, SIGINT) all four at a random moment in a slot,
               restart all
  wipe-1       as above, the signing state kept
  partition-22 a 2–2 cut for 4–12 slots (finality must not move), heal   } with --netns: each
  partition-31 a 3–1 cut for 4–12 slots (the three keep finalizing), heal } validator in its own
  skew-1       restart one with its wall clock ±0.5–3 s off (libfaketime),  network namespace
               resume counted on the other three; 8 slots later restart  (benchmarks/netns.py)
               it with the true clock (a second step: all four resume)

Resume time of a random perturbation: from its last recovery action (restart, SIGCONT, heal)
until every running node finalized 2 blocks past the highest finalized block at that moment.
--restart-all-cycles N repeats restart-all N times (SIGKILL at a random moment in a slot).
Both modes also check, besides the above:
  * votes       every validator's signing-state file is read every 100 ms; no two of one
                validator's votes may be a double (one target height, two links) or a
                surround vote;
  * commits     the load's remarks, each submitted with the nonce the answering node gives: every
                accepted remark must be finalized within 120 s of its submission (one whose
                nonce another of ours took is counted apart as replaced, not lost).
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

import netns
from bench_network import Net, Rpc, pct
from deltachain.crypto.keys import address_to_str
from deltachain.crypto.keystore import read_key_file
from deltachain.node.signing_state import default_path
from deltachain.primitives.transaction import sign_transaction
from deltachain.primitives.types import Hash32

POLL_S = 0.1
COMMIT_BOUND_S = 120.0
"""Every accepted remark must be finalized within this of its submission."""


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
    def __init__(self, addrs: list[tuple[str, int]], signing_states: list[Path]) -> None:
        self.addrs = addrs
        self.signing_states = signing_states
        self.obs = Observations(finalized=[[] for _ in addrs])
        self.votes: list[set[tuple[int, int, str, int, str]]] = [set() for _ in addrs]
        self.stop_event = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(len(addrs))
        ]
        self.threads.append(threading.Thread(target=self._watch_votes, daemon=True))

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=5)

    def _watch_votes(self) -> None:
        """Every signed vote that reaches a signing-state file (written before the vote is
        sent), as (set, source number, source hash, target number, target hash)."""
        while not self.stop_event.wait(POLL_S):
            for i, path in enumerate(self.signing_states):
                try:
                    obj = json.loads(path.read_text())
                    src, tgt = obj["source"], obj["target"]
                    vote = (int(obj["set_id"]), int(src[0]), str(src[1]), int(tgt[0]), str(tgt[1]))
                except (OSError, ValueError, KeyError, TypeError, IndexError):
                    continue
                self.votes[i].add(vote)

    def _run(self, i: int) -> None:
        host, port = self.addrs[i]
        rpc = Rpc(port, host)
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
    note: str = ""


@dataclass
class Sent:
    """One remark the load got accepted: when, with which nonce, and when it was seen final."""

    tx_hash: str
    nonce: int
    at: float
    final_at: float | None = None
    status: str = "pool"


def vote_conflicts(votes: set[tuple[int, int, str, int, str]]) -> list[str]:
    """Pairs of one validator's votes that break rule 1 (two links to one target height) or
    rule 2 (one link surrounds the other), in the same authority set."""
    found = []
    ordered = sorted(votes)
    for a_i, a in enumerate(ordered):
        for b in ordered[a_i + 1 :]:
            if a[0] != b[0]:
                continue
            if a[3] == b[3]:
                found.append(f"double: #{a[1]}→#{a[3]} and #{b[1]}→#{b[3]}")
            elif (a[1] < b[1] and b[3] < a[3]) or (b[1] < a[1] and a[3] < b[3]):
                found.append(f"surround: #{a[1]}→#{a[3]} and #{b[1]}→#{b[3]}")
    return found


KINDS = ("kill-1", "pause-1", "restart-2", "restart-all", "wipe-1")
NETNS_KINDS = ("partition-22", "partition-31")
SKEW_KINDS = ("skew-1",)


class Chaos:
    def __init__(
        self, root: Path, slot_ms: int, rng: random.Random, use_netns: bool = False
    ) -> None:
        self.net: Net | netns.NsNet = (
            netns.NsNet(root, slot_ms) if use_netns else Net(root, slot_ms)
        )
        self.use_netns = use_netns
        self.slot_s = slot_ms / 1000
        self.rng = rng
        self.observer = Observer(
            self.net.rpc_addrs,
            [default_path(v.key, root / v.name) for v in self.net.validators],
        )
        self.steps: list[Step] = []
        self.running = [True] * 4
        self.wiped_at: dict[int, list[float]] = {}
        self.submitted = 0
        self.sent: list[Sent] = []
        self.sent_lock = threading.Lock()
        self.load_error = ""
        self.halt_violations: list[str] = []
        self._stop_load = threading.Event()
        self._stop_track = threading.Event()
        self._threads: list[threading.Thread] = []
        self.rpcs = [Rpc(port, host) for host, port in self.net.rpc_addrs]

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

    def start(self, which: list[int], env: dict[str, str] | None = None) -> None:
        """Start nodes; ``env`` (a clock skew) applies to these processes only."""
        for i in which:
            self.net.procs[i] = netns.start_process(self.net.commands[i], self.net.log(i), env)
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
                host, port = self.net.rpc_addrs[i]
                rpc = Rpc(port, host)
                try:
                    if genesis is None:
                        genesis = bytes.fromhex(str(rpc.call("chain_getGenesisHash"))[2:])
                    nonce = int(rpc.call("system_accountNextIndex", address_to_str(alice.address)))
                    tx = sign_transaction(
                        alice, Hash32(genesis), nonce, "system", "remark", {"data": b"chaos"}
                    )
                    tx_hash = rpc.call("author_submitExtrinsic", "0x" + tx.encode().hex())
                    self.submitted += 1
                    with self.sent_lock:
                        self.sent.append(Sent(str(tx_hash), nonce, time.monotonic()))
                    break
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    self.load_error = f"{type(exc).__name__}: {exc}"
                    continue

    def track(self) -> None:
        """Poll the status of every accepted remark not yet seen final, on a running node."""
        while not self._stop_track.wait(1.0):
            self.poll_sent()

    def poll_sent(self) -> None:
        with self.sent_lock:
            pending = [t for t in self.sent if t.final_at is None]
        for i in range(4):
            if not self.running[i]:
                continue
            try:
                for t in pending:
                    status = self.rpcs[i].call("author_extrinsicStatus", t.tx_hash)
                    t.status = str(status["status"])
                    if t.status == "finalized":
                        t.final_at = time.monotonic()
                return
            except (OSError, ValueError, KeyError, TypeError):
                continue

    # --- the run -----------------------------------------------------------------------------

    def setup(self) -> None:
        (self.net.dir / "logs").mkdir(exist_ok=True)
        self.start(list(range(4)))
        self.observer.start()
        if not self.wait(lambda: self.finalized_min(list(range(4))) >= 3, 180):
            raise SystemExit("the testnet did not finalize #3 within 180 s")
        self._threads = [
            threading.Thread(target=self.load, daemon=True),
            threading.Thread(target=self.track, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def teardown(self, wait_for_commits: bool = True) -> None:
        """Stop the load, then give the remarks it sent up to 120 s to be finalized."""
        self._stop_load.set()
        with self.sent_lock:
            last = max((t.at for t in self.sent), default=time.monotonic())
        if wait_for_commits:
            self.wait(
                lambda: all(t.final_at is not None for t in self.sent),
                max(0.0, last + COMMIT_BOUND_S - time.monotonic()),
            )
        self._stop_track.set()
        for t in self._threads:
            t.join(timeout=10)
        self.poll_sent()
        self.observer.stop()

    def resume(self, step: Step, exclude: tuple[int, ...] = ()) -> None:
        """Wait until every running node (but ``exclude``) finalized 2 past ``step.stood``;
        record the time."""
        up = [i for i in range(4) if self.running[i] and i not in exclude]
        if self.wait(lambda: self.finalized_min(up) >= step.stood + 2, 120):
            step.resumed_s = time.monotonic() - step.recovered_at
            print(f" resumed in {step.resumed_s:.1f} s ({step.resumed_s / self.slot_s:.0f} slots)")
        else:
            print(" did NOT resume within 120 s")

    def recovered(self, name: str, note: str = "") -> Step:
        """The recovery action just happened: the step measures from here and from the highest
        block finalized now."""
        step = Step(name, self.finalized_max(), time.monotonic(), note=note)
        self.steps.append(step)
        return step

    def wipe(self, i: int) -> None:
        self.kill([i])
        self.wiped_at.setdefault(i, []).append(time.monotonic())
        aside = self.net.dir / f"wiped-{i}-{len(self.steps)}"
        aside.mkdir(exist_ok=True)
        for path in (self.net.dir / self.net.validators[i].name).glob("chain.sqlite*"):
            shutil.move(path, aside / path.name)

    def random_step(self, kind: str) -> None:
        """One perturbation of ``kind``, its targets and delays drawn from ``self.rng``."""
        rng, slot = self.rng, self.slot_s
        who = rng.sample(range(4), 4)
        note = ""
        print(f"  {kind} {who[:2]}: finality at #{self.finalized_max()} …", end="", flush=True)
        if kind == "kill-1":
            if rng.random() < 0.5:
                self.after_a_block(who[0])
            self.kill([who[0]])
            self.start([who[0]])
        elif kind == "pause-1":
            self.signal(who[0], signal.SIGSTOP)
            time.sleep(rng.randint(3, 12) * slot)
            self.signal(who[0], signal.SIGCONT)
        elif kind == "restart-2":
            self.kill(who[:2])
            time.sleep(rng.randint(1, 8) * slot)
            self.start(who[:2])
        elif kind == "restart-all":
            sig = signal.SIGINT if rng.random() < 1 / 3 else signal.SIGKILL
            note = f"{signal.Signals(sig).name} at {self.at_random_moment():.0f} ms into a slot"
            self.kill(list(range(4)), sig)
            self.start(list(range(4)))
        elif kind == "wipe-1":
            self.wipe(who[0])
            self.start([who[0]])
        elif kind in NETNS_KINDS:
            assert isinstance(self.net, netns.NsNet)
            groups = [who[:2], who[2:]] if kind == "partition-22" else [who[:3], who[3:]]
            cut_slots = rng.randint(4, 12)
            self.net.fabric.partition(*groups)
            before = [self.observer.obs.current(i) for i in range(4)]
            time.sleep(cut_slots * slot)
            during = [self.observer.obs.current(i) for i in range(4)]
            self.net.fabric.heal()
            note = f"{groups} for {cut_slots} slots: finalized {before} → {during}"
            if kind == "partition-22" and max(during) > max(before) + 1:
                self.halt_violations.append(f"{kind}: {note}")
            three_stalled = min(during[i] for i in groups[0]) <= max(before)
            if kind == "partition-31" and three_stalled and cut_slots >= 8:  # plenty of slots
                self.halt_violations.append(f"{kind} (the three stalled): {note}")
        elif kind == "skew-1":
            skew = rng.choice((-1, 1)) * rng.uniform(0.5, 3.0)
            note = f"clock {skew:+.2f} s"
            self.kill([who[0]], signal.SIGINT)
            self.start([who[0]], netns.skew_env(skew))
            step = self.recovered(kind, note)
            # the other three must keep finalizing; the skewed one may not keep up: a clock
            # more than a slot behind takes every live block for one from the future
            self.resume(step, exclude=(who[0],))
            own = self.observer.obs.current(who[0])
            time.sleep(8 * slot)
            step.note += (
                f"; the skewed node finalized #{own} → #{self.observer.obs.current(who[0])}"
                f" while the others reached #{self.finalized_max()}"
            )
            print(f"  {kind} back to the true clock …", end="", flush=True)
            self.kill([who[0]], signal.SIGINT)
            self.start([who[0]])
        else:
            raise ValueError(kind)
        self.resume(self.recovered(kind, note))

    def at_random_moment(self) -> float:
        """Sleep until a uniformly random moment in a slot (by the wall clock, as Aura slots
        are); the offset in ms."""
        slot_ms = int(self.slot_s * 1000)
        offset = self.rng.uniform(0, slot_ms)
        now = time.time_ns() / 1e6
        time.sleep(((offset - now % slot_ms) % slot_ms) / 1000)
        return offset

    def run_random(self, count: int, max_minutes: float | None = None) -> None:
        kinds = list(KINDS)
        if self.use_netns:
            kinds += NETNS_KINDS
        if netns.faketime_lib() is not None:
            kinds += SKEW_KINDS
        self.setup()
        try:
            stop_at = time.monotonic() + 60 * max_minutes if max_minutes else float("inf")
            for _ in range(count):
                if time.monotonic() > stop_at:
                    print(f"  --max-minutes {max_minutes} reached: no more perturbations")
                    break
                self.random_step(self.rng.choice(kinds))
                time.sleep(self.rng.uniform(0, 4) * self.slot_s)
        except BaseException:
            self.teardown(wait_for_commits=False)
            raise
        finally:
            if isinstance(self.net, netns.NsNet):
                self.net.fabric.heal()
        self.teardown()

    def run_restart_all(self, cycles: int) -> None:
        self.setup()
        try:
            for n in range(cycles):
                print(f"  restart-all {n + 1}/{cycles}:", end="", flush=True)
                offset = self.at_random_moment()
                self.kill(list(range(4)))
                self.start(list(range(4)))
                self.resume(self.recovered("restart-all", f"SIGKILL at {offset:.0f} ms"))
        except BaseException:
            self.teardown(wait_for_commits=False)
            raise
        self.teardown()

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
        self.setup()
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
            self.wipe(i)
            self.start([i])

        self.perturb("kill-1", kill_one)
        self.perturb("pause-1", pause_one)
        self.perturb("kill-2", kill_two)
        self.perturb("kill-all", stop_all(signal.SIGKILL))
        if not quick:
            self.perturb("stop-all", stop_all(signal.SIGINT))
            self.perturb("wipe-1", wipe_one)
        self.teardown()

    def check(self, resume_slots: int) -> dict[str, Any]:
        obs = self.observer.obs
        forks = {h: sorted(set(by.values())) for h, by in obs.hashes.items()}
        disagreements = {h: v for h, v in forks.items() if len(v) > 1}
        decreases = []
        for i, series in enumerate(obs.finalized):
            top = -1
            wipes = list(self.wiped_at.get(i, []))
            for at, number in series:
                while wipes and at > wipes[0]:
                    top = -1  # its database was moved aside (each time): it starts over
                    wipes.pop(0)
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
        vote_violations = {
            self.net.validators[i].name: found
            for i, votes in enumerate(self.observer.votes)
            if (found := vote_conflicts(votes))
        }
        finalized = {(t.nonce) for t in self.sent if t.final_at is not None}
        lost = [t for t in self.sent if t.final_at is None and t.nonce not in finalized]
        replaced = [t for t in self.sent if t.final_at is None and t.nonce in finalized]
        slow = [
            t for t in self.sent if t.final_at is not None and t.final_at - t.at > COMMIT_BOUND_S
        ]
        commit_s = [t.final_at - t.at for t in self.sent if t.final_at is not None]
        resumed = [s.resumed_s / self.slot_s for s in self.steps if s.resumed_s is not None]
        by_kind: dict[str, list[float]] = {}
        for st in self.steps:
            if st.resumed_s is not None:
                by_kind.setdefault(st.name, []).append(st.resumed_s / self.slot_s)
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
                    "note": s.note,
                }
                for s in self.steps
            ],
            "resume_slots_p50": round(pct(resumed, 50), 1),
            "resume_slots_p99": round(pct(resumed, 99), 1),
            "resume_slots_max": round(max(resumed, default=float("nan")), 1),
            "resume_slots_by_kind": {
                k: {"n": len(v), "p50": round(pct(v, 50), 1), "max": round(max(v), 1)}
                for k, v in sorted(by_kind.items())
            },
            "vote_violations": vote_violations,
            "votes_seen": sum(len(v) for v in self.observer.votes),
            "halt_violations": self.halt_violations,
            "remarks_finalized": len(commit_s),
            "remarks_replaced": len(replaced),
            "remarks_lost": [f"nonce {t.nonce} ({t.status})" for t in lost],
            "remarks_over_120s": len(slow),
            "commit_s_p50": round(pct(commit_s, 50), 2),
            "commit_s_p99": round(pct(commit_s, 99), 2),
            "heights_observed": len(obs.hashes),
            "remarks_submitted": self.submitted,
            "last_load_error": self.load_error,
            "agreement_violations": {str(h): v for h, v in disagreements.items()},
            "finality_decreases": decreases,
            "equivocations_logged_by": equivocations,
            "late_or_stuck": late,
            "resume_bound_slots": resume_slots,
            "safety_violations": len(disagreements)
            + len(decreases)
            + len(equivocations)
            + sum(len(v) for v in vote_violations.values()),
            "ok": not (
                disagreements
                or decreases
                or equivocations
                or late
                or vote_violations
                or self.halt_violations
                or lost
                or slow
            ),
        }


def summary(result: dict[str, Any], resume_slots: int) -> str:
    lines = [
        f"perturbations {len(result['steps'])}; resume (slots) p50 {result['resume_slots_p50']}"
        f" p99 {result['resume_slots_p99']} max {result['resume_slots_max']}"
        f" (bound {resume_slots}); late or stuck {result['late_or_stuck']}",
    ]
    for kind, d in result["resume_slots_by_kind"].items():
        lines.append(f"  {kind:<13} n={d['n']:<3} p50 {d['p50']:>5} max {d['max']:>5} slots")
    lines += [
        f"safety violations {result['safety_violations']}: agreement "
        f"{len(result['agreement_violations'])}, finality decreases "
        f"{len(result['finality_decreases'])}, logged equivocations "
        f"{result['equivocations_logged_by']}, double/surround votes "
        f"{sum(len(v) for v in result['vote_violations'].values())} "
        f"(of {result['votes_seen']} votes read from signing-state files)",
        f"2–2 cuts that finalized / 3–1 cuts that stalled: {result['halt_violations']}",
        f"remarks: {result['remarks_submitted']} accepted, {result['remarks_finalized']} finalized"
        f" (p50 {result['commit_s_p50']} s, p99 {result['commit_s_p99']} s), "
        f"{result['remarks_over_120s']} over 120 s, {result['remarks_replaced']} replaced by "
        f"another with their nonce, lost {result['remarks_lost']}",
        f"every accepted transaction committed within 2 minutes: "
        f"{'yes' if not result['remarks_lost'] and not result['remarks_over_120s'] else 'NO'}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="kill-1, pause-1, kill-2, kill-all")
    parser.add_argument("--slot-ms", type=int, default=500)
    parser.add_argument("--resume-slots", type=int, default=60)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--keep", help="keep node data and logs in this directory")
    parser.add_argument(
        "--netns",
        choices=("auto", "yes", "no"),
        default="auto",
        help="validators in network namespaces (partitions possible): auto = when root",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--random", type=int, metavar="N", help="N randomly drawn perturbations")
    mode.add_argument(
        "--restart-all-cycles", type=int, metavar="N", help="N restart-alls at random moments"
    )
    parser.add_argument(
        "--max-minutes", type=float, help="with --random: start no perturbation after this"
    )
    args = parser.parse_args()
    # `kill PID` (and SIGINT, which a background job ignores) must still tear the net down
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    from deltachain.node import testnet as tn

    reason = netns.unavailable() if args.netns != "no" else "--netns no"
    if args.netns == "yes" and reason is not None:
        raise SystemExit(reason)
    with tempfile.TemporaryDirectory(prefix="bench-chaos-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        tn.warm_kernels()
        chaos = Chaos(root, args.slot_ms, random.Random(seed), use_netns=reason is None)
        where = "network namespaces" if reason is None else f"loopback ({reason})"
        print(f"4 validators, {args.slot_ms} ms slots, seed {seed}, {where}")
        try:
            if args.random:
                chaos.run_random(args.random, args.max_minutes)
            elif args.restart_all_cycles:
                chaos.run_restart_all(args.restart_all_cycles)
            else:
                chaos.run(args.quick)
        finally:
            chaos.net.close()
        result = chaos.check(args.resume_slots)
    result["seed"] = seed
    result["netns"] = reason is None
    print()
    print(summary(result, args.resume_slots))
    print("OK" if result["ok"] else "FAILED")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
