"""Consensus over the network: four validator processes on loopback, and in-process checks.

Multi-process tests start ``deltachain node`` directly (four dev validators, 500 ms slots, every
node given the others as reserved bootnodes) and poll JSON-RPC with bounded waits. Every process
is SIGKILLed and reaped at teardown, whatever happens. A background watcher records the
canonical hash of every finalized height on every node, so a finalized block that changes (is
reverted) anywhere, at any time of a run, fails the test. Restart tests kill -9 one, two or all
validators at awkward moments (just after a block, just after a slot boundary), or wipe one's
database, and require finality to resume, then to survive one validator being paused.

In-process tests (no processes): Aura checks on a four-authority ``Chain``, equivocation turned
into on-chain evidence, and a 2–2 partition healed through the sync protocol.
Vote-threshold vectors (66 of 100 vs 67 of 100) live in ``test_finality.py``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from deltachain.chain import construct_runtime
from deltachain.consensus.aura import author_of, seal_header
from deltachain.consensus.finality import Checkpoint, Link, VoteRecord, sign_vote
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.crypto.keystore import plain_key, write_key_file
from deltachain.errors import InvalidBlock, InvalidSeal
from deltachain.node.chain import Chain
from deltachain.node.service import NodeConfig, NodeService
from deltachain.node.sync import serve
from deltachain.primitives.block import Block
from deltachain.primitives.chainspec import ChainSpec, dev_chain_spec, parse_chain_spec
from deltachain.primitives.transaction import sign_transaction
from deltachain.primitives.types import BlockNumber, Signature, Slot
from deltachain.runtime.executive import build_block
from deltachain.runtime.module import BlockEnv
from node_process import free_ports

pytestmark = pytest.mark.timeout(240)

SLOT_MS = 500
NAMES = ("alice", "bob", "charlie", "dave")
VALIDATORS = [Keypair.dev(n) for n in NAMES]
EVE = Keypair.dev("eve")
STARTUP_S = 90.0
AUTHORED = re.compile(r"authored #(\d+)")


def four_validator_spec(slot_ms: int = SLOT_MS) -> ChainSpec:
    raw = dev_chain_spec(slot_ms).to_json()
    raw["id"] = "deltachain_test4"
    raw["genesis"]["consensus"]["authorities"] = [address_to_str(k.address) for k in VALIDATORS]
    return parse_chain_spec(raw)


# --- processes ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Head:
    best: int
    finalized: int
    finalized_hash: str


class RpcFailed(Exception):
    pass


def rpc(port: int, method: str, *params: Any, timeout: float = 2.0) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            reply = json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError) as exc:
        raise RpcFailed(f"{method} on :{port}: {exc}") from None
    if "error" in reply:
        raise RpcFailed(f"{method} on :{port}: {reply['error']}")
    return reply["result"]


class Node:
    """One ``deltachain node`` process (stderr to a log file); restartable with the same args."""

    def __init__(self, name: str, args: list[str], rpc_port: int, log_path: Path) -> None:
        self.name = name
        self.args = args
        self.rpc_port = rpc_port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.prefix = ["-m", "deltachain.node.cli", "node"]

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.prefix, *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        assert self.proc.poll() is None, f"{self.name} is not running"
        self.proc.send_signal(sig)
        self.paused = sig == signal.SIGSTOP

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
        self.paused = False

    def rpc(self, method: str, *params: Any, timeout: float = 2.0) -> Any:
        return rpc(self.rpc_port, method, *params, timeout=timeout)

    def head(self) -> Head | None:
        """None while the node cannot answer (starting, stopped, killed)."""
        if self.paused:
            return None
        try:
            best = self.rpc("chain_getHeader")
            fin_hash = self.rpc("chain_getFinalizedHead")
            fin = self.rpc("chain_getHeader", fin_hash)
        except RpcFailed:
            return None
        return Head(int(best["number"]), int(fin["number"]), str(fin_hash))

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 12) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class FinalityWatch:
    """Polls every node's finalized chain and remembers each height's hash (first seen)."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = nodes
        self.seen: dict[int, str] = {}
        self.checked = [0] * len(nodes)
        self.conflicts: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="finality-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            for i, node in enumerate(self.nodes):
                self.sweep(i, node, from_height=self.checked[i] + 1)

    def sweep(self, i: int, node: Node, from_height: int = 1) -> None:
        head = node.head()
        if head is None:
            return
        try:
            for height in range(from_height, head.finalized + 1):
                block_hash = str(node.rpc("chain_getBlockHash", height))
                with self._lock:
                    first = self.seen.setdefault(height, block_hash)
                    if first != block_hash:
                        self.conflicts.append(
                            f"{node.name}: finalized #{height} is {block_hash[:18]}, "
                            f"seen before as {first[:18]}"
                        )
                self.checked[i] = max(self.checked[i], height)
        except RpcFailed:
            return

    def assert_consistent(self) -> None:
        """Re-read every node's whole finalized chain, then fail on any conflict seen."""
        for i, node in enumerate(self.nodes):
            self.sweep(i, node, from_height=1)
        assert not self.conflicts, "finalized blocks changed:\n" + "\n".join(self.conflicts)


