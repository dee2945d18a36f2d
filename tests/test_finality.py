"""The finality gadget: thresholds, justification and finalization, rules, evidence."""

from __future__ import annotations

import dataclasses

import pytest

from deltachain.consensus.finality import (
    Checkpoint,
    FinalityGadget,
    InvalidVote,
    Justification,
    Link,
    Vote,
    VoteRecord,
    conflicting,
    sign_vote,
    supermajority,
    verify_justification,
)
from deltachain.crypto.keys import Keypair
from deltachain.primitives.block import Header, genesis_header
from deltachain.primitives.types import Address, BlockNumber, Hash32, Signature, Slot

GENESIS = Hash32(b"\x42" * 32)
KEYS = [Keypair.dev(f"v{i}") for i in range(4)]
SET = tuple(k.address for k in KEYS)


class Tree:
    """A block tree for tests: headers by hash, ancestry by walking parents."""

    def __init__(self) -> None:
        self.root = genesis_header(Hash32(b"\x00" * 32))
        self.headers: dict[Hash32, Header] = {self.root.hash: self.root}

    def child(self, parent: Header, tag: int = 0) -> Header:
        header = Header(
            parent.hash,
            BlockNumber(parent.number + 1),
            Slot(parent.slot + 1 + tag),
            Hash32(bytes([tag]) * 32),
            Hash32(b"\x00" * 32),
            Address(b"\x01" * 32),
            Signature(b""),
        )
        self.headers[header.hash] = header
        return header

    def header_or_none(self, block_hash: Hash32) -> Header | None:
        return self.headers.get(block_hash)

    def is_ancestor(self, ancestor: Hash32, descendant: Hash32) -> bool:
        node = self.headers.get(descendant)
        while node is not None:
            if node.hash == ancestor:
                return True
            node = self.headers.get(node.parent_hash)
        return False


def link(source: Header, target: Header, set_id: int = 0) -> Link:
    return Link(
        set_id, Checkpoint(source.hash, source.number), Checkpoint(target.hash, target.number)
    )


def vote_all(gadget: FinalityGadget, tree: Tree, lk: Link, keys: list[Keypair]):  # type: ignore[no-untyped-def]
    outcomes = [gadget.add_vote(sign_vote(k, lk, GENESIS), tree) for k in keys]
    return outcomes[-1]


@pytest.mark.parametrize(
    ("count", "size", "final"),
    [
        (66, 100, False),
        (67, 100, True),
        (2, 3, False),
        (3, 3, True),
        (2, 4, False),
        (3, 4, True),
        (1, 1, True),
        (0, 1, False),
        (4, 6, False),
        (5, 6, True),
    ],
)
def test_threshold_vectors(count: int, size: int, final: bool) -> None:
    assert supermajority(count, size) is final


def test_justify_then_finalize_on_direct_child() -> None:
    tree = Tree()
    b1 = tree.child(tree.root)
    b2 = tree.child(b1)
    gadget = FinalityGadget(GENESIS, 0, SET, tree.root)
    out = vote_all(gadget, tree, link(tree.root, b1), KEYS[:2])
    assert out.justified == []  # 2 of 4 is not enough
    out = gadget.add_vote(sign_vote(KEYS[2], link(tree.root, b1), GENESIS), tree)
    assert out.justified == [b1.hash]
    assert out.finalized is None  # genesis is already final
    out = vote_all(gadget, tree, link(b1, b2), KEYS[:3])
    assert out.finalized is not None
    assert out.finalized.source == b1
    verify_justification(out.finalized, SET, 0, GENESIS)
    assert gadget.finalized == b1


def test_votes_arriving_before_their_block_count_later() -> None:
    tree = Tree()
    b1 = Tree.child(tree, tree.root)
    del tree.headers[b1.hash]  # not imported yet
    gadget = FinalityGadget(GENESIS, 0, SET, tree.root)
    out = vote_all(gadget, tree, link(tree.root, b1), KEYS[:3])
    assert out.justified == []
    tree.headers[b1.hash] = b1
    assert gadget.recheck(tree).justified == [b1.hash]


def test_non_consecutive_link_justifies_but_does_not_finalize() -> None:
    tree = Tree()
    b1 = tree.child(tree.root)
    b2 = tree.child(b1)
    gadget = FinalityGadget(GENESIS, 0, SET, tree.root)
    vote_all(gadget, tree, link(tree.root, b1), KEYS[:3])
    b3 = tree.child(b2)
    out = vote_all(gadget, tree, link(b1, b3), KEYS[:3])
    assert out.justified == [b3.hash]
    assert out.finalized is None


