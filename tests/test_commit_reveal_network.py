"""Commit-reveal on a 4-validator loopback network (issue 12): devices commit and reveal
through every node, the rounds aggregate the reveals, nothing accepted is lost, and every
node finalizes the same weights root and provenance.

The network is benchmarks/fleet_net.py's (as tests/test_fleet_network.py); every process is
stopped at the end, whatever happens.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltachain.client.load import FleetLoad, LoadConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fleet_net import FleetNet, rpc

pytestmark = pytest.mark.slow

DEVICES = 40


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetNet]:
    network = FleetNet(
        tmp_path_factory.mktemp("commit-reveal") / "net",
        slot_ms=1000,
        devices=DEVICES,
        model={
            "commitReveal": True,
            "roundLen": 6,
            "commitLen": 3,
            "minDeltas": 8,
            "maxDeltas": DEVICES,
        },
    )
    try:
        network.start_all()
        network.wait_finalized(2, timeout=180)
        yield network
    finally:
        network.close()


def test_commit_reveal_fleet_through_four_nodes_agrees_on_the_weights(net: FleetNet) -> None:
    load = FleetLoad(
        LoadConfig(
            urls=net.urls,
            genesis=net.genesis,
            model=net.model_id,
            devices=net.devices,
            seconds=25.0,
            drain_s=60.0,
        ),
        say=lambda line: print(line, flush=True),
    )
    report = load.run()
    summary = report.summary()
    print(summary)
    assert not load.errors, load.errors
    assert report.commits >= DEVICES  # every device committed at least once
    assert report.rounds_closed >= 1
    assert report.aggregated >= 8
    assert report.lost == 0, report.lost_hashes[:5]
    assert report.conflicts == 0
    assert summary["same_weights_root"], report.roots
    assert len(report.roots) == net.n
    # every node tells the same provenance, commitments included
    head = rpc(net.urls[0], "chain_getFinalizedHead")
    provs = [rpc(url, "model_getProvenance", net.model_id, 1, head) for url in net.urls]
    assert all(p == provs[0] for p in provs)
    assert provs[0]["commitReveal"] is True
    assert provs[0]["n"] >= 8