class Network:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.watch = FinalityWatch(nodes)

    def heads(self) -> list[Head | None]:
        with concurrent.futures.ThreadPoolExecutor(len(self.nodes)) as pool:
            return list(pool.map(Node.head, self.nodes))

    def report(self) -> str:
        lines = []
        for node, head in zip(self.nodes, self.heads(), strict=True):
            state = "paused" if node.paused else ("down" if head is None else str(head))
            lines.append(f"== {node.name}: {state}\n{node.tail()}")
        return "\n".join(lines)

    def wait_until(
        self, predicate: Callable[[list[Head | None]], bool], timeout: float, what: str
    ) -> list[Head | None]:
        deadline = time.monotonic() + timeout
        while True:
            heads = self.heads()
            if predicate(heads):
                return heads
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() not in (None, -9):
                    pytest.fail(f"{node.name} exited ({node.proc.returncode}):\n{node.tail(40)}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.report()}")
            time.sleep(0.25)

    def finalized(self, heads: Sequence[Head | None], which: Sequence[int]) -> list[int]:
        return [h.finalized if h else -1 for i, h in enumerate(heads) if i in which]


def all_finalized(at_least: int, which: Sequence[int] = range(4)) -> Callable[..., bool]:
    def check(heads: list[Head | None]) -> bool:
        return all(heads[i] is not None and heads[i].finalized >= at_least for i in which)  # type: ignore[union-attr]

    return check


TWIN_BOOT = (
    "import sys, deltachain.node.service as service; base = service.now_ms; "
    "shift = int(sys.argv.pop(1)); service.now_ms = lambda: base() + shift; "
    "from deltachain.node.cli import main; sys.exit(main(sys.argv[1:]))"
)
"""Runs ``deltachain`` with the node's clock shifted by argv[1] ms (an equivocating twin)."""


def build_network(tmp_path: Path, members: Sequence[tuple[str, str]]) -> Network:
    """Nodes named ``members[i][0]`` with validator key ``members[i][1]``, all reserved peers
    of each other. A name ending in ``-twin`` runs with its clock one slot ahead."""
    spec_path = tmp_path / "genesis.json"
    spec_path.write_text(json.dumps(four_validator_spec().to_json()))
    n = len(members)
    ports = free_ports(3 * n)
    p2p, rpc_ports, metrics = ports[:n], ports[n : 2 * n], ports[2 * n :]
    from deltachain.node.network import peer_id_from_seed

    addrs = []
    for i in range(n):
        node_key = Keypair.generate()
        write_key_file(tmp_path / f"node-key-{i}.json", plain_key(node_key))
        addrs.append(f"/ip4/127.0.0.1/tcp/{p2p[i]}/p2p/{peer_id_from_seed(node_key.seed)}")
    (tmp_path / "logs").mkdir()
    nodes = []
    for i, (name, key) in enumerate(members):
        args = [
            "--chain", str(spec_path), "--validator", "--key", key,
            "--base-path", str(tmp_path / name), "--port", str(p2p[i]),
            "--rpc-port", str(rpc_ports[i]), "--node-key", str(tmp_path / f"node-key-{i}.json"),
            "--name", name, "--reserved-only", "--prometheus-port", str(metrics[i]),
            "--bootnodes", *[a for j, a in enumerate(addrs) if j != i],
        ]  # fmt: skip
        node = Node(name, args, rpc_ports[i], tmp_path / "logs" / f"{name}.log")
        if name.endswith("-twin"):
            node.prefix = ["-c", TWIN_BOOT, str(SLOT_MS), "node"]
        nodes.append(node)
    return Network(nodes)