def test_rejects_outsiders_wrong_set_bad_signature() -> None:
    tree = Tree()
    b1 = tree.child(tree.root)
    gadget = FinalityGadget(GENESIS, 0, SET, tree.root)
    with pytest.raises(InvalidVote, match="non-authority"):
        gadget.add_vote(sign_vote(Keypair.dev("x"), link(tree.root, b1), GENESIS), tree)
    with pytest.raises(InvalidVote, match="authority set 1"):
        gadget.add_vote(sign_vote(KEYS[0], link(tree.root, b1, set_id=1), GENESIS), tree)
    with pytest.raises(InvalidVote, match="signature"):
        gadget.add_vote(sign_vote(KEYS[0], link(tree.root, b1), Hash32(b"\x00" * 32)), tree)
    forged = dataclasses.replace(
        sign_vote(KEYS[0], link(tree.root, b1), GENESIS), voter=KEYS[1].address
    )
    with pytest.raises(InvalidVote):
        gadget.add_vote(forged, tree)


def test_double_and_surround_votes_become_evidence() -> None:
    tree = Tree()
    a1 = tree.child(tree.root, tag=0)
    b1 = tree.child(tree.root, tag=1)
    gadget = FinalityGadget(GENESIS, 0, SET, tree.root)
    gadget.add_vote(sign_vote(KEYS[0], link(tree.root, a1), GENESIS), tree)
    out = gadget.add_vote(sign_vote(KEYS[0], link(tree.root, b1), GENESIS), tree)
    assert [why for _, _, why in out.evidence] == ["double"]
    a2 = tree.child(a1)
    a3 = tree.child(a2)
    a4 = tree.child(a3)
    assert conflicting(link(tree.root, a4), link(a1, a3)) == "surround"
    assert conflicting(link(a1, a3), link(tree.root, a4)) == "surround"
    assert conflicting(link(a1, a2), link(a2, a3)) is None


def test_vote_record_enforces_the_rules() -> None:
    tree = Tree()
    b1 = tree.child(tree.root)
    b2 = tree.child(b1)
    record = VoteRecord(set_id=0, source_number=1, target_number=2)
    assert not record.allows(link(b1, b2))  # same target height again
    assert not record.allows(link(tree.root, tree.child(b2)))  # source went back
    assert record.allows(link(b1, tree.child(b2)))
    assert record.allows(link(tree.root, b1, set_id=1))  # a new set starts afresh


def test_proposal_uses_highest_justified_source() -> None:
    tree = Tree()
    b1 = tree.child(tree.root)
    b2 = tree.child(b1)
    gadget = FinalityGadget(GENESIS, 0, SET, tree.root)
    assert gadget.proposal(b2, tree, VoteRecord()) == link(tree.root, b1)  # the source's child
    vote_all(gadget, tree, link(tree.root, b1), KEYS[:3])
    assert gadget.proposal(b2, tree, VoteRecord()) == link(b1, b2)
    assert gadget.proposal(b1, tree, VoteRecord()) is None  # nothing above the source


def test_votes_target_the_sources_child_so_slow_votes_still_finalize() -> None:
    """Targeting the head, votes slower than a slot skip blocks: links justify without ever
    finalizing (the stall bench_chaos saw under overload). The source's child instead."""
    tree = Tree()
    chain = [tree.root]
    for _ in range(6):
        chain.append(tree.child(chain[-1]))
    gadget = FinalityGadget(GENESIS, 0, SET, tree.root)
    record = VoteRecord()
    for step in range(5):  # the head is always 2 blocks ahead of what votes have reached
        head = chain[min(step + 2, 6)]
        proposed = gadget.proposal(head, tree, record)
        assert proposed == link(chain[step], chain[step + 1])
        out = vote_all(gadget, tree, proposed, KEYS[:3])
        record = VoteRecord(0, proposed.source.number, proposed.target.number)
        if step:
            assert out.finalized is not None
            assert out.finalized.source == chain[step]
    assert gadget.finalized == chain[4]
    # having voted at the child's height already (votes split over forks, or a restart), a
    # voter targets the head, where voters with different records meet again
    assert gadget.proposal(chain[6], tree, VoteRecord(0, 4, 5)) == link(chain[5], chain[6])
    ahead = FinalityGadget(GENESIS, 0, SET, tree.root)
    vote_all(ahead, tree, link(tree.root, chain[1]), KEYS[:3])
    assert ahead.proposal(chain[6], tree, VoteRecord(0, 0, 2)) == link(chain[1], chain[6])
    assert ahead.proposal(chain[6], tree, VoteRecord(0, 0, 6)) is None


