"""``client run --peer``: the fleet verifies finality and downloads over the p2p light protocol.

One real dev node (a process on loopback, RPC and libp2p) serves the module; the fleet runs as
the console script, verifiers as objects. Every wait is bounded; the node is stopped and every
libp2p client thread is joined.
"""

from __future__ import annotations

import csv
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltachain.client.peer import PeerCaller, connect_peer
from deltachain.client.rpc import JsonRpc
from deltachain.client.verify import LightVerifier, TrustRoot, download_model
from deltachain.crypto.hashing import Hash32
from deltachain.errors import ForeignChain
from deltachain.light.p2p import P2pTransport, PeerOnAnotherChain
from deltachain.light.remote import RemoteError
from deltachain.node.cli import main
from deltachain.primitives.chainspec import load_chain_spec
from node_process import CLI, start_node, stop_node

pytestmark = pytest.mark.slow


class DevNode:
    def __init__(self, rpc: str, peer: str, spec: Path) -> None:
        self.rpc = rpc
        self.peer = peer
        self.spec = spec
        self.root = TrustRoot.from_spec(load_chain_spec(spec), str(spec))


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevNode]:
    node = start_node(
        tmp_path_factory.mktemp("client-p2p"),
        "--port",
        "0",
        "--reserved-only",
        ready=r"finalized #[1-9]",
    )
    try:
        yield DevNode(node.url, node.p2p_addr, node.spec)
    finally:
        stop_node(node)


def client_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("libp2p-client")]


def client_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "client", "run", *args], capture_output=True, text=True, timeout=120
    )


def test_fleet_verifies_finality_and_downloads_over_p2p(dev: DevNode, tmp_path: Path) -> None:
    rows = tmp_path / "rounds.csv"
    done = client_run(
        *("--rpc", dev.rpc, "--chain", str(dev.spec), "--peer", dev.peer, "--task", "sine"),
        *("--devices", "3", "--heldout", "2", "--rounds", "2", "--seed", "1"),
        *("--csv", str(rows)),
    )
    assert done.returncode == 0, done.stderr
    assert "every one verified" in done.stdout, done.stdout
    assert f"justifications over p2p from {dev.peer}" in done.stdout
    table = list(csv.DictReader(rows.open()))
    assert [int(r["round"]) for r in table] == [0, 1, 2]
    assert int(table[0]["downloads_verified"]) == 2  # the held-out devices score the start
    for row in table[1:]:
        assert int(row["downloads_verified"]) == 3 + 2  # every device, every round
        assert int(row["deltas_accepted"]) == 3
        assert float(row["bytes_down"]) > 0
    assert int(table[-1]["version"]) > int(table[0]["version"])


def test_p2p_verifiers_count_their_own_bytes_per_round(dev: DevNode) -> None:
    node = JsonRpc(dev.rpc)
    with connect_peer(dev.peer, dev.root.genesis_hash) as transport:
        first = LightVerifier(node, dev.root, transport)
        second = LightVerifier(node, dev.root, transport)
        first.take_cost(), second.take_cost()  # bootstrap (genesis header + set proof)
        before = transport.bytes_received
        assert first.finalized_block() == first.remote.client.finalized.hash
        cost = first.take_cost()
        assert cost.bytes_received == transport.bytes_received - before > 0  # framed, real
        assert cost.signature_verifications >= 1
        assert second.take_cost().bytes_received == 0  # the shared link is not charged twice
        assert first.take_cost().bytes_received == 0  # reset per round
        rpc_calls = node.calls
        model = download_model(PeerCaller(transport), first, "sine-mlp")
        assert node.calls == rpc_calls  # finality and chunks came over p2p only
        assert model.block_hash == first.remote.client.finalized.hash  # it synced again
        assert first.remote.client.finalized.number >= 1
        assert model.bytes_received > 0
    assert client_threads() == []


def test_bad_unreachable_and_foreign_peers_are_one_clear_line(dev: DevNode) -> None:
    chain = ("--chain", str(dev.spec))
    bad = client_run("--rpc", dev.rpc, *chain, "--peer", "/ip4/127.0.0.1/tcp/9", "--rounds", "1")
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "not a peer multiaddr" in bad.stderr
    assert "network listening on" in bad.stderr  # says where to find the right one
    peer_id = dev.peer.rsplit("/p2p/", 1)[1]
    started = time.monotonic()
    gone = client_run("--rpc", dev.rpc, *chain, "--peer", f"/ip4/127.0.0.1/tcp/1/p2p/{peer_id}")
    assert time.monotonic() - started < 30
    assert gone.returncode == 1
    assert gone.stderr.strip().count("\n") == 0, gone.stderr
    assert "cannot reach a node at" in gone.stderr

    with pytest.raises(PeerOnAnotherChain, match="--peer must be a node of the chain --chain"):
        connect_peer(dev.peer, Hash32(b"\x11" * 32))
    with pytest.raises(RemoteError, match="not a peer multiaddr"):
        P2pTransport("/ip4/127.0.0.1/tcp/1", bytes(32))  # type: ignore[arg-type]
    assert main(["client", "run", "--local", "--peer", dev.peer]) == 1
    assert client_threads() == []


def test_devices_trust_the_chain_spec_not_the_node(dev: DevNode, tmp_path: Path) -> None:
    """An attacker's node (here: a dev node) is refused by a fleet that trusts another spec."""
    # the repository's genesis.json: a different chain than the node serves
    theirs = Path(__file__).resolve().parents[1] / "genesis.json"
    refused = client_run("--rpc", dev.rpc, "--chain", str(theirs), "--rounds", "1")
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0, refused.stderr
    assert f"refusing the node at {dev.rpc}" in refused.stderr
    assert "Traceback" not in refused.stderr
    # a poisoned genesis: the same spec with another model seed is another chain
    spec = json.loads(dev.spec.read_text())
    spec["genesis"]["runtime"]["model_state"]["models"][0]["init"]["seed"] = 8
    poisoned = tmp_path / "poisoned.json"
    poisoned.write_text(json.dumps(spec))
    root = TrustRoot.from_spec(load_chain_spec(poisoned), str(poisoned))
    with pytest.raises(ForeignChain, match="refusing the node"):
        LightVerifier(JsonRpc(dev.rpc), root)
    other = client_run("--rpc", dev.rpc, "--genesis", "0x" + "11" * 32, "--rounds", "1")
    assert other.returncode == 1
    assert "refusing the node" in other.stderr
    assert other.stderr.strip().count("\n") == 0
    missing = client_run("--rpc", dev.rpc, "--chain", str(tmp_path / "nope.json"))
    assert missing.returncode == 1
    assert "pass --chain SPEC" in missing.stderr
    assert missing.stderr.strip().count("\n") == 0
    # the right spec, over JSON-RPC: the light client starts from the spec's genesis and set
    node = JsonRpc(dev.rpc)
    verifier = LightVerifier(node, dev.root)
    assert verifier.remote.client.authorities == dev.root.authorities
    assert verifier.finalized_block() == verifier.remote.client.finalized.hash
    assert verifier.remote.client.finalized.number >= 1
    by_hash = TrustRoot(dev.root.genesis_hash, "--genesis")  # set proven against genesis
    assert LightVerifier(node, by_hash).remote.client.authorities == dev.root.authorities
