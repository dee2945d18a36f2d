"""The model_state runtime module (a pallet): model registry, delta transactions, rounds.

State layout (raw keys; ``<id>`` is the model id, ``<client>`` a 32-byte address):
  ``model_state/models``                  → CBOR array of model ids (genesis order)
  ``model_state/model/<id>``              → model record: config, version, roundStart, weightsRoot,
                                            numParams, chunkCount (what light clients prove)
  ``model_state/chunk/<id>/<u32 BE>``     → weight chunk, little-endian int32 fixed point
  ``model_state/leaves/<id>``             → the chunks' leaf hashes, concatenated (re-hash cache)
  ``model_state/round/<id>``              → CBOR array of client addresses in this round, by arrival
  ``model_state/delta/<id>/<client>``     → that client's pending delta for this round
  ``model_state/prov/<id>/<u64 BE>``      → provenance of a version
  ``model_state/commits/<id>``            → commit-reveal models: committers this round, by arrival
  ``model_state/commit/<id>/<client>``    → its commitment {commitment, baseVersion, block, tx}
  ``model_state/revealed/<id>/<digest>``  → the client that revealed that delta this round

Round lifecycle (``on_finalize``): a round closes when it has at least ``minDeltas`` deltas and
``roundLen`` blocks have passed since it opened, or at once when it holds ``maxDeltas``. A round
never closes short: when ``roundLen`` passes with too few deltas it stays open and its deltas
carry over (nothing is lost and their base version is still current) until enough arrive.
Closing runs the trimmed mean over the round's deltas in canonical (address) order, applies
``w ← w + eta · agg`` in fixed point, re-hashes changed chunks, bumps the version and writes
provenance.

Commit-reveal (``commitReveal: true`` in the model's config): a client first sends
``commit_delta {model, baseVersion, commitment}`` in the commit window (the first ``commitLen``
blocks of the round), where the commitment is ``delta_commitment(args, salt, sender)``; then,
from block ``roundStart + commitLen`` on, ``submit_delta`` with the same arguments plus ``salt``.
Only such reveals enter the round; a reveal without a matching commitment of its own sender, or
before the reveal window, is refused. A round that reaches ``roundLen`` short of ``minDeltas``
keeps its reveals and commitments and opens a new commit window (``roundStart`` moves on).
Commitments never revealed are listed in the version's provenance under ``unrevealed``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deltachain import codec
from deltachain.crypto.hashing import Hash32, tagged_hash
from deltachain.crypto.keys import address_to_str
from deltachain.crypto.merkle import leaf_hash, merkle_proof
from deltachain.errors import ChainSpecError, InvalidCall, NotFound, Unauthorized, UnknownCall
from deltachain.model_state import aggregate
from deltachain.model_state.commitment import (
    changed_chunks,
    chunk_bytes,
    chunk_leaves,
    weights_root,
)
from deltachain.model_state.config import ModelConfig, initial_weights, parse_model
from deltachain.model_state.delta import (
    CommitDelta,
    SubmitDelta,
    check_exponent,
    decode_commit_delta,
    decode_gaps,
    decode_submit_delta,
    delta_commitment,
)
from deltachain.primitives.types import Address
from deltachain.runtime import system
from deltachain.runtime.module import BlockEnv, Event, Module
from deltachain.runtime.state import State

NAME = "model_state"
KEY_MODELS = b"model_state/models"


def key_model(model: str) -> bytes:
    return b"model_state/model/" + model.encode()


def key_chunk(model: str, index: int) -> bytes:
    return b"model_state/chunk/" + model.encode() + b"/" + index.to_bytes(4, "big")


def key_leaves(model: str) -> bytes:
    return b"model_state/leaves/" + model.encode()


def key_round(model: str) -> bytes:
    return b"model_state/round/" + model.encode()


def key_delta(model: str, client: Address) -> bytes:
    return b"model_state/delta/" + model.encode() + b"/" + client


def key_provenance(model: str, version: int) -> bytes:
    return b"model_state/prov/" + model.encode() + b"/" + version.to_bytes(8, "big")


def key_commits(model: str) -> bytes:
    return b"model_state/commits/" + model.encode()


def key_commit(model: str, client: Address) -> bytes:
    return b"model_state/commit/" + model.encode() + b"/" + client


def key_revealed(model: str, digest: Hash32) -> bytes:
    return b"model_state/revealed/" + model.encode() + b"/" + digest


def delta_digest(args: Mapping[str, Any]) -> Hash32:
    """What makes two deltas the same update: their coordinates, values and exponent."""
    body = codec.encode({"gaps": args["gaps"], "values": args["values"], "exp": args["exp"]})
    return tagged_hash(b"deltachain/delta-digest/v1", body)


class StaleDelta(InvalidCall):
    """The delta's base version is older than the model's staleness limit allows."""


class DuplicateDelta(InvalidCall):
    """The client already has a delta in this round."""


class RoundFull(InvalidCall):
    """The round already holds maxDeltas deltas."""


class OutsideWindow(InvalidCall):
    """A commitment after the commit window, or a reveal before the reveal window."""


class NoCommitment(InvalidCall):
    """A reveal whose sender has no commitment in this round (none, or made too late)."""


class CommitmentMismatch(InvalidCall):
    """A reveal that does not open its sender's commitment (other args, salt or sender)."""


