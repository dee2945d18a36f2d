"""Restarts without forgetting: the signing-state file and the gadget state a Chain restores.

In-process (no node processes): four dev validators voting on one ``Chain`` in a temporary
directory, closed and reopened the way a restarted, wiped or rolled-back node would be.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from deltachain.chain import construct_runtime
from deltachain.consensus.finality import Checkpoint, Link, Vote, VoteRecord, sign_vote
from deltachain.errors import StorageError
from deltachain.node.chain import Chain
from deltachain.node.signing_state import SignedRecord, SigningState, SigningStateError
from deltachain.node.storage import DB_FILE
from deltachain.primitives.block import Block
from deltachain.primitives.types import BlockNumber, Hash32, Slot
from test_network_consensus import VALIDATORS, four_validator_spec, key_of

ME = VALIDATORS[0]


def open_chain(base: Path, signer: SigningState | None = None) -> Chain:
    return Chain(four_validator_spec(), construct_runtime(), base, signing_state=signer)


class Producer:
    """Authors the blocks on a chain of its own (whose authors' votes stay there), so the chain
    under test sees blocks as a node does: imported, then voted on by ME through Chain.vote."""

    def __init__(self, base: Path) -> None:
        self.chain = open_chain(base)
        self.slot = 1000

    def next_block(self) -> Block:
        chain = self.chain
        while (result := chain.author_block(Slot(self.slot), key_of(self.slot, chain))) is None:
            self.slot += 1
        self.slot += 1
        return result.block


def grow(chain: Chain, producer: Producer, blocks: int, voters: int = 4) -> None:
    """``blocks`` new blocks; after each, the first ``voters`` validators vote the head (ME
    through ``chain.vote``: its vote record and signing state apply)."""
    for _ in range(blocks):
        catch_up(chain, producer)
        chain.import_block(producer.next_block(), now_slot=None)
        vote_head(chain, voters)


def vote_head(chain: Chain, voters: int) -> None:
    if voters > 0:
        chain.vote(ME)
    link = chain.gadget.proposal(chain.storage.best_header(), chain.storage, VoteRecord())
    if link is not None:
        for key in VALIDATORS[1:voters]:
            chain.add_vote(sign_vote(key, link, chain.genesis_hash))


def catch_up(chain: Chain, producer: Producer) -> None:
    """Import the producer's blocks the chain lacks, voting after each as a node would."""
    for _, block_hash in producer.chain.storage.canonical_hashes(1):
        if not chain.storage.has_block(block_hash):
            chain.import_block(producer.chain.storage.block(block_hash), now_slot=None)
            vote_head(chain, 4)


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[Producer]:
    made = Producer(tmp_path / "producer")
    try:
        yield made
    finally:
        made.chain.close()


# --- the file ----------------------------------------------------------------------------------


def test_signing_state_round_trips_and_enforces_the_rules(
    tmp_path: Path, producer: Producer
) -> None:
    base = tmp_path / "node"
    state = SigningState(tmp_path / "keys" / "v.signing-state.json", ME.address)
    chain = open_chain(base, state)
    try:
        grow(chain, producer, 5)
        assert state.record is not None
        last = state.record.vote.link
        again = SigningState(state.path, ME.address)
        assert again.record == state.record
        assert again.check(last) is not None  # the same target height twice: refused
        assert [p.name for p in state.path.parent.iterdir()] == [state.path.name]  # no temp
        body = json.loads(state.path.read_text())
        assert body["target"][0] == last.target.number
        assert body["database_id"] == chain.storage.database_id().hex()
    finally:
        chain.close()
    with pytest.raises(SigningStateError, match="belongs to"):
        SigningState(state.path, VALIDATORS[1].address)
    other_chain = SigningState(state.path, ME.address)
    other_chain.for_chain(b"\x01" * 32)  # a new genesis with the same key starts afresh
    assert other_chain.record is None
    assert other_chain.check(last) is None
    state.path.write_text("{not json")
    with pytest.raises(SigningStateError, match="unreadable") as info:
        SigningState(state.path, ME.address)
    assert "\n" not in str(info.value)


def cp(number: int) -> Checkpoint:
    return Checkpoint(Hash32(bytes([number]) * 32), BlockNumber(number))


def test_record_conflicts_are_double_and_surround_votes() -> None:
    genesis = Hash32(b"\x42" * 32)
    record = SignedRecord(sign_vote(ME, Link(0, cp(5), cp(7)), genesis), 5, b"x" * 16, genesis)
    assert record.conflict(Link(0, cp(5), cp(7))) is not None  # the same vote again
    assert record.conflict(Link(0, cp(6), cp(7))) is not None  # double: another target at 7
    assert record.conflict(Link(0, cp(4), cp(9))) is not None  # surround: source went back
    assert record.conflict(Link(0, cp(5), cp(6))) is not None  # below the signed target
    assert record.conflict(Link(0, cp(5), cp(8))) is None
    assert record.conflict(Link(0, cp(7), cp(8))) is None
    assert record.conflict(Link(1, cp(0), cp(1))) is None  # a later set starts afresh
    assert (
        SignedRecord(sign_vote(ME, Link(2, cp(5), cp(7)), genesis), 5, b"", genesis).conflict(
            Link(1, cp(5), cp(9))
        )
        == "an earlier authority set"
    )


# --- a wiped or rolled-back database ---------------------------------------------------------


def test_wiped_database_never_signs_against_the_signing_state(
    tmp_path: Path, producer: Producer, caplog: pytest.LogCaptureFixture
) -> None:
    """The node's advice used to be "delete it to resync"; the vote record went with it.
    With the signing state kept, the resynced validator signs nothing that conflicts."""
    base = tmp_path / "node"
    state_path = tmp_path / "v.signing-state.json"
    chain = open_chain(base, SigningState(state_path, ME.address))
    try:
        grow(chain, producer, 8)
        before = SigningState(state_path, ME.address).record
        assert before is not None
    finally:
        chain.close()
    for name in [p.name for p in base.iterdir() if p.name.startswith(DB_FILE)]:
        shutil.move(base / name, tmp_path / name)  # "delete it to resync"
    signer = SigningState(state_path, ME.address)
    caplog.set_level(logging.INFO)
    fresh = open_chain(base, signer)
    try:
        assert "new to signing state" in caplog.text
        signed: list[Vote] = []
        for _ in range(8):
            grow(fresh, producer, 1)  # the first call resyncs all the blocks so far
            if signer.record is not None and signer.record.vote != before.vote:
                signed.append(signer.record.vote)
        refusals = [r for r in caplog.records if "not voting" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in refusals]  # one line, not one a block
        assert signed, "the validator never voted again"
        old = before.vote.link
        for vote in signed:
            assert vote.link.target.number > old.target.number
            assert vote.link.source.number >= old.source.number
    finally:
        fresh.close()


def test_finality_going_back_is_refused_at_start(tmp_path: Path, producer: Producer) -> None:
    """A deleted -wal after a crash: the same database (same id) with an older finalized block."""
    base = tmp_path / "node"
    state_path = tmp_path / "v.signing-state.json"
    chain = open_chain(base, SigningState(state_path, ME.address))
    try:
        grow(chain, producer, 6)
        finalized = chain.storage.finalized_header().number
        assert finalized >= 3
    finally:
        chain.close()
    body = json.loads(state_path.read_text())
    body["finalized"] = finalized + 5  # what the node had seen before the WAL was lost
    state_path.write_text(json.dumps(body))
    with pytest.raises(StorageError) as info:
        open_chain(base, SigningState(state_path, ME.address))
    message = str(info.value)
    assert f"#{finalized + 5}" in message
    assert f"#{finalized}" in message
    assert "\n" not in message
    assert "aside" in message
    reopened = open_chain(base)  # the file is left usable (and unlocked) for inspection
    reopened.close()


# --- gadget state across a restart -----------------------------------------------------------


def test_restart_remembers_justified_blocks_above_finality(
    tmp_path: Path, producer: Producer
) -> None:
    """Two of four vote after the first blocks: b is justified by the earlier 3-of-4 votes but
    nothing new finalizes. A restarted node must still know b (not fall back to finality)."""
    base = tmp_path / "node"
    chain = open_chain(base)
    try:
        grow(chain, producer, 4)
        justified = dict(chain.gadget.justified)
        finalized = chain.gadget.finalized.number
        above = {h: n for h, n in justified.items() if n > finalized}
        assert above, "nothing justified above finality to remember"
        grow(chain, producer, 3, voters=2)  # too few: finality stalls
        assert chain.gadget.finalized.number == finalized
        pending = {v.encode() for v in chain.pending_votes()}
    finally:
        chain.close()
    again = open_chain(base)
    try:
        assert again.gadget.finalized.number == finalized
        for block_hash, number in above.items():
            assert again.gadget.justified.get(block_hash) == number
        assert {v.encode() for v in again.pending_votes()} == pending
    finally:
        again.close()


async def test_all_four_restarted_with_votes_in_flight_catch_up_through_sync(
    tmp_path: Path, producer: Producer
) -> None:
    """All four stop just after voting for the newest block, before any vote arrived anywhere.
    Each one's vote survives in its signing state; after the restart the ``["votes"]`` sync
    request spreads them, the block becomes justified, and finality moves on."""
    from test_network_consensus import LoopbackPeers, service_for

    def open_all() -> dict[str, Chain]:
        return {
            str(i): open_chain(
                tmp_path / f"v{i}", SigningState(tmp_path / f"v{i}.json", key.address)
            )
            for i, key in enumerate(VALIDATORS)
        }

    def step(chains: dict[str, Chain], *, deliver: bool) -> None:
        block = producer.next_block()
        for chain in chains.values():
            chain.import_block(block, now_slot=None)
        votes = [chain.vote(key) for chain, key in zip(chains.values(), VALIDATORS, strict=True)]
        if deliver:
            for chain in chains.values():
                for vote in votes:
                    if vote is not None:
                        chain.add_vote(vote)

    chains = open_all()
    try:
        for _ in range(5):
            step(chains, deliver=True)
        step(chains, deliver=False)  # signed, recorded, never received
        head = chains["0"].storage.best_header()
        stood = chains["0"].storage.finalized_header().number
        assert all(c.storage.finalized_header().number == stood for c in chains.values())
        assert all(c.gadget.justified.get(head.hash) is None for c in chains.values())
    finally:
        for chain in chains.values():
            chain.close()
    chains = open_all()
    try:
        for name, chain in chains.items():
            service = service_for(chain, tmp_path / f"v{name}")
            others = {k: v for k, v in chains.items() if k != name}
            await service._sync_round(LoopbackPeers(others))  # type: ignore[arg-type]
        for chain in chains.values():
            assert chain.gadget.justified.get(head.hash) == head.number  # learned from peers
            assert chain.storage.finalized_header().number == head.number - 1 > stood
        step(chains, deliver=True)
        for chain in chains.values():
            assert chain.storage.finalized_header().number == head.number
    finally:
        for chain in chains.values():
            chain.close()


def test_double_sign_check_holds_votes_and_spots_a_second_node_with_the_key(
    tmp_path: Path, producer: Producer, caplog: pytest.LogCaptureFixture
) -> None:
    state = SigningState(tmp_path / "v.json", ME.address)
    chain = open_chain(tmp_path / "node", state)
    try:
        grow(chain, producer, 3)
    finally:
        chain.close()
    assert state.record is not None
    signed = state.record.vote.link.target.number

    def reopen(slots: int) -> Chain:
        return Chain(
            four_validator_spec(),
            construct_runtime(),
            tmp_path / "node",
            signing_state=SigningState(state.path, ME.address),
            double_sign_check_slots=slots,
        )

    held = reopen(10_000)  # listening for a long time: no vote at all
    try:
        grow(held, producer, 2)
        assert SigningState(state.path, ME.address).record == state.record
    finally:
        held.close()
    twin = reopen(0)
    twin.double_sign_check = True  # listening over; the check itself stays on
    try:
        # our own earlier vote coming back from a peer is not a twin
        twin.add_vote(state.record.vote)
        assert twin.foreign_vote is None
        catch_up(twin, producer)
        block = producer.next_block()
        twin.import_block(block, now_slot=None)
        link = twin.gadget.proposal(block.header, twin.storage, VoteRecord())
        assert link is not None
        assert link.target.number > signed
        caplog.set_level(logging.ERROR)
        twin.add_vote(sign_vote(ME, link, twin.genesis_hash))  # signed by another process
        assert twin.foreign_vote is not None
        assert "another node is voting with this key" in caplog.text
        assert twin.vote(ME) is None
        grow(twin, producer, 2)
        assert twin.vote(ME) is None  # never again in this process
    finally:
        twin.close()
