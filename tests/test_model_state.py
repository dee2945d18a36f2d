"""model_state: registry genesis, delta validation, round lifecycle, commitment and proofs."""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deltachain.chain import construct_runtime
from deltachain.crypto.merkle import leaf_hash, verify_merkle_proof
from deltachain.crypto.trie import trie_prove, verify_proof
from deltachain.errors import ChainSpecError, InvalidCall, Unauthorized
from deltachain.model_state.config import parse_model
from deltachain.model_state.delta import (
    MAX_DELTA_ENTRIES,
    SubmitDelta,
    decode_gaps,
    dequantize,
    encode_gaps,
    quantize_top_p,
)
from deltachain.model_state.module import (
    DuplicateDelta,
    ModelStateModule,
    StaleDelta,
    key_model,
)
from deltachain.primitives.chainspec import DEV_MODEL, dev_chain_spec, parse_chain_spec
from deltachain.runtime.executive import check_transaction
from deltachain.runtime.state import key_hash, value_hash
from support import ALICE, BOB, CHARLIE, DAVE, MemChain

MODEL = "sine-mlp"
CLIENTS = [BOB, CHARLIE, DAVE, ALICE]


def spec_with(**changes: Any) -> Any:
    raw = dev_chain_spec().to_json()
    model = {**copy.deepcopy(DEV_MODEL), **changes}
    raw["genesis"]["runtime"]["model_state"]["models"] = [model]
    raw["genesis"]["runtime"]["system"]["clients"] = [
        "0x" + k.address.hex() for k in (BOB, CHARLIE, DAVE)
    ]
    return parse_chain_spec(raw)


def new_chain(kernel: str = "reference", **changes: Any) -> MemChain:
    return MemChain(spec_with(**changes), construct_runtime(kernel))


def module(chain: MemChain) -> ModelStateModule:
    found = chain.runtime.modules["model_state"]
    assert isinstance(found, ModelStateModule)
    return found


def make_delta(chain: MemChain, seed: int, top_p: float = 0.2, **fields: Any) -> SubmitDelta:
    record = module(chain).record(chain.state(), MODEL)
    rng = np.random.default_rng(seed)
    g = rng.normal(0, 0.05, record.config.num_params)
    idx, val, exp = quantize_top_p(g, top_p, record.config.frac_bits, record.config.global_mask())
    base = SubmitDelta(MODEL, record.version, idx, val, exp, 10, 1_500_000, 900_000)
    return SubmitDelta(**{**base.__dict__, **fields})


def submit(chain: MemChain, key: Any, delta: SubmitDelta) -> Any:
    return chain.tx(key, "model_state", "submit_delta", delta.to_args())


def version(chain: MemChain) -> int:
    return module(chain).record(chain.state(), MODEL).version


def test_genesis_model_record_and_commitment() -> None:
    chain = new_chain()
    got = module(chain).query(chain.state(), "get", {"model": MODEL})
    assert got["version"] == 0
    assert got["numParams"] == 1761
    assert got["chunkCount"] == 7
    weights = module(chain).weights(
        chain.state(), module(chain).record(chain.state(), MODEL).config
    )
    assert weights.dtype == np.int32
    assert weights.shape == (1761,)
    assert np.any(weights != 0)
    assert np.all(weights[1680:1720] == 0)  # hidden2.b has initStd 0
    assert new_chain().head.state_root == chain.head.state_root  # seeded init is deterministic


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"trimBeta": "1/2"}, "below 1/2"),
        ({"trimBeta": 0.1}, "not a float"),
        ({"maxDeltas": 1, "minDeltas": 2}, "maxDeltas"),
        ({"aggregation": "median"}, "aggregation"),
        ({"layers": []}, "non-empty"),
        ({"layers": [{"name": "a", "shape": [2], "kind": "local"}]}, "global"),
        ({"layers": [{"name": "a", "shape": [0]}]}, "positive"),
        ({"fracBits": 40}, "fracBits"),
        ({"eta": "0/1"}, "eta"),
        ({"init": {"kind": "file", "path": "/nonexistent.npy", "sha256": "0x00"}}, "cannot read"),
        ({"init": {"kind": "uniform"}}, "init.kind"),
        ({"id": "Bad Id"}, "model id"),
    ],
)
def test_bad_model_specs_are_rejected(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ChainSpecError, match=message):
        parse_model({**copy.deepcopy(DEV_MODEL), **changes})