@pytest.fixture(scope="module")
def warm_kernels() -> None:
    """Compile the numba kernels once here: nodes that start together then load them from the
    cache instead of all compiling them at once (minutes on two cores with a cold cache)."""
    for module in construct_runtime().modules.values():
        module.warm_up()


@pytest.fixture
def network_of(
    tmp_path: Path, warm_kernels: None
) -> Iterator[Callable[[Sequence[tuple[str, str]]], Network]]:
    """Start a network of the given members; every process is killed at teardown."""
    started: list[Network] = []

    def start(members: Sequence[tuple[str, str]]) -> Network:
        net = build_network(tmp_path, members)
        started.append(net)
        for node in net.nodes:
            node.start()
        net.watch.start()
        return net

    try:
        yield start
    finally:
        for net in started:
            net.watch.stop()
            for node in net.nodes:
                node.kill()


@pytest.fixture
def network(network_of: Callable[[Sequence[tuple[str, str]]], Network]) -> Network:
    """Four validators (//alice … //dave) on loopback, started; all killed at teardown."""
    return network_of([(name, f"//{name}") for name in NAMES])


# --- multi-process scenarios ------------------------------------------------------------------


@pytest.mark.slow
def test_four_validators_agree_on_finalized_blocks_past_height_ten(network: Network) -> None:
    network.wait_until(all_finalized(10), STARTUP_S, "every node to finalize #10")
    hashes = {node.name: node.rpc("chain_getBlockHash", 10) for node in network.nodes}
    assert len(set(hashes.values())) == 1, hashes
    for node in network.nodes:
        assert node.rpc("system_health")["peers"] == 3
        assert AUTHORED.search(node.log()), f"{node.name} never authored:\n{node.tail()}"
    network.watch.assert_consistent()


@pytest.mark.slow
def test_killed_validator_restarts_and_catches_up_while_finality_continues(
    network: Network,
) -> None:
    others = (0, 1, 2)
    network.wait_until(all_finalized(3), STARTUP_S, "finality on every node")
    dave = network.nodes[3]
    dave.signal(signal.SIGKILL)
    dave.kill()  # reap
    before = max(network.finalized(network.heads(), others))
    heads = network.wait_until(
        all_finalized(before + 6, others), 30, "3 of 4 validators to keep finalizing"
    )
    target = max(network.finalized(heads, others))
    log_size = len(dave.log())
    dave.start()
    heads = network.wait_until(
        lambda hs: hs[3] is not None and hs[3].best >= target and hs[3].finalized >= target,
        40,
        f"the restarted validator to catch up to #{target}",
    )
    network.wait_until(
        all_finalized(target + 3), 30, "all four to finalize past the catch-up point"
    )
    deadline = time.monotonic() + 15
    while not AUTHORED.search(dave.log()[log_size:]):
        assert time.monotonic() < deadline, f"dave did not author after restart:\n{dave.tail()}"
        time.sleep(0.25)
    network.watch.assert_consistent()


@pytest.mark.slow
def test_paused_validator_does_not_stall_finality_and_catches_up(network: Network) -> None:
    others = (0, 1, 3)
    network.wait_until(all_finalized(3), STARTUP_S, "finality on every node")
    charlie = network.nodes[2]
    charlie.signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    before = max(network.finalized(network.heads(), others))
    heads = network.wait_until(
        all_finalized(before + 4, others), 20, "finality while one validator is paused"
    )
    assert time.monotonic() - paused_at >= 1.0  # paused for at least two slots
    charlie.signal(signal.SIGCONT)
    target = max(network.finalized(heads, others))
    network.wait_until(
        lambda hs: hs[2] is not None and hs[2].finalized >= target,
        30,
        f"the resumed validator to catch up to finalized #{target}",
    )
    network.wait_until(all_finalized(target + 2), 30, "all four to keep finalizing")
    network.watch.assert_consistent()


