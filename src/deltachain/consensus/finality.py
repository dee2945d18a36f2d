"""Finality: a vote-based gadget in the Casper FFG family over Aura blocks.

Every authority votes once per block height for a *link* ``source → target``: ``source`` is the
highest justified block it knows on its best chain, ``target`` its best block. A block is
*justified* when it is the last finalized block, or when more than 2/3 of the authority set
signed the same link from a justified ancestor to it. A justified block is *finalized* when a
link with more than 2/3 of the votes goes from it to its direct child.

Honest authorities obey two rules (checked before signing, persisted before sending):
  1. never two votes for the same target height (strictly increasing target heights);
  2. never a vote that surrounds, or is surrounded by, an earlier one (sources never go back).
Two finalized blocks on different forks need more than 1/3 of the set to have broken a rule,
and every broken rule is a pair of signed votes anyone can check: equivocation evidence.
The safety and liveness argument is written out in ``docs/consensus.md``.

A ``Justification`` (the > 2/3 signed link from a block to its child) proves finality to light
clients, who need only the authority set, never the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from deltachain import codec
from deltachain.crypto.keys import PublicKey
from deltachain.errors import CryptoError, DecodeError
from deltachain.primitives.block import Header
from deltachain.primitives.types import (
    Address,
    BlockNumber,
    Hash32,
    Signature,
    as_address,
    as_uint64,
)
from deltachain.primitives.vote import (
    Checkpoint,
    InvalidVote,
    Link,
    Vote,
    conflicting,
    sign_vote,
)

__all__ = [
    "Checkpoint",
    "FinalityGadget",
    "FinalityOutcome",
    "InvalidVote",
    "Justification",
    "Link",
    "Vote",
    "VoteRecord",
    "conflicting",
    "sign_vote",
    "supermajority",
    "verify_justification",
]

MAX_JUSTIFICATION_SIZE = 256 * 1024


def supermajority(count: int, set_size: int) -> bool:
    """Strictly more than two thirds, in integers: 67 of 100 is enough, 66 is not."""
    return 3 * count > 2 * set_size


@dataclass(frozen=True)
class Justification:
    """> 2/3 of set ``set_id`` signed source → target, target being source's child."""

    set_id: int
    source: Header
    target: Header
    signatures: tuple[tuple[Address, Signature], ...]

    @property
    def link(self) -> Link:
        return Link(
            self.set_id,
            Checkpoint(self.source.hash, self.source.number),
            Checkpoint(self.target.hash, self.target.number),
        )

    def encode(self) -> bytes:
        return codec.encode(
            [
                self.set_id,
                self.source.encode(),
                self.target.encode(),
                [[a, s] for a, s in self.signatures],
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Justification:
        obj = codec.decode(data, max_size=MAX_JUSTIFICATION_SIZE, what="justification")
        if not isinstance(obj, list) or len(obj) != 4 or not isinstance(obj[3], list):
            raise DecodeError("a justification is [set id, source, target, [[voter, sig]...]]")
        sigs = []
        for pair in obj[3]:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not isinstance(pair[1], bytes)
                or len(pair[1]) != 64
            ):
                raise DecodeError("justification signatures are [voter, 64-byte signature]")
            sigs.append((as_address(pair[0], "voter"), Signature(pair[1])))
        if not isinstance(obj[1], bytes) or not isinstance(obj[2], bytes):
            raise DecodeError("justification headers must be encoded bytes")
        return cls(
            as_uint64(obj[0], "set id"), Header.decode(obj[1]), Header.decode(obj[2]), tuple(sigs)
        )


def verify_justification(
    justification: Justification, authorities: Sequence[Address], set_id: int, genesis_hash: Hash32
) -> None:
    """Check that ``justification.source`` is final under ``authorities`` (set ``set_id``).

    Pure: a light client calls this with only its stored authority set. Raises InvalidVote.
    """
    j = justification
    if j.set_id != set_id:
        raise InvalidVote(f"justification is for authority set {j.set_id}, expected {set_id}")
    if j.target.parent_hash != j.source.hash or j.target.number != j.source.number + 1:
        raise InvalidVote("justification target is not the direct child of its source")
    allowed = set(authorities)
    voters: set[Address] = set()
    payload = j.link.payload(genesis_hash)
    for voter, signature in j.signatures:
        if voter not in allowed:
            raise InvalidVote("justification signed by a non-authority")
        if voter in voters:
            raise InvalidVote("justification counts a voter twice")
        try:
            PublicKey.from_bytes(bytes(voter)).verify(payload, signature)
        except CryptoError:
            raise InvalidVote("a justification signature does not verify") from None
        voters.add(voter)
    if not supermajority(len(voters), len(allowed)):
        raise InvalidVote(
            f"justification has {len(voters)} of {len(allowed)} votes; more than 2/3 are needed"
        )


class BlockTree(Protocol):
    """What the gadget needs to know about blocks: headers and ancestry."""

    def header_or_none(self, block_hash: Hash32) -> Header | None: ...

    def is_ancestor(self, ancestor: Hash32, descendant: Hash32) -> bool: ...


@dataclass
class VoteRecord:
    """The last link this node signed; persisted before sending, so a restart never double-votes."""

    set_id: int = -1
    source_number: int = 0
    target_number: int = 0

    def allows(self, link: Link) -> bool:
        if link.set_id != self.set_id:
            return link.set_id > self.set_id
        return link.target.number > self.target_number and link.source.number >= self.source_number


@dataclass
class FinalityOutcome:
    justified: list[Hash32] = field(default_factory=list)
    finalized: Justification | None = None
    evidence: list[tuple[Vote, Vote, str]] = field(default_factory=list)
    counted: bool = False
    """The vote was new to the tally (the node persists it, so a restart still knows it)."""


class FinalityGadget:
    """Tallies votes for one authority set; decides what this node may vote for.

    Votes whose blocks are unknown wait until the block arrives (gossip races imports).
    """

    def __init__(
        self, genesis_hash: Hash32, set_id: int, authorities: Sequence[Address], finalized: Header
    ) -> None:
        self.genesis_hash = genesis_hash
        self.reset(set_id, authorities, finalized)

    def reset(self, set_id: int, authorities: Sequence[Address], finalized: Header) -> None:
        """Start a fresh tally for ``set_id``, the set in force at the ``finalized`` block."""
        self.set_id = set_id
        self.authorities = tuple(authorities)
        self.finalized = finalized
        self.justified: dict[Hash32, BlockNumber] = {finalized.hash: finalized.number}
        self._tally: dict[Link, dict[Address, Signature]] = {}
        self._by_voter: dict[Address, list[Vote]] = {}

    # --- what to vote for ------------------------------------------------------------------

    def highest_justified_on(self, head: Hash32, tree: BlockTree) -> Checkpoint:
        best = Checkpoint(self.finalized.hash, self.finalized.number)
        for block_hash, number in self.justified.items():
            if number > best.number and tree.is_ancestor(block_hash, head):
                best = Checkpoint(block_hash, number)
        return best

    def proposal(self, head: Header, tree: BlockTree, record: VoteRecord) -> Link | None:
        """The link this node should sign with ``head`` as its best block, if the rules allow.

        The target is the source's child on the head's chain, so a supermajority on it
        finalizes the source. Targeting the head instead stalls finality whenever votes take
        longer than a slot: the head moves on, supermajority links skip blocks (seen under
        overload: #521 → #546, #521 → #647) and blocks are justified but never finalized.
        Once this node has voted at the child's height (its votes split over forks, or it
        restarted), it targets the head, where voters whose records differ meet again."""
        source = self.highest_justified_on(head.hash, tree)
        if head.number <= source.number:
            return None
        target: Header | None = head
        child_voted = record.set_id == self.set_id and record.target_number > source.number
        if not child_voted:
            while target is not None and target.number > source.number + 1:
                target = tree.header_or_none(target.parent_hash)
        if target is None:
            return None
        link = Link(self.set_id, source, Checkpoint(target.hash, target.number))
        return link if record.allows(link) else None

    # --- counting --------------------------------------------------------------------------

    def add_vote(self, vote: Vote, tree: BlockTree) -> FinalityOutcome:
        """Count a verified-signature vote; returns what became justified/finalized and evidence.

        Raises InvalidVote for votes from outside the set, of another set, or badly signed.
        """
        outcome = FinalityOutcome()
        if vote.link.set_id != self.set_id:
            raise InvalidVote(
                f"vote for authority set {vote.link.set_id}, current is {self.set_id}"
            )
        if vote.voter not in self.authorities:
            raise InvalidVote("vote from a non-authority")
        if vote.link.target.number <= vote.link.source.number:
            raise InvalidVote("vote target is not above its source")
        vote.verify(self.genesis_hash)
        earlier = self._by_voter.setdefault(vote.voter, [])
        for old in earlier:
            why = conflicting(old.link, vote.link)
            if why is not None:
                outcome.evidence.append((old, vote, why))
        if vote.link in (v.link for v in earlier):
            return outcome
        earlier.append(vote)
        outcome.counted = True
        if len(earlier) > 64:
            del earlier[: len(earlier) - 64]
        self._tally.setdefault(vote.link, {})[vote.voter] = vote.signature
        self._settle(tree, outcome)
        return outcome

    def learn(self, justification: Justification, tree: BlockTree) -> FinalityOutcome:
        """Take in a verified justification: its source is final, its target justified.

        A node that was away (restarted, paused, partitioned) learns here what the others
        justified while it was gone, so its next vote has their source (docs/consensus.md
        §2.1). Votes already counted from that source may now justify more.
        """
        outcome = FinalityOutcome()
        if justification.set_id != self.set_id:
            return outcome
        target = justification.link.target
        if justification.source.number > self.finalized.number:
            self._advance(justification.source)
        if target.number > self.finalized.number and target.hash not in self.justified:
            self.justified[target.hash] = target.number
            outcome.justified.append(target.hash)
        self._settle(tree, outcome)
        return outcome

    def pending_votes(self) -> list[Vote]:
        """Votes a peer that was away needs to catch up: every vote of a supermajority link that
        justified a block above finality, and each voter's newest vote above finality.

        Re-gossiped periodically and served by sync: votes are otherwise sent once, so a node
        that missed them would vote from an older source forever.
        """
        out: dict[tuple[Link, Address], Vote] = {}
        above = self.finalized.number
        for link, sigs in self._tally.items():
            justifying = self.justified.get(link.target.hash) == link.target.number
            if (
                link.target.number > above
                and justifying
                and supermajority(len(sigs), len(self.authorities))
            ):
                for voter, signature in sigs.items():
                    out[(link, voter)] = Vote(link, voter, signature)
        for voter, votes in self._by_voter.items():
            newest = max(votes, key=lambda v: v.link.target.number, default=None)
            if newest is not None and newest.link.target.number > above:
                out[(newest.link, voter)] = newest
        return sorted(out.values(), key=lambda v: (v.link.target.number, bytes(v.voter)))

    def recheck(self, tree: BlockTree) -> FinalityOutcome:
        """Re-evaluate waiting links after a block import (their blocks may now be known)."""
        outcome = FinalityOutcome()
        self._settle(tree, outcome)
        return outcome

    def _settle(self, tree: BlockTree, outcome: FinalityOutcome) -> None:
        changed = True
        while changed:
            changed = False
            for link, sigs in list(self._tally.items()):
                if not supermajority(len(sigs), len(self.authorities)):
                    continue
                if link.source.hash not in self.justified:
                    continue
                target = tree.header_or_none(link.target.hash)
                if target is None or target.number != link.target.number:
                    continue
                if not tree.is_ancestor(link.source.hash, link.target.hash):
                    continue
                if link.target.hash not in self.justified:
                    self.justified[link.target.hash] = link.target.number
                    outcome.justified.append(link.target.hash)
                    changed = True
                source = tree.header_or_none(link.source.hash)
                if (
                    source is not None
                    and target.parent_hash == source.hash
                    and source.number > self.finalized.number
                ):
                    outcome.finalized = Justification(
                        self.set_id, source, target, tuple(sorted(sigs.items()))
                    )
                    self._advance(source)
                    changed = True
                    break

    def _advance(self, finalized: Header) -> None:
        """Forget what can no longer matter: links and justified blocks below finality."""
        self.finalized = finalized
        self.justified = {h: n for h, n in self.justified.items() if n >= finalized.number}
        self.justified[finalized.hash] = finalized.number
        self._tally = {
            link: sigs
            for link, sigs in self._tally.items()
            if link.target.number > finalized.number
        }

    def tally(self, link: Link) -> int:
        return len(self._tally.get(link, {}))
