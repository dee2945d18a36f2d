"""The dev node as a real process: kill -9 at random moments, clean shutdown, refusal to start.

Loopback only; every process started here is killed and waited for, whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from deltachain.chain import construct_runtime
from deltachain.consensus.aura import verify_header
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.node.chain import Chain, events_blob
from deltachain.node.storage import DB_FILE
from deltachain.primitives.chainspec import ChainSpec, dev_chain_spec
from deltachain.primitives.transaction import sign_transaction
from deltachain.primitives.types import Hash32
from deltachain.runtime import system
from deltachain.runtime.executive import apply_block, build_genesis
from deltachain.runtime.state import MemoryStateStore, State
from node_process import free_port

pytestmark = pytest.mark.slow

SLOT_MS = 200
ALICE = Keypair.dev("alice")
AUTHORED = re.compile(r"authored #(\d+) \(0x([0-9a-f]+)")
STARTED = re.compile(r"best #(\d+), database")
WAIT_S = 15.0


class NodeProcess:
    """One ``deltachain node`` subprocess whose stderr is collected line by line."""

    def __init__(self, args: list[str]) -> None:
        self.port = int(args[args.index("--rpc-port") + 1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "deltachain.node.cli", "node", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8"},
        )
        self.lines: list[str] = []
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-40:])

    def wait_for(
        self, pattern: re.Pattern[str], *, start: int = 0, timeout: float = WAIT_S
    ) -> re.Match[str]:
        """The first match in stderr lines from index ``start`` on; fails on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            index = start
            while True:
                while index < len(self.lines):
                    match = pattern.search(self.lines[index])
                    index += 1
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
        raise AssertionError(
            f"no line matching {pattern.pattern!r} within {timeout} s "
            f"(exit status {self.proc.poll()}); log:\n{self.log()}"
        )

    def authored(self) -> list[tuple[int, str]]:
        with self._cond:
            return [(int(m[1]), m[2]) for m in map(AUTHORED.search, self.lines) if m]

    def signal(self, sig: int, *, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status (stderr fully read)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        status = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return status

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def rpc(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            reply = json.loads(response.read())
        if "error" in reply:
            raise AssertionError(f"{method} failed: {reply['error']}")
        return reply["result"]


@pytest.fixture
def start_node() -> Iterator[Callable[..., NodeProcess]]:
    """A factory for node processes; all of them are killed and reaped at teardown."""
    started: list[NodeProcess] = []

    def start(*args: str) -> NodeProcess:
        node = NodeProcess(list(args))
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.ensure_dead()


@pytest.fixture
def spec() -> ChainSpec:
    return dev_chain_spec(slot_ms=SLOT_MS)


@pytest.fixture
def spec_file(tmp_path: Path, spec: ChainSpec) -> Path:
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(spec.to_json()))
    return path


def node_args(spec_file: Path, base: Path, port: int | None = None) -> list[str]:
    return [
        "--chain",
        str(spec_file),
        "--key",
        "//alice",
        "--validator",
        "--base-path",
        str(base),
        "--rpc-port",
        str(port or free_port()),
    ]


def submit(
    node: NodeProcess, genesis: Hash32, nonce: int, function: str, args: dict[str, Any]
) -> str:
    tx = sign_transaction(ALICE, genesis, nonce, "system", function, args)
    return str(node.rpc("author_submitExtrinsic", "0x" + tx.encode().hex()))


def wait_included(node: NodeProcess, tx_hash: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.rpc("author_extrinsicStatus", tx_hash)["status"] in ("inBlock", "finalized"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{tx_hash} not included within {timeout} s; log:\n{node.log()}")


# --- kill -9 at random moments ---------------------------------------------------------------


KILLS = 20


def test_kill_9_at_random_moments_loses_nothing(
    tmp_path: Path, spec: ChainSpec, spec_file: Path, start_node: Callable[..., NodeProcess]
) -> None:
    started_at = time.monotonic()
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    context = f"(seed {seed})"
    base = tmp_path / "node"
    printed: dict[int, str] = {}  # block number -> hash prefix of every "authored" line
    submitted: list[str] = []
    last_printed = 0
    for round_ in range(KILLS):
        node = start_node(*node_args(spec_file, base))
        best_at_start = int(node.wait_for(STARTED)[1])
        assert best_at_start >= last_printed, f"block #{last_printed} was lost {context}"
        node.wait_for(AUTHORED)  # at least one new block in this life
        genesis_hash = Hash32(bytes.fromhex(node.rpc("chain_getGenesisHash")[2:]))
        nonce = node.rpc("system_accountNextIndex", address_to_str(ALICE.address))
        remark = submit(node, genesis_hash, nonce, "remark", {"data": f"round {round_}".encode()})
        client = Keypair.dev(f"crash-client-{round_}").address
        register = submit(node, genesis_hash, nonce + 1, "register_client", {"client": client})
        submitted += [remark, register]
        if round_ % 2 == 0:  # odd rounds may die with transactions still in the pool
            wait_included(node, register)
        time.sleep(rng.uniform(0.2, 1.5))
        assert node.proc.poll() is None, f"the node exited by itself {context}:\n{node.log()}"
        assert node.signal(signal.SIGKILL) == -signal.SIGKILL
        assert not any("Traceback" in line for line in node.lines), node.log()
        for number, prefix in node.authored():
            assert printed.get(number, prefix) == prefix, f"#{number} printed twice {context}"
            printed[number] = prefix
        last_printed = max(printed)

    chain = Chain(spec, construct_runtime(), base)  # the node's own open: lock, checks
    try:
        storage = chain.storage
        best = storage.best_header()
        canon = list(storage.canonical_hashes())
        assert [n for n, _ in canon] == list(range(best.number + 1)), f"gap {context}"
        assert canon[-1][1] == best.hash
        for number, prefix in printed.items():
            assert storage.canonical_hash(number).hex().startswith(prefix), (
                f"block #{number} printed as 0x{prefix}… is not in the chain {context}"
            )
        assert best.number >= last_printed

        # Re-execute every stored block from genesis in memory.
        runtime = construct_runtime()
        store = MemoryStateStore()
        genesis = build_genesis(runtime, spec, store)
        store.apply(genesis.diff)
        assert canon[0][1] == genesis.hash == chain.genesis_hash
        parent = storage.header(genesis.hash)
        tx_count = 0
        for number, block_hash in canon[1:]:
            block = storage.block(block_hash)
            assert block.hash == block_hash
            assert block.number == number
            assert block.header.parent_hash == parent.hash, f"#{number} breaks the chain {context}"
            parent_state = State(store, parent.state_root)
            verify_header(
                block.header,
                parent,
                system.get_authorities(parent_state),
                genesis.hash,
                now_slot=None,
            )
            output = apply_block(runtime, parent_state, block, genesis.hash)
            assert output.diff.root == block.header.state_root
            assert storage.block_events(block_hash) == events_blob(output)
            store.apply(output.diff)
            for index, tx in enumerate(block.transactions):
                assert storage.tx_location(tx.hash).index == index
            tx_count += len(block.transactions)
            parent = block.header
        statuses = [chain.transaction_status(Hash32(bytes.fromhex(h[2:]))) for h in submitted]
        included = [s for s in statuses if s["status"] != "unknown"]
        assert tx_count == len(included) >= KILLS // 2 * 2, context  # even rounds waited
    finally:
        chain.close()
    # a guard against a hang, not a speed goal (those live in benchmarks/): generous on a
    # loaded 2-core machine
    assert time.monotonic() - started_at < 240, f"took {time.monotonic() - started_at:.0f} s"


# --- clean shutdown --------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_cleanly(
    tmp_path: Path,
    spec: ChainSpec,
    spec_file: Path,
    sig: int,
    start_node: Callable[..., NodeProcess],
) -> None:
    base = tmp_path / "node"
    node = start_node(*node_args(spec_file, base))
    node.wait_for(AUTHORED)
    genesis_hash = Hash32(bytes.fromhex(node.rpc("chain_getGenesisHash")[2:]))
    wait_included(node, submit(node, genesis_hash, 0, "remark", {"data": b"bye"}))
    sent = time.monotonic()
    assert node.signal(sig, timeout=5) == 0, node.log()
    assert time.monotonic() - sent < 5
    assert node.lines[-1].endswith("stopped cleanly"), node.log()
    assert not any("Traceback" in line for line in node.lines), node.log()
    last = max(node.authored())
    chain = Chain(spec, construct_runtime(), base)
    try:
        assert chain.storage.best_header().number == last[0]
        assert chain.storage.best_hash().hex().startswith(last[1])
    finally:
        chain.close()


# --- refusing to start -----------------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_foreign(base: Path) -> None:
    Chain(dev_chain_spec(slot_ms=100), construct_runtime(), base).close()


def _make_random(base: Path) -> None:
    base.mkdir(parents=True)
    (base / DB_FILE).write_bytes(random.randbytes(16384))


def _make_unrelated(base: Path) -> None:
    base.mkdir(parents=True)
    conn = sqlite3.connect(base / DB_FILE)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()


def start_refused(args: list[str]) -> list[str]:
    """Run ``deltachain node ARGS``, which must refuse to start (exit 1); its stderr lines."""
    proc = subprocess.run(
        [sys.executable, "-m", "deltachain.node.cli", "node", *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 1, proc.stderr
    return proc.stderr.strip().splitlines()


def _make_meta_deleted(base: Path) -> None:
    Chain(dev_chain_spec(slot_ms=SLOT_MS), construct_runtime(), base).close()
    conn = sqlite3.connect(base / DB_FILE)
    conn.execute("DELETE FROM meta WHERE key='genesis_hash'")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(_make_foreign, "holds chain", id="foreign"),
        pytest.param(_make_random, "not a usable database", id="random-bytes"),
        pytest.param(_make_unrelated, "not a deltachain database", id="unrelated-sqlite"),
        pytest.param(_make_meta_deleted, "is damaged", id="meta-deleted"),
    ],
)
def test_node_refuses_foreign_or_corrupt_database(
    tmp_path: Path, spec_file: Path, make: Callable[[Path], None], expected: str
) -> None:
    base = tmp_path / "node"
    make(base)
    before = {p.name: _digest(p) for p in base.iterdir()}
    lines = start_refused(node_args(spec_file, base))
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "--base-path" in lines[0]
    assert {p.name: _digest(p) for p in base.iterdir()} == before


def test_node_refuses_a_base_path_in_use(
    tmp_path: Path, spec_file: Path, start_node: Callable[..., NodeProcess]
) -> None:
    base = tmp_path / "node"
    first = start_node(*node_args(spec_file, base))
    first.wait_for(AUTHORED)
    lines = start_refused(node_args(spec_file, base))
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert f"pid {first.proc.pid}" in lines[0]
    count = len(first.lines)
    first.wait_for(AUTHORED, start=count)  # the running node is unaffected
    assert first.signal(signal.SIGTERM, timeout=5) == 0


def test_node_refuses_a_busy_rpc_port(tmp_path: Path, spec_file: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        lines = start_refused(node_args(spec_file, tmp_path / "node", port))
    assert lines[-1].startswith("error: "), lines
    assert "--rpc-port" in lines[-1]
    stderr = "\n".join(lines)
    assert "Traceback" not in stderr
    assert "stopped cleanly" not in stderr


# --- databases that lost data: refuse, never start over ---------------------------------------


def test_node_refuses_an_emptied_database(tmp_path: Path, spec_file: Path) -> None:
    """``: > chain.sqlite`` used to start a brand-new chain from genesis without a word."""
    base = tmp_path / "node"
    Chain(dev_chain_spec(slot_ms=SLOT_MS), construct_runtime(), base).close()
    (base / DB_FILE).write_bytes(b"")
    lines = start_refused(node_args(spec_file, base))
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "empty (0 bytes)" in lines[0]
    assert "aside" in lines[0]
    assert (base / DB_FILE).stat().st_size == 0  # left as it was for inspection


def test_node_refuses_a_database_whose_finality_went_back(
    tmp_path: Path, spec_file: Path, start_node: Callable[..., NodeProcess]
) -> None:
    """A lost or truncated WAL rolls finality back (#40 → #35); the signing state remembers the
    finality the validator saw, so the rolled-back database is refused with one line."""
    base = tmp_path / "node"
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    node = start_node(*node_args(spec_file, base))
    first = int(node.wait_for(re.compile(r"authored #\d+ .*finalized #([1-9]\d*)"))[1])
    node.proc.send_signal(signal.SIGSTOP)  # a consistent copy: nothing writes meanwhile
    try:
        for path in base.glob(f"{DB_FILE}*"):
            (snapshot / path.name).write_bytes(path.read_bytes())
    finally:
        node.proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 4 * WAIT_S
    while int(node.rpc("chain_getHeader", node.rpc("chain_getFinalizedHead"))["number"]) < (
        first + 5
    ):
        assert time.monotonic() < deadline, node.log()
        time.sleep(0.1)
    assert node.signal(signal.SIGKILL) == -signal.SIGKILL
    for path in base.glob(f"{DB_FILE}*"):
        path.unlink()
    for path in snapshot.iterdir():  # the database as it was, with its id: rolled back
        (base / path.name).write_bytes(path.read_bytes())
    lines = start_refused(node_args(spec_file, base))
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    assert "went back from finalized" in lines[0]
    assert "signing-state" in lines[0]
    assert not any("Traceback" in line for line in lines)
    assert (base / "signing-state-alice.json").exists()
