"""A local multi-validator testnet: ``chain-spec new`` and ``testnet up|status|down``.

``chain-spec new`` writes a chain spec with freshly generated validator keys and node (p2p)
keys; ``testnet up`` starts one ``deltachain node`` process per validator on loopback, each with
every other validator as a reserved bootnode, and waits until every node finalizes. What it
started is recorded in ``DIR/testnet.json`` (pids, ports, RPC URLs, base paths, logs), which is
what ``status`` polls and ``down`` stops: ``down`` signals exactly those pids, and only while
``/proc/<pid>/cmdline`` still names the node's base path (a recycled pid is never signalled).

Layout of DIR::

    genesis.json               chain spec (from ``chain-spec new``; or the --chain file is used)
    keys/validator-<i>.json    validator keys (plain, mode 0600; dev chains only)
    node-keys/node-<i>.json    p2p identities: stable peer ids
    <name>/                    each node's database (--base-path)
    logs/<name>.log            each node's stderr
    testnet.json               the running network (removed by ``down``)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.crypto.keystore import plain_key, read_key_file, write_key_file
from deltachain.errors import DeltachainError, KeystoreError
from deltachain.primitives.chainspec import DEV_MODEL, ChainSpec, load_chain_spec
from deltachain.primitives.types import Address

DEV_NAMES = ("alice", "bob", "charlie", "dave", "eve", "ferdie")
STATE_FILE = "testnet.json"
SPEC_FILE = "genesis.json"
DEFAULT_DIR = ".testnet"
DEFAULT_NAME = "Deltachain Local Testnet"
FINALIZED_TARGET = 2
"""``up`` returns once every node reports a finalized block at least this high, and at least
this many blocks above the highest finalized block any node reported when it came up (so a
restarted testnet is "finalizing" only once finality moves again, not because it had)."""
VOTE_LAG_FLAG = 3
"""``status`` flags a validator whose last signed vote is this many blocks behind the newest."""
POLL_S = 0.5
RPC_TIMEOUT_S = 1.0
STOP_GRACE_S = 10.0
LOG_TAIL_LINES = 15


# --- chain-spec new ---------------------------------------------------------------------------


def spec_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "deltachain_local"


def node_key_path(directory: Path, index: int) -> Path:
    return directory / "node-keys" / f"node-{index}.json"


def ensure_node_key(path: Path) -> bytes:
    """The node key seed stored at ``path``, created on first use."""
    if not path.exists():
        write_key_file(path, plain_key(Keypair.generate()))
    return read_key_file(path, None).seed


def peer_id_of(seed: bytes) -> str:
    from deltachain.node.network import peer_id_from_seed  # imports libp2p: only when needed

    return peer_id_from_seed(seed)


def multiaddr(port: int, peer_id: str) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"


def _write_atomic(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to a temp file beside ``path`` (mode 0644, fsynced), then move it into
    place: replacing ``path``, or -- ``replace=False`` -- raising DeltachainError if it exists."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # fails if the name exists, unlike rename
        except FileExistsError:
            raise DeltachainError(f"{path} already exists; refusing to overwrite it") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def new_chain_spec(
    out: Path,
    validators: int,
    *,
    name: str = DEFAULT_NAME,
    slot_ms: int = 1000,
    base_port: int = 30333,
) -> ChainSpec:
    """Write ``out/genesis.json``, ``out/keys/validator-i.json``, ``out/node-keys/node-i.json``.

    Raises DeltachainError if a genesis (or one of the key files) is already there.
    """
    if validators < 1:
        raise DeltachainError("--validators must be at least 1")
    if not 0 < base_port <= 65535 - validators:
        raise DeltachainError(f"--base-port {base_port} leaves no room for {validators} ports")
    spec_path = out / SPEC_FILE
    if spec_path.exists():
        raise DeltachainError(
            f"{spec_path} already exists; refusing to overwrite it (choose another --out)"
        )
    keys = [out / "keys" / f"validator-{i}.json" for i in range(validators)]
    for path in keys:
        if path.exists():
            raise DeltachainError(f"{path} already exists; refusing to overwrite a key file")
    out.mkdir(parents=True, exist_ok=True)
    validator_keys = [Keypair.generate() for _ in range(validators)]
    for path, keypair in zip(keys, validator_keys, strict=True):
        write_key_file(path, plain_key(keypair))
    boot_nodes = [
        multiaddr(base_port + i, peer_id_of(ensure_node_key(node_key_path(out, i))))
        for i in range(validators)
    ]
    authorities = [address_to_str(k.address) for k in validator_keys]
    raw = {
        "name": name,
        "id": spec_id(name),
        "chainType": "Local",
        "bootNodes": boot_nodes,
        "properties": {"addressFormat": "hex"},
        "genesis": {
            "consensus": {"slotMs": slot_ms, "authorities": authorities},
            "runtime": {
                "system": {"admin": authorities[0], "clients": []},
                "model_state": {"models": [json.loads(json.dumps(DEV_MODEL))]},
            },
        },
    }
    # Validate before writing: a bad --slot-ms must not leave a spec behind.
    from deltachain.primitives.chainspec import parse_chain_spec

    spec = parse_chain_spec(raw)
    _write_atomic(spec_path, json.dumps(raw, indent=2) + "\n", replace=False)
    return spec


def cmd_chain_spec_new(args: argparse.Namespace) -> int:
    out = Path(args.out)
    spec = new_chain_spec(
        out, args.validators, name=args.name, slot_ms=args.slot_ms, base_port=args.base_port
    )
    print(f"wrote {out / SPEC_FILE}: {spec.name!r} ({spec.id}), {len(spec.authorities)} validators")
    for i, authority in enumerate(spec.authorities):
        key_file = out / "keys" / f"validator-{i}.json"
        print(f"  validator-{i}  {address_to_str(authority)}  key {key_file}")
    print(f"node keys in {out / 'node-keys'}; validator-0 is the admin")
    return 0


# --- the running network's record ------------------------------------------------------------


@dataclass(frozen=True)
class NodeRecord:
    name: str
    pid: int
    p2p_port: int
    rpc_port: int
    base_path: str
    log: str
    started_at: float
    proc_start: int | None
    peer_id: str
    key: str
    prometheus_port: int | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pid": self.pid,
            "p2pPort": self.p2p_port,
            "rpcPort": self.rpc_port,
            "rpcUrl": self.rpc_url,
            "basePath": self.base_path,
            "log": self.log,
            "startedAt": self.started_at,
            "procStart": self.proc_start,
            "peerId": self.peer_id,
            "key": self.key,
            "prometheusPort": self.prometheus_port,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> NodeRecord:
        return cls(
            name=str(obj["name"]),
            pid=int(obj["pid"]),
            p2p_port=int(obj["p2pPort"]),
            rpc_port=int(obj["rpcPort"]),
            base_path=str(obj["basePath"]),
            log=str(obj["log"]),
            started_at=float(obj["startedAt"]),
            proc_start=None if obj.get("procStart") is None else int(obj["procStart"]),
            peer_id=str(obj.get("peerId", "")),
            key=str(obj.get("key", "")),
            prometheus_port=None
            if obj.get("prometheusPort") is None
            else int(obj["prometheusPort"]),
        )


def write_state(directory: Path, chain: Path, nodes: Sequence[NodeRecord]) -> None:
    state = {"chain": str(chain), "nodes": [n.to_json() for n in nodes]}
    _write_atomic(directory / STATE_FILE, json.dumps(state, indent=2) + "\n", replace=True)


def read_state(directory: Path) -> list[NodeRecord]:
    path = directory / STATE_FILE
    if not path.exists():
        raise DeltachainError(
            f"no testnet recorded in {directory} ({path} is missing); "
            "start one with `deltachain testnet up`"
        )
    try:
        obj = json.loads(path.read_text())
        return [NodeRecord.from_json(n) for n in obj["nodes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DeltachainError(f"{path} is unreadable ({exc}); remove it by hand") from None


def _proc_start(pid: int) -> int | None:
    """The process start time in clock ticks since boot (Linux), None if unknown or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None


