"""Header and Block: frozen wire objects, canonical CBOR arrays, hashes with a domain prefix.

The block hash covers the sealed header, so a block is named by exactly what its author signed
plus the seal. The seal signs the header *without* the seal, prefixed by a domain tag and the
genesis hash (see ``seal_payload``), so a seal is valid on one chain only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from deltachain import codec
from deltachain.crypto.hashing import PREFIX_HEADER, tagged_hash
from deltachain.crypto.keys import DOMAIN_SEAL, signing_payload
from deltachain.crypto.merkle import merkle_root
from deltachain.errors import DecodeError
from deltachain.primitives.transaction import MAX_TX_SIZE, SignedTransaction
from deltachain.primitives.types import (
    ZERO_HASH,
    Address,
    BlockNumber,
    Hash32,
    Signature,
    Slot,
    as_address,
    as_hash32,
    as_uint64,
)

MAX_HEADER_SIZE = 1024
MAX_BLOCK_TXS = 10_000
MAX_BLOCK_SIZE = 32 << 20


@dataclass(frozen=True)
class Header:
    parent_hash: Hash32
    number: BlockNumber
    slot: Slot
    state_root: Hash32
    extrinsics_root: Hash32
    author: Address
    seal: Signature

    def _fields(self, seal: bytes) -> list[Any]:
        return [
            self.parent_hash,
            self.number,
            self.slot,
            self.state_root,
            self.extrinsics_root,
            self.author,
            seal,
        ]

    def encode(self) -> bytes:
        return codec.encode(self._fields(self.seal))

    def encode_unsealed(self) -> bytes:
        return codec.encode(self._fields(b""))

    @property
    def hash(self) -> Hash32:
        return tagged_hash(PREFIX_HEADER, self.encode())

    def with_seal(self, seal: Signature) -> Header:
        return replace(self, seal=seal)

    @classmethod
    def from_obj(cls, obj: Any) -> Header:
        if not isinstance(obj, list) or len(obj) != 7:
            raise DecodeError("a header is an array of 7 fields")
        parent, number, slot, state_root, ext_root, author, seal = obj
        if not isinstance(seal, bytes) or len(seal) not in (0, 64):
            raise DecodeError("header seal must be empty or 64 bytes")
        return cls(
            parent_hash=as_hash32(parent, "parent hash"),
            number=BlockNumber(as_uint64(number, "block number")),
            slot=Slot(as_uint64(slot, "slot")),
            state_root=as_hash32(state_root, "state root"),
            extrinsics_root=as_hash32(ext_root, "extrinsics root"),
            author=as_address(author, "author"),
            seal=Signature(seal),
        )

    @classmethod
    def decode(cls, data: bytes) -> Header:
        return cls.from_obj(codec.decode(data, max_size=MAX_HEADER_SIZE, what="header"))


def seal_payload(header: Header, genesis_hash: Hash32) -> bytes:
    """What an author signs: domain ‖ genesis ‖ header-without-seal."""
    return signing_payload(DOMAIN_SEAL, genesis_hash, header.encode_unsealed())


def extrinsics_root(transactions: tuple[SignedTransaction, ...]) -> Hash32:
    return merkle_root([tx.encode() for tx in transactions])


@dataclass(frozen=True)
class Block:
    header: Header
    transactions: tuple[SignedTransaction, ...]

    @property
    def hash(self) -> Hash32:
        return self.header.hash

    @property
    def number(self) -> BlockNumber:
        return self.header.number

    def encode(self) -> bytes:
        return codec.encode(
            [self.header._fields(self.header.seal), [tx.encode() for tx in self.transactions]]
        )

    @classmethod
    def decode(cls, data: bytes) -> Block:
        obj = codec.decode(data, max_size=MAX_BLOCK_SIZE, what="block")
        if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[1], list):
            raise DecodeError("a block is an array [header, [transactions]]")
        if len(obj[1]) > MAX_BLOCK_TXS:
            raise DecodeError(f"a block holds at most {MAX_BLOCK_TXS} transactions")
        txs = []
        for raw in obj[1]:
            if not isinstance(raw, bytes) or len(raw) > MAX_TX_SIZE:
                raise DecodeError("block transaction must be bytes within the size limit")
            txs.append(SignedTransaction.decode(raw))
        return cls(Header.from_obj(obj[0]), tuple(txs))


def genesis_header(state_root: Hash32) -> Header:
    """Block 0: no parent, no author, no seal; its hash is the chain's genesis hash."""
    return Header(
        parent_hash=ZERO_HASH,
        number=BlockNumber(0),
        slot=Slot(0),
        state_root=state_root,
        extrinsics_root=merkle_root([]),
        author=Address(bytes(32)),
        seal=Signature(b""),
    )
