"""The chain spec (``genesis.json``), parsed once at the boundary into a typed, validated config.

Shape follows Substrate's chain spec: ``name``, ``id``, ``chainType``, ``bootNodes``,
``properties`` and ``genesis``. Our ``genesis`` has two parts: ``consensus`` (slot length and
the initial authorities) and ``runtime`` (one section per runtime module, each validated by the
module that owns it, so this layer never needs to know what modules exist).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from deltachain.crypto.keys import Address, Keypair, address_to_str, parse_address
from deltachain.errors import ChainSpecError, InvalidKey

CHAIN_TYPES = ("Development", "Local", "Live")
MAX_SPEC_SIZE = 64 << 20
MIN_SLOT_MS = 100


@dataclass(frozen=True)
class ChainSpec:
    name: str
    id: str
    chain_type: str
    boot_nodes: tuple[str, ...]
    properties: Mapping[str, Any]
    slot_ms: int
    authorities: tuple[Address, ...]
    runtime: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "chainType": self.chain_type,
            "bootNodes": list(self.boot_nodes),
            "properties": dict(self.properties),
            "genesis": {
                "consensus": {
                    "slotMs": self.slot_ms,
                    "authorities": [address_to_str(a) for a in self.authorities],
                },
                "runtime": _thaw(self.runtime),
            },
        }


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in obj:
        raise ChainSpecError(f"chain spec: missing {where}{key}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ChainSpecError(f"chain spec: {where}{key} has the wrong type")
    return value


def parse_chain_spec(obj: Any) -> ChainSpec:
    """Validate a decoded chain spec; raises ChainSpecError naming the offending field."""
    if not isinstance(obj, dict):
        raise ChainSpecError("chain spec: the top level must be a JSON object")
    genesis = _get(obj, "genesis", dict, "")
    consensus = _get(genesis, "consensus", dict, "genesis.")
    runtime = _get(genesis, "runtime", dict, "genesis.")
    chain_type = _get(obj, "chainType", str, "")
    if chain_type not in CHAIN_TYPES:
        raise ChainSpecError(f"chain spec: chainType must be one of {', '.join(CHAIN_TYPES)}")
    slot_ms = _get(consensus, "slotMs", int, "genesis.consensus.")
    if slot_ms < MIN_SLOT_MS:
        raise ChainSpecError(f"chain spec: slotMs must be at least {MIN_SLOT_MS}")
    raw_auth = _get(consensus, "authorities", list, "genesis.consensus.")
    if not raw_auth:
        raise ChainSpecError("chain spec: at least one authority is required")
    try:
        authorities = tuple(
            parse_address(a) if isinstance(a, str) else _bad_addr() for a in raw_auth
        )
    except InvalidKey as exc:
        raise ChainSpecError(f"chain spec: bad authority: {exc}") from None
    if len(set(authorities)) != len(authorities):
        raise ChainSpecError("chain spec: duplicate authority")
    boot_nodes = _get(obj, "bootNodes", list, "") if "bootNodes" in obj else []
    if not all(isinstance(b, str) for b in boot_nodes):
        raise ChainSpecError("chain spec: bootNodes must be strings")
    properties = obj.get("properties", {})
    if not isinstance(properties, dict):
        raise ChainSpecError("chain spec: properties must be an object")
    return ChainSpec(
        name=_get(obj, "name", str, ""),
        id=_get(obj, "id", str, ""),
        chain_type=chain_type,
        boot_nodes=tuple(boot_nodes),
        properties=_freeze(properties),
        slot_ms=slot_ms,
        authorities=authorities,
        runtime=_freeze(runtime),
    )


def _bad_addr() -> Address:
    raise InvalidKey("authorities must be 0x-hex strings")


def load_chain_spec(path: Path) -> ChainSpec:
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SPEC_SIZE:
            raise ChainSpecError(f"{path} is larger than {MAX_SPEC_SIZE} bytes")
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise ChainSpecError(f"chain spec {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ChainSpecError(f"chain spec {path} is not valid JSON: {exc}") from None
    return parse_chain_spec(obj)


DEV_MODEL: dict[str, Any] = {
    "id": "sine-mlp",
    "layers": [
        {"name": "hidden1.w", "shape": [1, 40], "kind": "global", "initStd": "1/1"},
        {"name": "hidden1.b", "shape": [40], "kind": "global", "initStd": "2/1"},
        {"name": "hidden2.w", "shape": [40, 40], "kind": "global", "initStd": "2/9"},
        {"name": "hidden2.b", "shape": [40], "kind": "global", "initStd": "0/1"},
        {"name": "out.w", "shape": [40, 1], "kind": "local", "initStd": "2/9"},
        {"name": "out.b", "shape": [1], "kind": "local", "initStd": "0/1"},
    ],
    "fracBits": 16,
    "chunkSize": 256,
    "aggregation": "zero-fill",
    "trimBeta": "1/5",
    "eta": "4/1",
    "roundLen": 3,
    "minDeltas": 2,
    "maxDeltas": 32,
    "staleness": 1,
    "init": {"kind": "normal", "seed": 7},
}
"""A tiny sine-regression MLP for the dev chain (its ``model_state`` genesis section).

zero-fill and eta 4/1 won the measurements in docs/learning.md; hidden1.b is spread (std 2) so
the first layer's kinks cover the input range instead of all sitting at x = 0."""


def dev_chain_spec(slot_ms: int = 1000) -> ChainSpec:
    """One validator (``//alice``), also the admin; ``//bob`` and ``//charlie`` are clients."""
    alice, bob, charlie = (Keypair.dev(n) for n in ("alice", "bob", "charlie"))
    return parse_chain_spec(
        {
            "name": "Deltachain Development",
            "id": "deltachain_dev",
            "chainType": "Development",
            "bootNodes": [],
            "properties": {"addressFormat": "hex"},
            "genesis": {
                "consensus": {"slotMs": slot_ms, "authorities": [address_to_str(alice.address)]},
                "runtime": {
                    "system": {
                        "admin": address_to_str(alice.address),
                        "clients": [address_to_str(bob.address), address_to_str(charlie.address)],
                    },
                    "model_state": {"models": [DEV_MODEL]},
                },
            },
        }
    )