def test_file_init_is_pinned(tmp_path: Any) -> None:
    import hashlib

    config = parse_model(DEV_MODEL)
    weights = np.arange(config.num_params, dtype=np.int32)
    path = tmp_path / "w.npy"
    np.save(path, weights)
    digest = "0x" + hashlib.sha256(path.read_bytes()).hexdigest()
    chain = new_chain(init={"kind": "file", "path": str(path), "sha256": digest})
    record = module(chain).record(chain.state(), MODEL)
    assert np.array_equal(module(chain).weights(chain.state(), record.config), weights)
    with pytest.raises(ChainSpecError, match="pinned sha256"):
        parse_model(
            {**DEV_MODEL, "init": {"kind": "file", "path": str(path), "sha256": "0x" + "0" * 64}}
        )


def invalid_cases() -> list[tuple[str, Any, type[Exception], str]]:
    return [
        (
            "out of range",
            lambda d: {
                **d.__dict__,
                "indices": np.array([5000], np.uint32),
                "values": np.array([1], np.int8),
            },
            InvalidCall,
            "out of range",
        ),
        (
            "local layer",
            lambda d: {
                **d.__dict__,
                "indices": np.array([1722], np.uint32),
                "values": np.array([1], np.int8),
            },
            InvalidCall,
            "local layer",
        ),
        (
            "exp too small",
            lambda d: {**d.__dict__, "exp": -17},
            InvalidCall,
            "exp -17 out of range",
        ),
        ("exp too large", lambda d: {**d.__dict__, "exp": 8}, InvalidCall, "out of range"),
        ("future base", lambda d: {**d.__dict__, "base_version": 5}, InvalidCall, "ahead"),
        (
            "empty",
            lambda d: {
                **d.__dict__,
                "indices": np.array([], np.uint32),
                "values": np.array([], np.int8),
            },
            InvalidCall,
            "empty",
        ),
        ("unknown model", lambda d: {**d.__dict__, "model": "nope"}, InvalidCall, "no model"),
    ]


@pytest.mark.parametrize(
    ("name", "mutate", "error", "message"), invalid_cases(), ids=[c[0] for c in invalid_cases()]
)
def test_invalid_deltas_are_rejected(
    name: str, mutate: Any, error: type[Exception], message: str
) -> None:
    chain = new_chain()
    bad = SubmitDelta(**mutate(make_delta(chain, 1)))
    with pytest.raises(error, match=message):
        check_transaction(chain.runtime, chain.state(), submit(chain, BOB, bad), chain.genesis_hash)


def test_wire_shape_errors() -> None:
    chain = new_chain()
    args = make_delta(chain, 1).to_args()
    n = len(args["values"])
    assert len(args["gaps"]) < n / 2  # Top-20% of 1 761: under 4 bits an index
    for broken, message in [
        ({**args, "gaps": args["gaps"][:-1]}, f"codes but {n} values"),
        ({**args, "gaps": args["gaps"] + b"\x01"}, f"hold {n + 1} codes but {n} values"),
        ({**args, "gaps": args["gaps"] + b"\x00"}, "trailing bytes"),
        ({**args, "values": args["values"][:-1]}, "padding bit set"),
        ({**args, "values": args["values"] + b"\x01"}, f"codes but {n + 1} values"),
        ({**args, "gaps": "0x01"}, "must be bytes"),
        ({**args, "extra": 1}, "takes model"),
        ({k: v for k, v in args.items() if k != "exp"}, "takes model"),
        ({k: v for k, v in args.items() if k != "gaps"}, "takes model"),
        ({**args, "baseVersion": -1}, "unsigned"),
        ({**args, "lossPre": "high"}, "lossPre"),
    ]:
        tx = chain.tx(BOB, "model_state", "submit_delta", broken)
        with pytest.raises(InvalidCall, match=message):
            check_transaction(chain.runtime, chain.state(), tx, chain.genesis_hash)


def _bits(text: str) -> bytes:
    """A bit string written out ("00001 1 001"), zero-padded to whole bytes."""
    bits = text.replace(" ", "")
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def _rice_length(indices: list[int], k: int) -> int:
    """Bits of the Rice code of ``indices`` with parameter k, header and padding excluded."""
    values = [indices[0]] + [b - a - 1 for a, b in itertools.pairwise(indices)]
    return sum(1 + k + (v >> k) for v in values)


def _rice_reference(indices: list[int], k: int | None = None) -> bytes:
    """The Rice code written the obvious way; ``k`` None picks the smallest shortest one."""
    values = [indices[0]] + [b - a - 1 for a, b in itertools.pairwise(indices)]
    if k is None:
        k = min(range(32), key=lambda j: (_rice_length(indices, j), j))
    remainders = "".join(format(v & ((1 << k) - 1), f"0{k}b") if k else "" for v in values)
    unary = "".join("0" * (v >> k) + "1" for v in values)
    return _bits(format(k, "05b") + remainders + unary)


