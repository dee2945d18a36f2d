"""The light client: finality over justifications, warp sync across set changes, state and chunk
proofs, a tampered-input corpus it must reject completely, persistent-state size, remote sync."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from deltachain import codec
from deltachain.chain import construct_runtime
from deltachain.consensus.aura import author_of
from deltachain.consensus.finality import (
    Checkpoint,
    InvalidVote,
    Justification,
    Link,
    VoteRecord,
    sign_vote,
)
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.crypto.trie import TrieProof, trie_prove
from deltachain.errors import DecodeError, DeltachainError, ProofError
from deltachain.light import ChunkProof, LightClient, ModelRecordView, SetProof, StaleData
from deltachain.light import keys as light_keys
from deltachain.light.remote import HttpTransport, RemoteError, RemoteLightClient, Transport
from deltachain.model_state import module as model_module
from deltachain.node.chain import Chain
from deltachain.node.rpc import RpcServer
from deltachain.primitives.block import Header
from deltachain.primitives.chainspec import DEV_MODEL, dev_chain_spec, parse_chain_spec
from deltachain.primitives.transaction import sign_transaction
from deltachain.primitives.types import BlockNumber, Signature, Slot
from deltachain.runtime import system
from deltachain.runtime.authority import proposal_id
from deltachain.runtime.state import State, key_hash, value_hash
from support import ALICE, BOB, CHARLIE, DAVE, MemChain, realistic_header

EVE = Keypair.dev("eve")
FRANK = Keypair.dev("frank")
MALLORY = Keypair.dev("mallory")
ALL_KEYS = [ALICE, BOB, CHARLIE, DAVE, EVE, FRANK]
SET0 = [ALICE, BOB, CHARLIE, DAVE]
SET1 = [ALICE, BOB, CHARLIE, EVE]  # dave out, eve in (enacted at block CHANGE1)
SET2 = [BOB, CHARLIE, EVE, FRANK]  # alice out, frank in (enacted at block CHANGE2)
MODEL_A = DEV_MODEL["id"]
MODEL_B = "sine-mlp-b"
REJECTED = (InvalidVote, ProofError, DecodeError, StaleData)


# --- a chain with two authority-set changes and two models --------------------------------


class TestChain(MemChain):
    """A four-validator MemChain whose blocks are authored by the slot's owner."""

    __test__ = False

    def next_block(self, txs: list[Any] | None = None) -> Header:
        authorities = system.get_authorities(self.state())
        slot = self.head.slot + 1
        owner = author_of(Slot(slot), authorities)
        self.author = next(k for k in ALL_KEYS if k.address == owner)
        self.produce(txs or [])
        return self.head

    def change_set(self, add: Keypair, remove: Keypair, approvers: list[Keypair]) -> int:
        """Propose and approve a change; returns the number of the enacting block."""
        set_id = system.get_set_id(self.state())
        current = list(system.get_authorities(self.state()))
        proposer = approvers[0]
        tx = self.tx(
            proposer,
            "authority",
            "propose_change",
            {"add": [add.address], "remove": [remove.address]},
        )
        self.next_block([tx])
        new = [a for a in current if a != remove.address] + [add.address]
        pid = proposal_id(new, set_id)
        for key in approvers[1:]:
            self.next_block([self.tx(key, "authority", "approve_change", {"proposal": pid})])
        assert system.get_set_id(self.state()) == set_id + 1
        return self.head.number

    def justify(
        self,
        number: int,
        keys: list[Keypair],
        set_id: int,
        genesis: Hash32 | None = None,
    ) -> Justification:
        source, target = self.headers[number], self.headers[number + 1]
        return sign_justification(source, target, keys, set_id, genesis or self.genesis_hash)

    def state_at(self, number: int) -> State:
        return State(self.store, self.headers[number].state_root)

    def prove(self, number: int, key: bytes) -> tuple[bytes | None, TrieProof]:
        root = self.headers[number].state_root
        return self.state_at(number).get(key), trie_prove(self.store, root, key_hash(key))

    def set_proof(self, number: int, authorities: bool = True) -> SetProof:
        sid_value, sid_proof = self.prove(number, system.KEY_SET_ID)
        if not authorities:
            return SetProof(sid_value, sid_proof)
        auth_value, auth_proof = self.prove(number, system.KEY_AUTHORITIES)
        return SetProof(sid_value, sid_proof, auth_value, auth_proof)

    def chunk_parts(self, number: int, model: str, index: int) -> dict[str, Any]:
        module = self.runtime.modules["model_state"]
        found: dict[str, Any] = module.query(
            self.state_at(number), "chunk", {"model": model, "index": index}
        )
        found["recordProof"] = self.prove(number, model_module.key_model(model))[1]
        return found

    def chunk_proof(self, number: int, model: str, index: int) -> ChunkProof:
        found = self.chunk_parts(number, model, index)
        header = self.headers[number]
        return ChunkProof(
            model,
            index,
            found["chunk"],
            tuple(found["proof"]),
            found["record"],
            found["recordProof"],
            header.state_root,
            header.hash,
        )


def sign_justification(
    source: Header, target: Header, keys: list[Keypair], set_id: int, genesis: Hash32
) -> Justification:
    link = Link(
        set_id, Checkpoint(source.hash, source.number), Checkpoint(target.hash, target.number)
    )
    sigs = sorted((k.address, sign_vote(k, link, genesis).signature) for k in keys)
    return Justification(set_id, source, target, tuple(sigs))


