"""Commit-reveal deltas (issue 12): a delta counts only when it opens its own sender's
commitment, made in the round's commit window; copies, late and uncommitted reveals do not."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deltachain.chain import construct_runtime
from deltachain.crypto.keys import Keypair
from deltachain.errors import ChainSpecError
from deltachain.model_state.config import parse_model
from deltachain.model_state.delta import CommitDelta, SubmitDelta, delta_commitment, quantize_top_p
from deltachain.model_state.module import (
    CommitmentMismatch,
    CommitRevealOff,
    CopiedDelta,
    DuplicateCommitment,
    ModelStateModule,
    NoCommitment,
    OutsideWindow,
    delta_digest,
    key_model,
    key_revealed,
)
from deltachain.node.chain import Chain
from deltachain.primitives.chainspec import DEV_MODEL, dev_chain_spec, parse_chain_spec
from deltachain.runtime.executive import check_transaction
from support import BOB, CHARLIE, DAVE, MemChain

MODEL = "sine-mlp"
CR = {"commitReveal": True, "roundLen": 4, "commitLen": 2, "minDeltas": 2}


def spec_with(**changes: Any) -> Any:
    raw = dev_chain_spec().to_json()
    raw["genesis"]["runtime"]["model_state"]["models"] = [{**copy.deepcopy(DEV_MODEL), **changes}]
    raw["genesis"]["runtime"]["system"]["clients"] = [
        "0x" + k.address.hex() for k in (BOB, CHARLIE, DAVE)
    ]
    return parse_chain_spec(raw)


def new_chain(**changes: Any) -> MemChain:
    return MemChain(spec_with(**{**CR, **changes}), construct_runtime("reference"))


def module(chain: MemChain) -> ModelStateModule:
    found = chain.runtime.modules["model_state"]
    assert isinstance(found, ModelStateModule)
    return found


def make_delta(chain: MemChain, seed: int, salt: bytes | None) -> SubmitDelta:
    record = module(chain).record(chain.state(), MODEL)
    g = np.random.default_rng(seed).normal(0, 0.05, record.config.num_params)
    idx, val, exp = quantize_top_p(g, 0.2, record.config.frac_bits, record.config.global_mask())
    return SubmitDelta(MODEL, record.version, idx, val, exp, 10, None, None, salt=salt)


def commit_args(delta: SubmitDelta, key: Keypair) -> dict[str, Any]:
    assert delta.salt is not None
    commitment = delta_commitment(delta.delta_args(), delta.salt, key.address)
    return CommitDelta(delta.model, delta.base_version, commitment).to_args()


def commit(chain: MemChain, key: Keypair, delta: SubmitDelta) -> Any:
    return chain.tx(key, "model_state", "commit_delta", commit_args(delta, key))


def reveal(chain: MemChain, key: Keypair, delta: SubmitDelta) -> Any:
    return chain.tx(key, "model_state", "submit_delta", delta.to_args())


def failures(chain: MemChain, txs: list[Any]) -> list[str]:
    """Apply one block; the reasons of its failed calls."""
    block, _ = chain.build(txs)
    output = chain.import_block(block)
    return [
        f"{e.data['error']}: {e.data['reason']}"
        for events in output.tx_events
        for e in events
        if e.name == "ExtrinsicFailed"
    ]


def record(chain: MemChain) -> Any:
    return module(chain).record(chain.state(), MODEL)


def test_config_defaults_off_and_validates() -> None:
    plain = parse_model(DEV_MODEL)
    assert not plain.commit_reveal
    assert "commitReveal" not in plain.to_obj()  # old records (and state roots) unchanged
    on = parse_model({**DEV_MODEL, "commitReveal": True, "roundLen": 10})
    assert on.commit_len == 5  # half the round by default
    assert on.to_obj()["commitLen"] == 5
    for bad, message in [
        ({"commitReveal": True, "roundLen": 1}, "roundLen ≥ 2"),
        ({"commitReveal": True, "roundLen": 4, "commitLen": 4}, "commitLen"),
        ({"commitReveal": "yes"}, "true or false"),
        ({"commitLen": 2}, "needs commitReveal"),
    ]:
        with pytest.raises(ChainSpecError, match=message):
            parse_model({**DEV_MODEL, **bad})


def test_commit_then_reveal_aggregates_and_records_unrevealed() -> None:
    chain = new_chain()
    salts = [os.urandom(32) for _ in range(3)]
    deltas = [make_delta(chain, i, s) for i, s in enumerate(salts)]
    keys = [BOB, CHARLIE, DAVE]
    assert failures(chain, [commit(chain, k, d) for k, d in zip(keys, deltas, strict=True)]) == []
    got = module(chain).query(chain.state(), "get", {"model": MODEL})
    assert got["round"]["commitUntil"] == 2
    assert got["round"]["revealFrom"] == 3
    assert len(got["round"]["commits"]) == 3
    chain.produce([])  # block 2: the commit window's last block
    # DAVE never reveals: his commitment is recorded in provenance as unrevealed.
    assert failures(chain, [reveal(chain, BOB, deltas[0]), reveal(chain, CHARLIE, deltas[1])]) == []
    assert record(chain).version == 0
    chain.produce([])  # block 4: roundLen reached with 2 reveals
    assert record(chain).version == 1
    prov = module(chain).query(chain.state(), "provenance", {"model": MODEL, "version": 1})
    assert prov["commitReveal"] is True
    assert sorted(d["client"] for d in prov["deltas"]) == sorted([BOB.address, CHARLIE.address])
    assert [u["client"] for u in prov["unrevealed"]] == [DAVE.address]
    assert prov["unrevealed"][0]["commitment"] == commit_args(deltas[2], DAVE)["commitment"]
    # The next round starts clean: DAVE's old commitment is gone, his late reveal is refused.
    late = failures(chain, [reveal(chain, DAVE, deltas[2])])
    assert len(late) == 1
    assert late[0].startswith("NoCommitment: no commitment by this client")


def test_copied_delta_is_refused() -> None:
    """CHARLIE copies BOB's revealed delta (salt and all): the commitment binds the sender."""
    chain = new_chain()
    honest = make_delta(chain, 1, os.urandom(32))
    own = make_delta(chain, 2, os.urandom(32))
    failures(chain, [commit(chain, BOB, honest), commit(chain, CHARLIE, own)])
    chain.produce([])
    failures(chain, [reveal(chain, BOB, honest)])
    copied = reveal(chain, CHARLIE, honest)
    with pytest.raises(CommitmentMismatch, match="do not open"):
        check_transaction(chain.runtime, chain.state(), copied, chain.genesis_hash)
    assert failures(chain, [copied]) == [
        "CommitmentMismatch: the delta, salt and sender do not open this client's commitment"
    ]
    # A copier who never committed is refused too.
    with pytest.raises(NoCommitment, match="no commitment"):
        check_transaction(
            chain.runtime, chain.state(), reveal(chain, DAVE, honest), chain.genesis_hash
        )


