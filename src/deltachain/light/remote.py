"""A light client talking to any full node over JSON-RPC (stdlib only; never imports ``node``).

Nothing a node answers is trusted: every justification, set proof and chunk goes through
``LightClient``/``Verifier``; the node only decides *what* to show, so a lying node can stall the
client but never move it to a block its authority set did not finalize.

RPC methods used (shapes as in ``node/rpc.py``, binary values 0x-hex):

* ``chain_getGenesisHash`` → hash; ``chain_getFinalizedHead`` → hash
* ``chain_getJustification [hash]`` → encoded justification (finalizing that block) or null
* ``finality_proveFinality [number]`` → the justification of the newest finalized block ≤ number
  (or null) — the same as the ``…/sync/1`` request ``["justification", number]``
* ``state_getReadProof [[keys], hash]`` → ``{"at", "proof": [encoded TrieProof per key]}`` and
  ``state_getStorage [key, hash]`` → value or null (the values the proofs are checked against)
* ``model_getChunkProof [model, index, hash]`` → chunk, Merkle path, record, recordProof, …

**Sync** (``RemoteLightClient.sync``): fetch the node's finalized head and its justification;
if it is signed by the set the client trusts, follow it with a set proof at that block. If it is
signed by a later set, the client missed a set change: binary-search ``finality_proveFinality``
for the last block its own set finalized (justification set ids never decrease with height), follow
that one with its set proof (which carries the new set), and repeat — one justification per set
change (warp sync), O(log distance) small requests to find each.
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from deltachain.consensus.finality import Justification
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.trie import TrieProof
from deltachain.errors import DecodeError, NetworkError
from deltachain.light.client import LightClient, Verifier
from deltachain.light.errors import StaleData
from deltachain.light.keys import KEY_AUTHORITIES, KEY_SET_ID
from deltachain.light.proofs import ChunkProof, ModelRecordView, SetProof, unhex
from deltachain.primitives.block import Header
from deltachain.primitives.types import (
    BlockNumber,
    Signature,
    Slot,
    as_address,
    as_hash32,
    as_uint64,
)

__all__ = [
    "MAX_RESPONSE_BYTES",
    "HttpTransport",
    "RemoteError",
    "RemoteLightClient",
    "Transport",
    "fetch_set_proof",
    "header_from_json",
]

MAX_RESPONSE_BYTES = 4 << 20
"""A reply larger than this is refused before parsing (a chunk proof is ~10 kB)."""


class RemoteError(NetworkError):
    """The node could not be reached, answered with an error, or answered nonsense."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Transport:
    """Sends JSON-RPC calls somewhere; ``batch`` may be overridden to send them at once."""

    def call(self, method: str, params: list[Any]) -> Any:
        raise NotImplementedError

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        return [self.call(method, params) for method, params in calls]


