"""The light client: trusts finalized headers only, and keeps almost nothing.

Persistent state (``save``/``load``, canonical CBOR) is exactly: the genesis hash, the authority
set and its id, and the latest finalized header —
``CBOR([1, genesis hash, set id, [authority, ...], encoded header])``, about
``250 + 34·n`` bytes for ``n`` authorities (≈ 400 B for 4, ≈ 800 B for 16).

It moves forward only by justifications (``follow``): more than 2/3 of the set it trusts signed
``source → child`` (``consensus.finality.verify_justification``, pure), and the source is newer
than its finalized header. The voting set is the one in the state of the last finalized block
(docs/consensus.md §4), so with each justification it takes a *set proof* — ``system/set_id``
(and, if that changed, ``system/authorities``) proven against the new finalized state root — and
switches to the proven set. Warp sync is therefore one justification per set change.

Without a set proof ``follow`` keeps the current set. A provider that hides a change can only
stall the client (the new set's next justification fails as the wrong set id, and
``update_set`` with a proof at the finalized block repairs it); it cannot make it accept a
block that the set it trusts did not finalize. ``remote.RemoteLightClient`` always sends one.

Anything proven against the finalized state root — state entries, model records, weight
chunks — goes through a ``Verifier`` pinned to one trusted header (``verifier()``); a device
downloading a model keeps one verifier for the whole download, so every chunk is checked
against the same root even if the client follows a newer block meanwhile.

Not checked, by design: that a new finalized block descends from the previous one (the client
holds no intermediate headers; under the < 1/3-faulty assumption finalized blocks never
conflict), and Aura seals (finality signatures are the trust anchor, not authorship).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deltachain import codec
from deltachain.consensus.finality import InvalidVote, Justification, verify_justification
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.trie import TrieProof
from deltachain.errors import DecodeError, ProofError
from deltachain.light.errors import StaleData
from deltachain.light.proofs import (
    MAX_AUTHORITIES,
    ChunkProof,
    ModelRecordView,
    SetProof,
    verify_record,
    verify_set_proof,
    verify_state_proof,
)
from deltachain.primitives.block import Header
from deltachain.primitives.types import Address, as_hash32, as_uint64

__all__ = ["STATE_FORMAT", "LightClient", "Verifier"]

STATE_FORMAT = 1
MAX_STATE_SIZE = 64 * 1024


def _check_set(authorities: Sequence[Address]) -> tuple[Address, ...]:
    out = tuple(authorities)
    if not out or len(out) > MAX_AUTHORITIES:
        raise ProofError(f"an authority set holds 1..{MAX_AUTHORITIES} addresses")
    if not all(isinstance(a, bytes) and len(a) == 32 for a in out):
        raise ProofError("authority addresses must be 32 bytes")
    if len(set(out)) != len(out):
        raise ProofError("the authority set lists an address twice")
    return out


@dataclass(frozen=True)
class Verifier:
    """Checks data against one trusted header's state root (the device's plug-in point)."""

    header: Header

    @property
    def state_root(self) -> Hash32:
        return self.header.state_root

    def verify_state(self, key: bytes, value: bytes | None, proof: TrieProof | bytes) -> None:
        """Raw ``key`` holds ``value`` (None: absent) at this header. Raises ProofError or
        DecodeError (malformed proof bytes)."""
        verify_state_proof(self.state_root, key, value, proof)

    def verify_record(
        self, model_id: str, record: bytes, record_proof: TrieProof | bytes
    ) -> ModelRecordView:
        """Prove model ``model_id``'s record at this header; returns its fields (version,
        weightsRoot, chunkCount…) for ``ModelRecordView.verify_chunk``. Raises ProofError or
        DecodeError."""
        return verify_record(self.state_root, model_id, record, record_proof)

    def verify_chunk(
        self,
        model_id: str,
        chunk_index: int,
        chunk: bytes,
        merkle_proof: Sequence[bytes],
        record: bytes,
        record_proof: TrieProof | bytes,
    ) -> ModelRecordView:
        """Record proven in the state root → its weightsRoot/chunkCount → the chunk's Merkle path.

        Raises ProofError or DecodeError. To check many chunks of one model, prove the record
        once (``verify_record``) and call ``ModelRecordView.verify_chunk`` per chunk.
        """
        view = self.verify_record(model_id, record, record_proof)
        view.verify_chunk(chunk_index, chunk, merkle_proof)
        return view

    def verify_chunk_proof(
        self, proof: ChunkProof, record: ModelRecordView | None = None
    ) -> ModelRecordView:
        """Check a node's ``model_getChunkProof`` answer against this header.

        Raises StaleData if the node proved against another state root (an older or newer
        block: fetch again at ``header.hash``), else ProofError/DecodeError. With ``record``
        (already proven at this header) the answer's record must be byte-identical to it and
        its trie proof is not re-checked.
        """
        if proof.state_root != self.state_root or proof.block_hash != self.header.hash:
            raise StaleData(
                f"chunk proof is against block 0x{proof.block_hash.hex()[:16]}…, not the "
                f"trusted block #{self.header.number} 0x{self.header.hash.hex()[:16]}…"
            )
        if record is None:
            record = self.verify_record(proof.model_id, proof.record, proof.record_proof)
        elif record.model_id != proof.model_id:
            raise ProofError(f"record is for model {record.model_id!r}, not {proof.model_id!r}")
        elif proof.record != record.raw:
            raise ProofError("chunk proof carries a different model record")
        record.verify_chunk(proof.index, proof.chunk, proof.merkle_proof)
        return record


class LightClient:
    """Genesis hash + authority set (and id) + latest finalized header; nothing else."""

    __slots__ = ("authorities", "finalized", "genesis_hash", "set_id")

    def __init__(
        self,
        genesis_hash: Hash32,
        set_id: int,
        authorities: Sequence[Address],
        finalized: Header,
    ) -> None:
        """Trust a checkpoint as given (weak subjectivity). Raises ProofError for a set that
        cannot be one, or a block-0 header that is not this genesis."""
        self.genesis_hash = as_hash32(genesis_hash, "genesis hash")
        self.set_id = as_uint64(set_id, "set id")
        self.authorities = _check_set(authorities)
        if finalized.number == 0 and finalized.hash != genesis_hash:
            raise ProofError("block 0 must be the genesis block")
        self.finalized = finalized

    @classmethod
    def from_genesis(
        cls,
        genesis_hash: Hash32,
        authorities: Sequence[Address],
        set_id: int = 0,
        *,
        genesis_header: Header,
    ) -> LightClient:
        """Start at genesis with a known set (from the chain spec). Raises ProofError if the
        header is not the genesis block."""
        if genesis_header.number != 0 or genesis_header.hash != genesis_hash:
            raise ProofError("genesis header does not hash to the genesis hash")
        return cls(genesis_hash, set_id, authorities, genesis_header)

    @classmethod
    def bootstrap(
        cls, genesis_hash: Hash32, genesis_header: Header, set_proof: SetProof
    ) -> LightClient:
        """Start from the genesis hash alone: the header must hash to it, and the set is proven
        against its state root. Raises ProofError or DecodeError."""
        if genesis_header.number != 0 or genesis_header.hash != genesis_hash:
            raise ProofError("genesis header does not hash to the genesis hash")
        set_id, authorities = verify_set_proof(genesis_header.state_root, set_proof)
        if authorities is None:
            raise ProofError("bootstrapping needs the authorities proven, not only the set id")
        return cls(genesis_hash, set_id, authorities, genesis_header)

    # --- persistence -----------------------------------------------------------------------

    def save(self) -> bytes:
        """The whole persistent state, canonical CBOR."""
        return codec.encode(
            [
                STATE_FORMAT,
                self.genesis_hash,
                self.set_id,
                list(self.authorities),
                self.finalized.encode(),
            ]
        )

    @classmethod
    def load(cls, data: bytes) -> LightClient:
        """Inverse of ``save``. Raises DecodeError for anything else."""
        obj = codec.decode(data, max_size=MAX_STATE_SIZE, what="light client state")
        if not isinstance(obj, list) or len(obj) != 5 or obj[0] != STATE_FORMAT:
            raise DecodeError(
                f"light client state is [{STATE_FORMAT}, genesis, set id, authorities, header]"
            )
        _, genesis, set_id, authorities, header = obj
        if not isinstance(authorities, list) or not isinstance(header, bytes):
            raise DecodeError("light client state: authorities must be a list, header bytes")
        try:
            finalized = Header.decode(header)
            return cls(as_hash32(genesis, "genesis hash"), set_id, authorities, finalized)
        except ProofError as exc:
            raise DecodeError(f"light client state: {exc}") from None

    # --- following finality ----------------------------------------------------------------

    def follow(self, justification: Justification, set_proof: SetProof | None = None) -> Header:
        """Accept ``justification.source`` as the new finalized header; returns it.

        Raises StaleData if it is not above the current finalized block; InvalidVote if it does
        not verify under the trusted set (signatures, non-authorities, voters counted twice,
        ≤ 2/3 weight, another set id, a target that is not the source's child, another chain);
        ProofError/DecodeError if ``set_proof`` does not verify against the new state root or
        shows a set id going backwards. Nothing changes unless everything verifies.
        """
        j = justification
        if j.source.number <= self.finalized.number:
            raise StaleData(
                f"justification finalizes block #{j.source.number}; the client is already at "
                f"#{self.finalized.number}"
            )
        if j.set_id != self.set_id:
            raise InvalidVote(
                f"justification is signed by authority set {j.set_id}; the client trusts set "
                f"{self.set_id} (a set change must be followed first, with its set proof)"
            )
        verify_justification(j, self.authorities, self.set_id, self.genesis_hash)
        set_id, authorities = self.set_id, self.authorities
        if set_proof is not None:
            set_id, authorities = self._proven_set(j.source, set_proof)
        self.finalized = j.source
        self.set_id, self.authorities = set_id, authorities
        return j.source

    def update_set(self, set_proof: SetProof) -> None:
        """Prove the set at the current finalized block (repair after a follow without one)."""
        self.set_id, self.authorities = self._proven_set(self.finalized, set_proof)

    def _proven_set(self, header: Header, proof: SetProof) -> tuple[int, tuple[Address, ...]]:
        set_id, authorities = verify_set_proof(header.state_root, proof)
        if set_id < self.set_id:
            raise ProofError(f"proof shows set {set_id}, older than the trusted set {self.set_id}")
        if set_id == self.set_id:
            if authorities is not None and authorities != self.authorities:
                raise ProofError(f"proof shows other authorities under the same set id {set_id}")
            return self.set_id, self.authorities
        if authorities is None:
            raise ProofError(f"set changed to {set_id}: the new authorities must be proven too")
        return set_id, _check_set(authorities)

    def warp(self, steps: Iterable[tuple[Justification, SetProof | None]]) -> Header:
        """Follow a sequence of justifications (one per set change, then the latest); all or
        nothing: on any error the client is left where it was. Returns the new finalized header.
        """
        saved = (self.set_id, self.authorities, self.finalized)
        try:
            for justification, set_proof in steps:
                self.follow(justification, set_proof)
        except BaseException:
            self.set_id, self.authorities, self.finalized = saved
            raise
        return self.finalized

    # --- verifying data --------------------------------------------------------------------

    def trusted_state_root(self) -> Hash32:
        return self.finalized.state_root

    def verifier(self) -> Verifier:
        """A verifier pinned to the current finalized header (it does not move with ``follow``)."""
        return Verifier(self.finalized)

    def verify_state(
        self,
        key: bytes,
        value: bytes | None,
        proof: TrieProof | bytes,
        header: Header | None = None,
    ) -> None:
        """Raw ``key`` holds ``value`` (None: absent) at the finalized block, or at ``header`` —
        which the caller must already trust (e.g. a ``verifier().header`` kept from earlier)."""
        Verifier(header or self.finalized).verify_state(key, value, proof)

    def verify_chunk(
        self,
        model_id: str,
        chunk_index: int,
        chunk: bytes,
        merkle_proof: Sequence[bytes],
        record: bytes,
        record_proof: TrieProof | bytes,
        header: Header | None = None,
    ) -> ModelRecordView:
        """Weight chunk ``chunk_index`` of ``model_id`` at the finalized block (or a trusted
        ``header``); returns the proven model record. Raises ProofError or DecodeError."""
        return Verifier(header or self.finalized).verify_chunk(
            model_id, chunk_index, chunk, merkle_proof, record, record_proof
        )

    def __repr__(self) -> str:
        return (
            f"LightClient(set {self.set_id} of {len(self.authorities)}, finalized "
            f"#{self.finalized.number} 0x{self.finalized.hash.hex()[:16]}…)"
        )