def test_reveal_without_commitment_or_salt_is_refused() -> None:
    chain = new_chain()
    chain.produce([])
    chain.produce([])
    delta = make_delta(chain, 1, os.urandom(32))
    with pytest.raises(NoCommitment, match="send commit_delta in the commit window first"):
        check_transaction(
            chain.runtime, chain.state(), reveal(chain, BOB, delta), chain.genesis_hash
        )
    unsalted = SubmitDelta(**{**delta.__dict__, "salt": None})
    with pytest.raises(CommitRevealOff, match="uses commit-reveal"):
        check_transaction(
            chain.runtime, chain.state(), reveal(chain, BOB, unsalted), chain.genesis_hash
        )
    # and a model without commit-reveal refuses both a salt and a commitment
    plain = MemChain(spec_with(), construct_runtime("reference"))
    salted = make_delta(plain, 1, os.urandom(32))
    with pytest.raises(CommitRevealOff, match="without salt"):
        check_transaction(
            plain.runtime, plain.state(), reveal(plain, BOB, salted), plain.genesis_hash
        )
    with pytest.raises(CommitRevealOff, match="does not use commit-reveal"):
        check_transaction(
            plain.runtime, plain.state(), commit(plain, BOB, salted), plain.genesis_hash
        )


def test_windows_early_reveal_late_commit_and_late_reveal() -> None:
    chain = new_chain(minDeltas=1, roundLen=4, commitLen=2)
    delta = make_delta(chain, 1, os.urandom(32))
    other = make_delta(chain, 2, os.urandom(32))
    # A reveal in the commit window fails, even with its commitment in the same block.
    assert failures(chain, [commit(chain, BOB, delta)]) == []
    early = failures(chain, [reveal(chain, BOB, delta)])
    assert early == [
        "OutsideWindow: model 'sine-mlp' takes reveals from block 3; hold this delta until then"
    ]
    # A commitment after the commit window fails.
    late_commit = failures(chain, [commit(chain, CHARLIE, other)])
    assert late_commit
    assert late_commit[0].startswith("OutsideWindow: the commit window")
    # BOB reveals in time; the round closes at roundLen with one delta.
    assert failures(chain, [reveal(chain, BOB, delta)]) == []
    chain.produce([])
    assert record(chain).version == 1
    # CHARLIE's late reveal (his commitment never made it) does not count.
    late = failures(chain, [reveal(chain, CHARLIE, other)])
    assert late
    assert late[0].startswith(("OutsideWindow", "StaleDelta", "NoCommitment"))
    prov = module(chain).query(chain.state(), "provenance", {"model": MODEL, "version": 1})
    assert [d["client"] for d in prov["deltas"]] == [BOB.address]


