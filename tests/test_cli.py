"""The console script end to end against a real dev node on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node_process import CLI, free_port, start_node, stop_node

pytestmark = pytest.mark.slow


def run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "DELTACHAIN_PASSWORD": "pw"},
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed: {proc.stderr}")
    return proc


@pytest.fixture
def node(tmp_path: Path) -> Iterator[str]:
    n = start_node(tmp_path, ready=r"authored #1 ")
    try:
        yield n.url
    finally:
        stop_node(n)


def test_generate_register_transact_query(node: str, tmp_path: Path) -> None:
    keyfile = tmp_path / "client.json"
    out = run("key", "generate", "--out", str(keyfile)).stdout
    address = out.split()[1]
    assert json.loads(run("key", "inspect", str(keyfile), "--json").stdout)["address"] == address
    assert oct(keyfile.stat().st_mode & 0o777) == "0o600"

    rejected = run("remark", "hi", "--key", str(keyfile), "--rpc", node, check=False)
    assert rejected.returncode == 1
    assert rejected.stderr.startswith(
        "error: invalid transaction: sender is not a registered client"
    )
    assert "Traceback" not in rejected.stderr

    run("register-client", address, "--key", "//alice", "--rpc", node, "--wait", "finalized")
    assert address in run("query", "clients", "--rpc", node).stdout
    run("remark", "hello", "--key", str(keyfile), "--rpc", node)
    account = json.loads(run("query", "account", address, "--rpc", node, "--json").stdout)
    assert account == {"address": address, "nonce": 1, "role": "client"}

    again = run("register-client", address, "--key", "//alice", "--rpc", node, check=False)
    assert again.returncode == 1
    assert "already registered" in again.stderr

    head = json.loads(run("query", "head", "--rpc", node, "--json").stdout)
    assert head["number"] >= 2
    offline = json.loads(
        run("query", "account", address, "--base-path", str(tmp_path / "db"), "--json").stdout
    )
    assert offline["nonce"] == 1
    block = json.loads(run("query", "block", "1", "--rpc", node, "--json").stdout)
    assert block["header"]["number"] == 1


def test_helpful_errors_without_a_node(tmp_path: Path) -> None:
    port = free_port()
    proc = run("query", "head", "--rpc", f"http://127.0.0.1:{port}", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: cannot reach a node")
    proc = run("query", "head", "--base-path", str(tmp_path / "nothing"), check=False)
    assert proc.returncode == 1
    assert "no chain database" in proc.stderr
    proc = run("remark", "x", "--key", str(tmp_path / "missing.json"), check=False)
    assert proc.returncode == 1
    assert "neither a //dev name nor an existing key file" in proc.stderr
    proc = run("node", check=False)
    assert proc.returncode == 1
    assert "pass --dev or --chain" in proc.stderr
    bad_spec = tmp_path / "bad.json"
    bad_spec.write_text("{not json")
    proc = run("node", "--chain", str(bad_spec), check=False)
    assert proc.returncode == 1
    assert "not valid JSON" in proc.stderr


def test_submit_deltas_close_a_round_and_change_the_weights(node: str, tmp_path: Path) -> None:
    import numpy as np

    model = json.loads(run("query", "model", "sine-mlp", "--rpc", node, "--json").stdout)
    assert model["version"] == 0
    rng = np.random.default_rng(0)
    for i, key in enumerate(("//bob", "//charlie")):
        path = tmp_path / f"delta{i}.npy"
        np.save(path, rng.normal(0, 0.01, model["numParams"]))
        out = run(
            "submit-delta",
            "--key",
            key,
            "--model",
            "sine-mlp",
            "--delta",
            str(path),
            "--top-p",
            "0.1",
            "--samples",
            "10",
            "--rpc",
            node,
        ).stdout
        assert "coordinates" in out
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = json.loads(run("query", "model", "sine-mlp", "--rpc", node, "--json").stdout)
        if after["version"] == 1:
            break
        time.sleep(0.25)
    assert after["version"] == 1
    assert after["weightsRoot"] != model["weightsRoot"]
    prov = json.loads(
        run("query", "provenance", "sine-mlp", "--version", "1", "--rpc", node, "--json").stdout
    )
    assert prov["n"] == 2
    assert all(d["samples"] == 10 for d in prov["deltas"])
    out = tmp_path / "w.npy"
    run("query", "weights", "sine-mlp", "--out", str(out), "--rpc", node)
    weights = np.load(out)
    assert weights.shape == (model["numParams"],)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros(7))
    proc = run(
        "submit-delta",
        "--key",
        "//bob",
        "--model",
        "sine-mlp",
        "--delta",
        str(bad),
        "--rpc",
        node,
        check=False,
    )
    assert proc.returncode == 1
    assert "has 7 values" in proc.stderr


def rpc(url: str, payload: object) -> object:
    import urllib.request

    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.loads(response.read())


def call(url: str, method: str, *params: object) -> dict:  # type: ignore[type-arg]
    reply = rpc(url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    assert isinstance(reply, dict)
    return reply


def test_bad_transactions_are_rejected_and_the_node_keeps_running(node: str) -> None:
    from deltachain.crypto.keys import Keypair
    from deltachain.primitives.transaction import sign_transaction

    genesis = bytes.fromhex(call(node, "chain_getGenesisHash")["result"][2:])
    bob = Keypair.dev("bob")
    good = sign_transaction(bob, genesis, 0, "system", "remark", {"data": b"x"})  # type: ignore[arg-type]
    other_chain = sign_transaction(bob, bytes(32), 0, "system", "remark", {"data": b"x"})  # type: ignore[arg-type]
    future = sign_transaction(bob, genesis, 9, "system", "remark", {"data": b"x"})  # type: ignore[arg-type]
    stranger = sign_transaction(Keypair.dev("zed"), genesis, 0, "system", "remark", {"data": b"x"})  # type: ignore[arg-type]
    forged = good.encode()[:-3] + b"\x00\x00\x00"
    cases = [
        ("0xff00", "CBOR"),
        ("0x5b00000000ffffffff", "CBOR"),
        ("0x" + "00" * (800 * 1024), "over the limit"),
        ("0x" + forged.hex(), "does not verify"),
        ("0x" + other_chain.encode().hex(), "does not verify for this chain"),
        ("0x" + stranger.encode().hex(), "not a registered client"),
        ("nothex", "0x-prefixed hex"),
    ]
    for raw, reason in cases:
        reply = call(node, "author_submitExtrinsic", raw)
        assert "error" in reply, raw[:20]
        assert reason in reply["error"]["message"], reply
    assert call(node, "author_submitExtrinsic", "0x" + future.encode().hex())["result"]
    assert call(node, "author_submitExtrinsic", "0x" + good.encode().hex())["result"]
    dup = call(node, "author_submitExtrinsic", "0x" + good.encode().hex())
    assert dup["error"]["code"] == 1011  # pool: already known (or already included: stale)
    assert call(node, "system_health")["result"]["isSyncing"] is False
    parse = rpc(node, b"{not json")
    assert parse["error"]["code"] == -32700  # type: ignore[index]
    assert call(node, "no_such_method")["error"]["code"] == -32601


def test_client_fleet_follows_finality_and_improves(node: str, tmp_path: Path) -> None:
    proc = run(
        "client",
        "run",
        "--rpc",
        node,
        "--chain",
        str(tmp_path / "spec.json"),  # the spec start_node wrote: the devices' trust root
        "--task",
        "sine",
        "--devices",
        "3",
        "--rounds",
        "2",
        "--heldout",
        "2",
        "--seed",
        "1",
        timeout=240,
    )
    assert "every one verified" in proc.stdout
    assert "light client proved by justifications" in proc.stdout
    losses = [
        float(line.split("held-out loss")[1].split()[0])
        for line in proc.stdout.splitlines()
        if line.startswith("round")
    ]
    assert len(losses) == 3
    assert losses[-1] < losses[0]


def test_submit_delta_commits_then_reveals_on_a_commit_reveal_model(tmp_path: Path) -> None:
    """``submit-delta --wait`` on a commit-reveal model: commit, hold, reveal; the round
    aggregates both reveals and no commitment is left unrevealed."""
    import numpy as np

    n = start_node(
        tmp_path / "node",
        ready=r"authored #1 ",
        model={"commitReveal": True, "roundLen": 8, "commitLen": 4, "minDeltas": 2},
    )
    try:
        model = json.loads(run("query", "model", "sine-mlp", "--rpc", n.url, "--json").stdout)
        assert model["commitReveal"] is True
        rng = np.random.default_rng(0)
        procs = []
        for i, key in enumerate(("//bob", "//charlie")):
            path = tmp_path / f"delta{i}.npy"
            np.save(path, rng.normal(0, 0.01, model["numParams"]))
            procs.append(
                subprocess.Popen(
                    [
                        *CLI,
                        "submit-delta",
                        "--key",
                        key,
                        "--model",
                        "sine-mlp",
                        "--delta",
                        str(path),
                        "--top-p",
                        "0.1",
                        "--rpc",
                        n.url,
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "DELTACHAIN_PASSWORD": "pw"},
                )
            )
        for proc in procs:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert "committing" in out
            assert "revealing" in out
            assert "submitted model_state.submit_delta" in out
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            after = json.loads(run("query", "model", "sine-mlp", "--rpc", n.url, "--json").stdout)
            if after["version"] == 1:
                break
            time.sleep(0.25)
        assert after["version"] == 1
        prov = json.loads(
            run(
                "query", "provenance", "sine-mlp", "--version", "1", "--rpc", n.url, "--json"
            ).stdout
        )
        assert prov["n"] == 2
        assert prov["unrevealed"] == []
    finally:
        stop_node(n)