def make_spec(authorities: list[Keypair], chain_id: str | None = None) -> Any:
    raw = dev_chain_spec().to_json()
    if chain_id is not None:
        raw["id"] = chain_id
    raw["genesis"]["consensus"]["authorities"] = [address_to_str(k.address) for k in authorities]
    second = copy.deepcopy(DEV_MODEL)
    second["id"] = MODEL_B
    second["init"] = {"kind": "normal", "seed": 8}
    raw["genesis"]["runtime"]["model_state"]["models"].append(second)
    return parse_chain_spec(raw)


@dataclasses.dataclass
class World:
    chain: TestChain
    change1: int  # block whose state first holds set 1
    change2: int  # block whose state first holds set 2

    @property
    def genesis(self) -> Header:
        return self.chain.headers[0]

    def client(self) -> LightClient:
        return LightClient.from_genesis(
            self.chain.genesis_hash,
            [k.address for k in SET0],
            genesis_header=self.genesis,
        )


@pytest.fixture(scope="module")
def world() -> World:
    chain = TestChain(make_spec(SET0))
    for _ in range(3):
        chain.next_block()
    change1 = chain.change_set(EVE, DAVE, [ALICE, BOB, CHARLIE])
    for _ in range(3):
        chain.next_block()
    change2 = chain.change_set(FRANK, ALICE, [BOB, CHARLIE, EVE])
    for _ in range(4):
        chain.next_block()
    return World(chain, change1, change2)


def set_for(world: World, finalized_before: int) -> tuple[list[Keypair], int]:
    """The voting set when the last finalized block is ``finalized_before``."""
    if finalized_before >= world.change2:
        return SET2, 2
    if finalized_before >= world.change1:
        return SET1, 1
    return SET0, 0


# --- the keys the light client restates are the runtime's --------------------------------


def test_light_keys_are_the_runtime_keys() -> None:
    assert light_keys.KEY_AUTHORITIES == system.KEY_AUTHORITIES
    assert light_keys.KEY_SET_ID == system.KEY_SET_ID
    for key in (b"", b"system/admin", b"\x00\xff" * 40):
        assert light_keys.state_key_hash(key) == key_hash(key)
        assert light_keys.state_value_hash(key) == value_hash(key)
    for model in ("sine-mlp", "digits", "ü"):
        assert light_keys.key_model(model) == model_module.key_model(model)


def test_light_never_imports_node_runtime_or_numpy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, deltachain.light, deltachain.light.remote; "
        "bad = [m for m in sys.modules if m.startswith(('deltachain.node', 'deltachain.runtime',"
        " 'deltachain.model_state', 'numpy'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- following finality ------------------------------------------------------------------


def test_follows_several_justifications_in_one_set(world: World) -> None:
    chain, client = world.chain, world.client()
    for number in (1, 2, 3):
        header = client.follow(chain.justify(number, SET0, 0), chain.set_proof(number, False))
        assert header == chain.headers[number]
        assert client.finalized == chain.headers[number]
        assert client.trusted_state_root() == chain.headers[number].state_root
        assert client.set_id == 0
    # not every block needs a justification: jump ahead, without a set proof
    client.follow(chain.justify(world.change1 - 1, SET0, 0))
    assert client.finalized.number == world.change1 - 1
    admin, proof = chain.prove(client.finalized.number, system.KEY_ADMIN)
    client.verify_state(system.KEY_ADMIN, admin, proof)
    client.verify_state(system.KEY_ADMIN, admin, proof.encode())


def test_follows_each_block_across_both_set_changes(world: World) -> None:
    chain, client = world.chain, world.client()
    for number in range(1, len(chain.headers) - 1):
        keys, set_id = set_for(world, client.finalized.number)
        client.follow(chain.justify(number, keys, set_id), chain.set_proof(number))
        expected_keys, expected_set = set_for(world, number)
        assert client.set_id == expected_set
        assert client.authorities == tuple(k.address for k in expected_keys)
    assert client.finalized == chain.headers[-2]


def test_warp_sync_needs_one_justification_per_set_change(world: World) -> None:
    chain, client = world.chain, world.client()
    last = len(chain.headers) - 2
    steps = [
        (chain.justify(world.change1, SET0, 0), chain.set_proof(world.change1)),
        (chain.justify(world.change2, SET1, 1), chain.set_proof(world.change2)),
        (chain.justify(last, SET2, 2), chain.set_proof(last, authorities=False)),
    ]
    assert client.warp(steps) == chain.headers[last]
    assert (client.set_id, client.authorities) == (2, tuple(k.address for k in SET2))
    # a justification finalized by the old set *after* the change block also carries the change
    late = world.client()
    late.follow(chain.justify(world.change1 + 2, SET0, 0), chain.set_proof(world.change1 + 2))
    assert late.set_id == 1


def test_warp_is_all_or_nothing(world: World) -> None:
    chain, client = world.chain, world.client()
    before = client.save()
    steps = [
        (chain.justify(world.change1, SET0, 0), chain.set_proof(world.change1)),
        (chain.justify(world.change2, SET0, 0), chain.set_proof(world.change2)),  # wrong set
    ]
    with pytest.raises(InvalidVote, match="set 0"):
        client.warp(steps)
    assert client.save() == before


def test_a_hidden_set_change_stalls_the_client_until_the_set_is_proven(world: World) -> None:
    chain, client = world.chain, world.client()
    client.follow(chain.justify(world.change1, SET0, 0))  # the provider hid the set change
    assert client.set_id == 0
    with pytest.raises(InvalidVote, match="set 1"):
        client.follow(chain.justify(world.change1 + 1, SET1, 1))
    client.update_set(chain.set_proof(world.change1))
    client.follow(chain.justify(world.change1 + 1, SET1, 1))
    assert client.set_id == 1