def test_duplicate_commitment_is_refused() -> None:
    chain = new_chain()
    delta = make_delta(chain, 1, os.urandom(32))
    failures(chain, [commit(chain, BOB, delta)])
    with pytest.raises(DuplicateCommitment):
        check_transaction(
            chain.runtime, chain.state(), commit(chain, BOB, delta), chain.genesis_hash
        )


def test_short_round_reopens_its_commit_window() -> None:
    chain = new_chain(minDeltas=2, roundLen=4, commitLen=2)
    delta = make_delta(chain, 1, os.urandom(32))
    failures(chain, [commit(chain, BOB, delta)])
    chain.produce([])
    failures(chain, [reveal(chain, BOB, delta)])
    chain.produce([])  # block 4: roundLen, one reveal short of minDeltas
    assert record(chain).version == 0
    assert record(chain).round_start == 5
    other = make_delta(chain, 2, os.urandom(32))
    assert failures(chain, [commit(chain, CHARLIE, other)]) == []  # block 5: commit window
    chain.produce([])
    assert failures(chain, [reveal(chain, CHARLIE, other)]) == []
    chain.produce([])  # block 8: roundLen of the reopened round
    assert record(chain).version == 1


def test_plain_model_record_is_unchanged() -> None:
    """Without commitReveal the record (hence every state root) is what it always was."""
    chain = MemChain(spec_with(), construct_runtime("reference"))
    raw = chain.state().get(key_model(MODEL))
    assert raw is not None
    assert b"commitReveal" not in raw


def test_pool_holds_back_early_reveals(tmp_path: Path) -> None:
    """The node's pool refuses a reveal before the reveal window: it is neither pooled nor
    gossiped (nor visible in author_pendingExtrinsics) while others may still commit."""
    from deltachain.primitives.transaction import sign_transaction

    raw_spec = spec_with(**CR)
    chain = Chain(raw_spec, construct_runtime("reference"), tmp_path / "db")
    try:
        mem = MemChain(raw_spec, construct_runtime("reference"))
        delta = make_delta(mem, 1, os.urandom(32))
        args = commit_args(delta, BOB)
        tx = sign_transaction(BOB, chain.genesis_hash, 0, "model_state", "commit_delta", args)
        chain.submit_transaction(tx.encode())
        early = sign_transaction(
            BOB, chain.genesis_hash, 1, "model_state", "submit_delta", delta.to_args()
        )
        with pytest.raises(OutsideWindow, match="hold this delta"):
            chain.submit_transaction(early.encode())
        assert len(chain.outbox) == 1  # only the commitment is gossiped
    finally:
        chain.close()


def test_copy_committed_in_a_reopened_window_is_refused() -> None:
    """BOB's reveal is public once a short round reopens its commit window; CHARLIE commits
    to the very same delta under his own salt and sender, and its reveal is still refused."""
    chain = new_chain(minDeltas=2, roundLen=4, commitLen=2)
    honest = make_delta(chain, 1, os.urandom(32))
    failures(chain, [commit(chain, BOB, honest)])
    chain.produce([])
    assert failures(chain, [reveal(chain, BOB, honest)]) == []
    chain.produce([])  # roundLen, one reveal short: the commit window reopens
    copied = SubmitDelta(**{**honest.__dict__, "salt": os.urandom(32), "samples": 99})
    own = make_delta(chain, 2, os.urandom(32))
    assert failures(chain, [commit(chain, CHARLIE, copied), commit(chain, DAVE, own)]) == []
    chain.produce([])
    with pytest.raises(CopiedDelta, match="already revealed this very delta"):
        check_transaction(
            chain.runtime, chain.state(), reveal(chain, CHARLIE, copied), chain.genesis_hash
        )
    assert failures(chain, [reveal(chain, DAVE, own)]) == []
    chain.produce([])  # roundLen of the reopened round: BOB and DAVE aggregated
    assert record(chain).version == 1
    prov = module(chain).query(chain.state(), "provenance", {"model": MODEL, "version": 1})
    assert [u["client"] for u in prov["unrevealed"]] == [CHARLIE.address]
    # the round's reveal digests went with it
    assert chain.state().get(key_revealed(MODEL, delta_digest(honest.to_args()))) is None
