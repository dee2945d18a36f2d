"""Validators in their own Linux network namespaces, with real addresses and real partitions.

Loopback tests share one network stack: every node is 127.0.0.1, nothing can be cut between two
of them, and a bug that only shows with distinct addresses (a peer id bound to the wrong address,
a listener on 127.0.0.1 only) stays hidden. Here each validator runs under ``ip netns exec`` in
a namespace of its own, on a veth pair enslaved to one bridge in the root namespace:

    root namespace   bridge dc-<tag>-br   10.77.<net>.1/24   (tests reach every RPC from here)
    dc-<tag>-<i>     eth0                 10.77.<net>.<10+i>/24

A partition is a set of blackhole routes inside the namespaces (each side drops what it sends
to the other; the bridge and the RPC path from the root namespace stay up); healing deletes
them. Existing TCP connections are not reset, their packets are dropped, as in a real cut.

Every name starts with ``dc-<tag>`` (tag = our pid in hex and a counter), so ``close`` removes
exactly what this object created and two runs at once never collide; the /24 is one whose
10.77.<net>.0/24 has no route yet. Needs root and iproute2: ``unavailable()`` says why not.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from deltachain.node import testnet as tn
from deltachain.primitives.chainspec import load_chain_spec

P2P_PORT = 30333
RPC_PORT = 9944
METRICS_PORT = 9615
FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
)
_counter = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip`` command failed while building or changing the fabric."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def unavailable() -> str | None:
    """Why namespaces cannot be used here (None if they can): tests skip with this reason."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    name = f"dc-probe-{os.getpid():x}"
    probe = ip("netns", "add", name, check=False)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    ip("netns", "del", name, check=False)
    return None


def faketime_lib() -> str | None:
    """The multi-threaded libfaketime (the node runs threads), if installed."""
    return next((p for p in FAKETIME_LIBS if Path(p).exists()), None)