def test_bootstrap_from_the_genesis_hash_alone(world: World) -> None:
    chain = world.chain
    client = LightClient.bootstrap(chain.genesis_hash, world.genesis, chain.set_proof(0))
    assert client.authorities == tuple(k.address for k in SET0)
    assert client.set_id == 0
    other = TestChain(make_spec([ALICE, BOB]))
    with pytest.raises(ProofError, match="genesis"):
        LightClient.bootstrap(chain.genesis_hash, other.headers[0], other.set_proof(0))
    with pytest.raises(ProofError):  # the other chain's set proof against our genesis root
        LightClient.bootstrap(chain.genesis_hash, world.genesis, other.set_proof(0))
    with pytest.raises(ProofError, match="authorities"):
        LightClient.bootstrap(chain.genesis_hash, world.genesis, chain.set_proof(0, False))


# --- persistent state --------------------------------------------------------------------


@pytest.mark.parametrize("size", [4, 16])
def test_persistent_state_fits_in_4_kib(size: int) -> None:
    authorities = [Keypair.dev(f"a{i}").address for i in range(size)]
    client = LightClient(Hash32(b"\x66" * 32), 2**40, authorities, realistic_header())
    saved = client.save()
    assert len(saved) <= 4096
    assert len(saved) <= 280 + 34 * size  # header ≈ 211 B, 34 B per authority, framing
    print(f"light client state with {size} authorities: {len(saved)} bytes")


def test_save_load_round_trip(world: World) -> None:
    chain, client = world.chain, world.client()
    client.follow(chain.justify(world.change1, SET0, 0), chain.set_proof(world.change1))
    saved = client.save()
    again = LightClient.load(saved)
    assert again.save() == saved
    assert (again.genesis_hash, again.set_id, again.authorities, again.finalized) == (
        client.genesis_hash,
        client.set_id,
        client.authorities,
        client.finalized,
    )
    again.follow(chain.justify(world.change1 + 1, SET1, 1))  # the loaded client keeps going
    bad_states = [
        b"",
        saved[:-1],
        saved + b"\x00",
        codec.encode([2, *codec.decode(saved)[1:]]),
        codec.encode([1, b"\x00" * 31, 0, [b"\x01" * 32], world.genesis.encode()]),
        codec.encode([1, chain.genesis_hash, 0, [], world.genesis.encode()]),
        codec.encode([1, chain.genesis_hash, 0, [b"\x01" * 32] * 2, world.genesis.encode()]),
        codec.encode([1, b"\x07" * 32, 0, [b"\x01" * 32], world.genesis.encode()]),  # block 0
        codec.encode([1, chain.genesis_hash, -1, [b"\x01" * 32], world.genesis.encode()]),
    ]
    for bad in bad_states:
        with pytest.raises(DecodeError):
            LightClient.load(bad)


# --- state and chunk proofs --------------------------------------------------------------


def test_verifies_every_chunk_of_both_models(world: World) -> None:
    chain, client = world.chain, world.client()
    number = len(chain.headers) - 2
    client.warp(
        [
            (chain.justify(world.change1, SET0, 0), chain.set_proof(world.change1)),
            (chain.justify(world.change2, SET1, 1), chain.set_proof(world.change2)),
            (chain.justify(number, SET2, 2), None),
        ]
    )
    module = chain.runtime.modules["model_state"]
    for model in (MODEL_A, MODEL_B):
        record = module.record(chain.state_at(number), model)
        parts = []
        for index in range(record.config.num_chunks):
            found = chain.chunk_parts(number, model, index)
            view = client.verify_chunk(
                model,
                index,
                found["chunk"],
                found["proof"],
                found["record"],
                found["recordProof"],
            )
            assert view.chunk_count == record.config.num_chunks
            assert view.weights_root == record.weights_root
            assert view.version == record.version
            parts.append(found["chunk"])
            # the same through a pinned verifier and a node-style ChunkProof
            client.verifier().verify_chunk_proof(chain.chunk_proof(number, model, index), view)
        weights = module.weights(chain.state_at(number), record.config)
        assert b"".join(parts) == weights.astype("<i4").tobytes()


def test_a_chunk_proof_against_another_root_is_stale(world: World) -> None:
    chain, client = world.chain, world.client()
    client.follow(chain.justify(3, SET0, 0))
    verifier = client.verifier()
    verifier.verify_chunk_proof(chain.chunk_proof(3, MODEL_A, 0))
    for number in (2, 4):  # older, and newer than what the client trusts
        with pytest.raises(StaleData):
            verifier.verify_chunk_proof(chain.chunk_proof(number, MODEL_A, 0))
    # a verifier stays pinned to its header while the client moves on
    client.follow(chain.justify(4, SET0, 0))
    verifier.verify_chunk_proof(chain.chunk_proof(3, MODEL_A, 1))
    with pytest.raises(StaleData):
        client.verifier().verify_chunk_proof(chain.chunk_proof(3, MODEL_A, 1))
    # explicitly trusted older header
    found = chain.chunk_parts(3, MODEL_A, 2)
    args = (MODEL_A, 2, found["chunk"], found["proof"], found["record"], found["recordProof"])
    client.verify_chunk(*args, header=chain.headers[3])
    with pytest.raises(ProofError):  # the old proof does not verify against the new root
        client.verify_chunk(*args)


# --- the tampered-input corpus -----------------------------------------------------------


