"""Do readers starve the author? (issue 12)

Starts a loopback validator net (``fleet_net.FleetNet``: one process per validator, 1000 ms
slots by default), measures a quiet baseline, then floods every validator with heavy reads
(``--clients`` threads per node, each looping ``model_getWeights``, ``state_getReadProof`` over
the model's chunks and ``chain_getBlock`` of the best block over one keep-alive connection) and
reports, for each phase:

- slots missed: slots in the phase without a block on the finalized (canonical) chain;
- finality lag: best − finalized block number at node 0, sampled every 250 ms (p50, p99, max);
- reads served (calls and MB a second).

Target: 0 slots missed and finality lag unchanged during the flood.

    python benchmarks/bench_read_flood.py                     # 4 validators, 30 s + 45 s
    python benchmarks/bench_read_flood.py --baseline 20 --flood 30 --clients 8 --json out.json

``measure()`` is what tests/test_read_flood.py calls with a small net and short phases.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deltachain.model_state.module import key_chunk, key_model
from fleet_net import FleetNet, rpc


@dataclass(frozen=True)
class Phase:
    name: str
    seconds: float
    slots: int
    """Slots that began and ended inside the phase."""
    missed: int
    """Of those, slots without a block on the finalized chain."""
    lag_p50: float
    lag_p99: float
    lag_max: int
    finalized_advanced: int
    """How far node 0's finalized head moved during the phase."""
    reads: int
    read_mb: float
    read_errors: int
    read_ms_p50: float
    read_ms_p99: float


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))])


