"""The network serves a fleet: deltas submitted through every node of a 4-validator loopback
testnet reach a finalized block or a stated fate, rounds refuse what they cannot take, and the
result is the same on every node.

One network (benchmarks/fleet_net.py, also what bench_fleet.py runs) serves the module; every
process is stopped at the end, whatever happens.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltachain.client.load import FleetLoad, LoadConfig, random_delta
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.primitives.chainspec import load_chain_spec
from deltachain.primitives.transaction import SignedTransaction, sign_transaction

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fleet_net import FleetNet, rpc

pytestmark = pytest.mark.slow

LOAD_DEVICES = 300
SPARE = 12
"""Devices LOAD_DEVICES.. serve the single-delta tests (their nonces are their own)."""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetNet]:
    network = FleetNet(
        tmp_path_factory.mktemp("fleet") / "net",
        slot_ms=1000,
        devices=LOAD_DEVICES + SPARE,
        model={"maxDeltas": LOAD_DEVICES, "minDeltas": 30, "roundLen": 2},
        extra_models=[
            {"id": "overflow", "minDeltas": 3, "maxDeltas": 4, "roundLen": 100_000},
            {"id": "underflow", "minDeltas": 5, "maxDeltas": 10, "roundLen": 1},
        ],
    )
    try:
        network.start_all()
        network.wait_finalized(2, timeout=180)
        yield network
    finally:
        network.close()


def sign_delta(net: FleetNet, device: int, model: str, node: int) -> SignedTransaction:
    key = net.devices[device]
    answer = rpc(net.urls[node], "model_get", model)
    nonce = rpc(net.urls[node], "system_accountNextIndex", address_to_str(key.address))
    delta = random_delta(np.random.default_rng(device), answer, 0.1)
    return sign_transaction(key, net.genesis, nonce, "model_state", "submit_delta", delta.to_args())


def submit(net: FleetNet, node: int, tx: SignedTransaction) -> Any:
    return rpc(net.urls[node], "author_submitExtrinsic", "0x" + tx.encode().hex())


def wait_status(net: FleetNet, node: int, tx: SignedTransaction, want: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        status = rpc(net.urls[node], "author_extrinsicStatus", "0x" + tx.hash.hex())
        if status["status"] == want:
            return status
        assert time.monotonic() < deadline, f"{status} after {timeout} s (wanted {want})"
        time.sleep(0.2)


def test_a_delta_submitted_to_a_non_authoring_node_is_finalized_by_another(net: FleetNet) -> None:
    """Gossip: the delta is in the next author's pool, so a block authored by another
    validator includes it (before, it waited for its own node's slot)."""
    spec = load_chain_spec(net.spec_path)
    head = rpc(net.urls[0], "chain_getHeader")
    next_slot = int(head["slot"]) + 1
    # the node whose turn is furthest away: the next two authors are others
    node = (next_slot + 2) % net.n
    tx = sign_delta(net, LOAD_DEVICES, "sine-mlp", node)
    submit(net, node, tx)
    status = wait_status(net, node, tx, "finalized", timeout=60)
    header = rpc(net.urls[node], "chain_getHeader", status["blockHash"])
    assert header["author"] != address_to_str(spec.authorities[node])
    assert "failed" not in status
    for other in range(net.n):  # every node knows where it went
        assert (
            rpc(net.urls[other], "author_extrinsicStatus", "0x" + tx.hash.hex())["block"]
            == (status["block"])
        )


def test_300_devices_through_all_four_nodes_lose_nothing(net: FleetNet) -> None:
    load = FleetLoad(
        LoadConfig(
            urls=net.urls,
            genesis=net.genesis,
            model=net.model_id,
            devices=net.devices[:LOAD_DEVICES],
            seconds=25.0,
            drain_s=90.0,
        ),
        say=lambda line: print(line, flush=True),
    )
    report = load.run()
    summary = report.summary()
    print(summary)
    assert not load.errors, load.errors
    assert report.accepted >= LOAD_DEVICES  # at least one full round's worth went in
    assert report.lost == 0, report.lost_hashes[:5]
    assert report.reverted == 0
    assert report.conflicts == 0
    assert report.rounds_closed >= 2
    assert summary["same_weights_root"], report.roots
    assert len(report.roots) == net.n
    # every accepted delta was aggregated, failed in its block with a reason, or has a fate
    assert report.finalized + sum(report.fates.values()) == report.accepted


def test_a_round_takes_max_deltas_and_refuses_the_rest_with_the_reason(net: FleetNet) -> None:
    devices = range(LOAD_DEVICES, LOAD_DEVICES + 7)
    txs = [sign_delta(net, d, "overflow", d % net.n) for d in devices]
    accepted: list[SignedTransaction] = []
    refused: list[str] = []
    for d, tx in zip(devices, txs, strict=True):
        try:
            submit(net, d % net.n, tx)
            accepted.append(tx)
        except RuntimeError as exc:
            refused.append(str(exc))
    assert len(accepted) >= 4
    assert all("is full" in reason for reason in refused), refused
    outcomes = [
        wait_status(net, d % net.n, tx, "finalized", timeout=60)
        for d, tx in zip(devices, txs, strict=True)
        if tx in accepted
    ]
    failed = [o["failed"] for o in outcomes if "failed" in o]
    assert len(outcomes) - len(failed) == 4  # exactly maxDeltas were aggregated ...
    assert all(f["error"] == "RoundFull" for f in failed)  # ... the rest say why
    finalized = rpc(net.urls[0], "chain_getFinalizedHead")
    record = rpc(net.urls[0], "model_getProvenance", "overflow", 1, finalized)
    assert record["n"] == 4
    # no device's nonce is stranded: each accepted one moved its sender's nonce on
    for tx in accepted:
        assert rpc(net.urls[0], "system_accountNextIndex", address_to_str(tx.sender)) == (
            tx.nonce + 1
        )


def test_a_round_short_of_min_deltas_says_what_it_needs(net: FleetNet) -> None:
    devices = [LOAD_DEVICES + 8, LOAD_DEVICES + 9]
    for d in devices:
        submit(net, d % net.n, sign_delta(net, d, "underflow", d % net.n))
    deadline = time.monotonic() + 30
    while (progress := rpc(net.urls[1], "model_get", "underflow")["round"])["count"] < 2:
        assert time.monotonic() < deadline, progress
        time.sleep(0.2)
    assert progress["needs"] == 3
    assert (progress["minDeltas"], progress["maxDeltas"]) == (5, 10)
    assert progress["blocksLeft"] == 0  # the round may close any block now, given deltas
    # A fleet smaller than minDeltas is refused before it starts, in one line.
    run = subprocess.run(
        [
            sys.executable, "-m", "deltachain.node.cli", "client", "run", "--rpc", net.urls[2],
            "--model", "underflow", "--devices", "3", "--rounds", "1",
            "--chain", str(net.spec_path),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode != 0
    err = run.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "minDeltas = 5" in err
    assert "--devices 5" in err
    assert "Traceback" not in run.stdout + run.stderr


def test_pool_refuses_a_senders_future_nonce_spam(net: FleetNet) -> None:
    """One sender's nonce gaps must not fill the shared future queue."""
    key: Keypair = net.devices[LOAD_DEVICES + 10]
    nonce = rpc(net.urls[3], "system_accountNextIndex", address_to_str(key.address))
    refused = []
    for gap in range(1, 40):
        tx = sign_transaction(key, net.genesis, nonce + gap, "system", "remark", {"data": b"x"})
        try:
            submit(net, 3, tx)
        except RuntimeError as exc:
            refused.append(str(exc))
    assert refused, "every future-nonce transaction was admitted"
    assert "waiting behind a nonce gap" in refused[0]
    assert len(refused) == 39 - 16  # per_sender_future
