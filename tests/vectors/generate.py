"""Regenerate the state-transition vectors: ``python tests/vectors/generate.py``.

Everything is deterministic (dev keys, fixed slots, ed25519's deterministic signatures), so
re-running must reproduce the committed files byte for byte; test_vectors checks that.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deltachain.consensus.aura import seal_header
from deltachain.primitives.block import Block
from deltachain.runtime import system
from support import ALICE, BOB, DAVE, MemChain

HERE = Path(__file__).resolve().parent


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def _vector(
    description: str, chain: MemChain, blocks: list[tuple[Block, str]], storage_keys: list[bytes]
) -> dict[str, Any]:
    post = chain.state()
    return {
        "description": description,
        "chainSpec": chain.spec.to_json(),
        "genesisHash": _hex(chain.genesis_hash),
        "blocks": [
            {
                "encoded": _hex(b.encode()),
                "expect": expect,
                **({"stateRoot": _hex(b.header.state_root)} if expect == "valid" else {}),
            }
            for b, expect in blocks
        ],
        "post": {
            "stateRoot": _hex(chain.head.state_root),
            "storage": {
                _hex(k): (None if (v := post.get(k)) is None else _hex(v)) for k in storage_keys
            },
        },
    }


def registry_lifecycle() -> dict[str, Any]:
    chain = MemChain()
    blocks = [
        chain.produce([chain.tx(ALICE, "system", "register_client", {"client": DAVE.address})]),
        chain.produce(
            [
                chain.tx(DAVE, "system", "remark", {"data": b"hello"}),
                chain.tx(BOB, "system", "remark", {"data": b"world"}),
            ]
        ),
        chain.produce([chain.tx(ALICE, "system", "revoke_client", {"client": BOB.address})]),
        chain.produce([]),
    ]
    return _vector(
        "admin registers a client, two clients transact, admin revokes one",
        chain,
        [(b, "valid") for b in blocks],
        [
            system.PREFIX_CLIENT + DAVE.address,
            system.PREFIX_CLIENT + BOB.address,
            system.PREFIX_NONCE + DAVE.address,
            system.PREFIX_NONCE + ALICE.address,
        ],
    )


def invalid_blocks() -> dict[str, Any]:
    chain = MemChain()
    good = chain.produce([chain.tx(BOB, "system", "remark", {"data": b"a"})])
    candidate, _ = chain.build([chain.tx(BOB, "system", "remark", {"data": b"b"})])
    bad_root = Block(
        seal_header(
            dataclasses.replace(candidate.header, state_root=bytes(32)), ALICE, chain.genesis_hash
        ),
        candidate.transactions,
    )
    bad_seal = Block(candidate.header.with_seal(bytes(64)), candidate.transactions)  # type: ignore[arg-type]
    replay = Block(
        seal_header(
            dataclasses.replace(candidate.header, extrinsics_root=good.header.extrinsics_root),
            ALICE,
            chain.genesis_hash,
        ),
        good.transactions,
    )
    chain.import_block(candidate)
    return _vector(
        "bad state root, bad seal and a replayed transaction are rejected",
        chain,
        [
            (good, "valid"),
            (bad_root, "InvalidBlock"),
            (bad_seal, "InvalidSeal"),
            (replay, "InvalidBlock"),
            (candidate, "valid"),
        ],
        [system.PREFIX_NONCE + BOB.address],
    )


VECTORS = {"registry_lifecycle.json": registry_lifecycle, "invalid_blocks.json": invalid_blocks}


def render(make: Any) -> str:
    return json.dumps(make(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    for name, make in VECTORS.items():
        (HERE / name).write_text(render(make))
        print(f"wrote {HERE / name}")
