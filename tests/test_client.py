"""client/: tasks, the MLP, quantization, the device round, verified downloads, accounting."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

from deltachain.client.cli import register
from deltachain.client.device import SCALE_FACTOR, Device, Hyper
from deltachain.client.fleet import FleetConfig, alie_z, local_fleet, write_csv
from deltachain.client.localchain import LocalChain, local_spec, model_json
from deltachain.client.model import MLP, MLPSpec, ModelMismatch, to_fixed, to_float
from deltachain.client.profile import NRF52840, RoundCost, memory_plan
from deltachain.client.rpc import JsonRpc, NodeUnreachable
from deltachain.client.tasks import DigitsTask, SineTask, _pools
from deltachain.client.verify import TrustNodeVerifier, VerifierCost, download_model
from deltachain.crypto.hashing import Hash32
from deltachain.errors import ProofError
from deltachain.model_state.config import initial_weights, parse_model
from deltachain.model_state.delta import dequantize, quantize_top_p
from deltachain.node.cli import build_parser


def sine_spec() -> tuple[MLPSpec, np.ndarray]:
    config = parse_model(model_json("sine"))
    return MLPSpec.from_config(config.to_obj()), to_float(initial_weights(config), 16)


def small_chain(devices: int = 3) -> tuple[LocalChain, Any]:
    fleet = local_fleet(FleetConfig(devices=devices, rounds=1, heldout=1))
    assert isinstance(fleet.node, LocalChain)
    return fleet.node, fleet


# --- tasks ----------------------------------------------------------------------------------


def test_task_generators_are_deterministic() -> None:
    a, b = SineTask(3).device(5), SineTask(3).device(5)
    assert (a.amplitude, a.phase) == (b.amplitude, b.phase)
    assert 0.1 <= a.amplitude <= 5
    assert 0 <= a.phase <= math.pi
    xa, xb = a.next_batch(10), b.next_batch(10)
    np.testing.assert_array_equal(xa.x, xb.x)
    assert np.all(np.abs(xa.x) <= 5)
    np.testing.assert_allclose(xa.y, a.amplitude * np.sin(xa.x - a.phase), rtol=1e-5)
    assert not np.array_equal(a.next_batch(10).x, xa.x)  # a stream: fresh samples each call
    s1, q1 = a.eval_split(10, 50)
    s2, q2 = a.eval_split(10, 50)
    np.testing.assert_array_equal(s1.x, s2.x)
    np.testing.assert_array_equal(q1.y, q2.y)
    assert SineTask(3).device(6).amplitude != a.amplitude
    assert SineTask(4).device(5).amplitude != a.amplitude

    d1, d2 = DigitsTask(0).device(2), DigitsTask(0).device(2)
    assert d1.classes == d2.classes
    assert 2 <= len(d1.classes) <= 3
    b1, b2 = d1.next_batch(20), d2.next_batch(20)
    np.testing.assert_array_equal(b1.x, b2.x)
    assert set(b1.y.tolist()) <= set(d1.classes)
    assert b1.x.shape == (20, 64)
    assert float(b1.x.max()) <= 1.0
    # held-out devices draw from a pool disjoint from the training devices' pool
    train, held = _pools(0)
    for c in range(10):
        assert not set(train[c].tolist()) & set(held[c].tolist())
    h = DigitsTask(0).heldout(0)
    support, query = h.eval_split(20, 100)
    assert set(support.y.tolist()) | set(query.y.tolist()) <= set(h.classes)


# --- the model ------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["mse", "xent"])
def test_mlp_gradient_matches_finite_differences(loss: str) -> None:
    out = 1 if loss == "mse" else 4
    spec = MLPSpec.from_config(
        {
            "id": "t",
            "layers": [
                {"name": "a.w", "shape": [3, 5], "global": True},
                {"name": "a.b", "shape": [5], "global": True},
                {"name": "b.w", "shape": [5, 4], "global": True},
                {"name": "b.b", "shape": [4], "global": False},
                {"name": "c.w", "shape": [4, out], "global": False},
                {"name": "c.b", "shape": [out], "global": False},
            ],
        }
    )
    mlp = MLP(spec, loss)
    rng = np.random.default_rng(0)
    params = rng.normal(0, 0.7, spec.num_params)
    x = rng.normal(0, 1, (6, 3))
    y = rng.normal(0, 1, (6, 1)) if loss == "mse" else rng.integers(0, out, 6)
    _, grad = mlp.loss_and_grad(params, x, y)
    eps = 1e-6
    numeric = np.zeros_like(params)
    for i in range(params.size):
        up, down = params.copy(), params.copy()
        up[i] += eps
        down[i] -= eps
        numeric[i] = (mlp.loss(up, x, y) - mlp.loss(down, x, y)) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-7)
    macs = 15 + 20 + 4 * out  # per sample, forward
    assert mlp.step_macs(6) == 6 * macs + 6 * (2 * macs - 15) + spec.num_params


def test_model_layout_comes_from_the_record_and_mismatches_are_clear() -> None:
    spec, _ = sine_spec()
    assert spec.widths == (1, 40, 40, 1)
    assert spec.num_params == 1761
    assert spec.num_global == 1720
    spec.check_task(1, 1, "sine")
    with pytest.raises(ModelMismatch, match="needs 64 → 10"):
        spec.check_task(64, 10, "digits")
    with pytest.raises(ModelMismatch, match="pairs"):
        MLPSpec.from_config({"id": "x", "layers": [{"name": "w", "shape": [2, 2]}]})


def test_fixed_point_and_delta_quantization_round_trips_are_bounded() -> None:
    rng = np.random.default_rng(1)
    params = rng.normal(0, 2, 1000).astype(np.float32)
    back = to_float(to_fixed(params, 16), 16)
    assert float(np.max(np.abs(back - params))) <= 2.0**-17 + 1e-6
    spec, _ = sine_spec()
    mask = spec.global_mask()
    delta = rng.normal(0, 0.01, spec.num_params)
    for top_p in (0.01, 0.1, 1.0):
        idx, val, exp = quantize_top_p(delta, top_p, 16, mask)
        assert idx.size == math.ceil(top_p * int(mask.sum()))
        assert bool(np.all(mask[idx]))
        approx = dequantize(idx, val, exp, delta.size)
        err = np.abs(approx[idx] - delta[idx])
        assert float(err.max()) <= 2.0 ** (exp - 1) + 1e-12  # half a quantization step
        # the selected coordinates are the largest global ones
        unsent = np.setdiff1d(np.flatnonzero(mask), idx)
        if unsent.size:
            assert float(np.abs(delta[unsent]).max()) <= float(np.abs(delta[idx]).min())


# --- the device -----------------------------------------------------------------------------


def test_device_delta_touches_only_global_coordinates_and_keeps_local_layers() -> None:
    spec, weights = sine_spec()
    mask = spec.global_mask()
    device = Device(0, SineTask(0).device(0), MLP(spec, "mse"), Hyper(top_p=0.2))
    first = device.train(weights)
    assert float(np.abs(first.delta[~mask]).max()) == 0.0
    assert float(np.abs(first.delta[mask]).max()) > 0.0
    assert first.macs > 0
    assert first.samples == 10
    local_after_round_1 = device.local.copy() if device.local is not None else None
    assert local_after_round_1 is not None
    assert not np.array_equal(local_after_round_1, weights[~mask])  # adapted on device
    # the next round composes the downloaded global part with the device's own local layers
    composed = device.compose(weights)
    np.testing.assert_array_equal(composed[~mask], local_after_round_1)
    np.testing.assert_array_equal(composed[mask], weights[mask])


def test_attack_modes_produce_what_they_claim() -> None:
    spec, weights = sine_spec()
    mask = spec.global_mask()
    mlp = MLP(spec, "mse")
    honest = Device(0, SineTask(0).device(0), mlp, Hyper()).train(weights).delta

    def attacked(kind: str, stats: Any = None) -> np.ndarray:
        device = Device(1, SineTask(0).device(1), mlp, Hyper(), attack=kind)
        return device.corrupt(honest, stats)

    np.testing.assert_array_equal(attacked("signflip"), -honest)
    np.testing.assert_allclose(attacked("scale"), honest * SCALE_FACTOR, rtol=1e-6)
    noise = attacked("gaussian")
    assert np.linalg.norm(noise) == pytest.approx(np.linalg.norm(honest), rel=1e-4)
    assert float(np.abs(noise[~mask]).max()) == 0.0
    assert abs(float(np.corrcoef(noise[mask], honest[mask])[0, 1])) < 0.2
    mean, std = np.full_like(honest, 0.01), np.full_like(honest, 0.02)
    z = alie_z(20, 4)
    assert 0 < z < 1
    np.testing.assert_allclose(attacked("alie", (mean, std, z))[mask], (mean - z * std)[mask])
    shifted = attacked("alie")
    assert float(np.mean(shifted[mask] - honest[mask])) < -2 * float(np.std(honest[mask]))
    with pytest.raises(ValueError, match="unknown attack"):
        Device(0, SineTask(0).device(0), mlp, Hyper(), attack="nope")
    # scaling survives quantization as a larger power-of-two exponent
    _, _, e_honest = quantize_top_p(honest, 0.1, 16, mask)
    _, _, e_scaled = quantize_top_p(attacked("scale"), 0.1, 16, mask)
    assert e_scaled - e_honest >= 6


# --- verified downloads ---------------------------------------------------------------------


class Tamper:
    """Passes calls to a chain and corrupts one field of the answers."""

    def __init__(self, chain: LocalChain, method: str, edit: Any) -> None:
        self.chain, self.method, self.edit = chain, method, edit

    def call(self, method: str, *params: Any) -> Any:
        answer = self.chain.call(method, *params)
        if method == self.method:
            answer = copy.deepcopy(answer)
            self.edit(answer, params)
        return answer


def _flip_hex(value: str, at: int = 10) -> str:
    raw = bytearray(bytes.fromhex(value[2:]))
    raw[at % len(raw)] ^= 0x01
    return "0x" + raw.hex()


def _chunk(index: int, edit: Any) -> Any:
    def apply(answer: dict[str, Any], params: tuple[Any, ...]) -> None:
        if params[1] == index:
            edit(answer)

    return apply


TAMPERS = {
    "chunk byte": _chunk(2, lambda a: a.update(chunk=_flip_hex(a["chunk"]))),
    "chunk truncated": _chunk(1, lambda a: a.update(chunk=a["chunk"][:-8])),
    "proof hash": _chunk(3, lambda a: a["proof"].__setitem__(0, _flip_hex(a["proof"][0]))),
    "proof dropped": _chunk(4, lambda a: a["proof"].pop()),
    "wrong index": _chunk(2, lambda a: a.update(index=1)),
    "record byte": _chunk(0, lambda a: a.update(record=_flip_hex(a["record"], 40))),
    "record proof": _chunk(0, lambda a: a.update(recordProof=_flip_hex(a["recordProof"], 5))),
    "record proof garbage": _chunk(0, lambda a: a.update(recordProof="0x00")),
    "missing field": _chunk(0, lambda a: a.pop("chunk")),
    "not hex": _chunk(5, lambda a: a.update(chunk="zz")),
}


def test_downloads_verify_and_every_tampering_is_rejected_with_proof_error() -> None:
    chain, _ = small_chain()
    model = download_model(chain, TrustNodeVerifier(chain), "sine-mlp")
    expected = chain.model_state.weights(chain.state(), parse_model(model_json("sine")))
    np.testing.assert_array_equal(model.weights, expected)
    assert model.version == 0
    assert model.bytes_received > 4 * expected.size
    for name, edit in TAMPERS.items():
        node = Tamper(chain, "model_getChunkProof", edit)
        with pytest.raises(ProofError):
            download_model(node, TrustNodeVerifier(node), "sine-mlp")
        assert name  # (the loop names each case in a failure's traceback)
    # a header whose state root was swapped no longer hashes to the block: rejected
    node = Tamper(
        chain, "chain_getHeader", lambda a, _: a.update(stateRoot=_flip_hex(a["stateRoot"]))
    )
    with pytest.raises(ProofError, match="does not hash"):
        download_model(node, TrustNodeVerifier(node), "sine-mlp")


class DistrustingVerifier:
    """A pluggable verifier (the light client's shape) whose trusted root the node cannot meet."""

    def __init__(self, chain: LocalChain) -> None:
        self.chain = chain

    def finalized_block(self) -> Hash32:
        return self.chain.head.hash

    def trusted_state_root(self, block_hash: Hash32) -> Hash32:
        return Hash32(b"\x01" * 32)

    def take_cost(self) -> VerifierCost:
        return VerifierCost()


def test_a_verifier_plugs_in_and_an_untrusted_root_rejects_the_download() -> None:
    chain, _ = small_chain()
    with pytest.raises(ProofError):
        download_model(chain, DistrustingVerifier(chain), "sine-mlp")


def test_device_rejects_a_tampered_download_before_training() -> None:
    chain, fleet = small_chain()
    fleet.setup()
    device = fleet.devices[0]
    node = Tamper(chain, "model_getChunkProof", TAMPERS["chunk byte"])
    with pytest.raises(ProofError):
        device.prepare(node, TrustNodeVerifier(node), "sine-mlp")
    assert device.local is None
    assert device.verified_downloads == 0


# --- the fleet on a local chain -------------------------------------------------------------


def test_local_fleet_improves_held_out_loss_and_verifies_every_download(tmp_path: Any) -> None:
    rounds, devices, heldout = 3, 8, 3
    fleet = local_fleet(
        FleetConfig(devices=devices, rounds=rounds, heldout=heldout, top_p=0.1),
        semantics="zero-fill",
        eta="4/1",
    )
    result = fleet.run()
    assert [r.version for r in result.rows] == list(range(rounds + 1))
    assert result.final < result.initial
    assert all(r.deltas_accepted == devices for r in result.rows[1:])
    assert all(d.verified_downloads == rounds for d in fleet.devices)
    assert all(d.verified_downloads == rounds + 1 for d in fleet.heldout)
    assert all(r.downloads_verified == devices + heldout for r in result.rows[1:])
    row = result.rows[1]
    assert row.coords_sent == math.ceil(0.1 * 1720)
    # Top-10% with gap-coded indices: 2 B a coordinate + the signed envelope (under 240 B), so
    # under 10% of dense float32 (4 B a global parameter)
    assert 2 * 172 < row.bytes_up < 2 * 172 + 240 < 0.1 * 4 * 1720
    assert row.peak_ram_bytes < NRF52840.ram_bytes
    path = tmp_path / "rounds.csv"
    write_csv(result, path)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:6] == ["round", "version", "loss", "bytes_up", "bytes_down", "energy_j"]
    assert len(path.read_text().splitlines()) == rounds + 2


