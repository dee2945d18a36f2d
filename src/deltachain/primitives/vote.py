"""Finality votes on the wire: a signed link ``source → target`` within one authority set.

Votes are wire objects (gossiped, and carried in equivocation evidence that the runtime checks),
so they live here; the counting rules live in ``consensus/finality.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deltachain import codec
from deltachain.crypto.keys import DOMAIN_VOTE, Keypair, PublicKey, signing_payload
from deltachain.errors import CryptoError, DecodeError, InvalidBlock
from deltachain.primitives.types import (
    Address,
    BlockNumber,
    Hash32,
    Signature,
    as_address,
    as_hash32,
    as_uint64,
)

MAX_VOTE_SIZE = 512


class InvalidVote(InvalidBlock):
    """A vote or justification that does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    hash: Hash32
    number: BlockNumber

    def to_obj(self) -> list[Any]:
        return [self.hash, self.number]

    @classmethod
    def from_obj(cls, obj: Any) -> Checkpoint:
        if not isinstance(obj, list) or len(obj) != 2:
            raise DecodeError("a checkpoint is [hash, number]")
        return cls(as_hash32(obj[0], "checkpoint hash"), BlockNumber(as_uint64(obj[1], "number")))


@dataclass(frozen=True)
class Link:
    """What a vote signs: the authority set it votes in, and source → target."""

    set_id: int
    source: Checkpoint
    target: Checkpoint

    def payload(self, genesis_hash: Hash32) -> bytes:
        body = codec.encode([self.set_id, self.source.to_obj(), self.target.to_obj()])
        return signing_payload(DOMAIN_VOTE, genesis_hash, body)


@dataclass(frozen=True)
class Vote:
    link: Link
    voter: Address
    signature: Signature

    def encode(self) -> bytes:
        return codec.encode(
            [
                self.link.set_id,
                self.link.source.to_obj(),
                self.link.target.to_obj(),
                self.voter,
                self.signature,
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> Vote:
        obj = codec.decode(data, max_size=MAX_VOTE_SIZE, what="vote")
        if not isinstance(obj, list) or len(obj) != 5:
            raise DecodeError("a vote is [set id, source, target, voter, signature]")
        set_id, source, target, voter, signature = obj
        if not isinstance(signature, bytes) or len(signature) != 64:
            raise DecodeError("a vote signature is 64 bytes")
        link = Link(
            as_uint64(set_id, "set id"), Checkpoint.from_obj(source), Checkpoint.from_obj(target)
        )
        return cls(link, as_address(voter, "voter"), Signature(signature))

    def verify(self, genesis_hash: Hash32) -> None:
        """Raises InvalidVote if the signature is not the voter's over this link."""
        try:
            PublicKey.from_bytes(bytes(self.voter)).verify(
                self.link.payload(genesis_hash), self.signature
            )
        except CryptoError:
            raise InvalidVote("vote signature does not verify") from None


def sign_vote(keypair: Keypair, link: Link, genesis_hash: Hash32) -> Vote:
    return Vote(link, keypair.address, keypair.sign(link.payload(genesis_hash)))


def conflicting(a: Link, b: Link) -> str | None:
    """Why two links by one voter break a rule ("double" or "surround"), or None."""
    if a.set_id != b.set_id or a == b:
        return None
    if a.target.number == b.target.number:
        return "double"
    if (a.source.number < b.source.number and b.target.number < a.target.number) or (
        b.source.number < a.source.number and a.target.number < b.target.number
    ):
        return "surround"
    return None
