"""A fleet load generator and checker: many devices submit signed Top-P% deltas through every
node of a network, and every accepted delta is followed to a finalized block or a stated fate.

It is what `benchmarks/bench_fleet.py` runs and what the multi-node tests reuse. Devices here do
not train (a delta is a random Top-P% vector, quantised exactly as a device does): the subject
is the network -- propagation, pool policy, round admission, finality -- not learning.

Everything it reports comes from recorded observations: the submission log (what each node
accepted, when), the finalized blocks it read from one node, every node's finalized head over
time, each model version's provenance, and at the end ``author_extrinsicStatus`` for anything
accepted but not finalized. "lost" is what was accepted and has neither.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.errors import DeltachainError, NetworkError
from deltachain.model_state.delta import (
    SALT_BYTES,
    CommitDelta,
    SubmitDelta,
    delta_commitment,
    quantize_top_p,
)
from deltachain.primitives.transaction import SignedTransaction, sign_transaction
from deltachain.primitives.types import Hash32

BATCH = 48
"""Submissions per JSON-RPC batch (the node accepts up to 64)."""
ROUND_REFUSALS = (
    "is full",
    "already has a delta",
    "already submitted a delta",
    "is stale",
    "already committed",
    "commit window",
    "takes reveals from",
    "no commitment",
)


def random_delta(rng: np.random.Generator, model: dict[str, Any], top_p: float) -> SubmitDelta:
    """A Top-P% int8 delta of a random update to ``model`` (a ``model_get`` answer), built on
    its current version and quantised exactly as a training device quantises its own."""
    mask = np.concatenate(
        [np.full(int(np.prod(la["shape"])), la["global"], dtype=bool) for la in model["layers"]]
    )
    vector = rng.normal(0.0, 0.01, mask.size)
    indices, values, exp = quantize_top_p(vector, top_p, model["fracBits"], mask)
    return SubmitDelta(model["id"], model["version"], indices, values, exp, 10, None, None)


class Rpc:
    """JSON-RPC over one kept-alive HTTP connection (one per thread: not thread-safe)."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or parsed.hostname is None:
            raise NetworkError(f"{url!r} is not an http:// URL")
        self.url = url
        self._host, self._port = parsed.hostname, parsed.port or 80
        self._path = parsed.path or "/"
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None
        self._ids = itertools.count(1)

    def _post(self, payload: Any) -> Any:
        body = json.dumps(payload).encode()
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, self._timeout)
            try:
                self._conn.request("POST", self._path, body, {"Content-Type": "application/json"})
                response = self._conn.getresponse()
                data = response.read()
                if response.status != 200:
                    raise NetworkError(f"{self.url} answered HTTP {response.status}")
                return json.loads(data)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._conn.close()
                self._conn = None
                if attempt:
                    raise NetworkError(f"{self.url}: {exc}") from None
        raise AssertionError("unreachable")

    def call(self, method: str, *params: Any) -> Any:
        reply = self._post({"jsonrpc": "2.0", "id": next(self._ids), "method": method,
                            "params": list(params)})  # fmt: skip
        if "error" in reply:
            raise DeltachainError(str(reply["error"].get("message")))
        return reply.get("result")

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[tuple[bool, Any]]:
        """(ok, result or error message) per call, in order."""
        if not calls:
            return []
        first = next(self._ids)
        payload = [
            {"jsonrpc": "2.0", "id": first + i, "method": m, "params": p}
            for i, (m, p) in enumerate(calls)
        ]
        self._ids = itertools.count(first + len(calls))
        replies = self._post(payload)
        by_id = {r.get("id"): r for r in replies} if isinstance(replies, list) else {}
        out: list[tuple[bool, Any]] = []
        for i in range(len(calls)):
            reply = by_id.get(first + i, {"error": {"message": "no reply"}})
            if "error" in reply:
                out.append((False, str(reply["error"].get("message"))))
            else:
                out.append((True, reply.get("result")))
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


@dataclass
class Submitted:
    tx_hash: str
    device: int
    node: int
    version: int
    at: float
    finalized_at: float | None = None


@dataclass
class LoadConfig:
    urls: list[str]
    genesis: Hash32
    model: str
    devices: list[Keypair]
    seconds: float = 30.0
    top_p: float = 0.1
    drain_s: float = 60.0
    """After the load: how long accepted deltas may take to finalize before they count lost."""
    poll_s: float = 0.1
    seed: int = 0


