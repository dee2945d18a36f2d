"""A dev node in a subprocess on loopback, for tests of what users run: RPC, CLI, p2p.

One place starts and stops them, so every such test waits with the same bound (startup may
include loading -- or, after a kernel edit, compiling -- the numba kernels) and never leaves a
process behind.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltachain.primitives.chainspec import dev_chain_spec

CLI = [sys.executable, "-m", "deltachain.node.cli"]
START_S = 120.0
"""Startup includes loading (or, after an edit of the kernels, compiling) the numba kernels."""


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports that were free a moment ago (all bound at once, then freed)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [int(s.getsockname()[1]) for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class NodeProcess:
    url: str
    metrics_url: str | None
    proc: subprocess.Popen[bytes]
    log: Path
    spec: Path
    base: Path

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]

    @property
    def p2p_addr(self) -> str:
        """The multiaddr the node logged ("network listening on …"), peer id included."""
        found = re.search(r"network listening on (\S+)", self.log.read_text())
        if found is None:
            raise AssertionError(f"no listen address in the log:\n{self.log.read_text()}")
        return found.group(1)


def start_node(
    tmp: Path,
    *extra: str,
    prometheus: bool = False,
    ready: str = r"authored #2 ",
    model: dict[str, Any] | None = None,
) -> NodeProcess:
    """Start //alice as the only validator of a fresh dev chain (250 ms slots) in ``tmp`` and
    wait until ``ready`` (a regex) appears in its log; ``extra`` goes to ``deltachain node``;
    ``model`` overrides fields of the dev model."""
    tmp.mkdir(parents=True, exist_ok=True)
    spec = tmp / "spec.json"
    raw = dev_chain_spec(slot_ms=250).to_json()
    raw["genesis"]["runtime"]["model_state"]["models"][0].update(model or {})
    spec.write_text(json.dumps(raw))
    port = free_port()
    metrics_port = free_port()
    log = tmp / "node.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                *CLI,
                "node",
                "--chain",
                str(spec),
                "--key",
                "//alice",
                "--validator",
                "--base-path",
                str(tmp / "db"),
                "--rpc-port",
                str(port),
                *(["--prometheus-port", str(metrics_port)] if prometheus else ["--no-prometheus"]),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    node = NodeProcess(
        f"http://127.0.0.1:{port}",
        f"http://127.0.0.1:{metrics_port}/metrics" if prometheus else None,
        proc,
        log,
        spec,
        tmp / "db",
    )
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if re.search(ready, log.read_text()):
            return node
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.1)
    stop_node(node)
    raise AssertionError(f"node did not log {ready!r} in {START_S} s:\n{log.read_text()}")


def stop_node(node: NodeProcess) -> None:
    """SIGINT (a clean shutdown), then SIGKILL if it takes over 15 s."""
    node.proc.send_signal(signal.SIGINT)
    try:
        node.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        node.proc.kill()
        node.proc.wait()