class Reader(threading.Thread):
    """One flooding client: a keep-alive HTTP connection looping three heavy reads."""

    def __init__(self, port: int, model: str, chunks: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = stop
        self.calls = 0
        self.bytes = 0
        self.errors = 0
        self.latencies_ms: list[int] = []
        keys = [key_model(model).hex()] + [key_chunk(model, i).hex() for i in range(chunks)]
        self.requests = [
            ("model_getWeights", [model]),
            ("state_getReadProof", [["0x" + k for k in keys[:64]]]),
            ("chain_getBlock", []),
        ]

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        i = 0
        while not self.stop.is_set():
            method, params = self.requests[i % len(self.requests)]
            i += 1
            body = json.dumps({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                started = time.perf_counter()
                conn.request("POST", "/", body, {"Content-Type": "application/json"})
                reply = conn.getresponse().read()
                self.latencies_ms.append(round((time.perf_counter() - started) * 1000))
                self.calls += 1
                self.bytes += len(reply)
                if b'"error"' in reply[:200]:
                    self.errors += 1
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                self.stop.wait(0.05)
        if conn is not None:
            conn.close()


class LagSampler(threading.Thread):
    """best − finalized at one node, every ``period`` seconds, stamped with the local time."""

    def __init__(self, url: str, stop: threading.Event, period: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = stop
        self.period = period
        self.samples: list[tuple[float, int, int]] = []

    def run(self) -> None:
        while not self.stop.wait(self.period):
            try:
                best = int(rpc(self.url, "chain_getHeader")["number"])
                fin_hash = rpc(self.url, "chain_getFinalizedHead")
                fin = int(rpc(self.url, "chain_getHeader", fin_hash)["number"])
            except (OSError, RuntimeError):
                continue
            self.samples.append((time.time(), best, fin))


def finalized_slots(url: str) -> list[int]:
    """The slots of the finalized chain's blocks, genesis excluded, oldest first."""
    head = rpc(url, "chain_getFinalizedHead")
    number = int(rpc(url, "chain_getHeader", head)["number"])
    slots = []
    for n in range(1, number + 1):
        slots.append(int(rpc(url, "chain_getHeader", rpc(url, "chain_getBlockHash", n))["slot"]))
    return slots


def _phase(
    name: str,
    window: tuple[float, float],
    slot_ms: int,
    slots_with_block: set[int],
    samples: list[tuple[float, int, int]],
    readers: list[Reader],
) -> Phase:
    start, end = window
    first = int(start * 1000) // slot_ms + 1  # the first slot that begins inside the phase
    last = int(end * 1000) // slot_ms - 1  # the last slot that ends inside it
    slots = range(first, last + 1)
    inside = [s for s in samples if start <= s[0] <= end]
    lags = [best - fin for _, best, fin in inside]
    latencies = [ms for r in readers for ms in r.latencies_ms]
    return Phase(
        name=name,
        seconds=round(end - start, 1),
        slots=len(slots),
        missed=sum(1 for s in slots if s not in slots_with_block),
        lag_p50=_percentile(lags, 0.50),
        lag_p99=_percentile(lags, 0.99),
        lag_max=max(lags, default=-1),
        finalized_advanced=(inside[-1][2] - inside[0][2]) if len(inside) > 1 else 0,
        reads=sum(r.calls for r in readers),
        read_mb=round(sum(r.bytes for r in readers) / 1e6, 1),
        read_errors=sum(r.errors for r in readers),
        read_ms_p50=_percentile(latencies, 0.50),
        read_ms_p99=_percentile(latencies, 0.99),
    )


def measure(
    directory: Path,
    *,
    validators: int = 4,
    slot_ms: int = 1000,
    baseline_s: float = 30.0,
    flood_s: float = 45.0,
    clients: int = 8,
    params: int | None = None,
) -> tuple[Phase, Phase]:
    """Start the net, wait for finality, run the quiet then the flooded phase; stop it all.
    ``params``: replace the dev model by one global layer of that many weights (heavier reads)."""
    model: dict[str, Any] | None = None
    if params is not None:
        model = {"layers": [{"name": "w", "shape": [params]}], "init": {"kind": "zeros"}}
    net = FleetNet(directory, validators=validators, slot_ms=slot_ms, devices=4, model=model)
    stop_sampler = threading.Event()
    stop_readers = threading.Event()
    readers: list[Reader] = []
    try:
        net.start_all()
        net.wait_finalized(3, timeout=240)
        chunks = int(rpc(net.urls[0], "model_get", net.model_id)["chunkCount"])
        sampler = LagSampler(net.urls[0], stop_sampler)
        sampler.start()
        base_start = time.time()
        time.sleep(baseline_s)
        base_end = time.time()
        readers = [
            Reader(net.rpc_base + i, net.model_id, chunks, stop_readers)
            for i in range(validators)
            for _ in range(clients)
        ]
        for reader in readers:
            reader.start()
        flood_start = time.time()
        time.sleep(flood_s)
        flood_end = time.time()
        stop_readers.set()
        for reader in readers:
            reader.join(timeout=15)
        stop_sampler.set()
        sampler.join(timeout=10)
        # Let finality catch up over the flood's last slots, then read the canonical chain.
        best = int(rpc(net.urls[0], "chain_getHeader")["number"])
        net.wait_finalized(best, timeout=60)
        with_block = set(finalized_slots(net.urls[0]))
        base = _phase("baseline", (base_start, base_end), slot_ms, with_block, sampler.samples, [])
        flood = _phase(
            "flood", (flood_start, flood_end), slot_ms, with_block, sampler.samples, readers
        )
        return base, flood
    finally:
        stop_readers.set()
        stop_sampler.set()
        net.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--slot-ms", type=int, default=1000)
    parser.add_argument("--baseline", type=float, default=30.0, help="quiet seconds")
    parser.add_argument("--flood", type=float, default=45.0, help="flooded seconds")
    parser.add_argument("--clients", type=int, default=8, help="reading clients per validator")
    parser.add_argument(
        "--params", type=int, help="model size (one global layer); default: the dev model"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-read-flood-") as tmp:
        base, flood = measure(
            Path(tmp),
            validators=args.validators,
            slot_ms=args.slot_ms,
            baseline_s=args.baseline,
            flood_s=args.flood,
            clients=args.clients,
            params=args.params,
        )
    print(
        f"{'phase':<9} {'secs':>5} {'slots':>5} {'missed':>6} {'lag p50':>7} {'lag p99':>7} "
        f"{'lag max':>7} {'fin +':>5} {'reads':>6} {'MB':>6} {'errors':>6} "
        f"{'read ms p50':>11} {'p99':>5}"
    )
    for p in (base, flood):
        print(
            f"{p.name:<9} {p.seconds:>5.0f} {p.slots:>5} {p.missed:>6} {p.lag_p50:>7.0f} "
            f"{p.lag_p99:>7.0f} {p.lag_max:>7} {p.finalized_advanced:>5} {p.reads:>6} "
            f"{p.read_mb:>6.1f} {p.read_errors:>6} {p.read_ms_p50:>11.0f} {p.read_ms_p99:>5.0f}"
        )
    if args.json is not None:
        out: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}}
        out.update({p.name: asdict(p) for p in (base, flood)})
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    ok = flood.missed == 0 and flood.lag_p99 <= max(base.lag_p99, 2)
    print("target met" if ok else "TARGET MISSED: slots missed or finality lagged under the flood")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