@pytest.mark.slow
def test_two_two_split_halts_finality_which_resumes_after_healing(network: Network) -> None:
    running = (0, 2)
    network.wait_until(all_finalized(3), STARTUP_S, "finality on every node")
    for i in (1, 3):
        network.nodes[i].signal(signal.SIGSTOP)
    time.sleep(1.5)  # votes already in flight may still land
    heads = network.heads()
    halted = max(network.finalized(heads, running))
    best_at_halt = max(h.best for h in heads if h is not None)
    deadline = time.monotonic() + 4.0  # eight slots
    while time.monotonic() < deadline:
        heads = network.heads()
        assert max(network.finalized(heads, running)) == halted, (
            f"2 of 4 validators finalized a block:\n{network.report()}"
        )
        time.sleep(0.25)
    assert max(h.best for h in heads if h is not None) > best_at_halt, "authoring stopped too"
    for i in (1, 3):
        network.nodes[i].signal(signal.SIGCONT)
    network.wait_until(all_finalized(halted + 3), 40, "finality to resume after healing")
    network.watch.assert_consistent()


@pytest.mark.slow
def test_equivocating_author_is_recorded_as_evidence_on_chain(
    network_of: Callable[[Sequence[tuple[str, str]]], Network],
) -> None:
    """A second process signs with //alice's key, its clock one slot ahead: it seals blocks for
    alice's slots on other parents than alice does, and votes differently. The validators
    detect the pair, submit ``authority.report_equivocation`` and the chain records it."""
    members = [(name, f"//{name}") for name in NAMES] + [("alice-twin", "//alice")]
    network = network_of(members)
    alice = address_to_str(VALIDATORS[0].address)
    deadline = time.monotonic() + 60
    evidence: list[dict[str, Any]] = []
    while not any(e["kind"] == "seal" for e in evidence):  # vote evidence usually comes first
        if time.monotonic() > deadline:
            pytest.fail(f"no seal evidence recorded within 60 s ({evidence})\n{network.report()}")
        time.sleep(0.5)
        with contextlib.suppress(RpcFailed):
            evidence = network.nodes[1].rpc("runtime_query", "authority", "evidence", {})
    assert {e["offender"] for e in evidence} == {alice}
    assert {e["kind"] for e in evidence} <= {"seal", "vote"}
    logs = "".join(node.log() for node in network.nodes)
    assert "submitted seal equivocation evidence" in logs
    # The honest three keep finalizing (alice's two processes count as one voter).
    heads = network.heads()
    top = max(h.finalized for h in heads[1:4] if h is not None)
    network.wait_until(all_finalized(top + 2, (1, 2, 3)), 30, "finality after the evidence")
    network.watch.assert_consistent()


# --- in-process: Aura on a four-authority chain -----------------------------------------------


def open_chain(path: Path, spec: ChainSpec | None = None) -> Chain:
    return Chain(spec or four_validator_spec(), construct_runtime(), path)


def key_of(slot: int, chain: Chain) -> Keypair:
    owner = author_of(Slot(slot), chain.authorities_at(chain.storage.best_hash()))
    return next(k for k in VALIDATORS if k.address == owner)


def build_sealed(
    chain: Chain,
    slot: int,
    author: Keypair,
    txs: Sequence[Any] = (),
    *,
    sealer: Keypair | None = None,
) -> Block:
    """A block on the head for ``slot`` claiming ``author``, sealed by ``sealer`` (the author)."""
    parent = chain.storage.best_header()
    env = BlockEnv(
        chain.genesis_hash,
        parent.hash,
        BlockNumber(parent.number + 1),
        Slot(slot),
        author.address,
    )
    built = build_block(chain.runtime, chain.state_at(parent.hash), env, list(txs), max_txs=100)
    header = seal_header(built.header, sealer or author, chain.genesis_hash)
    return Block(header, built.transactions)


