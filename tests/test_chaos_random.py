"""A short randomized chaos pass (benchmarks/bench_chaos.py --random) in every test run.

Four perturbations drawn with a fresh seed each run (kills, pauses, restarts of two or all at a
random moment in a slot, a wiped database, and -- as root, in network namespaces -- partitions
and a skewed clock) under a light load of remarks. Every check of the runner must hold: resume
within 120 slots, agreement, monotonic finality, no double or surround vote, every accepted
remark finalized. A failure prints the seed: ``bench_chaos.py --random 4 --seed S`` replays it.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import netns
from bench_chaos import Chaos
from deltachain.node import testnet as tn

pytestmark = pytest.mark.slow

PERTURBATIONS = 4
RESUME_SLOTS = 120
"""60 s at 500 ms slots: generous, for a machine shared with other test runs."""


@pytest.mark.timeout(900)  # ≈ 1–2 min idle; each resume wait is bounded (120 s)
def test_random_perturbations_keep_finality_safe_and_live(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    use_netns = netns.unavailable() is None
    tn.warm_kernels()
    chaos = Chaos(tmp_path / "net", 500, random.Random(seed), use_netns=use_netns)
    try:
        chaos.run_random(PERTURBATIONS)
    finally:
        chaos.net.close()
    result = chaos.check(RESUME_SLOTS)
    replay = f"seed {seed} (bench_chaos.py --random {PERTURBATIONS} --seed {seed})"
    assert len(result["steps"]) >= PERTURBATIONS, replay
    assert result["votes_seen"] > 0, replay
    assert result["remarks_submitted"] > 0, replay
    assert result["ok"], f"{replay}:\n{json.dumps(result, indent=1)}"
    if isinstance(chaos.net, netns.NsNet):  # every namespace we made is gone
        listed = netns.ip("netns", "list").stdout
        assert not any(ns in listed for ns in chaos.net.fabric.namespaces)