class HttpTransport(Transport):
    """JSON-RPC 2.0 over HTTP POST with urllib; replies capped at ``max_response`` bytes."""

    def __init__(
        self, url: str, *, timeout: float = 10.0, max_response: int = MAX_RESPONSE_BYTES
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise RemoteError(f"RPC URL {url!r} must start with http:// or https://")
        self.url = url
        self.timeout = timeout
        self.max_response = max_response
        self._ids = itertools.count(1)

    def _post(self, payload: Any) -> Any:
        body = json.dumps(payload).encode()
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                raw = response.read(self.max_response + 1)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise RemoteError(
                f"cannot reach a node at {self.url} ({getattr(exc, 'reason', exc)})"
            ) from None
        if len(raw) > self.max_response:
            raise RemoteError(f"reply from {self.url} is over {self.max_response} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise RemoteError(f"{self.url} did not answer with JSON") from None

    @staticmethod
    def _result(reply: Any) -> Any:
        if not isinstance(reply, dict):
            raise RemoteError("a JSON-RPC reply must be an object")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            code = error.get("code")
            raise RemoteError(
                f"node error: {error.get('message')}", code if isinstance(code, int) else None
            )
        return reply.get("result")

    def _request(self, method: str, params: list[Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": params}

    def call(self, method: str, params: list[Any]) -> Any:
        return self._result(self._post(self._request(method, params)))

    def batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        requests = [self._request(method, params) for method, params in calls]
        replies = self._post(requests)
        if not isinstance(replies, list) or len(replies) != len(requests):
            raise RemoteError("a JSON-RPC batch reply must answer every request")
        by_id = {r.get("id"): r for r in replies if isinstance(r, dict)}
        return [self._result(by_id.get(req["id"])) for req in requests]


def _hex_or_none(value: Any, what: str) -> bytes | None:
    return None if value is None else unhex(value, what)


def _0x(data: bytes) -> str:
    return "0x" + data.hex()


def header_from_json(obj: Any) -> Header:
    """Rebuild a header from ``chain_getHeader``'s JSON; the caller checks its hash."""
    if not isinstance(obj, dict):
        raise DecodeError("a header is a JSON object")
    seal = unhex(obj.get("seal"), "seal")
    if len(seal) not in (0, 64):
        raise DecodeError("header seal must be empty or 64 bytes")
    return Header(
        parent_hash=as_hash32(unhex(obj.get("parentHash"), "parentHash"), "parentHash"),
        number=BlockNumber(as_uint64(obj.get("number"), "number")),
        slot=Slot(as_uint64(obj.get("slot"), "slot")),
        state_root=as_hash32(unhex(obj.get("stateRoot"), "stateRoot"), "stateRoot"),
        extrinsics_root=as_hash32(unhex(obj.get("extrinsicsRoot"), "extrinsicsRoot")),
        author=as_address(unhex(obj.get("author"), "author"), "author"),
        seal=Signature(seal),
    )


def fetch_set_proof(transport: Transport, block_hash: Hash32) -> SetProof:
    """``system/set_id`` and ``system/authorities`` with their proofs at ``block_hash`` (one
    batched request: the read proof and the two values it is checked against)."""
    at = _0x(block_hash)
    keys = [_0x(KEY_SET_ID), _0x(KEY_AUTHORITIES)]
    read, set_id, authorities = transport.batch(
        [
            ("state_getReadProof", [keys, at]),
            ("state_getStorage", [keys[0], at]),
            ("state_getStorage", [keys[1], at]),
        ]
    )
    if not isinstance(read, dict) or not isinstance(read.get("proof"), list):
        raise DecodeError("state_getReadProof answers {at, proof: [...]}")
    if read.get("at") != at or len(read["proof"]) != 2:
        raise DecodeError("state_getReadProof answered for another block or other keys")
    set_id_proof, authorities_proof = (
        TrieProof.decode(unhex(p, "read proof")) for p in read["proof"]
    )
    return SetProof(
        _hex_or_none(set_id, "set id"),
        set_id_proof,
        _hex_or_none(authorities, "authorities"),
        authorities_proof,
    )


class RemoteLightClient:
    """A ``LightClient`` plus a node to fetch from. Only ``client`` is state worth saving."""

    def __init__(self, client: LightClient, transport: Transport) -> None:
        self.client = client
        self.transport = transport
        self.requests = 0

    # --- fetching ----------------------------------------------------------------------------

    def _call(self, method: str, params: list[Any]) -> Any:
        self.requests += 1
        return self.transport.call(method, params)

    def _batch(self, calls: Sequence[tuple[str, list[Any]]]) -> list[Any]:
        self.requests += 1
        return self.transport.batch(calls)

    def check_chain(self) -> None:
        """Raises RemoteError if the node serves another chain."""
        genesis = unhex(self._call("chain_getGenesisHash", []), "genesis hash")
        if genesis != self.client.genesis_hash:
            raise RemoteError(f"the node serves chain 0x{genesis.hex()[:16]}…, not ours")

    def finalized_head(self) -> Hash32:
        return as_hash32(unhex(self._call("chain_getFinalizedHead", []), "finalized head"))

    def justification(self, block_hash: Hash32) -> Justification | None:
        raw = self._call("chain_getJustification", [_0x(block_hash)])
        return None if raw is None else Justification.decode(unhex(raw, "justification"))

    def prove_finality(self, number: int) -> Justification | None:
        """The justification of the newest block the node finalized at or below ``number``."""
        raw = self._call("finality_proveFinality", [number])
        return None if raw is None else Justification.decode(unhex(raw, "justification"))

    def set_proof(self, block_hash: Hash32) -> SetProof:
        """``system/set_id`` and ``system/authorities`` with their proofs at ``block_hash``."""
        self.requests += 1
        return fetch_set_proof(self.transport, block_hash)

    def chunk_proof(self, model_id: str, index: int, block_hash: Hash32) -> ChunkProof:
        obj = self._call("model_getChunkProof", [model_id, index, _0x(block_hash)])
        return ChunkProof.from_json(model_id, obj)

    # --- following the node's finality -------------------------------------------------------

    def sync(self, max_steps: int = 1024) -> Header:
        """Follow the node until the client's finalized header is the node's; returns it.

        Raises RemoteError (unreachable, another chain, a set change it cannot prove — e.g. its
        state at that block was pruned), StaleData (the node is finalized below the client),
        and whatever ``LightClient.follow`` raises for data that does not verify.
        """
        client = self.client
        self.check_chain()
        for _ in range(max_steps):
            head = self.finalized_head()
            if head == client.finalized.hash:
                return client.finalized
            latest = self.justification(head)
            if latest is None:
                raise RemoteError("the node has no justification for its finalized head")
            if latest.source.number <= client.finalized.number:
                raise StaleData(
                    f"the node is finalized at #{latest.source.number}, behind the client's "
                    f"#{client.finalized.number}"
                )
            if latest.set_id == client.set_id:
                client.follow(latest, self.set_proof(latest.source.hash))
            else:
                self._follow_set_change(latest)
        raise RemoteError(f"not in sync after {max_steps} steps; is the node finalizing fast?")

    def _follow_set_change(self, latest: Justification) -> None:
        """Follow the last block the client's set finalized (its state holds the next set)."""
        client = self.client
        if latest.set_id < client.set_id:
            raise RemoteError(
                f"the node's finality is signed by set {latest.set_id}, older than the "
                f"client's set {client.set_id}: it is on another branch or behind"
            )
        # binary search on g(n) = set id of the newest justification at or below n, which
        # never decreases with n; invariant: g(lo) ≤ ours < g(hi)
        lo: int = client.finalized.number
        hi: int = latest.source.number
        best: Justification | None = None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            j = self.prove_finality(mid)
            if j is None or j.set_id <= client.set_id:
                lo, best = mid, j
            else:
                hi = max(j.source.number, lo + 1)
        if best is None or best.source.number <= client.finalized.number:
            # nothing above the client's block was finalized by its set: the set changed at
            # the client's finalized block itself (followed without a set proof)
            before = client.set_id
            client.update_set(self.set_proof(client.finalized.hash))
            if client.set_id == before:
                raise RemoteError(
                    f"the node shows justifications of set {latest.set_id} but no change from "
                    f"set {before}"
                )
            return
        client.follow(best, self.set_proof(best.source.hash))

    # --- models ------------------------------------------------------------------------------

    def download_model(
        self,
        model_id: str,
        verifier: Verifier | None = None,
        sink: Callable[[int, bytes], None] | None = None,
    ) -> tuple[ModelRecordView, bytearray | None]:
        """Fetch and verify every weight chunk of ``model_id`` at one trusted header.

        Chunks go into one preallocated buffer (``numParams · 4`` bytes, int32 little-endian)
        — or, with ``sink(index, chunk)``, straight out (to flash), keeping only one chunk and
        its proof in memory. Returns the proven record and the buffer (None with a sink).
        Raises StaleData if the node answers for another block, ProofError/DecodeError for a
        chunk that does not verify, RemoteError if the node cannot be reached.
        """
        verifier = verifier or self.client.verifier()
        block = verifier.header.hash
        record: ModelRecordView | None = None
        buffer: bytearray | None = None
        index = 0
        while record is None or index < record.chunk_count:
            proof = self.chunk_proof(model_id, index, block)
            if proof.index != index:
                raise DecodeError(f"asked for chunk {index}, the node answered {proof.index}")
            record = verifier.verify_chunk_proof(proof, record)
            if sink is not None:
                sink(index, proof.chunk)
            else:
                if buffer is None:
                    buffer = bytearray(4 * record.num_params)
                start = 4 * index * record.chunk_size
                buffer[start : start + len(proof.chunk)] = proof.chunk
            del proof
            index += 1
        return record, buffer

    @classmethod
    def bootstrap(cls, genesis_hash: Hash32, transport: Transport) -> RemoteLightClient:
        """Start from the genesis hash alone: the node shows genesis and proves its set.

        Needs the genesis state (an archive node, or one that has not pruned it yet).
        """
        header = header_from_json(transport.call("chain_getHeader", [_0x(genesis_hash)]))
        proof = fetch_set_proof(transport, header.hash)
        return cls(LightClient.bootstrap(genesis_hash, header, proof), transport)