def test_energy_and_bytes_accounting_is_consistent() -> None:
    cost = RoundCost(
        bytes_up=1000, bytes_down=9000, macs=100_000, hashed_bytes=9000, signatures=1
    ).price(NRF52840)
    p = NRF52840
    assert cost.energy_j == pytest.approx(
        cost.energy_radio_j + cost.energy_compute_j + cost.energy_crypto_j
    )
    assert p.tx_joule_per_byte == pytest.approx(153.6e-9)
    assert p.rx_joule_per_byte == pytest.approx(150.24e-9)
    assert p.on_air(244) == 244 + 21
    assert p.on_air(245) == 245 + 42
    assert p.on_air(0) == 0
    assert cost.energy_radio_j == pytest.approx(
        p.on_air(1000) * p.tx_joule_per_byte + p.on_air(9000) * p.rx_joule_per_byte
    )
    assert cost.energy_compute_j == pytest.approx(100_000 * 4 * 2e-3 * 3 / 64e6)
    total = cost + cost
    assert total.bytes_up == 2000
    assert total.energy_j == pytest.approx(2 * cost.energy_j)
    # a device's round: uplink is exactly its encoded transaction, downlink its verified bytes
    chain, fleet = small_chain()
    fleet.setup()
    device = fleet.devices[0]
    prepared = device.prepare(chain, TrustNodeVerifier(chain), "sine-mlp")
    submit = device.encode(prepared, prepared.result.delta)
    tx = device.sign(submit, fleet.genesis, 0)
    spent = device.finish(prepared, submit, tx)
    assert spent.bytes_up == len(tx.encode())
    assert spent.bytes_down > prepared.model.bytes_received  # + the header
    assert spent.macs == prepared.result.macs
    assert spent.signatures == 1
    plan = memory_plan(
        num_params=1761,
        num_global=1720,
        widths=(1, 40, 40, 1),
        batch=1,
        shots=10,
        chunk_bytes=1100,
        proof_bytes=0,
        record_bytes=900,
        selected=172,
        tx_bytes=1081,
    )
    assert plan.peak == max(plan.download, plan.train, plan.submit) < p.ram_bytes