def flip_every_byte(data: bytes) -> list[bytes]:
    """Each byte position xor 0x01 and xor 0x80 (low and high bit)."""
    out = []
    for i in range(len(data)):
        for mask in (0x01, 0x80):
            out.append(data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :])
    return out


def header_forgeries(header: Header) -> list[Header]:
    other = Hash32(b"\x5a" * 32)
    return [
        dataclasses.replace(header, state_root=other),
        dataclasses.replace(header, number=BlockNumber(header.number + 1)),
        dataclasses.replace(header, number=BlockNumber(header.number + 100)),
        dataclasses.replace(header, parent_hash=other),
        dataclasses.replace(header, slot=Slot(header.slot + 1)),
        dataclasses.replace(header, extrinsics_root=other),
        dataclasses.replace(header, author=MALLORY.address),
        dataclasses.replace(header, seal=Signature(bytes(64))),
    ]


Case = tuple[str, Callable[[], object]]


def justification_cases(world: World) -> list[Case]:
    chain = world.chain
    n = 5
    good = chain.justify(n, SET0, 0)
    fresh = world.client
    fresh().follow(good)  # positive control: the untampered input is accepted
    cases: list[Case] = []

    def follow(j: Justification, proof: SetProof | None = None) -> Callable[[], object]:
        return lambda: fresh().follow(j, proof)

    for i, forged in enumerate(header_forgeries(good.source)):
        cases.append(
            (f"forged source header {i}", follow(dataclasses.replace(good, source=forged)))
        )
    for i, forged in enumerate(header_forgeries(good.target)):
        cases.append(
            (f"forged target header {i}", follow(dataclasses.replace(good, target=forged)))
        )
    # a forged header re-signed as a link by the real authorities is still no child of the source
    wrong_child = chain.headers[n + 2]
    cases.append(
        (
            "target not the source's child",
            follow(sign_justification(good.source, wrong_child, SET0, 0, chain.genesis_hash)),
        )
    )
    cases.append(
        (
            "source and target swapped",
            follow(sign_justification(good.target, good.source, SET0, 0, chain.genesis_hash)),
        )
    )
    sigs = list(good.signatures)
    mallory_sig = sign_justification(good.source, good.target, [MALLORY], 0, chain.genesis_hash)
    cases += [
        (
            "one non-authority signer",
            follow(dataclasses.replace(good, signatures=(*sigs[:2], *mallory_sig.signatures))),
        ),
        ("all non-authority signers", follow(chain.justify(n, [MALLORY, EVE, FRANK], 0))),
        ("signer of the next set", follow(chain.justify(n, [ALICE, BOB, EVE], 0))),
        ("duplicated voter x3", follow(dataclasses.replace(good, signatures=(sigs[0],) * 3))),
        (
            "duplicated voter 2+1",
            follow(dataclasses.replace(good, signatures=(*sigs[:2], sigs[0]))),
        ),
        ("2 of 4 votes", follow(chain.justify(n, SET0[:2], 0))),
        ("1 of 4 votes", follow(chain.justify(n, SET0[:1], 0))),
        ("no votes", follow(dataclasses.replace(good, signatures=()))),
        ("wrong set id (signed as set 1)", follow(chain.justify(n, SET0, 1))),
        ("set id relabelled", follow(dataclasses.replace(good, set_id=1))),
        (
            "another chain's genesis",
            follow(chain.justify(n, SET0, 0, genesis=Hash32(b"\x01" * 32))),
        ),
        (
            "vote signatures swapped between voters",
            follow(
                dataclasses.replace(
                    good, signatures=((sigs[0][0], sigs[1][1]), (sigs[1][0], sigs[0][1]), *sigs[2:])
                )
            ),
        ),
        (
            "signature over another link",
            follow(dataclasses.replace(good, signatures=chain.justify(n + 1, SET0, 0).signatures)),
        ),
    ]
    other = TestChain(make_spec(SET0, "another"))  # same authorities, another chain
    assert other.genesis_hash != chain.genesis_hash
    for _ in range(n + 1):
        other.next_block([other.tx(ALICE, "system", "remark", {"data": b"fork"})])
    cases.append(("a different chain's justification", follow(other.justify(n, SET0, 0))))
    # stale: replays of older (or the same) justifications
    for older in (1, n - 1, n):

        def replay(older: int = older) -> object:
            client = fresh()
            client.follow(good)
            return client.follow(chain.justify(older, SET0, 0))

        cases.append((f"replayed justification #{older} after #{n}", replay))
    genesis_j = sign_justification(world.genesis, chain.headers[1], SET0, 0, chain.genesis_hash)
    cases.append(("justification of genesis itself", follow(genesis_j)))
    # every byte of one encoded justification, flipped
    encoded = good.encode()
    for i, bad in enumerate(flip_every_byte(encoded)):
        cases.append(
            (
                f"justification byte flip {i}",
                lambda bad=bad: fresh().follow(Justification.decode(bad)),
            )
        )
    cases.append(("truncated justification", lambda: Justification.decode(encoded[:-1])))
    return cases


