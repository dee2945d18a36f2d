"""A loopback validator network with a registered device fleet, for bench_fleet.py and the
multi-node fleet tests (tests/test_fleet_network.py imports this module).

Validators come from ``chain-spec new`` (real keys, real bootnodes, ``--reserved-only``, one
process each); the genesis is patched to register ``devices`` deterministic device keys and to
size the model's rounds. Every process it starts is stopped by ``close()``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from deltachain.chain import construct_runtime
from deltachain.client.fleet import device_key
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.node import testnet as tn
from deltachain.primitives.chainspec import load_chain_spec
from deltachain.primitives.types import Hash32
from deltachain.runtime.executive import build_genesis
from deltachain.runtime.state import MemoryStateStore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_network import free_block


def rpc(url: str, method: str, *params: Any, timeout: float = 5.0) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        reply = json.loads(response.read())
    if "error" in reply:
        raise RuntimeError(reply["error"]["message"])
    return reply["result"]


class FleetNet:
    def __init__(
        self,
        directory: Path,
        *,
        validators: int = 4,
        slot_ms: int = 1000,
        devices: int = 100,
        model: dict[str, Any] | None = None,
        extra_models: list[dict[str, Any]] | None = None,
    ) -> None:
        used: set[int] = set()
        self.n = validators
        self.p2p = free_block(validators, used)
        self.rpc_base = free_block(validators, used)
        self.dir = directory
        self.slot_ms = slot_ms
        tn.new_chain_spec(directory, validators, slot_ms=slot_ms, base_port=self.p2p)
        self.spec_path = directory / tn.SPEC_FILE
        raw = json.loads(self.spec_path.read_text())
        self.devices: list[Keypair] = [device_key(i) for i in range(devices)]
        runtime = raw["genesis"]["runtime"]
        runtime["system"]["clients"] = [address_to_str(k.address) for k in self.devices]
        models = runtime["model_state"]["models"]
        models[0].update(model or {})
        self.model_id: str = models[0]["id"]
        models.extend({**models[0], **extra} for extra in extra_models or [])
        self.spec_path.write_text(json.dumps(raw, indent=2) + "\n")
        spec = load_chain_spec(self.spec_path)
        # The devices' trust root: the genesis hash computed from the spec, not asked of a node.
        self.genesis = Hash32(build_genesis(construct_runtime(), spec, MemoryStateStore()).hash)
        self.validators = tn.find_validator_keys(spec, directory)
        keys = [tn.node_key_path(directory, i) for i in range(validators)]
        addrs = [
            tn.multiaddr(self.p2p + i, tn.peer_id_of(tn.ensure_node_key(k)))
            for i, k in enumerate(keys)
        ]
        self.commands = [
            tn.node_command(
                self.spec_path,
                v,
                directory / v.name,
                self.p2p + i,
                self.rpc_base + i,
                keys[i],
                [a for j, a in enumerate(addrs) if j != i],
            )
            for i, v in enumerate(self.validators)
        ]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * validators

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.rpc_base + i}" for i in range(self.n)]

    def log(self, i: int) -> Path:
        return self.dir / "logs" / f"{self.validators[i].name}.log"

    def start(self, i: int) -> None:
        self.procs[i] = tn.start_process(self.commands[i], self.log(i))

    def start_all(self) -> None:
        for i in range(self.n):
            self.start(i)

    def kill(self, i: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def close(self) -> None:
        for i in range(self.n):
            self.kill(i)

    def finalized(self, i: int) -> int:
        url = self.urls[i]
        return int(rpc(url, "chain_getHeader", rpc(url, "chain_getFinalizedHead"))["number"])

    def wait_finalized(self, at_least: int, timeout: float) -> None:
        """Every node has finalized ``at_least``; RuntimeError with a log tail otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and proc.returncode != -9:
                    raise RuntimeError(f"node {i} exited:\n" + tn.log_tail(self.log(i)))
            try:
                if min(self.finalized(i) for i in range(self.n)) >= at_least:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"not every node finalized #{at_least} within {timeout:.0f} s:\n"
                    + tn.log_tail(self.log(0))
                )
            time.sleep(0.25)