def ensure_faketime() -> str | None:
    """libfaketime's path, installing the Debian package ``faketime`` once if it is missing
    (root only); None if that is impossible, so callers skip."""
    lib = faketime_lib()
    if lib is not None or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return lib
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "faketime"]):
        try:
            subprocess.run(cmd, capture_output=True, timeout=300, env=env, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
    return faketime_lib()


def skew_env(seconds: float) -> dict[str, str]:
    """Environment that runs a process with its clock ``seconds`` off (libfaketime)."""
    lib = faketime_lib()
    if lib is None:
        raise NetnsError("libfaketime is not installed (Debian package faketime)")
    return {
        "LD_PRELOAD": lib,
        "FAKETIME": f"{seconds:+g}s",
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # NTP skew moves the wall clock only
    }


def _free_subnet() -> int:
    routes = ip("-4", "route", "show", "table", "all").stdout
    for net in range(0, 250):
        if f"10.77.{net}." not in routes:
            return net
    raise NetnsError("no free 10.77.x.0/24")


def start_process(
    command: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``testnet.start_process`` with extra environment (a clock skew)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )


class Fabric:
    """n namespaces on one bridge; ``partition``/``heal`` cut and restore links between them."""

    def __init__(self, n: int) -> None:
        self.tag = f"dc-{os.getpid() % 0xFFFF:x}{next(_counter)}"
        self.n = n
        self.bridge = f"{self.tag}-br"
        self.namespaces = [f"{self.tag}-{i}" for i in range(n)]
        self.cut: list[tuple[int, int]] = []
        self.net = -1
        self._created_bridge = False
        self._created_ns: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        self.net = _free_subnet()
        ip("link", "add", self.bridge, "type", "bridge")
        self._created_bridge = True
        ip("addr", "add", f"{self.host_address}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, ns in enumerate(self.namespaces):
            ip("netns", "add", ns)
            self._created_ns.append(ns)
            outside = f"{self.tag}-h{i}"
            ip("link", "add", outside, "type", "veth", "peer", "name", f"{self.tag}-p{i}")
            ip("link", "set", f"{self.tag}-p{i}", "netns", ns)
            ip("-n", ns, "link", "set", f"{self.tag}-p{i}", "name", "eth0")
            ip("-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "set", outside, "master", self.bridge)
            ip("link", "set", outside, "up")

    @property
    def host_address(self) -> str:
        return f"10.77.{self.net}.1"

    def address(self, i: int) -> str:
        return f"10.77.{self.net}.{10 + i}"

    def partition(self, *groups: Sequence[int]) -> None:
        """Cut every link between two different groups (both directions)."""
        self.heal()
        side = {i: g for g, members in enumerate(groups) for i in members}
        for a in range(self.n):
            for b in range(self.n):
                if a != b and side.get(a, -1) != side.get(b, -2):
                    ip("-n", self.namespaces[a], "route", "add", "blackhole", self.address(b))
                    self.cut.append((a, b))

    def heal(self) -> None:
        while self.cut:
            a, b = self.cut.pop()
            ip("-n", self.namespaces[a], "route", "del", "blackhole", self.address(b), check=False)

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[i]]

    def close(self) -> None:
        """Kill whatever still runs in our namespaces, then delete them and the bridge (the
        veth pairs go with their namespace end)."""
        for ns in self._created_ns:
            pids = ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            ip("netns", "del", ns, check=False)
        for i in range(len(self._created_ns)):  # a namespace still referenced keeps its pair
            if ip("link", "show", f"{self.tag}-h{i}", check=False).returncode == 0:
                ip("link", "del", f"{self.tag}-h{i}", check=False)
        self._created_ns.clear()
        if self._created_bridge:
            ip("link", "del", self.bridge, check=False)
            self._created_bridge = False


class NsNet:
    """Four (or n) validators, each in its own namespace; the interface of bench_network.Net
    (``start``, ``procs``, ``log``, ``rpc_addrs``, ``close``) so bench_chaos drives either."""

    def __init__(self, directory: Path, slot_ms: int, n: int = 4) -> None:
        self.dir = directory
        self.slot_ms = slot_ms
        self.n = n
        self.fabric = Fabric(n)
        try:
            tn.new_chain_spec(directory, n, slot_ms=slot_ms, base_port=P2P_PORT)
            self.spec_path = directory / tn.SPEC_FILE
            spec = load_chain_spec(self.spec_path)
            self.validators = tn.find_validator_keys(spec, directory)
            keys = [tn.node_key_path(directory, i) for i in range(n)]
            addrs = [
                f"/ip4/{self.fabric.address(i)}/tcp/{P2P_PORT}/p2p/"
                + tn.peer_id_of(tn.ensure_node_key(k))
                for i, k in enumerate(keys)
            ]
            self.commands = [
                [
                    *self.fabric.exec_prefix(i),
                    *tn.node_command(
                        self.spec_path,
                        v,
                        directory / v.name,
                        P2P_PORT,
                        RPC_PORT,
                        keys[i],
                        [a for j, a in enumerate(addrs) if j != i],
                        METRICS_PORT,
                    ),
                    "--listen-host",
                    self.fabric.address(i),
                    "--rpc-host",
                    self.fabric.address(i),
                ]
                for i, v in enumerate(self.validators)
            ]
        except BaseException:
            self.fabric.close()
            raise
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self.env: list[dict[str, str]] = [{} for _ in range(n)]

    @property
    def rpc_addrs(self) -> list[tuple[str, int]]:
        return [(self.fabric.address(i), RPC_PORT) for i in range(self.n)]

    def start(self, i: int) -> None:
        self.procs[i] = start_process(self.commands[i], self.log(i), self.env[i])

    def log(self, i: int) -> Path:
        return self.dir / "logs" / f"{self.validators[i].name}.log"

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)
        self.fabric.close()


if __name__ == "__main__":  # a quick manual check: build, show, tear down
    fabric = Fabric(2)
    try:
        print(fabric.tag, [fabric.address(i) for i in range(2)])
        out = subprocess.run(
            [*fabric.exec_prefix(0), "ping", "-c1", "-W2", fabric.address(1)],
            capture_output=True,
            text=True,
            check=False,
        )
        print(out.stdout or out.stderr)
    finally:
        fabric.close()
    sys.exit(0)