@pytest.mark.parametrize(
    ("gaps", "values", "message"),
    [
        (b"", b"", "empty"),
        (b"", b"\x01", "truncated: no Rice parameter"),
        (_bits("00111 " + "0" * 11), b"\x01\x01", "truncated: 2 bytes for 2 values"),
        (_bits("00000 111 00000000"), b"\x01" * 4, "hold 3 codes but 4 values"),
        (_bits("00000 111") + b"\x00", b"\x01" * 3, "trailing bytes"),
        (_bits("00000 111"), b"\x01\x01", "padding bit set"),  # [0, 1] is 00000 11 0
        (_bits("00000 11 1"), b"\x01\x01", "padding bit set"),
        (_bits("00000 11 000000 1"), b"\x01\x01", "hold 3 codes but 2 values"),
        (b"\x07" + b"\xff" * 5, b"\x01", "hold 43 codes but 1 values"),
        (_bits("00001 0 0 0 1 1 1"), b"\x01" * 3, "Rice parameter 1, not the canonical"),
        (_rice_reference([5], k=2), b"\x01", "Rice parameter 2, not the canonical"),  # tie: k=1
        (_rice_reference([0, 40], k=0), b"\x01\x01", "Rice parameter 0, not the canonical"),
        (_bits("11111 " + "1" * 31 + " 001"), b"\x01", "runs past the uint32 range"),
        (_bits("00000 1") + bytes(6), b"\x01", "7 gap bytes for 1 values"),
        (b"\x00" * (MAX_DELTA_ENTRIES + 1), b"\x01" * (MAX_DELTA_ENTRIES + 1), "over the limit"),
        (_rice_reference([2**32 - 1]), b"\x01", "index 4294967295 is out of range"),
        (_rice_reference([1722]), b"\x01", "index 1722 is in a local layer"),
    ],
)
def test_malformed_gaps_are_rejected(gaps: bytes, values: bytes, message: str) -> None:
    chain = new_chain()
    args = {**make_delta(chain, 1).to_args(), "gaps": gaps, "values": values}
    tx = chain.tx(BOB, "model_state", "submit_delta", args)
    with pytest.raises(InvalidCall, match=message):
        check_transaction(chain.runtime, chain.state(), tx, chain.genesis_hash)


def _index_sets(rng: np.random.Generator) -> list[np.ndarray]:
    cases = [np.array([0], np.uint32), np.array([2**32 - 1], np.uint32)]
    cases.append(np.array([0, 1, 127, 128, 255, 16_511, 2**21 + 5, 2**32 - 1], np.uint32))
    cases.append(np.arange(2000, dtype=np.uint32))  # Top-100%: k = 0, one bit an index
    for n, d in [(1, 10), (50, 2000), (360, 2400), (3000, 10**6), (500, 2**32)]:
        cases.append(np.unique(rng.integers(0, d, n, dtype=np.int64)).astype(np.uint32))
    return cases


def test_gaps_round_trip_against_a_reference_rice_code() -> None:
    rng = np.random.default_rng(7)
    for idx in _index_sets(rng):
        raw = encode_gaps(idx)
        assert raw == _rice_reference([int(i) for i in idx])
        back = decode_gaps(raw, idx.size)
        assert back.dtype == np.uint32
        assert np.array_equal(back, idx)
    dense_top_p = np.sort(rng.choice(2400, 360, replace=False)).astype(np.uint32)
    assert len(encode_gaps(dense_top_p)) < 360 * 5 // 8  # Top-15%: < 5 bits an index, not 8


def test_exactly_one_rice_parameter_is_accepted_the_smallest_shortest() -> None:
    """The decoder checks only k's neighbours (the length is convex in k): brute force agrees."""
    rng = np.random.default_rng(11)
    for idx in [*_index_sets(rng), np.array([5], np.uint32), np.array([0, 3, 9], np.uint32)]:
        listed = [int(i) for i in idx]
        accepted = []
        lengths = [_rice_length(listed, k) for k in range(32)]
        for k in range(32):
            if lengths[k] > 50 * min(lengths):
                continue  # over max_gap_bytes anyway, and too long to build as a str
            try:
                decode_gaps(_rice_reference(listed, k), idx.size)
            except InvalidCall:
                continue
            accepted.append(k)
        assert len(accepted) == 1
        assert _rice_reference(listed, accepted[0]) == encode_gaps(idx)


