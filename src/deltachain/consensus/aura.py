"""Aura: round-robin slot authorship over an immutable authority snapshot.

slot = floor(unix_ms / slot_ms); the author of a slot is ``authorities[slot mod n]``. A header
must come from a strictly later slot than its parent, no more than one slot in the future, from
the slot's author, with a valid seal over the unsealed header (domain ‖ genesis ‖ header).
"""

from __future__ import annotations

from collections.abc import Sequence

from deltachain.crypto.keys import Keypair, PublicKey, address_to_str
from deltachain.errors import CryptoError, InvalidBlock, InvalidSeal
from deltachain.primitives.block import Header, seal_payload
from deltachain.primitives.types import Address, Hash32, Signature, Slot


def slot_at(unix_ms: int, slot_ms: int) -> Slot:
    return Slot(unix_ms // slot_ms)


def author_of(slot: Slot, authorities: Sequence[Address]) -> Address:
    if not authorities:
        raise InvalidBlock("the authority set is empty")
    return authorities[slot % len(authorities)]


def seal_header(header: Header, keypair: Keypair, genesis_hash: Hash32) -> Header:
    return header.with_seal(Signature(keypair.sign(seal_payload(header, genesis_hash))))


def verify_header(
    header: Header,
    parent: Header,
    authorities: Sequence[Address],
    genesis_hash: Hash32,
    *,
    now_slot: Slot | None,
) -> None:
    """Raise InvalidBlock / InvalidSeal unless ``header`` may follow ``parent``.

    ``now_slot`` is None when importing historical blocks during sync (the future-slot rule
    only guards blocks arriving live).
    """
    if header.parent_hash != parent.hash:
        raise InvalidBlock("parent hash does not match the parent header")
    if header.number != parent.number + 1:
        raise InvalidBlock(f"block number {header.number} does not follow {parent.number}")
    if header.slot <= parent.slot:
        raise InvalidBlock(f"slot {header.slot} is not after the parent's slot {parent.slot}")
    if now_slot is not None and header.slot > now_slot + 1:
        raise InvalidBlock(f"slot {header.slot} is in the future (now {now_slot})")
    expected = author_of(header.slot, authorities)
    if header.author != expected:
        raise InvalidSeal(
            f"slot {header.slot} belongs to {address_to_str(expected)}, "
            f"not {address_to_str(header.author)}"
        )
    try:
        PublicKey.from_bytes(bytes(header.author)).verify(
            seal_payload(header, genesis_hash), header.seal
        )
    except CryptoError:
        raise InvalidSeal("the block seal does not verify") from None