def test_aura_rejects_wrong_author_future_slot_and_bad_seal_among_four(tmp_path: Path) -> None:
    chain = open_chain(tmp_path / "node")
    try:
        slot = 1000 + 1  # 1001 mod 4 = 1: bob's slot
        owner = key_of(slot, chain)
        assert owner == VALIDATORS[1]
        for impostor in (VALIDATORS[0], VALIDATORS[2], VALIDATORS[3]):
            block = build_sealed(chain, slot, impostor)  # a correct seal, by the wrong authority
            with pytest.raises(InvalidSeal, match="belongs to"):
                chain.import_block(block, now_slot=Slot(slot))
        forged = build_sealed(chain, slot, owner, sealer=VALIDATORS[0])  # claims bob, alice signs
        with pytest.raises(InvalidSeal, match="does not verify"):
            chain.import_block(forged, now_slot=Slot(slot))
        good = build_sealed(chain, slot, owner)
        flipped = bytearray(good.header.seal)
        flipped[7] ^= 1
        with pytest.raises(InvalidSeal, match="does not verify"):
            chain.import_block(
                Block(good.header.with_seal(Signature(bytes(flipped))), good.transactions),
                now_slot=Slot(slot),
            )
        with pytest.raises(InvalidBlock, match="future"):
            chain.import_block(good, now_slot=Slot(slot - 2))
        # Nothing rejected was stored or counted as that author's seal (no framing by forgery).
        assert chain.storage.best_hash() == chain.genesis_hash
        assert chain.take_evidence() == []
        assert chain.import_block(good, now_slot=Slot(slot - 1)) is not None  # one slot ahead: ok
        assert chain.storage.best_hash() == good.hash
        later = build_sealed(chain, slot + 1, key_of(slot + 1, chain))
        assert chain.import_block(later, now_slot=Slot(slot + 1)) is not None
        with pytest.raises(InvalidBlock, match="not after"):  # a slot at or before the parent's
            chain.import_block(build_sealed(chain, slot + 1, VALIDATORS[2]), now_slot=None)
    finally:
        chain.close()


def test_block_from_removed_authority_is_rejected_after_a_set_change(tmp_path: Path) -> None:
    """The author check reads the set from the parent's state, not the genesis set."""
    chain = open_chain(tmp_path / "node")
    try:
        slot = 2000
        change = {"add": [EVE.address], "remove": [VALIDATORS[3].address]}
        txs = [
            sign_transaction(VALIDATORS[0], chain.genesis_hash, 0, "authority", "propose_change",
                             change),
        ]  # fmt: skip
        new_set = [k.address for k in VALIDATORS[:3]] + [EVE.address]
        from deltachain.runtime.authority import proposal_id

        pid = proposal_id(new_set, 0)
        for voter in VALIDATORS[1:3]:
            txs.append(
                sign_transaction(voter, chain.genesis_hash, 0, "authority", "approve_change",
                                 {"proposal": pid})
            )  # fmt: skip
        block = build_sealed(chain, slot, key_of(slot, chain), txs)
        assert chain.import_block(block, now_slot=None) is not None
        assert chain.authorities_at(block.hash)[3] == EVE.address
        dave_slot = slot + 3  # index 3: dave's under the old set, eve's under the new one
        with pytest.raises(InvalidSeal, match="belongs to"):
            chain.import_block(build_sealed(chain, dave_slot, VALIDATORS[3]), now_slot=None)
        assert chain.import_block(build_sealed(chain, dave_slot, EVE), now_slot=None) is not None
    finally:
        chain.close()


# --- in-process: equivocation becomes evidence on chain ---------------------------------------


def test_two_seals_for_one_slot_are_reported_and_recorded_on_chain(tmp_path: Path) -> None:
    chain = open_chain(tmp_path / "node")
    try:
        slot = 3000  # alice's
        alice = key_of(slot, chain)
        remark = sign_transaction(
            VALIDATORS[1], chain.genesis_hash, 0, "system", "remark", {"data": b"fork"}
        )
        first = build_sealed(chain, slot, alice)
        second = build_sealed(chain, slot, alice, [remark])
        assert first.hash != second.hash
        assert chain.import_block(first, now_slot=None) is not None
        assert chain.take_evidence() == []
        result = chain.import_block(second, now_slot=None)
        assert result is not None
        pending = chain.take_evidence()
        assert pending == [("seal", first.header.encode(), second.header.encode())]
        assert result.evidence == pending
        assert chain.take_evidence() == []  # taken once

        # What the node service does with it: an authority reports it in a transaction.
        reporter = VALIDATORS[2]
        kind, one, two = pending[0]
        report = sign_transaction(
            reporter,
            chain.genesis_hash,
            chain.pool_nonce(reporter.address),
            "authority",
            "report_equivocation",
            {"kind": kind, "first": one, "second": two},
        )
        chain.submit_transaction(report.encode())
        next_slot = slot + 1
        included = chain.author_block(Slot(next_slot), key_of(next_slot, chain))
        assert included is not None
        assert [tx.hash for tx in included.block.transactions] == [report.hash]
        evidence = chain.runtime.module("authority").query(chain.best_state(), "evidence", {})
        assert len(evidence) == 1
        assert evidence[0]["kind"] == "seal"
        assert evidence[0]["offender"] == address_to_str(alice.address)
        assert evidence[0]["reporter"] == address_to_str(reporter.address)
        assert evidence[0]["detail"] == {"slot": slot}
    finally:
        chain.close()