def is_ours(node: NodeRecord) -> bool:
    """True while ``node.pid`` is alive and is still the node we started (not a recycled pid)."""
    try:
        stat = Path(f"/proc/{node.pid}/stat").read_text()
        cmdline = Path(f"/proc/{node.pid}/cmdline").read_bytes()
    except OSError:
        return False
    if stat[stat.rfind(")") + 2 :].startswith("Z"):
        return False  # a zombie waiting for its parent: already dead
    if node.base_path.encode() not in cmdline.split(b"\0"):
        return False
    return node.proc_start is None or _proc_start(node.pid) == node.proc_start


# --- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeStatus:
    name: str
    rpc_url: str
    up: bool
    best: int | None = None
    finalized: int | None = None
    finalized_hash: str | None = None
    peers: int | None = None
    last_vote: int | None = None
    """Target height of the validator's last signed vote (from its signing-state file)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rpcUrl": self.rpc_url,
            "status": "up" if self.up else "down",
            "best": self.best,
            "finalized": self.finalized,
            "finalizedHash": self.finalized_hash,
            "peers": self.peers,
            "lastVote": self.last_vote,
        }


def poll_node(name: str, rpc_url: str, timeout: float = RPC_TIMEOUT_S) -> NodeStatus:
    from deltachain.node.rpc_client import RpcClient

    client = RpcClient(rpc_url, timeout=timeout)
    try:
        best = client.call("chain_getHeader")
        finalized_hash = client.call("chain_getFinalizedHead")
        finalized = client.call("chain_getHeader", finalized_hash)
        health = client.call("system_health")
        return NodeStatus(
            name,
            rpc_url,
            True,
            int(best["number"]),
            int(finalized["number"]),
            str(finalized_hash),
            int(health["peers"]),
        )
    except (DeltachainError, KeyError, TypeError, ValueError):
        return NodeStatus(name, rpc_url, False)


def poll_all(nodes: Sequence[tuple[str, str]]) -> list[NodeStatus]:
    """Poll every node concurrently (a stopped node costs one timeout, not one per node)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return list(pool.map(lambda n: poll_node(*n), nodes))


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def status_table(statuses: Sequence[NodeStatus]) -> list[str]:
    width = max([4, *(len(s.name) for s in statuses)])
    lines = [f"{'NAME':<{width}}  {'RPC':<22}  {'BEST':>6}  {'FINAL':>6}  {'PEERS':>5}"]
    for s in statuses:
        if s.up:
            cells = f"{_cell(s.best):>6}  {_cell(s.finalized):>6}  {_cell(s.peers):>5}"
        else:
            cells = f"{'down':>6}  {'':>6}  {'':>5}"
        lines.append(f"{s.name:<{width}}  {s.rpc_url:<22}  {cells}")
    return lines


