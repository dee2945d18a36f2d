"""Readers do not starve the author (issue 12): a validator flooded with heavy reads
(model_getWeights, state_getReadProof, chain_getBlock; 8 clients) still authors every slot and
keeps finalizing. One validator, so the whole test (start included) fits in about a minute;
benchmarks/bench_read_flood.py runs the same measurement on 4 validators."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_read_flood import measure

pytestmark = pytest.mark.slow


def test_read_flood_misses_no_slot_and_finality_advances(tmp_path: Path) -> None:
    base, flood = measure(
        tmp_path / "net", validators=1, slot_ms=1000, baseline_s=5, flood_s=20, clients=8
    )
    assert flood.reads > 200, flood  # the flood really ran
    assert flood.read_errors == 0, flood
    assert base.missed == 0, base
    assert flood.missed == 0, flood
    # finality keeps pace with the chain: the finalized head moved with (almost) every slot
    assert flood.finalized_advanced >= flood.slots - 2, flood
    assert flood.lag_max <= max(base.lag_max, 2) + 1, (base, flood)