class CopiedDelta(InvalidCall):
    """A reveal of a delta another client already revealed in this round."""


class DuplicateCommitment(InvalidCall):
    """The client already committed to a delta in this round."""


class CommitRevealOff(InvalidCall):
    """commit_delta or a salt on a model that does not use commit-reveal (or the reverse)."""


@dataclass(frozen=True)
class ModelRecord:
    config: ModelConfig
    version: int
    round_start: int
    weights_root: Hash32

    def encode(self) -> bytes:
        return codec.encode(
            {
                "config": self.config.to_obj(),
                "version": self.version,
                "roundStart": self.round_start,
                "weightsRoot": self.weights_root,
                "numParams": self.config.num_params,
                "chunkCount": self.config.num_chunks,
            }
        )


Kernel = Callable[
    [Sequence[np.ndarray], Sequence[np.ndarray], int, int, str], aggregate.AggregateResult
]


Update = Callable[[np.ndarray, aggregate.AggregateResult, int, int], np.ndarray]


def _kernels(name: str) -> tuple[Kernel, Update]:
    """The trimmed-sum kernel and the update step: both byte-identical across implementations."""
    if name == "reference":
        return aggregate.trimmed_sum_sparse_reference, aggregate.apply_update
    from deltachain.model_state import aggregate_numba

    return aggregate_numba.trimmed_sum_sparse, aggregate_numba.apply_update