def status_line(statuses: Sequence[NodeStatus], elapsed: float) -> str:
    parts = [
        f"{s.name} #{s.best} fin #{s.finalized} peers {s.peers}" if s.up else f"{s.name} down"
        for s in statuses
    ]
    return f"[{elapsed:5.1f}s] " + " | ".join(parts)


class StatusDisplay:
    """A table redrawn in place on a terminal; plain lines (on change, ≤ 1/s) otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.drawn = 0
        self.last_line = ""
        self.last_print = 0.0
        self.started = time.monotonic()

    def show(self, statuses: Sequence[NodeStatus], note: str = "", force: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        if self.tty:
            lines = [*status_table(statuses), note or f"elapsed {elapsed:.1f} s"]
            if self.drawn:
                self.out.write(f"\x1b[{self.drawn}F")
            for line in lines:
                self.out.write("\x1b[2K" + line + "\n")
            self.drawn = len(lines)
        else:
            line = status_line(statuses, elapsed)
            core = line.split("] ", 1)[1]
            now = time.monotonic()
            if force or (core != self.last_line and now - self.last_print >= 1.0):
                self.out.write(line + (f"  {note}" if note else "") + "\n")
                self.last_line, self.last_print = core, now
        self.out.flush()


def cmd_status(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    nodes = read_state(directory)
    statuses = poll_all([(n.name, n.rpc_url) for n in nodes])
    statuses = [  # a port answered by a process that is not our node counts as down
        s if is_ours(n) else NodeStatus(s.name, s.rpc_url, False)
        for s, n in zip(statuses, nodes, strict=True)
    ]
    statuses = [
        dataclasses.replace(s, last_vote=last_vote_target(n))
        for s, n in zip(statuses, nodes, strict=True)
    ]
    if args.json:
        print(json.dumps([s.to_json() for s in statuses], indent=2))
    else:
        print("\n".join(status_table(statuses)))
        for line in vote_lag_warnings(statuses):
            print(line)
    return 0


def last_vote_target(node: NodeRecord) -> int | None:
    """The target height in the node's signing-state file (None if it never voted)."""
    from deltachain.node.signing_state import default_path

    try:
        state = json.loads(default_path(node.key, Path(node.base_path)).read_text())
        return int(state["target"][0])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