def set_proof_cases(world: World) -> list[Case]:
    chain = world.chain
    c1 = world.change1
    j = chain.justify(c1, SET0, 0)
    good = chain.set_proof(c1)
    fresh = world.client
    assert fresh().follow(j, good) == chain.headers[c1]  # positive control

    def follow(proof: SetProof) -> Callable[[], object]:
        return lambda: fresh().follow(j, proof)

    wrong_set = codec.encode([k.address for k in [ALICE, BOB, CHARLIE, MALLORY]])
    cases: list[Case] = [
        (
            "set change with wrong authorities",
            follow(dataclasses.replace(good, authorities_value=wrong_set)),
        ),
        (
            "set change with the old authorities",
            follow(
                dataclasses.replace(good, authorities_value=codec.encode([k.address for k in SET0]))
            ),
        ),
        ("set change without authorities", follow(SetProof(good.set_id_value, good.set_id_proof))),
        (
            "set id value relabelled",
            follow(dataclasses.replace(good, set_id_value=codec.encode(2))),
        ),
        ("set id shown absent", follow(dataclasses.replace(good, set_id_value=None))),
        ("set proof from the block before", follow(chain.set_proof(c1 - 1))),
        ("set proof from the next change", follow(chain.set_proof(world.change2))),
        (
            "authorities proven absent",
            follow(dataclasses.replace(good, authorities_value=None)),
        ),
        (
            "proofs of the two keys swapped",
            follow(
                SetProof(
                    good.set_id_value,
                    good.authorities_proof or good.set_id_proof,
                    good.authorities_value,
                    good.set_id_proof,
                )
            ),
        ),
    ]
    for which in ("set_id_proof", "authorities_proof"):
        raw = getattr(good, which).encode()
        for i, bad in enumerate(flip_every_byte(raw)):

            def run(bad: bytes = bad, which: str = which) -> object:
                return fresh().follow(
                    j, dataclasses.replace(good, **{which: TrieProof.decode(bad)})
                )

            cases.append((f"{which} byte flip {i}", run))
    encoded = good.encode()
    for i, bad in enumerate(flip_every_byte(encoded)[::7]):
        cases.append(
            (f"encoded set proof flip {i}", lambda bad=bad: fresh().follow(j, SetProof.decode(bad)))
        )
    return cases


def state_proof_cases(world: World) -> list[Case]:
    chain = world.chain
    n, older = world.change1, 3
    assert chain.headers[n].state_root != chain.headers[older].state_root
    client = world.client()
    client.follow(chain.justify(n, SET0, 0))
    admin, proof = chain.prove(n, system.KEY_ADMIN)
    assert admin is not None
    client.verify_state(system.KEY_ADMIN, admin, proof)  # positive control
    absent_key = b"system/nonce/" + MALLORY.address
    _, absent_proof = chain.prove(n, absent_key)
    client.verify_state(absent_key, None, absent_proof)  # positive control
    cases: list[Case] = [
        ("wrong value", lambda: client.verify_state(system.KEY_ADMIN, MALLORY.address, proof)),
        ("value claimed absent", lambda: client.verify_state(system.KEY_ADMIN, None, proof)),
        ("other key with the proof", lambda: client.verify_state(system.KEY_CHAIN, admin, proof)),
        (
            "absent key claimed present",
            lambda: client.verify_state(absent_key, b"\x00", absent_proof),
        ),
        (
            "proof from an older block",
            lambda: client.verify_state(
                system.KEY_ADMIN, admin, chain.prove(older, system.KEY_ADMIN)[1]
            ),
        ),
        (
            "truncated proof bytes",
            lambda: client.verify_state(system.KEY_ADMIN, admin, proof.encode()[:-1]),
        ),
        (
            "proof with one sibling dropped",
            lambda: client.verify_state(
                system.KEY_ADMIN,
                admin,
                TrieProof(proof.siblings[1:], proof.leaf_key, proof.leaf_value),
            ),
        ),
    ]
    for label, key, value, prf in (
        ("admin", system.KEY_ADMIN, admin, proof),
        ("absent nonce", absent_key, None, absent_proof),
    ):
        for i, bad in enumerate(flip_every_byte(prf.encode())):
            cases.append(
                (
                    f"{label} proof byte flip {i}",
                    lambda bad=bad, key=key, value=value: client.verify_state(key, value, bad),
                )
            )
    return cases


