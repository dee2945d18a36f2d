"""``deltachain chain-spec new`` and ``deltachain testnet up|status|down`` on loopback.

Every test that may start nodes kills, at teardown, any process whose command line names its
testnet directory, so a failing test never leaves a validator running.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deltachain.chain import construct_runtime
from deltachain.crypto.keys import address_to_str
from deltachain.crypto.keystore import read_key_file
from deltachain.node.cli import main
from deltachain.primitives.chainspec import DEV_MODEL, load_chain_spec
from deltachain.runtime.executive import build_genesis
from deltachain.runtime.state import MemoryStateStore

pytestmark = pytest.mark.timeout(150)


def free_port_block(n: int, *, avoid: set[int] | None = None) -> int:
    """A base port with ``n`` consecutive free loopback ports (below the ephemeral range)."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - n)
        ports = range(base, base + n)
        if avoid and avoid & set(ports):
            continue
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of free ports")


def processes_naming(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and text.encode() in cmdline:
            found.append(int(entry.name))
    return found


def deltachain(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deltachain.node.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def rpc(url: str, method: str, *params: Any) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())["result"]


@pytest.fixture
def testnet_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "net"
    try:
        yield directory
    finally:
        for pid in processes_naming(str(directory)):
            os.kill(pid, signal.SIGKILL)


def ports_args() -> list[str]:
    p2p = free_port_block(4)
    rpc_base = free_port_block(4, avoid=set(range(p2p, p2p + 4)))
    metrics = free_port_block(
        4, avoid=set(range(p2p, p2p + 4)) | set(range(rpc_base, rpc_base + 4))
    )
    return [
        "--base-port",
        str(p2p),
        "--rpc-base-port",
        str(rpc_base),
        "--prometheus-base-port",
        str(metrics),
    ]


# --- chain-spec new ------------------------------------------------------------------------


def test_chain_spec_new_writes_a_valid_spec_and_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from deltachain.node.network import peer_id_from_seed

    out = tmp_path / "spec"
    args = ["chain-spec", "new", "--validators", "5", "--out", str(out)]
    assert main([*args, "--slot-ms", "500", "--base-port", "40100", "--name", "My Net"]) == 0
    spec = load_chain_spec(out / "genesis.json")
    assert (spec.name, spec.id, spec.chain_type, spec.slot_ms) == ("My Net", "my_net", "Local", 500)
    assert len(spec.authorities) == 5
    assert len(set(spec.authorities)) == 5
    raw = json.loads((out / "genesis.json").read_text())
    assert raw["genesis"]["runtime"]["system"]["admin"] == address_to_str(spec.authorities[0])
    assert raw["genesis"]["runtime"]["model_state"]["models"] == [DEV_MODEL]
    for i, authority in enumerate(spec.authorities):
        key_path = out / "keys" / f"validator-{i}.json"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        assert read_key_file(key_path, None).address == authority
        node_key = read_key_file(out / "node-keys" / f"node-{i}.json", None)
        expected = f"/ip4/127.0.0.1/tcp/{40100 + i}/p2p/{peer_id_from_seed(node_key.seed)}"
        assert spec.boot_nodes[i] == expected
    build_genesis(construct_runtime(), spec, MemoryStateStore())  # the runtime accepts it
    before = (out / "genesis.json").read_bytes()
    capsys.readouterr()
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err
    assert (out / "genesis.json").read_bytes() == before
    assert main(["chain-spec", "new", "--validators", "2", "--out", str(tmp_path / "x"),
                 "--slot-ms", "5"]) == 1  # fmt: skip
    assert not (tmp_path / "x" / "genesis.json").exists()


def test_status_and_down_without_a_testnet_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command in (["status"], ["status", "--json"], ["down"]):
        assert main(["testnet", *command, "--dir", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: no testnet recorded in")
        assert len(err.strip().splitlines()) == 1


def test_busy_port_is_a_one_line_error_and_starts_nothing(
    testnet_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ports = ports_args()
    rpc_base = int(ports[3])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", rpc_base + 2))
        busy.listen()
        code = main(["testnet", "up", "--dir", str(testnet_dir), *ports])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: port {rpc_base + 2} on 127.0.0.1 is in use; choose another --rpc-base-port "
        "(or stop what is using it)"
    )
    assert not (testnet_dir / "testnet.json").exists()
    assert not (testnet_dir / "genesis.json").exists()  # checked before anything is written
    assert processes_naming(str(testnet_dir)) == []


# --- up / status / down ----------------------------------------------------------------------


@pytest.mark.slow
def test_up_status_down_round_trip(testnet_dir: Path) -> None:
    ports = ports_args()
    made = deltachain(
        "chain-spec", "new", "--validators", "4", "--out", str(testnet_dir),
        "--slot-ms", "500", "--base-port", ports[1],
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    up = deltachain("testnet", "up", "--dir", str(testnet_dir), *ports, "--timeout", "90")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "testnet is finalizing" in up.stdout
    print(f"testnet up returned after {time.monotonic() - started:.1f} s")
    record = json.loads((testnet_dir / "testnet.json").read_text())
    pids = [n["pid"] for n in record["nodes"]]
    assert len(set(pids)) == 4
    assert len({n["rpcUrl"] for n in record["nodes"]}) == 4
    for node in record["nodes"]:
        assert Path(node["log"]).is_file()
        assert Path(node["basePath"]).is_dir()

    status = deltachain("testnet", "status", "--dir", str(testnet_dir), "--json")
    assert status.returncode == 0, status.stderr
    nodes = json.loads(status.stdout)
    assert [n["name"] for n in nodes] == [f"validator-{i}" for i in range(4)]
    assert all(n["status"] == "up" and n["finalized"] >= 2 and n["peers"] == 3 for n in nodes)
    assert all(n["best"] >= n["finalized"] for n in nodes)
    assert all(n["lastVote"] >= n["finalized"] for n in nodes)  # from each signing state
    for i in range(4):
        assert (testnet_dir / "keys" / f"validator-{i}.signing-state.json").is_file()
    height = min(n["finalized"] for n in nodes)
    hashes = {rpc(n["rpcUrl"], "chain_getBlockHash", height) for n in nodes}
    assert len(hashes) == 1, hashes
    table = deltachain("testnet", "status", "--dir", str(testnet_dir))
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == ["NAME", "RPC", "BEST", "FINAL", "PEERS"]

    again = deltachain("testnet", "up", "--dir", str(testnet_dir), *ports, "--timeout", "5")
    assert again.returncode == 1
    assert "already running" in again.stderr
    assert "deltachain testnet down" in again.stderr
    assert json.loads((testnet_dir / "testnet.json").read_text()) == record  # untouched

    down = deltachain("testnet", "down", "--dir", str(testnet_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (testnet_dir / "testnet.json").exists()
    assert processes_naming(str(testnet_dir)) == []  # none of ``pids``, nor anything else
    for node in record["nodes"]:
        assert "stopped cleanly" in Path(node["log"]).read_text()
    gone = deltachain("testnet", "status", "--dir", str(testnet_dir))
    assert gone.returncode == 1
    assert "no testnet recorded" in gone.stderr


@pytest.mark.slow
def test_up_that_times_out_stops_what_it_started(testnet_dir: Path) -> None:
    ports = ports_args()
    up = deltachain(
        "testnet", "up", "--dir", str(testnet_dir), "--validators", "4", "--slot-ms", "500",
        *ports, "--timeout", "1",
    )  # fmt: skip
    assert up.returncode == 1
    assert "not every node finalized block #2 within 1 s" in up.stderr
    assert "validator-0.log (last lines)" in up.stderr
    assert not (testnet_dir / "testnet.json").exists()
    assert processes_naming(str(testnet_dir)) == []
    assert (testnet_dir / "genesis.json").exists()  # the spec it made is kept for the next up


# --- honest status after restarts ---------------------------------------------------------------


def test_up_is_finalizing_only_once_finality_moves_past_where_it_stood(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restarted testnet whose nodes come back at finalized #40 is not "finalizing" until
    they finalize past it (it said so while finality was frozen at #40 for good)."""
    import io

    from deltachain.node import testnet

    frames = iter([[40, 40], [40, 41], [41, 41], [42, 41], [42, 42]])
    seen: list[list[int]] = []

    def poll(targets: Any) -> list[testnet.NodeStatus]:
        heights = next(frames)
        seen.append(heights)
        return [
            testnet.NodeStatus(name, url, True, h + 1, h, "0x", 1)
            for (name, url), h in zip(targets, heights, strict=True)
        ]

    class Alive:
        def poll(self) -> None:
            return None

    records = [
        testnet.NodeRecord(n, 1, 1, 1, "b", "l", 0.0, None, "p", "//alice", None)  # type: ignore[arg-type]
        for n in ("a", "b")
    ]
    monkeypatch.setattr(testnet, "poll_all", poll)
    monkeypatch.setattr(testnet, "POLL_S", 0.0)
    testnet.wait_finalizing([(r, Alive()) for r in records], 30, io.StringIO())  # type: ignore[misc]
    assert seen[-1] == [42, 42]  # not at [40, 40]: that is where they stood


def test_status_flags_a_validator_whose_votes_trail(tmp_path: Path) -> None:
    from deltachain.node import testnet

    statuses = [
        testnet.NodeStatus("v0", "u", True, 80, 71, "0x", 3, last_vote=80),
        testnet.NodeStatus("v1", "u", True, 80, 71, "0x", 3, last_vote=79),
        testnet.NodeStatus("v2", "u", True, 80, 71, "0x", 3, last_vote=72),
        testnet.NodeStatus("v3", "u", False, last_vote=10),  # down: the table says so already
    ]
    lines = testnet.vote_lag_warnings(statuses)
    assert len(lines) == 1
    assert lines[0].startswith("warning: v2 last voted for #72, the newest vote is for #80")
    assert testnet.vote_lag_warnings(statuses[:2]) == []
    record = testnet.NodeRecord(
        "v0",
        1,
        1,
        1,
        str(tmp_path),
        "l",
        0.0,
        None,
        "p",
        "//alice",
        None,  # type: ignore[arg-type]
    )
    assert testnet.last_vote_target(record) is None
    (tmp_path / "signing-state-alice.json").write_text(json.dumps({"target": [57, "00"]}))
    assert testnet.last_vote_target(record) == 57