@dataclass
class LoadReport:
    seconds: float
    submitted: int = 0
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    finalized: int = 0
    aggregated: int = 0
    failed_in_block: dict[str, int] = field(default_factory=dict)
    fates: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    latencies: list[float] = field(default_factory=list)
    rounds_closed: int = 0
    reverted: int = 0
    conflicts: int = 0
    roots: dict[str, str] = field(default_factory=dict)
    lost_hashes: list[str] = field(default_factory=list)
    commits: int = 0
    """Commit-reveal models: commitments accepted, and those never revealed (window missed)."""
    unrevealed: int = 0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 1),
            "submitted": self.submitted,
            "accepted": self.accepted,
            "accepted_per_s": round(self.accepted / self.seconds, 1),
            "refused": self.refused,
            "finalized": self.finalized,
            "finalized_per_s": round(self.finalized / self.seconds, 1),
            "aggregated": self.aggregated,
            "failed_in_block": self.failed_in_block,
            "fates": self.fates,
            "lost": self.lost,
            "p50_s": round(self.percentile(50), 3),
            "p99_s": round(self.percentile(99), 3),
            "rounds_closed": self.rounds_closed,
            "finalized_reverted": self.reverted,
            "finality_conflicts": self.conflicts,
            "same_weights_root": len(set(self.roots.values())) <= 1,
            **({"commits": self.commits, "unrevealed": self.unrevealed} if self.commits else {}),
        }