def test_conflicting_votes_are_reported_as_evidence(tmp_path: Path) -> None:
    chain = open_chain(tmp_path / "node")
    try:
        a = build_sealed(chain, 4000, key_of(4000, chain))
        chain.import_block(a, now_slot=None)
        genesis_header = chain.storage.header(chain.genesis_hash)
        b = build_sealed(chain, 4001, key_of(4001, chain))
        # A sibling of ``b`` at the same height: a double vote for two targets at one height.
        sibling = build_sealed(chain, 4005, key_of(4005, chain))
        chain.import_block(b, now_slot=None)
        chain.import_block(sibling, now_slot=None)
        # (honest voters target the source's child; a faulty one signs two targets at height 2)
        source = Checkpoint(genesis_header.hash, genesis_header.number)
        link = Link(chain.gadget.set_id, source, Checkpoint(b.hash, b.number))
        other = Link(chain.gadget.set_id, source, Checkpoint(sibling.hash, sibling.number))
        voter = VALIDATORS[3]
        chain.add_vote(sign_vote(voter, link, chain.genesis_hash))
        chain.add_vote(sign_vote(voter, other, chain.genesis_hash))
        ((kind, one, two),) = chain.take_evidence()
        assert kind == "vote"
        from deltachain.runtime.authority import ReportEquivocation, check_evidence

        offender, detail = check_evidence(ReportEquivocation(kind, one, two), chain.genesis_hash)
        assert offender == voter.address
        assert detail["targets"] == [2, 2]
    finally:
        chain.close()


# --- in-process: a 2-2 partition, each half authoring, healed through the sync protocol -------


class LoopbackPeers:
    """What NodeService._sync_round needs from the network, answered by other Chains directly."""

    def __init__(self, chains: dict[str, Chain]) -> None:
        self.chains = chains

    def peers(self) -> list[str]:
        return list(self.chains)

    async def request(self, peer: str, protocol: str, data: bytes, timeout: float = 10.0) -> bytes:
        return serve(self.chains[peer], data)


def service_for(chain: Chain, tmp_path: Path) -> NodeService:
    import asyncio

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    config = NodeConfig(spec=chain.spec, base_path=tmp_path, key=None)
    return NodeService(chain, config, run, asyncio.Event())


VOTE_RECORDS: dict[bytes, VoteRecord] = {}
"""Each simulated voter's last vote, as an honest validator keeps it (cleared per test)."""


@pytest.fixture(autouse=True)
def _fresh_voters() -> Iterator[None]:
    VOTE_RECORDS.clear()
    yield
    VOTE_RECORDS.clear()


def vote_all(chain: Chain, keys: Sequence[Keypair]) -> list[Any]:
    """Every key votes as an honest validator whose best block is ``chain``'s head: the
    gadget's proposal under the key's own record of what it signed before."""
    votes = []
    for key in keys:
        record = VOTE_RECORDS.get(key.address, VoteRecord())
        link = chain.gadget.proposal(chain.storage.best_header(), chain.storage, record)
        if link is None:
            continue
        VOTE_RECORDS[key.address] = VoteRecord(link.set_id, link.source.number, link.target.number)
        votes.append(sign_vote(key, link, chain.genesis_hash))
    for vote in votes:
        chain.add_vote(vote)
    return votes


def author_in_turn(chain: Chain, slot: int, allowed: Sequence[Keypair]) -> Block | None:
    key = key_of(slot, chain)
    if key not in allowed:
        return None
    result = chain.author_block(Slot(slot), key)
    return None if result is None else result.block


