"""Verified model downloads: every chunk is proven to a state root the device trusts.

Chain of trust (brief §5): weight chunk → (Merkle proof) → ``weightsRoot`` in the model record
→ (trie proof) → state root → header → finality. :func:`download_model` checks the first three
links itself; the last two belong to a :class:`Verifier`, which tells the device which block to
read and what that block's state root is.

* :class:`LightVerifier` (the default for ``client run --rpc``) trusts only finality: a
  ``deltachain.light`` client follows justifications from a :class:`TrustRoot` the *user*
  gives (the chain spec's genesis and authority set, or a genesis hash), never one the node
  reports, over the node's JSON-RPC or any other light ``Transport`` (``client run --peer``).
  A node of another chain is refused with :class:`~deltachain.errors.ForeignChain`.
* :class:`TrustNodeVerifier` (``--trust-node``, and the in-process ``--local`` chain, which
  produces no justifications) **trusts the node's finality claim**: it asks the node for its
  finalized head and checks only that the returned header hashes to that block hash (so the
  state root is bound to the hash), not that the block is final. A lying node can still serve
  a forged chain; a corrupted or tampered download from an honest node's block is always caught.

Every failure is a :class:`~deltachain.errors.ProofError` (a bad proof, a chunk of the wrong
size, a record that does not match, a malformed answer), so a device rejects the download as a
whole and never trains on unverified weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from deltachain import codec
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.merkle import leaf_hash, verify_merkle_proof
from deltachain.crypto.trie import TrieProof, verify_proof
from deltachain.errors import DecodeError, DeltachainError, ForeignChain, ProofError
from deltachain.light.client import LightClient
from deltachain.light.remote import RemoteLightClient, Transport
from deltachain.model_state.module import key_model
from deltachain.primitives.block import Header
from deltachain.primitives.types import Address
from deltachain.runtime.state import key_hash, value_hash

from .rpc import NOT_FOUND, Caller, RpcFailed

if TYPE_CHECKING:
    from deltachain.light.p2p import P2pTransport
    from deltachain.primitives.chainspec import ChainSpec

HASH_NODE_BYTES = 65
"""Bytes hashed per Merkle/trie node: one-byte domain prefix + two 32-byte children."""


class ModelNotFound(DeltachainError):
    """The chain has no model with that id."""


@dataclass
class VerifierCost:
    """What a verifier downloaded and checked since the last ``take_cost`` (for accounting)."""

    bytes_received: int = 0
    hashed_bytes: int = 0
    signature_verifications: int = 0


class Verifier(Protocol):
    """Where a device's trust comes from: a finalized block and its state root."""

    def finalized_block(self) -> Hash32:
        """The block the device should read the model at (the latest one it trusts as final)."""
        ...

    def trusted_state_root(self, block_hash: Hash32) -> Hash32:
        """The state root of ``block_hash``; raises ProofError if that block is not trusted."""
        ...

    def take_cost(self) -> VerifierCost:
        """Bytes and checks spent since the previous call (then reset)."""
        ...