def chunk_cases(world: World) -> list[Case]:
    chain = world.chain
    n, older = world.change1, 3
    assert chain.headers[n].state_root != chain.headers[older].state_root
    client = world.client()
    client.follow(chain.justify(n, SET0, 0))
    index = 2
    good = chain.chunk_parts(n, MODEL_A, index)
    other = chain.chunk_parts(n, MODEL_B, index)
    last = chain.chunk_parts(n, MODEL_A, good["count"] - 1)

    def verify(**changes: Any) -> Callable[[], object]:
        args: dict[str, Any] = {
            "model_id": MODEL_A,
            "chunk_index": index,
            "chunk": good["chunk"],
            "merkle_proof": good["proof"],
            "record": good["record"],
            "record_proof": good["recordProof"],
        }
        args.update(changes)
        return lambda: client.verify_chunk(**args)

    verify()()  # positive control
    chunk, path = good["chunk"], list(good["proof"])
    count = good["count"]
    cases: list[Case] = [
        ("chunk truncated", verify(chunk=chunk[:-4])),
        ("chunk extended", verify(chunk=chunk + b"\x00" * 4)),
        ("chunk of another model", verify(chunk=other["chunk"])),
        ("chunk index out of range", verify(chunk_index=count)),
        ("negative chunk index", verify(chunk_index=-1)),
        ("truncated Merkle path (last)", verify(merkle_proof=path[:-1])),
        ("truncated Merkle path (first)", verify(merkle_proof=path[1:])),
        ("empty Merkle path", verify(merkle_proof=[])),
        ("padded Merkle path", verify(merkle_proof=[*path, path[0]])),
        ("Merkle path reversed", verify(merkle_proof=path[::-1])),
        ("Merkle path of another model", verify(merkle_proof=other["proof"])),
        (
            "record from a different model",
            verify(record=other["record"], record_proof=other["recordProof"]),
        ),
        ("record of another model, our proof", verify(record=other["record"])),
        (
            "another model's chunk, path and record",
            verify(
                chunk=other["chunk"],
                merkle_proof=other["proof"],
                record=other["record"],
                record_proof=other["recordProof"],
            ),
        ),
        ("record proof of another model", verify(record_proof=other["recordProof"])),
        (
            "record from an older block",
            verify(record_proof=chain.chunk_parts(older, MODEL_A, index)["recordProof"]),
        ),
        (
            "short last chunk padded",
            verify(
                chunk_index=count - 1,
                chunk=last["chunk"] + b"\x00\x00\x00\x00",
                merkle_proof=last["proof"],
            ),
        ),
        ("record that is not CBOR", verify(record=b"\xff" + good["record"])),
    ]
    # a record with a forged weightsRoot, chunkCount or id
    obj = codec.decode(good["record"])
    for field, value in (
        ("weightsRoot", b"\x00" * 32),
        ("chunkCount", count + 1),
        ("version", obj["version"] + 1),
        ("numParams", obj["numParams"] + 1),
    ):
        forged = codec.encode({**obj, field: value})
        cases.append((f"record with forged {field}", verify(record=forged)))
    forged_id = codec.encode({**obj, "config": {**obj["config"], "id": MODEL_B}})
    cases.append(("record relabelled as another model", verify(model_id=MODEL_B, record=forged_id)))
    for j in range(count):
        if j != index:
            cases.append((f"wrong chunk index {j}", verify(chunk_index=j)))
    for i, bad in enumerate(flip_every_byte(chunk)):
        cases.append((f"chunk byte flip {i}", verify(chunk=bad)))
    for h in range(len(path)):
        for i in (0, 17, 31):
            bad_path = list(path)
            bad_path[h] = Hash32(path[h][:i] + bytes([path[h][i] ^ 1]) + path[h][i + 1 :])
            cases.append((f"Merkle hash {h} flip {i}", verify(merkle_proof=bad_path)))
    for i, bad in enumerate(flip_every_byte(good["recordProof"].encode())):
        cases.append((f"record proof byte flip {i}", verify(record_proof=bad)))
    for i, bad in enumerate(flip_every_byte(good["record"])[::3]):
        cases.append((f"record byte flip {i}", verify(record=bad)))
    # node-style answers
    verifier = client.verifier()
    cases.append(
        (
            "chunk proof against an older root",
            lambda: verifier.verify_chunk_proof(chain.chunk_proof(older, MODEL_A, index)),
        )
    )
    cases.append(
        (
            "chunk proof claiming our root, older proofs",
            lambda: verifier.verify_chunk_proof(
                dataclasses.replace(
                    chain.chunk_proof(older, MODEL_A, index),
                    state_root=verifier.state_root,
                    block_hash=verifier.header.hash,
                )
            ),
        )
    )
    return cases


def test_tampered_input_corpus_is_rejected_completely(world: World) -> None:
    corpus = (
        justification_cases(world)
        + set_proof_cases(world)
        + state_proof_cases(world)
        + chunk_cases(world)
    )
    accepted: list[str] = []
    untyped: list[str] = []
    by_error: dict[str, int] = {}
    for name, case in corpus:
        try:
            case()
        except REJECTED as exc:
            by_error[type(exc).__name__] = by_error.get(type(exc).__name__, 0) + 1
        except Exception as exc:  # a crash is not a typed rejection
            untyped.append(f"{name}: {type(exc).__name__}: {exc}")
        else:
            accepted.append(name)
    rejected = len(corpus) - len(accepted) - len(untyped)
    print(
        f"tampered-input corpus: {len(corpus)} cases, {rejected} rejected with typed errors "
        f"({100 * rejected / len(corpus):.2f}%): {dict(sorted(by_error.items()))}"
    )
    assert not accepted, f"accepted tampered input: {accepted[:10]}"
    assert not untyped, f"untyped failures: {untyped[:10]}"
    assert len(corpus) > 2000


def test_rejections_leave_the_client_unchanged(world: World) -> None:
    chain, client = world.chain, world.client()
    client.follow(chain.justify(2, SET0, 0))
    before = client.save()
    attempts: list[Callable[[], object]] = [
        lambda: client.follow(chain.justify(3, SET0[:2], 0)),
        lambda: client.follow(chain.justify(1, SET0, 0)),
        lambda: client.follow(
            chain.justify(world.change1, SET0, 0),
            dataclasses.replace(chain.set_proof(world.change1), authorities_value=b"\x80"),
        ),
    ]
    for attempt in attempts:
        with pytest.raises(DeltachainError):
            attempt()
        assert client.save() == before


def test_model_record_view_checks_consistency() -> None:
    obj = {
        "config": {"id": "m", "chunkSize": 4, "fracBits": 16},
        "version": 0,
        "roundStart": 1,
        "weightsRoot": b"\x00" * 32,
        "numParams": 9,
        "chunkCount": 3,
    }
    view = ModelRecordView.decode(codec.encode(obj))
    assert [view.chunk_length(i) for i in range(3)] == [16, 16, 4]
    for bad in (
        {**obj, "chunkCount": 2},
        {**obj, "config": {**obj["config"], "chunkSize": 0}},
        {**obj, "weightsRoot": b"\x00"},
        {**obj, "version": True},
        {k: v for k, v in obj.items() if k != "numParams"},
        [obj],
    ):
        with pytest.raises(DecodeError):
            ModelRecordView.decode(codec.encode(bad))


