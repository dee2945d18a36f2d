"""State-transition vectors: chain spec (pre-state) + encoded blocks → post-state root.

The format (``tests/vectors/README.md``) is the contract between implementations: any node that
replays a vector must reach the same roots and reject the same blocks with the same error class.
``deltachain vectors run FILE…`` replays them from the command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deltachain.chain import construct_runtime
from deltachain.consensus.aura import verify_header
from deltachain.errors import DeltachainError
from deltachain.primitives.block import Block
from deltachain.primitives.chainspec import parse_chain_spec
from deltachain.runtime import system
from deltachain.runtime.executive import apply_block, build_genesis
from deltachain.runtime.state import MemoryStateStore, State


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def replay(vector: dict[str, Any]) -> list[str]:
    """Replay one vector; returns a list of mismatches (empty = the vector passes)."""
    problems: list[str] = []
    runtime = construct_runtime()
    spec = parse_chain_spec(vector["chainSpec"])
    store = MemoryStateStore()
    genesis = build_genesis(runtime, spec, store)
    store.apply(genesis.diff)
    if _hex(genesis.hash) != vector["genesisHash"]:
        problems.append(f"genesis hash {_hex(genesis.hash)} != {vector['genesisHash']}")
    head = genesis.header
    for i, entry in enumerate(vector["blocks"]):
        outcome = "valid"
        try:
            block = Block.decode(bytes.fromhex(entry["encoded"][2:]))
            authorities = system.get_authorities(State(store, head.state_root))
            verify_header(block.header, head, authorities, genesis.hash, now_slot=None)
            output = apply_block(runtime, State(store, head.state_root), block, genesis.hash)
        except DeltachainError as exc:
            outcome = type(exc).__name__
        else:
            store.apply(output.diff)
            head = block.header
        if outcome != entry["expect"]:
            problems.append(f"block {i}: expected {entry['expect']}, got {outcome}")
        elif outcome == "valid" and _hex(head.state_root) != entry["stateRoot"]:
            problems.append(
                f"block {i}: state root {_hex(head.state_root)} != {entry['stateRoot']}"
            )
    post = State(store, head.state_root)
    if _hex(head.state_root) != vector["post"]["stateRoot"]:
        problems.append(f"post state root {_hex(head.state_root)} != {vector['post']['stateRoot']}")
    for key_hex, value_hex in vector["post"].get("storage", {}).items():
        value = post.get(bytes.fromhex(key_hex[2:]))
        if (None if value is None else _hex(value)) != value_hex:
            problems.append(f"post storage {key_hex}: {value!r} != {value_hex}")
    return problems


def run_files(paths: list[Path]) -> int:
    """CLI entry: prints one line per vector; returns how many failed."""
    failed = 0
    for path in paths:
        problems = replay(json.loads(Path(path).read_text()))
        print(f"{'ok  ' if not problems else 'FAIL'} {path}")
        for problem in problems:
            print(f"     {problem}")
        failed += bool(problems)
    return failed