class FleetLoad:
    """Run ``LoadConfig`` against a running network; ``run()`` returns the checked report."""

    def __init__(self, config: LoadConfig, *, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.submitted: dict[str, Submitted] = {}
        self.report = LoadReport(config.seconds)
        self.versions_seen: set[int] = set()
        self.heads: list[list[tuple[int, str]]] = [[] for _ in config.urls]
        self.final_at: dict[int, float] = {}
        """When node 0 was first seen to have finalized each height."""
        """Per node, every (finalized number, hash) observed, in order."""
        self.errors: list[str] = []

    # --- devices -------------------------------------------------------------------------

    def _devices_of(self, node: int) -> list[int]:
        n = len(self.config.urls)
        return [i for i in range(len(self.config.devices)) if i % n == node]

    def _delta(self, rng: np.random.Generator, model: dict[str, Any]) -> SubmitDelta:
        return random_delta(rng, model, self.config.top_p)

    def _commit_reveal(
        self,
        node: int,
        rpc: Rpc,
        rng: np.random.Generator,
        model: dict[str, Any],
        mine: list[int],
        nonces: dict[int, int],
        done_for: dict[int, int],
        held: dict[int, tuple[int, SubmitDelta]],
    ) -> None:
        """One step on a commit-reveal model: in the commit window commit a salted delta for
        every device without one; from the reveal window reveal those the chain holds."""
        cfg = self.config
        version, progress = int(model["version"]), model["round"]
        number = int(rpc.call("chain_getHeader")["number"]) + 1
        if number <= int(progress["commitUntil"]):
            todo = [i for i in mine if done_for.get(i, -1) < version and i not in held]
            for start in range(0, len(todo), BATCH):
                chunk = todo[start : start + BATCH]
                salted = [
                    dataclasses.replace(self._delta(rng, model), salt=rng.bytes(SALT_BYTES))
                    for _ in chunk
                ]
                txs = [
                    self._signed(
                        i,
                        nonces,
                        "commit_delta",
                        CommitDelta(
                            cfg.model,
                            version,
                            delta_commitment(d.delta_args(), d.salt or b"", cfg.devices[i].address),
                        ).to_args(),
                    )
                    for i, d in zip(chunk, salted, strict=True)
                ]
                replies = rpc.batch(
                    [("author_submitExtrinsic", ["0x" + tx.encode().hex()]) for tx in txs]
                )
                with self.lock:
                    for i, d, (ok, result) in zip(chunk, salted, replies, strict=True):
                        if ok:
                            self.report.commits += 1
                            nonces[i] += 1
                            held[i] = (version, d)
                        else:
                            key = "commit: " + str(result)[:72]
                            self.report.refused[key] = self.report.refused.get(key, 0) + 1
                            nonces[i] = int(
                                rpc.call(
                                    "system_accountNextIndex",
                                    address_to_str(cfg.devices[i].address),
                                )
                            )
            return
        if number < int(progress["revealFrom"]):
            return
        committed = set(progress.get("commits", []))
        ready = []
        for i, (v, _) in list(held.items()):
            if v == version and address_to_str(cfg.devices[i].address) in committed:
                ready.append(i)
            else:  # the commitment missed its window (or its round): the delta is never sent
                del held[i]
                with self.lock:
                    self.report.unrevealed += 1
        for start in range(0, len(ready), BATCH):
            chunk = ready[start : start + BATCH]
            txs = [
                self._signed(
                    i,
                    nonces,
                    "submit_delta",
                    held.pop(i)[1].to_args(),
                )
                for i in chunk
            ]
            at = time.monotonic()
            replies = rpc.batch(
                [("author_submitExtrinsic", ["0x" + tx.encode().hex()]) for tx in txs]
            )
            self._record(node, version, chunk, txs, replies, at, nonces, done_for, rpc)

    def _signed(
        self, i: int, nonces: dict[int, int], function: str, args: dict[str, Any]
    ) -> SignedTransaction:
        """Device ``i``'s next model_state call, signed for the chain the load trusts."""
        cfg = self.config
        return sign_transaction(
            cfg.devices[i], cfg.genesis, nonces[i], "model_state", function, args
        )

    def _submitter(self, node: int) -> None:
        """Devices assigned to ``node`` submit one delta per model version through it (on a
        commit-reveal model: commit in the commit window, reveal in the reveal window)."""
        cfg = self.config
        rpc = Rpc(cfg.urls[node])
        rng = np.random.default_rng(cfg.seed * 1000 + node)
        mine = self._devices_of(node)
        nonces = {
            i: int(rpc.call("system_accountNextIndex", address_to_str(cfg.devices[i].address)))
            for i in mine
        }
        done_for: dict[int, int] = {}  # device -> version it has a delta accepted for
        held: dict[int, tuple[int, SubmitDelta]] = {}  # committed, not yet revealed
        try:
            while not self.stop.is_set():
                try:
                    model = rpc.call("model_get", cfg.model)
                except NetworkError:  # the node is down (a fault on purpose): its devices wait
                    self.stop.wait(1.0)
                    continue
                version = int(model["version"])
                with self.lock:
                    self.versions_seen.add(version)
                if model.get("commitReveal"):
                    self._commit_reveal(node, rpc, rng, model, mine, nonces, done_for, held)
                    self.stop.wait(cfg.poll_s)
                    continue
                try:
                    for i in [i for i in mine if nonces[i] < 0]:
                        address = address_to_str(cfg.devices[i].address)
                        nonces[i] = int(rpc.call("system_accountNextIndex", address))
                except NetworkError:
                    continue
                todo = [i for i in mine if done_for.get(i, -1) < version]
                for start in range(0, len(todo), BATCH):
                    if self.stop.is_set():
                        break
                    chunk = todo[start : start + BATCH]
                    txs = [
                        self._signed(
                            i,
                            nonces,
                            "submit_delta",
                            self._delta(rng, model).to_args(),
                        )
                        for i in chunk
                    ]
                    at = time.monotonic()
                    try:
                        replies = rpc.batch(
                            [("author_submitExtrinsic", ["0x" + tx.encode().hex()]) for tx in txs]
                        )
                    except NetworkError:  # no answer: not accepted as far as devices know
                        for i in chunk:
                            nonces[i] = -1  # re-read once the node answers again
                        break
                    self._record(node, version, chunk, txs, replies, at, nonces, done_for, rpc)
                self.stop.wait(cfg.poll_s)
        except DeltachainError as exc:
            self.errors.append(f"node {node}: {exc}")
        finally:
            rpc.close()

    def _record(
        self,
        node: int,
        version: int,
        chunk: list[int],
        txs: list[SignedTransaction],
        replies: list[tuple[bool, Any]],
        at: float,
        nonces: dict[int, int],
        done_for: dict[int, int],
        rpc: Rpc,
    ) -> None:
        with self.lock:
            for i, tx, (ok, result) in zip(chunk, txs, replies, strict=True):
                self.report.submitted += 1
                if ok or "is already in the pool" in str(result):  # a retried batch: pooled
                    tx_hash = "0x" + tx.hash.hex()
                    self.report.accepted += 1
                    self.submitted[tx_hash] = Submitted(tx_hash, i, node, version, at)
                    nonces[i] += 1
                    done_for[i] = version
                    continue
                reason = next((r for r in ROUND_REFUSALS if r in result), None)
                key = reason or str(result)[:80]
                self.report.refused[key] = self.report.refused.get(key, 0) + 1
                if reason is None:  # anything but a round refusal: re-read the nonce
                    nonces[i] = int(rpc.call("system_accountNextIndex", address_to_str(tx.sender)))
                else:  # full, already in, or stale: the device tries again at the next version
                    done_for[i] = version

    # --- observers -----------------------------------------------------------------------

    def _observer(self) -> None:
        """Every node's finalized head, polled (cheap calls); node 0's record when each
        height was first seen final, which is when its transactions count as finalized."""
        rpcs = [Rpc(url) for url in self.config.urls]
        last_number = self._finalized_number(rpcs[0])
        try:
            while not self.stop.is_set() or not self._drained():
                for node, rpc in enumerate(rpcs):
                    try:
                        head = rpc.call("chain_getFinalizedHead")
                        number = int(rpc.call("chain_getHeader", head)["number"])
                    except DeltachainError:
                        continue  # a node may be down (faults are injected on purpose)
                    self.heads[node].append((number, head))
                    if node == 0 and number > last_number:
                        now = time.monotonic()
                        with self.lock:
                            for n in range(last_number + 1, number + 1):
                                self.final_at[n] = now
                        last_number = number
                time.sleep(self.config.poll_s)
        finally:
            for rpc in rpcs:
                rpc.close()

    def _reader(self) -> None:
        """Read the finalized blocks' bodies, behind the head poll (a node serves block reads
        after consensus work, in a capped share): their transactions are timed by when their
        height was first seen final, not by when the body was read."""
        rpcs = [Rpc(url) for url in self.config.urls]
        read = self._finalized_number(rpcs[0])
        try:
            while not self.stop.is_set() or not self._drained():
                with self.lock:
                    ready = [n for n in range(read + 1, read + 64) if n in self.final_at]
                if not ready:
                    time.sleep(self.config.poll_s)
                    continue
                for number in ready:
                    block = self._final_block(rpcs, number)
                    if block is None:  # node 0 did not answer: try again next turn
                        break
                    self._note_final(block["block"]["extrinsics"], self.final_at[number])
                    read = number
        finally:
            for rpc in rpcs:
                rpc.close()

    @staticmethod
    def _final_block(rpcs: list[Rpc], number: int) -> Any:
        """Node 0's finalized block at ``number``, by hash (a lagging or restarted node may
        hold another block at that height, or none), read from any node that has it."""
        try:
            block_hash = rpcs[0].call("chain_getBlockHash", number)
        except DeltachainError:
            return None
        for rpc in (rpcs[number % len(rpcs)], rpcs[0]):
            try:
                block = rpc.call("chain_getBlock", block_hash)
            except DeltachainError:
                continue
            if block is not None and block["block"]["header"]["hash"] == block_hash:
                return block
        return None

    @staticmethod
    def _finalized_number(rpc: Rpc) -> int:
        return int(rpc.call("chain_getHeader", rpc.call("chain_getFinalizedHead"))["number"])

    def _drained(self) -> bool:
        if time.monotonic() > self.drain_deadline:
            return True
        with self.lock:
            return all(s.finalized_at is not None for s in self.submitted.values())

    def _note_final(self, extrinsics: list[str], at: float) -> None:
        for raw in extrinsics:
            tx_hash = "0x" + SignedTransaction.decode(bytes.fromhex(raw[2:])).hash.hex()
            with self.lock:
                found = self.submitted.get(tx_hash)
                if found is not None and found.finalized_at is None:
                    found.finalized_at = at

    # --- run -----------------------------------------------------------------------------

    def run(self) -> LoadReport:
        cfg = self.config
        self.drain_deadline = float("inf")
        threads = [
            threading.Thread(target=self._submitter, args=(n,), daemon=True, name=f"node-{n}")
            for n in range(len(cfg.urls))
        ]
        observer = threading.Thread(target=self._observer, daemon=True, name="observer")
        reader = threading.Thread(target=self._reader, daemon=True, name="reader")
        observer.start()
        reader.start()
        started = time.monotonic()
        for thread in threads:
            thread.start()
        while time.monotonic() - started < cfg.seconds and not self.stop.is_set():
            time.sleep(min(1.0, cfg.seconds))
            with self.lock:
                done = sum(1 for s in self.submitted.values() if s.finalized_at is not None)
                self.say(
                    f"  {time.monotonic() - started:5.1f} s  accepted {self.report.accepted}  "
                    f"finalized {done}  refused {sum(self.report.refused.values())}"
                )
        self.report.seconds = time.monotonic() - started
        self.drain_deadline = time.monotonic() + cfg.drain_s
        self.stop.set()
        for thread in threads:
            thread.join(timeout=30)
        observer.join(timeout=cfg.drain_s + 30)
        reader.join(timeout=30)
        self._check()
        return self.report

    def _check(self) -> None:
        cfg, report = self.config, self.report
        rpcs = [Rpc(url) for url in cfg.urls]
        try:
            finalized = [s for s in self.submitted.values() if s.finalized_at is not None]
            report.finalized = len(finalized)
            report.latencies = [s.finalized_at - s.at for s in finalized if s.finalized_at]
            # Which accepted deltas a round aggregated (provenance) or a block failed.
            rpc0 = rpcs[0]
            head = rpc0.call("chain_getFinalizedHead")
            model = rpc0.call("model_get", cfg.model, head)
            top = int(model["version"])
            first = min(self.versions_seen, default=top)
            aggregated: set[str] = set()
            for version in range(first + 1, top + 1):
                record = rpc0.call("model_getProvenance", cfg.model, version, head)
                aggregated.update(str(d["tx"]) for d in record["deltas"])
            report.rounds_closed = top - first
            report.aggregated = sum(1 for s in finalized if s.tx_hash in aggregated)
            for s in finalized:
                if s.tx_hash in aggregated:
                    continue
                status = rpcs[s.node].call("author_extrinsicStatus", s.tx_hash)
                failed = status.get("failed", {}).get("error", "in a later round")
                report.failed_in_block[failed] = report.failed_in_block.get(failed, 0) + 1
            for s in self.submitted.values():
                if s.finalized_at is not None:
                    continue
                status = rpcs[s.node].call("author_extrinsicStatus", s.tx_hash)
                fate = str(status.get("status"))
                if fate in ("dropped", "invalid"):
                    key = f"{fate}: {status.get('reason', '')}"[:80]
                    report.fates[key] = report.fates.get(key, 0) + 1
                else:
                    report.lost += 1
                    report.lost_hashes.append(f"{s.tx_hash} ({fate} on node {s.node})")
            self._check_finality(rpcs, head, int(rpc0.call("chain_getHeader", head)["number"]))
        finally:
            for rpc in rpcs:
                rpc.close()

    def _check_finality(self, rpcs: list[Rpc], head: str, number: int) -> None:
        """No node's finality went backwards; no two nodes finalized different blocks at one
        height; every node has node 0's finalized block and the same weights root there."""
        report = self.report
        by_height: dict[int, set[str]] = {}
        for observed in self.heads:
            last = -1
            for n, block_hash in observed:
                if n < last:
                    report.reverted += 1
                last = max(last, n)
                by_height.setdefault(n, set()).add(block_hash)
        report.conflicts = sum(1 for hashes in by_height.values() if len(hashes) > 1)
        deadline = time.monotonic() + 30
        for node, rpc in enumerate(rpcs):
            while time.monotonic() < deadline:
                try:
                    mine = rpc.call("chain_getBlockHash", number)
                    fin = int(rpc.call("chain_getHeader", rpc.call("chain_getFinalizedHead"))[
                        "number"])  # fmt: skip
                except DeltachainError:
                    mine, fin = None, -1
                if mine is not None and fin >= number:
                    if mine != head:
                        report.conflicts += 1
                    report.roots[f"node {node}"] = str(
                        rpc.call("model_get", self.config.model, head)["weightsRoot"]
                    )
                    break
                time.sleep(0.2)
            else:
                report.roots[f"node {node}"] = "unreachable"


def describe(summary: dict[str, Any]) -> str:
    """The report as aligned lines for a person."""
    width = max(len(k) for k in summary)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in summary.items())