# --- remote: a light client syncing from a real node's RPC --------------------------------


class LocalNode:
    """A real ``Chain`` in a tmp dir, finalizing by votes that this test signs for every
    authority, behind a real ``RpcServer`` (called in process, or over HTTP)."""

    def __init__(self, base: Path, spec: Any) -> None:
        self.chain = Chain(spec, construct_runtime(), base)

        async def run(fn: Callable[..., Any], *args: Any) -> Any:
            return fn(*args)

        self.server = RpcServer(self.chain, run)
        self.nonces: dict[bytes, int] = {}

    def tx(self, key: Keypair, module: str, function: str, args: dict[str, Any]) -> bytes:
        nonce = self.chain.pool_nonce(key.address)
        tx = sign_transaction(key, self.chain.genesis_hash, nonce, module, function, args)
        return tx.encode()

    def step(self, txs: list[bytes] | None = None) -> None:
        """Author the next block (by the slot's owner) and have the voting set vote for it."""
        chain = self.chain
        for raw in txs or []:
            chain.submit_transaction(raw)
        parent = chain.storage.best_header()
        slot = Slot(parent.slot + 1)
        owner = author_of(slot, chain.authorities_at(parent.hash))
        result = chain.author_block(slot, next(k for k in ALL_KEYS if k.address == owner))
        assert result is not None
        for _ in range(3):  # again if a finalization hands voting to a new set meanwhile
            head = chain.storage.best_header()
            link = chain.gadget.proposal(head, chain.storage, VoteRecord())
            if link is None:
                break
            voters = [k for k in ALL_KEYS if k.address in chain.gadget.authorities]
            for key in voters:
                if chain.gadget.set_id != link.set_id:
                    break
                chain.add_vote(sign_vote(key, link, chain.genesis_hash))
            if chain.gadget.set_id == link.set_id:
                break

    def change_set(self, add: Keypair, remove: Keypair, approvers: list[Keypair]) -> None:
        state = self.chain.best_state()
        set_id = system.get_set_id(state)
        current = list(system.get_authorities(state))
        propose = {"add": [add.address], "remove": [remove.address]}
        self.step([self.tx(approvers[0], "authority", "propose_change", propose)])
        pid = proposal_id([a for a in current if a != remove.address] + [add.address], set_id)
        for key in approvers[1:]:
            self.step([self.tx(key, "authority", "approve_change", {"proposal": pid})])
        assert system.get_set_id(self.chain.best_state()) == set_id + 1

    def client(self) -> LightClient:
        genesis = self.chain.storage.header(self.chain.genesis_hash)
        return LightClient.from_genesis(
            self.chain.genesis_hash, [k.address for k in SET0], genesis_header=genesis
        )


class InProcess(Transport):
    """Each call goes through the server's real dispatch and a JSON round trip."""

    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.calls: list[str] = []

    def call(self, method: str, params: list[Any]) -> Any:
        self.calls.append(method)
        request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        reply = json.loads(json.dumps(asyncio.run(self.server.dispatch(request))))
        if "error" in reply:
            raise RemoteError(reply["error"]["message"], reply["error"]["code"])
        return reply["result"]


class Tampering(InProcess):
    """A lying node: ``tamper(method, result)`` rewrites answers."""

    def __init__(self, server: RpcServer, tamper: Callable[[str, Any], Any]) -> None:
        super().__init__(server)
        self.tamper = tamper

    def call(self, method: str, params: list[Any]) -> Any:
        return self.tamper(method, super().call(method, params))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> LocalNode:
    local = LocalNode(tmp_path_factory.mktemp("node"), make_spec(SET0))
    for _ in range(3):
        local.step()
    local.change_set(EVE, DAVE, [ALICE, BOB, CHARLIE])
    for _ in range(4):
        local.step()
    local.change_set(FRANK, ALICE, [BOB, CHARLIE, EVE])
    for _ in range(5):
        local.step()
    assert local.chain.gadget.set_id == 2
    return local


def test_remote_sync_warps_across_set_changes(node: LocalNode) -> None:
    transport = InProcess(node.server)
    remote = RemoteLightClient(node.client(), transport)
    header = remote.sync()
    chain = node.chain
    assert header == chain.storage.finalized_header()
    assert remote.client.set_id == chain.gadget.set_id == 2
    assert remote.client.authorities == chain.gadget.authorities
    follows = transport.calls.count("chain_getJustification") + transport.calls.count(
        "finality_proveFinality"
    )
    print(f"sync over {header.number} blocks and 2 set changes: {len(transport.calls)} calls")
    assert transport.calls.count("chain_getJustification") <= 3  # one per set, not per block
    assert follows < header.number
    # nothing new: one round trip; then the node moves on and the client follows
    assert remote.sync() == header
    node.step()
    node.step()
    assert remote.sync() == chain.storage.finalized_header()


def test_remote_sync_repairs_a_set_change_hidden_at_the_finalized_block(
    node: LocalNode,
) -> None:
    chain = node.chain
    remote = RemoteLightClient(node.client(), InProcess(node.server))
    # follow the change-1 block without its set proof, as if a node had hidden it
    change1 = next(
        n
        for n in range(1, 30)
        if system.get_set_id(chain.state_at(chain.storage.canonical_hash(n))) == 1
    )
    j = remote.prove_finality(change1)
    assert j is not None
    assert j.source.number == change1
    remote.client.follow(j)
    assert remote.client.set_id == 0
    remote.sync()
    assert remote.client.set_id == 2