class ModelStateModule(Module):
    """``kernel="numba"`` in nodes; ``"reference"`` runs the readable kernel (tests, vectors)."""

    name = NAME

    def __init__(self, kernel: str = "numba") -> None:
        if kernel not in ("numba", "reference"):
            raise ValueError("kernel must be numba or reference")
        self._kernel_name = kernel
        self._kernels: tuple[Kernel, Update] | None = None
        self._records: dict[bytes, ModelRecord] = {}
        self.last_aggregation_seconds = 0.0

    def _loaded(self) -> tuple[Kernel, Update]:
        if self._kernels is None:
            self._kernels = _kernels(self._kernel_name)
        return self._kernels

    @property
    def kernel(self) -> Kernel:
        return self._loaded()[0]

    @property
    def update(self) -> Update:
        return self._loaded()[1]

    def warm_up(self) -> None:
        if self._kernel_name == "numba":
            from deltachain.model_state import aggregate_numba

            aggregate_numba.warm_up()

    # --- genesis ---------------------------------------------------------------------------

    def build_genesis(self, state: State, config: Mapping[str, Any]) -> None:
        models = config.get("models", [])
        if not isinstance(models, Sequence) or isinstance(models, str | bytes):
            raise ChainSpecError("chain spec: genesis.runtime.model_state.models must be a list")
        ids = []
        for raw in models:
            model = parse_model(raw)
            if model.id in ids:
                raise ChainSpecError(f"chain spec: duplicate model id {model.id!r}")
            ids.append(model.id)
            weights = initial_weights(model)
            leaves = chunk_leaves(weights, model.chunk_size)
            for i in range(model.num_chunks):
                state.set(key_chunk(model.id, i), chunk_bytes(weights, i, model.chunk_size))
            state.set(key_leaves(model.id), b"".join(leaves))
            state.set(key_round(model.id), codec.encode([]))
            record = ModelRecord(model, version=0, round_start=1, weights_root=weights_root(leaves))
            state.set(key_model(model.id), record.encode())
        state.set(KEY_MODELS, codec.encode(ids))

    # --- reading ---------------------------------------------------------------------------

    def record(self, state: State, model: str) -> ModelRecord:
        raw = state.get(key_model(model))
        if raw is None:
            raise NotFound(f"no model {model!r} on this chain")
        found = self._records.get(raw)
        if found is not None:  # every delta check reads it: decode each version once
            return found
        obj = codec.decode(raw)
        config = parse_model(
            {
                **obj["config"],
                "layers": [
                    {
                        "name": la["name"],
                        "shape": la["shape"],
                        "kind": "global" if la["global"] else "local",
                    }
                    for la in obj["config"]["layers"]
                ],
            }
        )
        record = ModelRecord(config, obj["version"], obj["roundStart"], Hash32(obj["weightsRoot"]))
        self._records[raw] = record
        while len(self._records) > 256:
            self._records.pop(next(iter(self._records)))
        return record

    def weights(self, state: State, config: ModelConfig) -> np.ndarray:
        parts = []
        for i in range(config.num_chunks):
            raw = state.get(key_chunk(config.id, i))
            if raw is None:
                raise NotFound(f"model {config.id!r} chunk {i} is missing")
            parts.append(np.frombuffer(raw, dtype="<i4"))
        return np.concatenate(parts).astype(np.int32)

    def round_members(self, state: State, model: str) -> list[Address]:
        raw = state.get(key_round(model))
        return [] if raw is None else [Address(a) for a in codec.decode_stored(raw)]

    def committers(self, state: State, model: str) -> list[Address]:
        raw = state.get(key_commits(model))
        return [] if raw is None else [Address(a) for a in codec.decode_stored(raw)]

    # --- transactions ----------------------------------------------------------------------

    def decode_call(self, function: str, args: Mapping[str, Any]) -> object:
        if function == "submit_delta":
            return decode_submit_delta(args)
        if function == "commit_delta":
            return decode_commit_delta(args)
        raise UnknownCall(f"module 'model_state' has no function {function!r}")

    def precheck_call(self, state: State, sender: Address, call: object) -> None:
        """What the model's fixed configuration decides: any delta of any nonce gets these."""
        if not isinstance(call, SubmitDelta | CommitDelta):
            raise UnknownCall(f"model_state cannot apply {type(call).__name__}")
        if not system.is_client(state, sender):
            raise Unauthorized(
                "only registered clients may submit deltas; ask the admin to register this address"
            )
        record = self._record_for(state, call)
        config = record.config
        if call.base_version > record.version:
            raise InvalidCall(
                f"base version {call.base_version} is ahead of the model (version {record.version})"
            )
        if isinstance(call, CommitDelta):
            if not config.commit_reveal:
                raise CommitRevealOff(
                    f"model {call.model!r} does not use commit-reveal; send submit_delta alone"
                )
            return
        if config.commit_reveal and call.salt is None:
            raise CommitRevealOff(
                f"model {call.model!r} uses commit-reveal: send commit_delta in the commit "
                "window, then this delta with its salt"
            )
        if not config.commit_reveal and call.salt is not None:
            raise CommitRevealOff(
                f"model {call.model!r} does not use commit-reveal; send the delta without salt"
            )
        check_exponent(call.exp, config.frac_bits)
        if int(call.indices[-1]) >= config.num_params:
            raise InvalidCall(
                f"delta index {int(call.indices[-1])} is out of range "
                f"(the model has {config.num_params} parameters)"
            )
        ranges = config.global_ranges()
        if ranges != [(0, config.num_params)]:
            starts = np.array([s for s, _ in ranges], dtype=np.int64)
            ends = np.array([e for _, e in ranges], dtype=np.int64)
            slot = np.searchsorted(starts, call.indices, side="right") - 1
            inside = (slot >= 0) & (call.indices < ends[np.maximum(slot, 0)])
            if not bool(np.all(inside)):
                bad = int(call.indices[np.argmin(inside)])
                raise InvalidCall(
                    f"delta index {bad} is in a local layer; only global layers are aggregated"
                )

    def _record_for(self, state: State, call: SubmitDelta | CommitDelta) -> ModelRecord:
        try:
            return self.record(state, call.model)
        except NotFound:
            raise InvalidCall(f"no model {call.model!r} on this chain") from None

    def validate_call(self, state: State, sender: Address, call: object) -> None:
        """The round's state: staleness, one delta per client per round, the round's size;
        on a commit-reveal model also the sender's commitment."""
        if not isinstance(call, SubmitDelta | CommitDelta):
            raise UnknownCall(f"model_state cannot apply {type(call).__name__}")
        record = self._record_for(state, call)
        config = record.config
        if call.base_version + config.staleness < record.version:
            raise StaleDelta(
                f"base version {call.base_version} is stale: the model is at "
                f"version {record.version}; download it and train again"
            )
        if isinstance(call, CommitDelta):
            if state.get(key_commit(call.model, sender)) is not None:
                raise DuplicateCommitment(
                    f"this client already committed to a delta for model {call.model!r} in "
                    f"this round; reveal it, or wait for version {record.version + 1}"
                )
            if len(self.committers(state, call.model)) >= config.max_deltas:
                raise RoundFull(
                    f"the round for model {call.model!r} has maxDeltas commitments; "
                    "wait for the next one"
                )
            return
        if config.commit_reveal:
            self._check_reveal(state, sender, call, record)
        if state.get(key_delta(call.model, sender)) is not None:
            raise DuplicateDelta(
                f"this client already submitted a delta for model "
                f"{call.model!r} in this round; wait for version "
                f"{record.version + 1}"
            )
        if len(self.round_members(state, call.model)) >= config.max_deltas:
            raise RoundFull(f"the round for model {call.model!r} is full; wait for the next one")

    def _check_reveal(
        self, state: State, sender: Address, call: SubmitDelta, record: ModelRecord
    ) -> None:
        """The reveal opens its own sender's commitment, made in this round for this base."""
        raw = state.get(key_commit(call.model, sender))
        if raw is None:
            raise NoCommitment(
                f"no commitment by this client for model {call.model!r} in this round; "
                "send commit_delta in the commit window first"
            )
        made = codec.decode_stored(raw)
        if made["baseVersion"] != call.base_version:
            raise CommitmentMismatch(
                f"the commitment was for base version {made['baseVersion']}, "
                f"this reveal is for {call.base_version}"
            )
        salt = call.salt or b""  # precheck_call refused a reveal without salt already
        if delta_commitment(call.delta_args(), salt, sender) != bytes(made["commitment"]):
            raise CommitmentMismatch(
                "the delta, salt and sender do not open this client's commitment"
            )
        # A round that reopened its commit window has public reveals: refuse their copies.
        if state.get(key_revealed(call.model, delta_digest(call.to_args()))) is not None:
            raise CopiedDelta(
                f"another client already revealed this very delta for model {call.model!r}"
            )

    def check_window(self, state: State, call: object, number: int) -> None:
        """Commit-reveal timing for a call landing in block ``number``: commitments in the
        first ``commitLen`` blocks of the round, reveals after them. The pool runs it for the
        next block, so a reveal is neither pooled nor gossiped while others may still commit."""
        if not isinstance(call, SubmitDelta | CommitDelta):
            return
        record = self._record_for(state, call)
        config = record.config
        if not config.commit_reveal:
            return
        reveal_from = record.round_start + config.commit_len
        if isinstance(call, CommitDelta) and number >= reveal_from:
            raise OutsideWindow(
                f"the commit window of model {call.model!r} closed at block {reveal_from - 1}; "
                "commit in the next one (model_get: round.commitUntil)"
            )
        if isinstance(call, SubmitDelta) and number < reveal_from:
            raise OutsideWindow(
                f"model {call.model!r} takes reveals from block {reveal_from}; hold this delta "
                "until then"
            )

    def pool_claim(self, call: object) -> Hashable | None:
        if isinstance(call, CommitDelta):
            return ("model_state.commit", call.model)
        return ("model_state.round", call.model) if isinstance(call, SubmitDelta) else None

    def validate_pending(
        self, state: State, sender: Address, call: object, claimants: frozenset[Address]
    ) -> None:
        """Deltas already waiting in the pool count toward the round: a surplus one is
        refused at submission, not admitted to fail later."""
        if isinstance(call, CommitDelta) and claimants:
            if sender in claimants:
                raise DuplicateCommitment(
                    f"this client already has a commitment for model {call.model!r} waiting "
                    "in the pool"
                )
            record = self._record_for(state, call)
            made = len(self.committers(state, call.model))
            if made + len(claimants) >= record.config.max_deltas:
                raise RoundFull(
                    f"the round for model {call.model!r} is full ({made} commitments in, "
                    f"{len(claimants)} waiting, maxDeltas {record.config.max_deltas})"
                )
            return
        if not isinstance(call, SubmitDelta) or not claimants:
            return
        if sender in claimants:
            raise DuplicateDelta(
                f"this client already has a delta for model {call.model!r} waiting in the "
                "pool; wait for it to be included and the round to close"
            )
        record = self._record_for(state, call)
        members = len(self.round_members(state, call.model))
        if members + len(claimants) >= record.config.max_deltas:
            raise RoundFull(
                f"the round for model {call.model!r} is full ({members} deltas in, "
                f"{len(claimants)} waiting, maxDeltas {record.config.max_deltas}); "
                f"wait for version {record.version + 1}"
            )

    def apply_call(
        self, state: State, sender: Address, call: object, env: BlockEnv, tx_hash: Hash32
    ) -> list[Event]:
        if not isinstance(call, SubmitDelta | CommitDelta):  # validate_call raised already
            raise UnknownCall("model_state cannot apply this call")
        self.check_window(state, call, env.number)
        if isinstance(call, CommitDelta):
            state.set(
                key_commit(call.model, sender),
                codec.encode(
                    {
                        "commitment": call.commitment,
                        "baseVersion": call.base_version,
                        "block": env.number,
                        "tx": tx_hash,
                    }
                ),
            )
            committers = self.committers(state, call.model)
            state.set(key_commits(call.model), codec.encode([*committers, sender]))
            return [Event(NAME, "DeltaCommitted", {"model": call.model, "client": sender})]
        state.set(
            key_delta(call.model, sender),
            codec.encode({"tx": tx_hash, "block": env.number, **call.delta_args()}),
        )
        if call.salt is not None:  # a commit-reveal model's reveal
            state.set(key_revealed(call.model, delta_digest(call.to_args())), sender)
        members = self.round_members(state, call.model)
        state.set(key_round(call.model), codec.encode([*members, sender]))
        return [
            Event(
                NAME,
                "DeltaAccepted",
                {"model": call.model, "client": sender, "coordinates": int(call.indices.size)},
            )
        ]

    # --- rounds ----------------------------------------------------------------------------

    def on_finalize(self, state: State, env: BlockEnv) -> list[Event]:
        raw = state.get(KEY_MODELS)
        events: list[Event] = []
        for model in [] if raw is None else codec.decode(raw):
            record = self.record(state, model)
            members = self.round_members(state, model)
            config = record.config
            elapsed = env.number - record.round_start + 1
            if len(members) >= config.max_deltas or (
                len(members) >= config.min_deltas and elapsed >= config.round_len
            ):
                events.append(self.close_round(state, record, members, env))
            elif config.commit_reveal and elapsed >= config.round_len:
                # Short of minDeltas: keep what was committed and revealed, and open a new
                # commit window so that more clients can join.
                moved = dataclasses.replace(record, round_start=env.number + 1)
                state.set(key_model(model), moved.encode())
        return events

    def close_round(
        self, state: State, record: ModelRecord, members: list[Address], env: BlockEnv
    ) -> Event:
        config = record.config
        clients = sorted(members)  # canonical order: arrival order must not matter
        deltas = [codec.decode_stored(state.get(key_delta(config.id, c)) or b"") for c in clients]
        indices = [decode_gaps(d["gaps"], len(d["values"])) for d in deltas]  # validated on entry
        values = [
            (
                np.frombuffer(d["values"], dtype=np.int8).astype(np.int32)
                << np.int32(d["exp"] + config.frac_bits)
            )
            for d in deltas
        ]
        n = len(clients)
        f = config.trimmed(n)
        started = time.perf_counter()
        result = self.kernel(indices, values, config.num_params, f, config.semantics)
        old = self.weights(state, config)
        new = self.update(old, result, config.eta.num, config.eta.den)
        self.last_aggregation_seconds = time.perf_counter() - started

        leaves_raw = state.get(key_leaves(config.id)) or b""
        leaves = [Hash32(leaves_raw[i : i + 32]) for i in range(0, len(leaves_raw), 32)]
        changed = changed_chunks(old, new, config.chunk_size)
        for i in changed:
            chunk = chunk_bytes(new, i, config.chunk_size)
            state.set(key_chunk(config.id, i), chunk)
            leaves[i] = leaf_hash(chunk)
        state.set(key_leaves(config.id), b"".join(leaves))
        new_record = ModelRecord(config, record.version + 1, env.number + 1, weights_root(leaves))
        state.set(key_model(config.id), new_record.encode())
        for client in clients:
            state.delete(key_delta(config.id, client))
        state.set(key_round(config.id), codec.encode([]))
        extra: dict[str, Any] = {}
        if config.commit_reveal:
            committers = self.committers(state, config.id)
            revealed = set(clients)
            unrevealed = []
            for client in committers:
                made = codec.decode_stored(state.get(key_commit(config.id, client)) or b"")
                if client not in revealed:
                    unrevealed.append(
                        {
                            "client": client,
                            "commitment": made["commitment"],
                            "block": made["block"],
                            "tx": made["tx"],
                        }
                    )
                state.delete(key_commit(config.id, client))
            state.set(key_commits(config.id), codec.encode([]))
            for d in deltas:
                state.delete(key_revealed(config.id, delta_digest(d)))
            extra = {"commitReveal": True, "unrevealed": unrevealed}
        state.set(
            key_provenance(config.id, new_record.version),
            codec.encode(
                {
                    **extra,
                    "version": new_record.version,
                    "block": env.number,
                    "n": n,
                    "f": f,
                    "semantics": config.semantics,
                    "weightsRoot": new_record.weights_root,
                    "changedChunks": len(changed),
                    "deltas": [
                        {
                            "client": client,
                            "tx": d["tx"],
                            "baseVersion": d["baseVersion"],
                            "coordinates": len(d["values"]),
                            "survived": int(result.survived[i]),
                            "samples": d["samples"],
                            "lossPre": d.get("lossPre"),
                            "lossPost": d.get("lossPost"),
                        }
                        for i, (client, d) in enumerate(zip(clients, deltas, strict=True))
                    ],
                }
            ),
        )
        return Event(
            NAME,
            "RoundClosed",
            {
                "model": config.id,
                "version": new_record.version,
                "deltas": n,
                "trimmed": f,
                "weightsRoot": new_record.weights_root,
            },
        )

    # --- queries ---------------------------------------------------------------------------

    def _round_progress(self, state: State, record: ModelRecord, at: object) -> dict[str, Any]:
        """Where the open round stands: it closes at the first block that brings it to
        ``maxDeltas``, or at ``closesAt`` or later once it holds ``minDeltas``. With ``at``
        (the number of the block whose state this is) also how many blocks are left."""
        config = record.config
        members = self.round_members(state, config.id)
        closes_at = record.round_start + config.round_len - 1
        progress: dict[str, Any] = {
            "start": record.round_start,
            "deltas": [address_to_str(a) for a in members],
            "count": len(members),
            "minDeltas": config.min_deltas,
            "maxDeltas": config.max_deltas,
            "closesAt": closes_at,
            "needs": max(0, config.min_deltas - len(members)),
        }
        if config.commit_reveal:
            progress["commits"] = [address_to_str(a) for a in self.committers(state, config.id)]
            progress["commitUntil"] = record.round_start + config.commit_len - 1
            progress["revealFrom"] = record.round_start + config.commit_len
        if isinstance(at, int) and not isinstance(at, bool):
            progress["blocksLeft"] = max(0, closes_at - at)
        return progress

    def query(self, state: State, name: str, args: Mapping[str, Any]) -> Any:
        if name == "list":
            raw = state.get(KEY_MODELS)
            return [] if raw is None else list(codec.decode(raw))
        model = args.get("model")
        if not isinstance(model, str):
            raise InvalidCall(f"model_state.{name} needs a model id")
        record = self.record(state, model)
        config = record.config
        if name == "get":
            return {
                **config.to_obj(),
                "version": record.version,
                "weightsRoot": "0x" + record.weights_root.hex(),
                "numParams": config.num_params,
                "chunkCount": config.num_chunks,
                "round": self._round_progress(state, record, args.get("at")),
            }
        if name == "weights":
            return {
                "version": record.version,
                "fracBits": config.frac_bits,
                "numParams": config.num_params,
                "weights": self.weights(state, config).astype("<i4").tobytes(),
            }
        if name == "chunk":
            index = args.get("index")
            if not isinstance(index, int) or not 0 <= index < config.num_chunks:
                raise InvalidCall(f"chunk index must be in [0, {config.num_chunks})")
            leaves_raw = state.get(key_leaves(model)) or b""
            leaves = [Hash32(leaves_raw[i : i + 32]) for i in range(0, len(leaves_raw), 32)]
            return {
                "chunk": state.get(key_chunk(model, index)),
                "index": index,
                "count": config.num_chunks,
                "proof": list(merkle_proof(leaves, index)),
                "record": state.get(key_model(model)),
                "recordKey": key_model(model),
            }
        if name == "provenance":
            version = args.get("version")
            if not isinstance(version, int) or version < 1:
                raise InvalidCall("provenance needs a version ≥ 1")
            raw = state.get(key_provenance(model, version))
            if raw is None:
                raise NotFound(f"model {model!r} has no version {version} yet")
            return codec.decode(raw)
        return super().query(state, name, args)