def test_justification_verification_and_encoding() -> None:
    tree = Tree()
    b1 = tree.child(tree.root)
    b2 = tree.child(b1)
    lk = link(b1, b2)
    sigs = tuple((k.address, sign_vote(k, lk, GENESIS).signature) for k in KEYS[:3])
    good = Justification(0, b1, b2, sigs)
    assert Justification.decode(good.encode()) == good
    verify_justification(good, SET, 0, GENESIS)
    for bad, message in [
        (dataclasses.replace(good, signatures=sigs[:2]), "more than 2/3"),
        (dataclasses.replace(good, signatures=(*sigs[:2], sigs[0])), "twice"),
        (dataclasses.replace(good, target=tree.child(b2)), "direct child"),
        (dataclasses.replace(good, set_id=1), "authority set 1"),
    ]:
        with pytest.raises(InvalidVote, match=message):
            verify_justification(bad, SET, 0, GENESIS)
    with pytest.raises(InvalidVote, match="non-authority"):
        verify_justification(good, SET[1:], 0, GENESIS)
    with pytest.raises(InvalidVote, match="does not verify"):
        verify_justification(good, SET, 0, Hash32(b"\x00" * 32))
    assert Vote.decode(sign_vote(KEYS[0], lk, GENESIS).encode()).link == lk


# --- what a node that was away needs (restarts, pauses) -----------------------------------------


def test_a_fresh_gadget_learns_the_justified_block_from_re_sent_votes() -> None:
    """The restart bug: a node that forgot b2 is justified votes b1 → b3 while the others vote
    b2 → b3, and its votes never count. Re-sent votes (pending_votes) teach it b2."""
    tree = Tree()
    b1 = tree.child(tree.root)
    b2 = tree.child(b1)
    b3 = tree.child(b2)
    peer = FinalityGadget(GENESIS, 0, SET, tree.root)
    vote_all(peer, tree, link(tree.root, b1), KEYS[:3])
    out = vote_all(peer, tree, link(b1, b2), KEYS[:3])
    assert out.finalized is not None
    assert peer.finalized == b1
    peer.add_vote(sign_vote(KEYS[3], link(b1, b3), GENESIS), tree)  # the one that was away
    pending = peer.pending_votes()
    assert {v.link for v in pending} == {link(b1, b2), link(b1, b3)}
    assert len([v for v in pending if v.link == link(b1, b2)]) == 3

    restarted = FinalityGadget(GENESIS, 0, SET, b1)  # knows only its stored finalized block
    assert restarted.proposal(b3, tree, VoteRecord()) == link(b1, b2)  # one behind
    for vote in pending:
        restarted.add_vote(vote, tree)
    assert restarted.justified.get(b2.hash) == 2
    assert restarted.proposal(b3, tree, VoteRecord()) == link(b2, b3)  # with the others


def test_a_justification_makes_its_target_justified() -> None:
    tree = Tree()
    b1 = tree.child(tree.root)
    b2 = tree.child(b1)
    b3 = tree.child(b2)
    peer = FinalityGadget(GENESIS, 0, SET, tree.root)
    vote_all(peer, tree, link(tree.root, b1), KEYS[:3])
    out = vote_all(peer, tree, link(b1, b2), KEYS[:3])
    assert out.finalized is not None
    behind = FinalityGadget(GENESIS, 0, SET, tree.root)
    # a vote from b2 that arrived before the node knew b2 was justified waits...
    behind.add_vote(sign_vote(KEYS[0], link(b2, b3), GENESIS), tree)
    learned = behind.learn(out.finalized, tree)
    assert behind.finalized == b1
    assert learned.justified == [b2.hash]
    assert behind.proposal(b3, tree, VoteRecord()) == link(b2, b3)
    # ...and counts as soon as two more arrive
    out = vote_all(behind, tree, link(b2, b3), KEYS[1:3])
    assert out.finalized is not None
    assert out.finalized.source == b2
    assert behind.learn(out.finalized, tree).justified == []  # nothing new twice
    assert FinalityGadget(GENESIS, 1, SET, tree.root).learn(out.finalized, tree).justified == []


def test_pending_votes_forget_what_is_final() -> None:
    tree = Tree()
    b1 = tree.child(tree.root)
    b2 = tree.child(b1)
    b3 = tree.child(b2)
    gadget = FinalityGadget(GENESIS, 0, SET, tree.root)
    vote_all(gadget, tree, link(tree.root, b1), KEYS)
    vote_all(gadget, tree, link(b1, b2), KEYS)
    vote_all(gadget, tree, link(b2, b3), KEYS)
    assert gadget.finalized == b2
    pending = gadget.pending_votes()
    assert {v.link for v in pending} == {link(b2, b3)}  # b3 justified, not final
    for vote in pending:
        vote.verify(GENESIS)
