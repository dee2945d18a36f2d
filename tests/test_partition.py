"""Real partitions: four validators in their own network namespaces (benchmarks/netns.py).

A 2–2 cut leaves no side with more than 2/3 of the authorities, so finality must stop on both
sides, and must resume once the cut heals, with every node agreeing on every finalized height.
A 3–1 cut leaves three of four (> 2/3) together: they must keep finalizing, and the fourth must
catch up after the heal. A validator whose clock runs 2 s ahead (libfaketime) must not stop
finality or make anyone break a voting rule. Skips without root, ``ip`` or namespaces.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import netns
from bench_network import Rpc

pytestmark = pytest.mark.slow

SLOT_MS = 500
START_S = 180.0
RESUME_S = 90.0
"""After a heal, TCP retransmission backoff alone can take ~15 s before a packet gets through."""

_reason = netns.unavailable()
if _reason is not None:
    pytest.skip(_reason, allow_module_level=True)


class Cluster:
    def __init__(self, net: netns.NsNet) -> None:
        self.net = net
        self.rpcs = [Rpc(port, host) for host, port in net.rpc_addrs]

    def finalized(self, i: int) -> int:
        try:
            head = self.rpcs[i].call("chain_getFinalizedHead")
            return int(self.rpcs[i].call("chain_getHeader", head)["number"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1

    def all_finalized(self) -> list[int]:
        return [self.finalized(i) for i in range(self.net.n)]

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            for i, proc in enumerate(self.net.procs):
                if proc is not None and proc.poll() is not None:
                    raise AssertionError(f"node {i} exited:\n{self.net.log(i).read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out ({timeout:.0f} s) waiting for {what}: "
                                     f"finalized {self.all_finalized()}")  # fmt: skip
            time.sleep(0.2)

    def hashes(self, i: int, upto: int) -> list[str]:
        return [str(self.rpcs[i].call("chain_getBlockHash", n)) for n in range(upto + 1)]

    def assert_agreement(self) -> None:
        """Every node gives the same block at every height all of them finalized, and no node
        logged a vote that broke a voting rule."""
        upto = min(self.all_finalized())
        assert upto > 0
        chains = [self.hashes(i, upto) for i in range(self.net.n)]
        assert all(c == chains[0] for c in chains), "nodes finalized different blocks"
        for i in range(self.net.n):
            assert "broke a voting rule" not in self.net.log(i).read_text(errors="replace")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    net = netns.NsNet(tmp_path_factory.mktemp("netns") / "net", SLOT_MS)
    try:
        for i in range(net.n):
            net.start(i)
        c = Cluster(net)
        c.wait(lambda: min(c.all_finalized()) >= 3, START_S, "first finality")
        yield c
    finally:
        net.close()
    assert not any(ns in netns.ip("netns", "list").stdout for ns in net.fabric.namespaces)


def test_two_two_partition_halts_finality_and_heal_resumes_it(cluster: Cluster) -> None:
    net = cluster.net
    net.fabric.partition([0, 1], [2, 3])
    try:
        time.sleep(6 * SLOT_MS / 1000)  # votes already in flight land
        halted = cluster.all_finalized()
        # 10 slots in which each side authors but neither has > 2/3 of the votes
        time.sleep(10 * SLOT_MS / 1000)
        assert cluster.all_finalized() == halted, "finality moved without > 2/3 together"
    finally:
        net.fabric.heal()
    stood = max(halted)
    cluster.wait(
        lambda: min(cluster.all_finalized()) >= stood + 3, RESUME_S, "finality after the heal"
    )
    cluster.assert_agreement()


def test_three_one_cut_keeps_finalizing(cluster: Cluster) -> None:
    net = cluster.net
    stood = max(cluster.all_finalized())
    net.fabric.partition([0, 1, 2], [3])
    try:
        cluster.wait(
            lambda: min(cluster.finalized(i) for i in range(3)) >= stood + 4,
            RESUME_S,
            "the three to finalize across the cut",
        )
        assert cluster.finalized(3) <= stood + 1
    finally:
        net.fabric.heal()
    top = max(cluster.all_finalized())
    cluster.wait(lambda: cluster.finalized(3) >= top, RESUME_S, "the cut-off node to catch up")
    cluster.assert_agreement()


def test_a_validator_with_a_skewed_clock_does_not_stop_finality(cluster: Cluster) -> None:
    if netns.ensure_faketime() is None:
        pytest.skip("libfaketime unavailable (Debian package faketime could not be installed)")
    net = cluster.net
    proc = net.procs[1]
    assert proc is not None
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    net.env[1] = netns.skew_env(2.0)
    try:
        net.start(1)
        stood = max(cluster.all_finalized())
        cluster.wait(
            lambda: min(cluster.all_finalized()) >= stood + 6,
            RESUME_S,
            "finality with one clock 2 s ahead",
        )
    finally:
        net.env[1] = {}
    cluster.assert_agreement()
