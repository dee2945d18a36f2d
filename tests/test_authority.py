"""Authority-set changes by majority vote and on-chain equivocation evidence."""

from __future__ import annotations

from typing import Any

import pytest

from deltachain.consensus.aura import author_of, seal_header
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.errors import InvalidCall, Unauthorized
from deltachain.primitives.chainspec import dev_chain_spec, parse_chain_spec
from deltachain.primitives.types import BlockNumber, Hash32
from deltachain.primitives.vote import Checkpoint, Link, sign_vote
from deltachain.runtime import system
from deltachain.runtime.authority import ReportEquivocation, check_evidence, proposal_id
from deltachain.runtime.executive import check_transaction
from support import ALICE, BOB, CHARLIE, DAVE, MemChain

EVE = Keypair.dev("eve")
VALIDATORS = [ALICE, BOB, CHARLIE, DAVE]


def four_validator_chain() -> MemChain:
    raw = dev_chain_spec().to_json()
    raw["genesis"]["consensus"]["authorities"] = [address_to_str(k.address) for k in VALIDATORS]
    return MemChain(parse_chain_spec(raw))


def produce(chain: MemChain, txs: list[Any]) -> None:
    """Author the next block with whichever validator owns the next slot."""
    authorities = system.get_authorities(chain.state())
    slot = chain.head.slot + 1
    chain.author = next(k for k in [*VALIDATORS, EVE] if k.address == author_of(slot, authorities))
    chain.produce(txs)


def test_majority_enacts_a_new_set_at_the_block_boundary() -> None:
    chain = four_validator_chain()
    propose = chain.tx(
        ALICE, "authority", "propose_change", {"add": [EVE.address], "remove": [DAVE.address]}
    )
    produce(chain, [propose])
    new = [ALICE.address, BOB.address, CHARLIE.address, EVE.address]
    pid = proposal_id(new, 0)
    assert system.get_authorities(chain.state()) == tuple(k.address for k in VALIDATORS)
    produce(chain, [chain.tx(BOB, "authority", "approve_change", {"proposal": pid})])
    assert system.get_set_id(chain.state()) == 0  # 2 of 4 is not a strict majority
    with pytest.raises(InvalidCall, match="already approved"):
        check_transaction(
            chain.runtime,
            chain.state(),
            chain.tx(BOB, "authority", "approve_change", {"proposal": pid}),
            chain.genesis_hash,
        )
    produce(chain, [chain.tx(CHARLIE, "authority", "approve_change", {"proposal": pid})])
    assert system.get_authorities(chain.state()) == tuple(new)
    assert system.get_set_id(chain.state()) == 1
    assert chain.runtime.modules["authority"].query(chain.state(), "proposals", {}) == []
    produce(chain, [])  # the next author comes from the new set (eve may author now)


def test_only_authorities_govern() -> None:
    chain = four_validator_chain()
    tx = chain.tx(BOB, "authority", "propose_change", {"add": [], "remove": [ALICE.address]})
    check_transaction(chain.runtime, chain.state(), tx, chain.genesis_hash)
    outsider = MemChain()  # dev chain: only alice is an authority; bob is a client
    with pytest.raises(Unauthorized):
        check_transaction(
            outsider.runtime,
            outsider.state(),
            outsider.tx(BOB, "authority", "propose_change", {"add": [], "remove": [ALICE.address]}),
            outsider.genesis_hash,
        )
    empty = chain.tx(
        ALICE, "authority", "propose_change", {"add": [], "remove": [k.address for k in VALIDATORS]}
    )
    with pytest.raises(InvalidCall, match="empty"):
        check_transaction(chain.runtime, chain.state(), empty, chain.genesis_hash)


def test_two_seals_for_one_slot_are_recorded_once() -> None:
    chain = MemChain()
    a, _ = chain.build([], slot=5)
    b, _ = chain.build([chain.tx(BOB, "system", "remark", {"data": b"x"})], slot=5)
    report = {"kind": "seal", "first": a.header.encode(), "second": b.header.encode()}
    chain.produce([chain.tx(ALICE, "authority", "report_equivocation", report)])
    evidence = chain.runtime.modules["authority"].query(chain.state(), "evidence", {})
    assert [(e["kind"], e["offender"]) for e in evidence] == [
        ("seal", address_to_str(ALICE.address))
    ]
    swapped = {**report, "first": report["second"], "second": report["first"]}
    with pytest.raises(InvalidCall, match="already recorded"):
        check_transaction(
            chain.runtime,
            chain.state(),
            chain.tx(ALICE, "authority", "report_equivocation", swapped),
            chain.genesis_hash,
        )


def test_seal_evidence_must_verify() -> None:
    chain = MemChain()
    a, _ = chain.build([], slot=5)
    b, _ = chain.build([], slot=6)
    forged = seal_header(a.header, BOB, chain.genesis_hash)
    for first, second, message in [
        (a.header, b.header, "one slot"),
        (a.header, forged, "does not verify"),
    ]:
        report = ReportEquivocation("seal", first.encode(), second.encode())
        with pytest.raises(InvalidCall, match=message):
            check_evidence(report, chain.genesis_hash)


def test_vote_evidence_must_really_conflict_and_verify() -> None:
    genesis = MemChain().genesis_hash
    g = Checkpoint(genesis, BlockNumber(0))
    t1 = Checkpoint(Hash32(b"\x01" * 32), BlockNumber(1))
    t1b = Checkpoint(Hash32(b"\x02" * 32), BlockNumber(1))
    t2 = Checkpoint(Hash32(b"\x03" * 32), BlockNumber(2))
    v1 = sign_vote(ALICE, Link(0, g, t1), genesis)
    double = sign_vote(ALICE, Link(0, g, t1b), genesis)
    report = ReportEquivocation("vote", v1.encode(), double.encode())
    offender, detail = check_evidence(report, genesis)
    assert offender == ALICE.address
    assert detail["rule"] == "double"
    for second, message in [
        (sign_vote(ALICE, Link(0, t1, t2), genesis), "do not conflict"),
        (sign_vote(ALICE, Link(0, g, t1b), Hash32(b"\x00" * 32)), "does not verify"),
        (sign_vote(BOB, Link(0, g, t1b), genesis), "one voter"),
    ]:
        with pytest.raises(InvalidCall, match=message):
            check_evidence(ReportEquivocation("vote", v1.encode(), second.encode()), genesis)