async def test_partition_deeper_than_the_sync_overlap_heals(tmp_path: Path) -> None:
    a = open_chain(tmp_path / "a")
    b = open_chain(tmp_path / "b")
    try:
        # Together: both halves see every block and every vote; blocks finalize.
        slot = 5000
        for _ in range(6):
            block = author_in_turn(a, slot, VALIDATORS)
            assert block is not None
            b.import_block(block, now_slot=None)
            for vote in vote_all(a, VALIDATORS):
                b.add_vote(vote)
            slot += 1
        finalized = a.storage.finalized_header()
        assert finalized.number >= 4
        assert b.storage.finalized_hash() == finalized.hash
        before = {n: h for n, h in a.storage.canonical_hashes() if n <= finalized.number}

        # Split: {alice, bob} and {charlie, dave} each author their own slots for 40 slots.
        for _ in range(40):
            author_in_turn(a, slot, VALIDATORS[:2])
            author_in_turn(b, slot, VALIDATORS[2:])
            vote_all(a, VALIDATORS[:2])
            vote_all(b, VALIDATORS[2:])
            slot += 1
        fork_depth = a.storage.best_header().number - finalized.number
        assert fork_depth > 16  # deeper than the sync's re-fetch overlap
        assert a.storage.finalized_hash() == b.storage.finalized_hash() == finalized.hash
        assert a.storage.best_hash() != b.storage.best_hash()

        # Heal: each side syncs from the other until it holds the other's head.
        sa = service_for(a, tmp_path / "a")
        sb = service_for(b, tmp_path / "b")
        for _ in range(10):
            await sa._sync_round(LoopbackPeers({"b": b}))  # type: ignore[arg-type]
            await sb._sync_round(LoopbackPeers({"a": a}))  # type: ignore[arg-type]
            if a.storage.has_block(b.storage.best_hash()) and b.storage.has_block(
                a.storage.best_hash()
            ):
                break
        assert a.storage.has_block(b.storage.best_hash()), "a never fetched b's branch"
        assert b.storage.has_block(a.storage.best_hash()), "b never fetched a's branch"
        assert a.storage.best_hash() == b.storage.best_hash()  # one fork choice for both

        # Together again: finality resumes on the chosen branch; nothing finalized moved.
        for _ in range(8):
            block = author_in_turn(a, slot, VALIDATORS)
            if block is not None:
                b.import_block(block, now_slot=None)
                for vote in vote_all(a, VALIDATORS):
                    b.add_vote(vote)
            slot += 1
        assert a.storage.finalized_header().number > finalized.number + fork_depth
        assert a.storage.finalized_hash() == b.storage.finalized_hash()
        for chain in (a, b):
            for number, block_hash in before.items():
                assert chain.storage.canonical_hash(number) == block_hash
    finally:
        a.close()
        b.close()


# --- restarts: finality must resume, whoever restarts and whenever -----------------------------


def kill_9(node: Node) -> None:
    node.signal(signal.SIGKILL)
    node.kill()  # reap


def kill_after_a_block(node: Node, timeout: float = 30.0) -> None:
    """SIGKILL ``node`` just after it logs a new block: mid-vote, the awkward moment (its vote
    for that block is being signed, recorded and sent)."""
    seen = len(re.findall(r"(authored|imported) #", node.log()))
    deadline = time.monotonic() + timeout
    while len(re.findall(r"(authored|imported) #", node.log())) <= seen:
        assert time.monotonic() < deadline, f"{node.name} logged no block:\n{node.tail()}"
        time.sleep(0.02)
    kill_9(node)


def finality_resumes(network: Network, after: int, by: int, timeout: float, what: str) -> None:
    """Every node finalizes at least ``by`` blocks past ``after`` within ``timeout``."""
    network.wait_until(all_finalized(after + by), timeout, what)


def finality_survives_pausing(network: Network, paused: int) -> None:
    """With validator ``paused`` stopped, the other three (3 of 4, the bare supermajority) must
    still finalize: every one of their votes has to count, so none may vote from a stale
    source (the symptom of a restarted node that forgot what was justified)."""
    others = [i for i in range(4) if i != paused]
    node = network.nodes[paused]
    node.signal(signal.SIGSTOP)
    try:
        before = max(network.finalized(network.heads(), others))
        names = ", ".join(network.nodes[i].name for i in others)
        network.wait_until(
            all_finalized(before + 4, others),
            40,
            f"{names} to finalize while {node.name} is paused",
        )
    finally:
        node.signal(signal.SIGCONT)