def _unhex(value: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ProofError(f"malformed answer: {what} is not 0x-hex")
    try:
        data = bytes.fromhex(value[2:])
    except ValueError:
        raise ProofError(f"malformed answer: {what} is not valid hex") from None
    if length is not None and len(data) != length:
        raise ProofError(f"malformed answer: {what} is {len(data)} bytes, expected {length}")
    return data


def header_from_json(obj: Any) -> Header:
    """Rebuild a header from the node's JSON (``chain_getHeader``); raises ProofError."""
    if not isinstance(obj, Mapping):
        raise ProofError("the node has no header for that block")
    try:
        return Header.from_obj(
            [
                _unhex(obj["parentHash"], "parentHash", 32),
                obj["number"],
                obj["slot"],
                _unhex(obj["stateRoot"], "stateRoot", 32),
                _unhex(obj["extrinsicsRoot"], "extrinsicsRoot", 32),
                _unhex(obj["author"], "author", 32),
                _unhex(obj["seal"], "seal"),
            ]
        )
    except (KeyError, TypeError) as exc:
        raise ProofError(f"malformed header answer: {exc}") from None
    except DecodeError as exc:
        raise ProofError(f"malformed header: {exc}") from None


@dataclass(frozen=True)
class TrustRoot:
    """What a device trusts before it talks to any node: the chain it belongs to.

    From a chain spec (``from_spec``): the genesis header computed locally and the initial
    authority set, so nothing about the start of the chain comes from a node. From a bare
    genesis hash: the node must show a genesis header hashing to it, and the set is proven
    against that header's state root. ``source`` names where it came from, for messages.
    """

    genesis_hash: Hash32
    source: str
    genesis_header: Header | None = None
    authorities: tuple[Address, ...] = ()

    @classmethod
    def from_spec(cls, spec: ChainSpec, source: str) -> TrustRoot:
        from deltachain.chain import genesis_header  # builds genesis: runtime code, local only

        header = genesis_header(spec)
        return cls(header.hash, source, header, tuple(spec.authorities))

    def check_node(self, node: Caller, where: str) -> None:
        """Raise ForeignChain (one line) unless ``node`` serves this chain."""
        self.check_served(node.call("chain_getGenesisHash"), where)

    def check_served(self, served: Any, where: str) -> None:
        """Raise ForeignChain (one line) unless ``served`` (a node's genesis) is ours."""
        if served != "0x" + self.genesis_hash.hex():
            shown = served[:18] + "…" if isinstance(served, str) else repr(served)[:20]
            raise ForeignChain(
                f"refusing the node at {where}: it serves chain {shown}, but {self.source} "
                f"is 0x{self.genesis_hash.hex()[:16]}…; point at a node of your chain or pass "
                "the right --chain/--genesis"
            )


class TrustNodeVerifier:
    """Trusts the node's finalized head; checks that the header hashes to that block hash."""

    def __init__(self, node: Caller) -> None:
        self.node = node
        self._roots: dict[bytes, Hash32] = {}
        self._cost = VerifierCost()

    def finalized_block(self) -> Hash32:
        return Hash32(_unhex(self.node.call("chain_getFinalizedHead"), "finalized head", 32))

    def trusted_state_root(self, block_hash: Hash32) -> Hash32:
        cached = self._roots.get(block_hash)
        if cached is not None:
            return cached
        header = header_from_json(self.node.call("chain_getHeader", "0x" + block_hash.hex()))
        encoded = header.encode()
        self._cost.bytes_received += len(encoded)
        self._cost.hashed_bytes += len(encoded)
        if header.hash != block_hash:
            raise ProofError("the node's header does not hash to the block it claims")
        self._roots = {block_hash: header.state_root}  # only the latest: O(1) memory
        return header.state_root

    def take_cost(self) -> VerifierCost:
        cost, self._cost = self._cost, VerifierCost()
        return cost


def _binary_size(value: Any) -> int:
    """Bytes a device would receive for a JSON-RPC answer sent as binary (hex counts half)."""
    if isinstance(value, str):
        return (len(value) - 2) // 2 if value.startswith("0x") else len(value)
    if isinstance(value, Mapping):
        return sum(_binary_size(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_binary_size(v) for v in value)
    return 8


class _CallerTransport(Transport):
    """The light client's transport over the device's node connection (JSON-RPC)."""

    def __init__(self, node: Caller) -> None:
        self.node = node

    def call(self, method: str, params: list[Any]) -> Any:
        return self.node.call(method, *params)


class _MeteredTransport(Transport):
    """Counts what one verifier receives through ``inner``, which every device may share.

    Over a ``P2pTransport`` that is the framed bytes it actually read for this verifier's
    requests; over JSON-RPC, each answer's binary size (the hex framing is not charged).
    """

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.received = 0
        self._p2p: P2pTransport | None = None
        if not isinstance(inner, _CallerTransport):
            from deltachain.light.p2p import P2pTransport  # libp2p: only when one is in use

            self._p2p = inner if isinstance(inner, P2pTransport) else None

    def _metered(self, fetch: Callable[[], Any]) -> Any:
        if self._p2p is None:
            result = fetch()
            self.received += _binary_size(result)
            return result
        before = self._p2p.bytes_received
        try:
            return fetch()
        finally:
            self.received += self._p2p.bytes_received - before

    def call(self, method: str, params: list[Any]) -> Any:
        return self._metered(lambda: self.inner.call(method, params))

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        result: list[Any] = self._metered(lambda: self.inner.batch(calls))
        return result


class LightVerifier:
    """Trusts only what finality proves: a ``deltachain.light`` client that starts from the
    user's ``root`` and follows justifications (warping across authority-set changes).

    ``finalized_block`` syncs the light client and returns its finalized block; any other
    block is refused. A node that lies about finality, sets or state is caught here, and a
    node of another chain is refused (ForeignChain) before anything is read from it.

    Justifications and proofs come over ``transport`` when given (e.g. a ``P2pTransport``
    shared by the fleet), else over ``node`` itself.
    """

    def __init__(self, node: Caller, root: TrustRoot, transport: Transport | None = None) -> None:
        self._transport = _MeteredTransport(transport or _CallerTransport(node))
        try:
            root.check_served(self._transport.call("chain_getGenesisHash", []), "--rpc/--peer")
            if root.genesis_header is not None:
                client = LightClient.from_genesis(
                    root.genesis_hash, root.authorities, genesis_header=root.genesis_header
                )
                self.remote = RemoteLightClient(client, self._transport)
            else:
                self.remote = RemoteLightClient.bootstrap(root.genesis_hash, self._transport)
        except ForeignChain:
            raise
        except DeltachainError as exc:
            raise ProofError(f"light client cannot start: {exc}") from None
        self._cost = VerifierCost()

    def finalized_block(self) -> Hash32:
        before = self.remote.client.finalized.number
        try:
            header = self.remote.sync()
        except DeltachainError as exc:
            raise ProofError(f"light client cannot follow finality: {exc}") from None
        if header.number != before:  # one justification checked (per set: more on a change)
            self._cost.signature_verifications += len(self.remote.client.authorities)
        return header.hash

    def trusted_state_root(self, block_hash: Hash32) -> Hash32:
        finalized = self.remote.client.finalized
        if block_hash != finalized.hash:
            raise ProofError("that block is not the light client's finalized block")
        return finalized.state_root

    def take_cost(self) -> VerifierCost:
        self._cost.bytes_received += self._transport.received
        self._cost.hashed_bytes += self._transport.received
        self._transport.received = 0
        cost, self._cost = self._cost, VerifierCost()
        return cost


@dataclass(frozen=True)
class VerifiedModel:
    """A model version whose every chunk was proven to ``state_root`` of ``block_hash``."""

    model_id: str
    block_hash: Hash32
    state_root: Hash32
    config: Mapping[str, Any]  # the record's config: id, layers (name, shape, global), ...
    version: int
    weights: np.ndarray  # int32 fixed point, the full flat vector
    bytes_received: int  # record + its proof + chunks + their proofs (binary sizes)
    hashed_bytes: int  # what the device hashed to verify them
    largest_chunk_with_proof: int  # bytes: the download phase's resident chunk + proof
    record_with_proof: int  # bytes


def _record_config(record: Mapping[str, Any]) -> Mapping[str, Any]:
    try:
        config = record["config"]
        for key in ("id", "layers", "fracBits", "chunkSize"):
            config[key]
        int(record["version"])
        int(record["chunkCount"])
        int(record["numParams"])
        _ = record["weightsRoot"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ProofError(f"model record is malformed: {exc}") from None
    if not isinstance(config, Mapping):
        raise ProofError("model record is malformed: config is not a map")
    return config


def download_model(node: Caller, verifier: Verifier, model_id: str) -> VerifiedModel:
    """Fetch every chunk of ``model_id`` at the verifier's finalized block and prove each.

    Raises ProofError on any verification failure, ModelNotFound if the chain has no such
    model, NodeUnreachable / RpcFailed if the node cannot answer.
    """
    block = verifier.finalized_block()
    root = verifier.trusted_state_root(block)
    block_hex = "0x" + block.hex()

    def fetch(index: int) -> Mapping[str, Any]:
        try:
            answer = node.call("model_getChunkProof", model_id, index, block_hex)
        except RpcFailed as exc:
            if exc.code == NOT_FOUND and "no model" in str(exc):
                raise ModelNotFound(f"the chain has no model {model_id!r}") from None
            raise
        if not isinstance(answer, Mapping):
            raise ProofError("malformed chunk proof answer")
        return answer

    first = fetch(0)
    try:
        record_bytes = _unhex(first["record"], "record")
        record_proof_bytes = _unhex(first["recordProof"], "recordProof")
    except KeyError as exc:
        raise ProofError(f"chunk proof answer lacks {exc}") from None
    try:
        record_proof = TrieProof.decode(record_proof_bytes)
    except DecodeError as exc:
        raise ProofError(f"model record proof is malformed: {exc}") from None
    verify_proof(root, key_hash(key_model(model_id)), value_hash(record_bytes), record_proof)
    hashed = len(record_bytes) + HASH_NODE_BYTES * (len(record_proof.siblings) + 1)
    try:
        record = codec.decode(record_bytes, what="model record")
    except DecodeError as exc:
        raise ProofError(f"model record does not decode: {exc}") from None
    if not isinstance(record, Mapping):
        raise ProofError("model record is not a map")
    config = _record_config(record)
    count, num_params = int(record["chunkCount"]), int(record["numParams"])
    chunk_size = int(config["chunkSize"])
    weights_root = Hash32(bytes(record["weightsRoot"]))
    if count != -(-num_params // chunk_size) or count < 1:
        raise ProofError("model record chunk count does not match its size")

    received = len(record_bytes) + len(record_proof_bytes)
    parts: list[np.ndarray] = []
    largest = 0
    for index in range(count):
        answer = first if index == 0 else fetch(index)
        try:
            chunk = _unhex(answer["chunk"], "chunk")
            proof = [Hash32(_unhex(p, "proof hash", 32)) for p in answer["proof"]]
            got_index, got_count = answer["index"], answer["count"]
        except (KeyError, TypeError) as exc:
            raise ProofError(f"malformed chunk proof answer: {exc}") from None
        if got_index != index or got_count != count:
            raise ProofError(f"node answered chunk {got_index}/{got_count}, asked {index}/{count}")
        expected = 4 * min(chunk_size, num_params - index * chunk_size)
        if len(chunk) != expected:
            raise ProofError(f"chunk {index} is {len(chunk)} bytes, expected {expected}")
        verify_merkle_proof(weights_root, index, count, leaf_hash(chunk), proof)
        size = len(chunk) + 32 * len(proof) + 8  # + index and count
        received += size
        largest = max(largest, size)
        hashed += len(chunk) + 1 + HASH_NODE_BYTES * len(proof)
        parts.append(np.frombuffer(chunk, dtype="<i4"))
    return VerifiedModel(
        model_id=model_id,
        block_hash=block,
        state_root=root,
        config=config,
        version=int(record["version"]),
        weights=np.concatenate(parts).astype(np.int32),
        bytes_received=received,
        hashed_bytes=hashed,
        largest_chunk_with_proof=largest,
        record_with_proof=len(record_bytes) + len(record_proof_bytes),
    )