def vote_lag_warnings(statuses: Sequence[NodeStatus]) -> list[str]:
    """One line per running validator whose last vote trails the newest by VOTE_LAG_FLAG or
    more: its votes may not be counting (finality then has one fault less to spare)."""
    votes = [s.last_vote for s in statuses if s.up and s.last_vote is not None]
    if not votes:
        return []
    newest = max(votes)
    return [
        f"warning: {s.name} last voted for #{s.last_vote}, the newest vote is for #{newest}: "
        "its votes are not counting; see its log (docs/consensus.md §2.1)"
        for s in statuses
        if s.up and s.last_vote is not None and newest - s.last_vote >= VOTE_LAG_FLAG
    ]


# --- up ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Validator:
    name: str
    key: str
    """What ``deltachain node --key`` takes: a //dev name or a key file path."""


def find_validator_keys(spec: ChainSpec, directory: Path) -> list[Validator]:
    """A key for every authority: the well-known dev keys, then ``DIR/keys/*.json``."""
    known: dict[Address, Validator] = {}
    for dev in DEV_NAMES:
        known.setdefault(Keypair.dev(dev).address, Validator(dev, f"//{dev}"))
    for path in sorted((directory / "keys").glob("*.json")):
        if path.name.endswith(".signing-state.json"):
            continue  # a validator's last vote (node/signing_state.py), kept beside its key
        try:
            keypair = read_key_file(path, None)
        except (KeystoreError, OSError):
            continue  # encrypted or foreign: not usable by an unattended testnet
        known.setdefault(keypair.address, Validator(path.stem, str(path.resolve())))
    missing = [address_to_str(a) for a in spec.authorities if a not in known]
    if missing:
        raise DeltachainError(
            f"no key for authority {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + f"; put its plain key file in {directory / 'keys'}/ or use dev keys (//alice …)"
        )
    return [known[a] for a in spec.authorities]


def port_problem(port: int) -> str | None:
    """Why ``port`` cannot be bound on 127.0.0.1 ("in use", …), or None if it is free."""
    if not 0 < port <= 65535:
        return "out of range"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            return "in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
    return None


def check_ports_free(ports: Sequence[tuple[int, str]]) -> None:
    """Raise a one-line DeltachainError naming the first busy port and the option to change."""
    for port, option in ports:
        why = port_problem(port)
        if why is not None:
            raise DeltachainError(
                f"port {port} on 127.0.0.1 is {why}; choose another {option} "
                "(or stop what is using it)"
            )


def node_command(
    spec_path: Path,
    validator: Validator,
    base_path: Path,
    p2p_port: int,
    rpc_port: int,
    node_key: Path,
    bootnodes: Sequence[str],
    prometheus_port: int | None = None,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "deltachain.node.cli",
        "node",
        "--chain",
        str(spec_path),
        "--validator",
        "--key",
        validator.key,
        "--base-path",
        str(base_path),
        "--port",
        str(p2p_port),
        "--rpc-port",
        str(rpc_port),
        "--node-key",
        str(node_key),
        "--name",
        validator.name,
        *([] if prometheus_port is None else ["--prometheus-port", str(prometheus_port)]),
        "--reserved-only",
        "--bootnodes",
        *bootnodes,
    ]


def start_process(command: Sequence[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a node in its own session (Ctrl-C in our terminal does not reach it)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _live_record(directory: Path) -> list[NodeRecord]:
    if not (directory / STATE_FILE).exists():
        return []
    try:
        return [n for n in read_state(directory) if is_ours(n)]
    except DeltachainError:
        return []


def _network_size(args: argparse.Namespace, directory: Path) -> tuple[Path, int, bool]:
    """The spec to use, its number of validators, and whether it still has to be written."""
    if args.chain:
        spec_path = Path(args.chain).resolve()
        if not spec_path.exists():
            raise DeltachainError(f"chain spec {args.chain} does not exist")
    else:
        spec_path = (directory / SPEC_FILE).resolve()
        if not spec_path.exists():
            return spec_path, 4 if args.validators is None else args.validators, True
    n = len(load_chain_spec(spec_path).authorities)
    if args.validators is not None and args.validators != n:
        raise DeltachainError(
            f"{spec_path} has {n} authorities, not --validators {args.validators}; "
            "use another --dir for a different network size"
        )
    return spec_path, n, False


def cmd_up(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    live = _live_record(directory)
    if live:
        raise DeltachainError(
            f"a testnet in {directory} is already running ({len(live)} nodes, pids "
            f"{', '.join(str(n.pid) for n in live)}); stop it with `deltachain testnet down"
            f"{'' if args.dir == DEFAULT_DIR else ' --dir ' + args.dir}`"
        )
    spec_path, n, create = _network_size(args, directory)
    if n < 1:
        raise DeltachainError("--validators must be at least 1")
    p2p_ports = [args.base_port + i for i in range(n)]
    rpc_ports = [args.rpc_base_port + i for i in range(n)]
    metrics_ports = [args.prometheus_base_port + i for i in range(n)]
    if len(set(p2p_ports) | set(rpc_ports) | set(metrics_ports)) < 3 * n:
        raise DeltachainError(
            "the --base-port, --rpc-base-port and --prometheus-base-port ranges overlap"
        )
    check_ports_free(
        [(p, "--base-port") for p in p2p_ports] + [(p, "--rpc-base-port") for p in rpc_ports]
    )
    for port in metrics_ports:  # like the node itself: no metrics is not worth refusing over
        why = port_problem(port)
        if why is not None:
            print(
                f"note: metrics port {port} is {why}: that node runs without metrics "
                "(choose another --prometheus-base-port to have them)"
            )
    if create:
        new_chain_spec(directory, n, slot_ms=args.slot_ms, base_port=args.base_port)
        print(f"wrote {spec_path} with {n} new validators (keys in {directory / 'keys'})")
    else:
        print(f"using {spec_path}")
    directory.mkdir(parents=True, exist_ok=True)
    spec = load_chain_spec(spec_path)
    validators = find_validator_keys(spec, directory)
    node_keys = [node_key_path(directory, i) for i in range(n)]
    peer_ids = [peer_id_of(ensure_node_key(path)) for path in node_keys]
    addrs = [multiaddr(p2p_ports[i], peer_ids[i]) for i in range(n)]
    if set(spec.boot_nodes) - set(addrs):
        print(
            "note: the spec's bootNodes name other addresses than this testnet's; nodes dial both"
        )

    check_old_data(spec, [directory / v.name for v in validators])
    warm_kernels()
    started: list[tuple[NodeRecord, subprocess.Popen[bytes]]] = []
    try:
        for i, validator in enumerate(validators):
            base_path = directory / validator.name
            log_path = directory / "logs" / f"{validator.name}.log"
            command = node_command(
                spec_path,
                validator,
                base_path,
                p2p_ports[i],
                rpc_ports[i],
                node_keys[i],
                [a for j, a in enumerate(addrs) if j != i],
                metrics_ports[i],
            )
            proc = start_process(command, log_path)
            record = NodeRecord(
                validator.name,
                proc.pid,
                p2p_ports[i],
                rpc_ports[i],
                str(base_path),
                str(log_path),
                time.time(),
                _proc_start(proc.pid),
                peer_ids[i],
                validator.key,
                metrics_ports[i],
            )
            started.append((record, proc))
            write_state(directory, spec_path, [r for r, _ in started])
        print(
            f"started {n} validators of {spec.name!r} ({spec.slot_ms} ms slots); "
            f"logs in {directory / 'logs'}"
        )
        wait_finalizing(started, args.timeout, sys.stdout)
    except BaseException as exc:
        if started:
            if isinstance(exc, KeyboardInterrupt):
                print("\ninterrupted; stopping the nodes", file=sys.stderr)
            stop_started(directory, started)
        raise
    print(
        f"testnet is finalizing: {n} validators, RPC {started[0][0].rpc_url} … "
        f"{started[-1][0].rpc_url}"
    )
    if not args.follow:
        where = "" if args.dir == DEFAULT_DIR else f" --dir {args.dir}"
        print(
            f"`deltachain testnet status{where}` shows progress; "
            f"`deltachain testnet down{where}` stops it"
        )
        return 0
    return follow(directory, started)


def check_old_data(spec: ChainSpec, base_paths: Sequence[Path]) -> None:
    """Refuse, before starting anything, node data left by a different chain spec."""
    from deltachain.chain import construct_runtime
    from deltachain.node.storage import DB_FILE, Storage
    from deltachain.runtime.executive import build_genesis
    from deltachain.runtime.state import MemoryStateStore

    existing = [p for p in base_paths if (p / DB_FILE).exists()]
    if not existing:
        return
    genesis = build_genesis(construct_runtime(), spec, MemoryStateStore()).hash
    stale = []
    for path in existing:
        try:
            storage = Storage.open_existing(path)
        except DeltachainError:
            continue  # the node itself will say what is wrong with it
        try:
            if storage.genesis_hash() != genesis:
                stale.append(path)
        finally:
            storage.close()
    if stale:
        raise DeltachainError(
            f"{', '.join(str(p) for p in stale)} hold{'s' if len(stale) == 1 else ''} another "
            f"chain than this spec's (genesis 0x{genesis.hex()[:16]}…): the chain spec changed "
            f"since; delete the old node data (rm -rf {' '.join(str(p) for p in stale)}) or "
            "choose another --dir"
        )


def warm_kernels() -> None:
    """Compile (or load) the runtime's numba kernels once, here, so that N nodes starting
    together load them from the on-disk cache instead of each compiling them cold at once."""
    from deltachain.chain import construct_runtime

    started = time.perf_counter()
    print("preparing the aggregation kernels (cached; a first run compiles them) …", end="")
    sys.stdout.flush()
    try:
        for module in construct_runtime().modules.values():
            module.warm_up()
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # numba turns a Ctrl-C inside its callbacks into RuntimeError
        print(flush=True)
        raise DeltachainError(f"preparing the aggregation kernels failed: {exc}") from None
    print(f" ready in {time.perf_counter() - started:.1f} s", flush=True)


class NetworkFailed(DeltachainError):
    pass


def wait_finalizing(
    started: Sequence[tuple[NodeRecord, subprocess.Popen[bytes]]], timeout: float, out: TextIO
) -> None:
    """Show live status until every node finalized past where it stood at start (at least
    FINALIZED_TARGET, and FINALIZED_TARGET above the highest finalized block seen on any node's
    first answer); raise NetworkFailed."""
    display = StatusDisplay(out)
    deadline = time.monotonic() + timeout
    targets = [(r.name, r.rpc_url) for r, _ in started]
    first_seen: dict[str, int] = {}
    while True:
        statuses = poll_all(targets)
        for s in statuses:
            if s.up and s.finalized is not None:
                first_seen.setdefault(s.name, s.finalized)
        target = FINALIZED_TARGET + max(first_seen.values(), default=0)
        ready = len(first_seen) == len(targets) and all(
            s.up and (s.finalized or 0) >= target for s in statuses
        )
        dead = [(r, p.poll()) for r, p in started if p.poll() is not None]
        display.show(statuses, force=ready)
        if ready:
            return
        if dead or time.monotonic() > deadline:
            why = (
                ", ".join(f"{r.name} exited with status {code}" for r, code in dead)
                if dead
                else f"not every node finalized block #{target} within {timeout:.0f} s"
            )
            for record, _ in started:
                print(f"--- {record.log} (last lines) ---", file=sys.stderr)
                print(log_tail(record.log), file=sys.stderr)
            raise NetworkFailed(f"{why}; the nodes were stopped (logs above)")
        time.sleep(POLL_S)


def follow(directory: Path, started: Sequence[tuple[NodeRecord, subprocess.Popen[bytes]]]) -> int:
    """Keep showing status until Ctrl-C (or SIGTERM), then stop the network."""
    display = StatusDisplay(sys.stdout)
    targets = [(r.name, r.rpc_url) for r, _ in started]
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while not stop:
            display.show(poll_all(targets), note="Ctrl-C stops the testnet")
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        print("\nstopping the testnet …", flush=True)
        stop_started(directory, started)
        print("stopped")
    return 0


# --- down ----------------------------------------------------------------------------------


def stop_started(
    directory: Path, started: Sequence[tuple[NodeRecord, subprocess.Popen[bytes]]]
) -> None:
    """Stop the nodes this process started; a second Ctrl-C cannot cut the shutdown short."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop_nodes([r for r, _ in started], [p for _, p in started])
        (directory / STATE_FILE).unlink(missing_ok=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _gone(node: NodeRecord, proc: subprocess.Popen[bytes] | None) -> bool:
    if proc is not None:
        return proc.poll() is not None
    return not is_ours(node)


def stop_nodes(
    nodes: Sequence[NodeRecord],
    procs: Sequence[subprocess.Popen[bytes] | None] | None = None,
    grace: float = STOP_GRACE_S,
    say: Callable[[str], None] = lambda _: None,
) -> list[str]:
    """SIGTERM each node still ours, SIGKILL it after ``grace``; returns names force-killed."""
    handles: list[subprocess.Popen[bytes] | None] = list(procs or [None] * len(nodes))
    live = [(n, p) for n, p in zip(nodes, handles, strict=True) if not _gone(n, p)]
    for node, _ in live:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGTERM)
            say(f"sent SIGTERM to {node.name} (pid {node.pid})")
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and not all(_gone(n, p) for n, p in live):
        time.sleep(0.1)
    killed = []
    for node, proc in live:
        if not _gone(node, proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.pid, signal.SIGKILL)
            killed.append(node.name)
            say(f"{node.name} (pid {node.pid}) did not stop within {grace:.0f} s: SIGKILL")
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and not all(_gone(n, p) for n, p in live):
        time.sleep(0.05)
    for _, proc in live:
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
    return killed


def cmd_down(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    nodes = read_state(directory)
    for node in nodes:
        if not is_ours(node):
            print(f"{node.name}: pid {node.pid} is not running (or is no longer our node)")
    stop_nodes(nodes, say=print)
    left = [n for n in nodes if is_ours(n)]
    if left:
        raise DeltachainError(
            f"could not stop {', '.join(f'{n.name} (pid {n.pid})' for n in left)}"
        )
    (directory / STATE_FILE).unlink(missing_ok=True)
    if args.purge:
        for node in nodes:
            shutil.rmtree(node.base_path, ignore_errors=True)
            Path(node.log).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (directory / "logs").rmdir()  # only if empty
        print(f"stopped {len(nodes)} nodes; removed their data and logs")
    else:
        print(f"stopped {len(nodes)} nodes (data kept; --purge removes it)")
    return 0


# --- command line --------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``chain-spec`` and ``testnet`` to the ``deltachain`` command line."""
    cs = sub.add_parser("chain-spec", help="create chain specs").add_subparsers(
        dest="chain_spec_cmd", required=True
    )
    new = cs.add_parser("new", help="a new local chain spec with fresh validator and node keys")
    new.add_argument("--validators", type=int, required=True, help="number of validators")
    new.add_argument("--out", required=True, help="directory for genesis.json and keys")
    new.add_argument("--name", default=DEFAULT_NAME, help="chain name (default %(default)r)")
    new.add_argument("--slot-ms", type=int, default=1000, help="slot length (default %(default)s)")
    new.add_argument(
        "--base-port", type=int, default=30333, help="first p2p port in bootNodes (%(default)s)"
    )
    new.set_defaults(func=cmd_chain_spec_new)

    tn = sub.add_parser("testnet", help="a local multi-validator network").add_subparsers(
        dest="testnet_cmd", required=True
    )
    up = tn.add_parser("up", help="start validators on loopback; return once they finalize")
    up.add_argument("--validators", type=int, help="without --chain: how many (default 4)")
    up.add_argument("--dir", default=DEFAULT_DIR, help="testnet directory (default %(default)s)")
    up.add_argument("--chain", help="use this chain spec (default: DIR/genesis.json, or a new one)")
    up.add_argument("--slot-ms", type=int, default=1000, help="for a new spec (default 1000)")
    up.add_argument("--base-port", type=int, default=30333, help="first p2p port (%(default)s)")
    up.add_argument("--rpc-base-port", type=int, default=9944, help="first RPC port (%(default)s)")
    up.add_argument(
        "--prometheus-base-port", type=int, default=9615, help="first metrics port (%(default)s)"
    )
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to reach finality")
    up.add_argument(
        "--follow", action="store_true", help="keep showing status; Ctrl-C stops the network"
    )
    up.set_defaults(func=cmd_up)
    st = tn.add_parser("status", help="best and finalized height and peers of every node")
    st.add_argument("--dir", default=DEFAULT_DIR)
    st.add_argument("--json", action="store_true", help="a JSON list, for scripts")
    st.set_defaults(func=cmd_status)
    down = tn.add_parser("down", help="stop exactly the processes `testnet up` started")
    down.add_argument("--dir", default=DEFAULT_DIR)
    down.add_argument("--purge", action="store_true", help="also delete node data and logs")
    down.set_defaults(func=cmd_down)