def test_cli_registers_client_run_and_unreachable_node_is_one_clear_error() -> None:
    args = build_parser().parse_args(
        ["client", "run", "--task", "digits", "--devices", "4", "--attack", "alie"]
    )
    assert args.task == "digits"
    assert args.malicious == 0.2
    assert args.func.__name__ == ("cmd_client_run")
    assert callable(register)
    with pytest.raises(NodeUnreachable, match="cannot reach a node"):
        JsonRpc("http://127.0.0.1:9", timeout=2).call("chain_getGenesisHash")


def test_local_chain_rejects_tampered_transactions_like_a_node() -> None:
    chain, fleet = small_chain()
    fleet.setup()
    device = fleet.devices[0]
    prepared = device.prepare(chain, TrustNodeVerifier(chain), "sine-mlp")
    submit = device.encode(prepared, prepared.result.delta)
    tx = device.sign(submit, fleet.genesis, 0)
    raw = bytearray(tx.encode())
    raw[-5] ^= 0x01  # inside the signature
    from deltachain.client.rpc import RpcFailed

    with pytest.raises(RpcFailed, match="invalid transaction"):
        chain.call("author_submitExtrinsic", "0x" + raw.hex())
    spec = local_spec([model_json("sine")], [])
    assert LocalChain(spec).call("model_list") == ["sine-mlp"]