def test_gaps_are_canonical_every_accepted_byte_string_re_encodes_to_itself() -> None:
    rng = np.random.default_rng(3)
    accepted = 0
    for _ in range(3000):
        n = int(rng.integers(1, 12))
        good = encode_gaps(np.unique(rng.integers(0, int(rng.choice([20, 300, 10**6])), n)))
        raw = bytearray(good)
        match int(rng.integers(0, 4)):
            case 0:  # flip one bit
                bit = int(rng.integers(0, 8 * len(raw)))
                raw[bit // 8] ^= 0x80 >> (bit % 8)
            case 1:  # random bytes after a valid k
                raw[1:] = rng.integers(0, 256, len(raw) - 1, dtype=np.uint8).tobytes()
            case 2:
                raw = raw[:-1]
            case _:
                raw += bytes([int(rng.integers(0, 256))])
        data = bytes(raw)
        for count in range(max(1, n - 2), n + 3):
            try:
                idx = decode_gaps(data, count)
            except InvalidCall:
                continue
            accepted += 1
            assert encode_gaps(idx) == data
    assert accepted > 500


@settings(max_examples=200, deadline=None)
@given(st.sets(st.integers(0, 2**32 - 1), min_size=1, max_size=40))
def test_gaps_round_trip_property(indices: set[int]) -> None:
    idx = np.array(sorted(indices), dtype=np.uint32)
    raw = encode_gaps(idx)
    assert raw == _rice_reference(sorted(indices))
    assert np.array_equal(decode_gaps(raw, idx.size), idx)


def test_gaps_decode_150k_entries_quickly() -> None:
    idx = np.sort(np.random.default_rng(5).choice(10**6, MAX_DELTA_ENTRIES, replace=False))
    raw = encode_gaps(idx)
    started = time.perf_counter()
    back = decode_gaps(raw, idx.size)
    assert time.perf_counter() - started < 0.25  # ≈ 8 ms; generous for shared CI cores
    assert np.array_equal(back, idx)


def test_device_encoder_refuses_unsorted_or_duplicate_indices() -> None:
    for bad in ([3, 1], [1, 1], [-1], [2**32]):
        with pytest.raises(ValueError, match=r"strictly increasing|uint32"):
            encode_gaps(np.array(bad, dtype=np.int64))


def test_only_registered_clients_submit_once_per_round() -> None:
    chain = new_chain()
    with pytest.raises(Unauthorized, match="registered clients"):
        check_transaction(
            chain.runtime,
            chain.state(),
            submit(chain, ALICE, make_delta(chain, 1)),
            chain.genesis_hash,
        )
    chain.produce([submit(chain, BOB, make_delta(chain, 1))])
    with pytest.raises(DuplicateDelta):
        check_transaction(
            chain.runtime,
            chain.state(),
            submit(chain, BOB, make_delta(chain, 2)),
            chain.genesis_hash,
        )


def test_round_closes_after_round_len_with_min_deltas() -> None:
    chain = new_chain(roundLen=3, minDeltas=2)
    root0 = module(chain).record(chain.state(), MODEL).weights_root
    chain.produce(
        [submit(chain, BOB, make_delta(chain, 1)), submit(chain, CHARLIE, make_delta(chain, 2))]
    )
    assert version(chain) == 0  # block 1 of 3
    chain.produce([])
    assert version(chain) == 0
    chain.produce([])  # block 3: roundLen reached
    record = module(chain).record(chain.state(), MODEL)
    assert record.version == 1
    assert record.weights_root != root0
    assert record.round_start == 4
    prov = module(chain).query(chain.state(), "provenance", {"model": MODEL, "version": 1})
    assert prov["n"] == 2
    assert [d["client"] for d in prov["deltas"]] == sorted([BOB.address, CHARLIE.address])
    assert all(d["survived"] == d["coordinates"] for d in prov["deltas"])  # f = 0 at n = 2
    assert prov["deltas"][0]["lossPre"] == 1_500_000
    # the round reset: the same client may submit again, against the new version
    chain.produce([submit(chain, BOB, make_delta(chain, 3))])


def test_short_round_carries_over_until_min_deltas() -> None:
    chain = new_chain(roundLen=2, minDeltas=2)
    chain.produce([submit(chain, BOB, make_delta(chain, 1))])
    for _ in range(4):
        chain.produce([])
    assert version(chain) == 0
    got = module(chain).query(chain.state(), "get", {"model": MODEL})
    assert got["round"]["deltas"] == ["0x" + BOB.address.hex()]
    chain.produce([submit(chain, CHARLIE, make_delta(chain, 2))])
    assert version(chain) == 1


def test_max_deltas_closes_at_once_and_fails_the_surplus_delta() -> None:
    """The third delta of a 2-delta round is included as a failed call: its nonce is used
    (nothing of its sender's is stranded) and the event says the round was full."""
    chain = new_chain(roundLen=100, minDeltas=2, maxDeltas=2)
    surplus = submit(chain, DAVE, make_delta(chain, 3))
    block, built = chain.build(
        [
            submit(chain, BOB, make_delta(chain, 1)),
            submit(chain, CHARLIE, make_delta(chain, 2)),
            surplus,
        ]
    )
    assert built.rejected == []
    assert len(block.transactions) == 3
    failed = built.output.tx_events[2]
    assert [(e.name, e.data["error"]) for e in failed] == [("ExtrinsicFailed", "RoundFull")]
    chain.import_block(block)
    assert version(chain) == 1
    assert chain.nonce(DAVE) == 1


def test_stale_base_version_is_rejected() -> None:
    chain = new_chain(roundLen=1, minDeltas=2, staleness=0)
    old = make_delta(chain, 9)
    chain.produce(
        [submit(chain, BOB, make_delta(chain, 1)), submit(chain, CHARLIE, make_delta(chain, 2))]
    )
    assert version(chain) == 1
    with pytest.raises(StaleDelta, match="stale"):
        check_transaction(
            chain.runtime, chain.state(), submit(chain, DAVE, old), chain.genesis_hash
        )


def run_rounds(kernel: str, order: list[int], semantics: str) -> bytes:
    chain = new_chain(
        kernel, roundLen=1, minDeltas=3, maxDeltas=8, trimBeta="1/4", aggregation=semantics
    )
    for r in range(2):
        deltas = [make_delta(chain, 10 * r + i, top_p=0.5) for i in range(3)]
        chain.produce([submit(chain, CLIENTS[i], deltas[i]) for i in order])
    return chain.head.state_root


@pytest.mark.parametrize("semantics", ["zero-fill", "present-quorum"])
def test_roots_are_independent_of_arrival_order_and_execution(semantics: str) -> None:
    roots = {
        run_rounds("reference", order, semantics) for order in ([0, 1, 2], [2, 0, 1], [1, 2, 0])
    }
    assert len(roots) == 1


def test_numba_and_reference_kernels_give_identical_roots() -> None:
    pytest.importorskip("deltachain.model_state.aggregate_numba")
    for semantics in ("zero-fill", "present-quorum"):
        assert run_rounds("numba", [0, 1, 2], semantics) == run_rounds(
            "reference", [0, 1, 2], semantics
        )


def test_chunk_and_record_proofs_verify_to_the_state_root() -> None:
    chain = new_chain(roundLen=1, minDeltas=2)
    chain.produce(
        [submit(chain, BOB, make_delta(chain, 1)), submit(chain, CHARLIE, make_delta(chain, 2))]
    )
    state = chain.state()
    for index in range(7):
        found = module(chain).query(state, "chunk", {"model": MODEL, "index": index})
        record = module(chain).query(state, "get", {"model": MODEL})
        root = bytes.fromhex(record["weightsRoot"][2:])
        verify_merkle_proof(root, index, found["count"], leaf_hash(found["chunk"]), found["proof"])
        proof = trie_prove(chain.store, state.base_root, key_hash(key_model(MODEL)))
        verify_proof(
            state.base_root, key_hash(key_model(MODEL)), value_hash(found["record"]), proof
        )
    weights = module(chain).weights(state, module(chain).record(state, MODEL).config)
    chunk0 = module(chain).query(state, "chunk", {"model": MODEL, "index": 0})["chunk"]
    assert chunk0 == weights[:256].astype("<i4").tobytes()


def test_quantize_top_p_picks_largest_global_coordinates() -> None:
    delta = np.zeros(10)
    delta[[1, 4, 7, 9]] = [0.5, -2.0, 0.25, 3.0]
    mask = np.ones(10, bool)
    mask[9] = False
    idx, val, exp = quantize_top_p(delta, 0.2, 16, mask)
    assert idx.tolist() == [1, 4]
    assert exp == -5  # 2.0 / 2^-5 = 64 fits int8; 2^-6 would need 128
    assert np.allclose(dequantize(idx, val, exp, 10)[[1, 4]], [0.5, -2.0])