@pytest.mark.slow
def test_one_validator_killed_mid_vote_votes_with_the_others_after_restart(
    network: Network,
) -> None:
    """The bug: after a restart dave voted 70 → 72 while the others voted 71 → 72, forever.
    The proof that he votes with them: with charlie paused, alice, bob and dave (3 of 4) must
    still finalize, which needs every one of dave's votes to count."""
    network.wait_until(all_finalized(3), STARTUP_S, "finality on every node")
    dave, charlie = network.nodes[3], network.nodes[2]
    kill_after_a_block(dave)
    dave.start()
    heads = network.wait_until(
        lambda hs: hs[3] is not None and hs[3].finalized > 0, 60, "dave to come back"
    )
    finality_resumes(network, max(network.finalized(heads, range(4))), 3, 40, "finality")
    finality_survives_pausing(network, network.nodes.index(charlie))
    network.watch.assert_consistent()


@pytest.mark.slow
def test_two_validators_killed_and_restarted_finality_resumes(network: Network) -> None:
    """2 of 4 down halts finality; once both are back it must resume (it froze for good)."""
    network.wait_until(all_finalized(3), STARTUP_S, "finality on every node")
    charlie, dave = network.nodes[2], network.nodes[3]
    kill_after_a_block(charlie)
    kill_9(dave)
    time.sleep(3.0)  # six slots: alice and bob author and vote, nothing can finalize
    halted = max(network.finalized(network.heads(), (0, 1)))
    charlie.start()
    dave.start()
    finality_resumes(network, halted, 3, 90, "finality to resume with all four back")
    finality_survives_pausing(network, 0)  # bob + the two restarted ones
    network.watch.assert_consistent()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_all_validators_stopped_just_after_a_slot_boundary_finality_resumes(
    network: Network, sig: signal.Signals
) -> None:
    """Ctrl-C on ``make testnet`` then ``make testnet`` again froze finality for good."""
    network.wait_until(all_finalized(3), STARTUP_S, "finality on every node")
    while not 10 <= (time.time_ns() // 1_000_000) % SLOT_MS <= 60:
        time.sleep(0.005)  # just after a slot boundary: the new block and its votes in flight
    for node in network.nodes:
        node.signal(sig)
    for node in network.nodes:
        assert node.proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(timeout=20)  # a clean stop finishes its slot first
        node.kill()
    before = max(network.watch.seen, default=0)
    for node in network.nodes:
        node.start()
    finality_resumes(network, before, 3, 120, "finality to resume after a full restart")
    finality_survives_pausing(network, 1)
    network.watch.assert_consistent()


@pytest.mark.slow
def test_validator_with_a_wiped_database_never_signs_a_conflicting_vote(
    network: Network, tmp_path: Path
) -> None:
    """ "Delete it to resync": dave's database goes, his signing state stays. He resyncs, votes
    again only past his last signed vote, and nobody sees a double or surround vote from him."""
    network.wait_until(all_finalized(4), STARTUP_S, "finality on every node")
    dave = network.nodes[3]
    state_file = tmp_path / "dave" / "signing-state-dave.json"
    kill_after_a_block(dave)
    last = json.loads(state_file.read_text())
    aside = tmp_path / "dave-wiped"
    aside.mkdir()
    for path in (tmp_path / "dave").glob("chain.sqlite*"):
        path.rename(aside / path.name)
    log_size = len(dave.log())
    dave.start()
    heads = network.wait_until(
        lambda hs: hs[3] is not None and hs[3].finalized >= last["target"][0] + 2,
        90,
        "the wiped validator to resync past its last vote",
    )
    signed: list[tuple[int, int]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(signed) < 4:
        now = json.loads(state_file.read_text())
        pair = (now["source"][0], now["target"][0])
        if pair != (last["source"][0], last["target"][0]) and (not signed or signed[-1] != pair):
            signed.append(pair)
        time.sleep(0.1)
    assert "new to signing state" in dave.log()[log_size:], dave.tail(40)
    assert len(signed) >= 2, f"dave did not vote again: {signed}\n{dave.tail(40)}"
    for source, target in signed:
        assert target > last["target"][0], (signed, last)
        assert source >= last["source"][0], (signed, last)
    for node in network.nodes:
        assert "broke a voting rule" not in node.log(), f"{node.name}:\n{node.tail(40)}"
    network.wait_until(all_finalized(max(h.finalized for h in heads if h) + 2), 40, "finality")
    network.watch.assert_consistent()