def test_local_fleet_with_commit_reveal_commits_then_reveals() -> None:
    """A commit-reveal model: every device commits, holds its delta through the commit
    window, reveals; the rounds aggregate every reveal and cost one more signed transaction."""
    plain = local_fleet(FleetConfig(devices=4, rounds=2, heldout=1, seed=3)).run()
    fleet = local_fleet(FleetConfig(devices=4, rounds=2, heldout=1, seed=3), commit_reveal=True)
    result = fleet.run()
    assert isinstance(fleet.node, LocalChain)
    chain = fleet.node
    assert [row.version for row in result.rows[1:]] == [1, 2]
    assert all(row.deltas_accepted == 4 for row in result.rows[1:])
    for version in (1, 2):
        prov = chain.call("model_getProvenance", fleet.config.model_id, version)
        assert prov["commitReveal"] is True
        assert prov["unrevealed"] == []
        assert len(prov["deltas"]) == 4
    # the same deltas (same seeds), so the same weights; one commitment (≈ 240 B) more uplink
    assert [r.quality for r in result.rows] == [r.quality for r in plain.rows]
    extra = result.rows[1].bytes_up - plain.rows[1].bytes_up
    assert 200 < extra < 300
    assert result.rows[1].energy_j > plain.rows[1].energy_j