def test_remote_download_verifies_every_chunk(node: LocalNode) -> None:
    remote = RemoteLightClient(node.client(), InProcess(node.server))
    remote.sync()
    chain = node.chain
    module = chain.runtime.modules["model_state"]
    state = chain.state_at(chain.storage.finalized_hash())
    for model in (MODEL_A, MODEL_B):
        record, buffer = remote.download_model(model)
        expected = module.weights(state, module.record(state, model).config)
        assert buffer == expected.astype("<i4").tobytes()
        streamed: list[bytes] = []
        again, none = remote.download_model(model, sink=lambda i, c, out=streamed: out.append(c))
        assert none is None
        assert again == record
        assert b"".join(streamed) == buffer
    # a verifier pinned to an older header refuses a node that answers at the head
    old = remote.client.verifier()
    node.step()
    node.step()
    remote.sync()
    lying = RemoteLightClient(remote.client, Tampering(node.server, at_best_block(node)))
    with pytest.raises(StaleData):
        lying.download_model(MODEL_A, verifier=old)


def at_best_block(node: LocalNode) -> Callable[[str, Any], Any]:
    def tamper(method: str, result: Any) -> Any:
        if method == "model_getChunkProof":
            best = node.chain.storage.best_hash()
            params = [MODEL_A, result["index"], "0x" + best.hex()]
            return node.server.methods["model_getChunkProof"](params)
        return result

    return tamper


def flip_hex(value: str, at: int = -3) -> str:
    raw = bytearray(bytes.fromhex(value[2:]))
    raw[at] ^= 1
    return "0x" + raw.hex()


@pytest.mark.parametrize(
    ("lie", "error"),
    [
        ("justification", (InvalidVote, DecodeError)),
        ("set_id_value", (ProofError, DecodeError)),
        ("authorities_value", (ProofError, DecodeError)),
        ("read_proof", (ProofError, DecodeError)),
        ("chunk", ProofError),
        ("chunk_path", ProofError),
        ("record", (ProofError, DecodeError)),
    ],
)
def test_remote_rejects_a_lying_node(
    tmp_path: Path, lie: str, error: type[Exception] | tuple[type[Exception], ...]
) -> None:
    local = LocalNode(tmp_path, make_spec(SET0))
    for _ in range(3):
        local.step()
    local.change_set(EVE, DAVE, [ALICE, BOB, CHARLIE])
    local.step()

    def tamper(method: str, result: Any) -> Any:
        if lie == "justification" and method in ("chain_getJustification",):
            return flip_hex(result, -10)
        if lie == "set_id_value" and method == "state_getStorage" and result is not None:
            return "0x" + codec.encode(7).hex() if len(result) < 20 else result
        if lie == "authorities_value" and method == "state_getStorage" and result is not None:
            wrong = codec.encode([k.address for k in (ALICE, BOB, MALLORY, EVE)])
            return "0x" + wrong.hex() if len(result) > 20 else result
        if lie == "read_proof" and method == "state_getReadProof":
            return {**result, "proof": [flip_hex(p) for p in result["proof"]]}
        if method == "model_getChunkProof":
            if lie == "chunk":
                return {**result, "chunk": flip_hex(result["chunk"], 5)}
            if lie == "chunk_path":
                return {**result, "proof": result["proof"][:-1]}
            if lie == "record":
                return {**result, "record": flip_hex(result["record"], 40)}
        return result

    remote = RemoteLightClient(local.client(), Tampering(local.server, tamper))
    before = remote.client.save()
    if lie in ("chunk", "chunk_path", "record"):
        remote.sync()
        with pytest.raises(error):
            remote.download_model(MODEL_A)
    else:
        with pytest.raises(error):
            remote.sync()
        assert remote.client.save() == before


def test_remote_refuses_another_chain(node: LocalNode) -> None:
    other = TestChain(make_spec(SET0, "another"))
    client = LightClient.from_genesis(
        other.genesis_hash, [k.address for k in SET0], genesis_header=other.headers[0]
    )
    remote = RemoteLightClient(client, InProcess(node.server))
    with pytest.raises(RemoteError, match="not ours"):
        remote.sync()


def test_remote_bootstrap_from_the_genesis_hash(node: LocalNode) -> None:
    remote = RemoteLightClient.bootstrap(node.chain.genesis_hash, InProcess(node.server))
    assert remote.client.authorities == tuple(k.address for k in SET0)
    remote.sync()
    assert remote.client.set_id == 2


def test_http_transport_against_a_served_node(node: LocalNode) -> None:
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        runner = web.AppRunner(node.server.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["port"] = runner.addresses[0][1]
        box["runner"] = runner
        started.set()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(serve(), loop).result(timeout=10)
    try:
        transport = HttpTransport(f"http://127.0.0.1:{box['port']}")
        remote = RemoteLightClient(node.client(), transport)
        assert remote.sync() == node.chain.storage.finalized_header()
        record, buffer = remote.download_model(MODEL_A)
        assert buffer is not None
        assert len(buffer) == 4 * record.num_params
        with pytest.raises(RemoteError, match="not found"):
            transport.call("no_such_method", [])
        tiny = HttpTransport(f"http://127.0.0.1:{box['port']}", max_response=100)
        with pytest.raises(RemoteError, match="over 100 bytes"):
            RemoteLightClient(remote.client, tiny).chunk_proof(
                MODEL_A, 0, remote.client.finalized.hash
            )
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
    with pytest.raises(RemoteError, match="cannot reach"):
        HttpTransport(f"http://127.0.0.1:{box['port']}", timeout=2).call("system_name", [])
