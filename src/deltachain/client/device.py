"""One learning device: verified download, Reptile inner loop, Top-P% + int8, sign, submit.

A round on a device (TinyMetaFed-style federated Reptile, brief §9):

1. download the global model and verify every chunk (:func:`~.verify.download_model`);
2. partial local reconstruction: the model's *local* layers never come from the chain after the
   first download -- the device keeps its own copy across rounds, initialised from genesis
   (local layers never change on chain, so the first download *is* genesis for them);
3. Reptile inner loop: ``K`` fresh samples from the device's stream, one pass, ``k`` SGD steps
   on ``K/k``-sample minibatches (gradient-norm clipping keeps a tiny device stable);
4. the Reptile direction ``delta = adapted − global`` on the **global** coordinates only;
5. Top-P% selection + int8 with a power-of-two exponent (``quantize_top_p``), then a signed
   ``model_state.submit_delta`` carrying samples, lossPre and lossPost in micro-units.

Malicious devices (``attack``) run the same steps and then corrupt their delta before step 5:
``signflip`` (−delta), ``scale`` (×100), ``gaussian`` (noise with the delta's norm), ``alie``
("a little is enough", Baruch et al. 2019: mean − z·std of the honest deltas when the attackers
know them, else a strong negative shift of their own).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import numpy as np

from deltachain import codec
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.keys import Keypair
from deltachain.model_state.delta import (
    LOSS_SCALE,
    SALT_BYTES,
    CommitDelta,
    SubmitDelta,
    delta_commitment,
    quantize_top_p,
)
from deltachain.primitives.transaction import SignedTransaction, sign_transaction

from .model import MLP, to_float
from .profile import NRF52840, DeviceProfile, RoundCost, memory_plan
from .rpc import Caller
from .tasks import Batch, DeviceData
from .verify import VerifiedModel, Verifier, download_model

ATTACKS = ("signflip", "scale", "gaussian", "alie")
SCALE_FACTOR = 100.0
ALIE_FALLBACK_SIGMAS = 3.0


@dataclass(frozen=True)
class Hyper:
    shots: int = 10
    inner_steps: int = 10
    inner_lr: float = 0.02
    clip: float = 1.0
    top_p: float = 0.1

    def __post_init__(self) -> None:
        if self.shots < 1 or self.inner_steps < 1:
            raise ValueError("shots and inner steps must be at least 1")
        if not 0 < self.top_p <= 1:
            raise ValueError("top-p must be in (0, 1]")

    @property
    def batch(self) -> int:
        return -(-self.shots // min(self.inner_steps, self.shots))


def adapt(mlp: MLP, params: np.ndarray, batch: Batch, hyper: Hyper) -> tuple[np.ndarray, int]:
    """One online pass over ``batch`` in ``k`` minibatch SGD steps; returns (params, MACs)."""
    p = params.copy()
    n = len(batch)
    macs = 0
    for part in np.array_split(np.arange(n), min(hyper.inner_steps, n)):
        _, grad = mlp.loss_and_grad(p, batch.x[part], batch.y[part])
        norm = float(np.linalg.norm(grad))
        if hyper.clip and norm > hyper.clip:
            grad *= hyper.clip / norm
        p -= np.asarray(hyper.inner_lr, dtype=p.dtype) * grad
        macs += mlp.step_macs(part.size)
    return p, macs


def quality(mlp: MLP, params: np.ndarray, batch: Batch, metric: str) -> float:
    """Loss (regression) or accuracy (classification) of ``params`` on ``batch``."""
    if metric == "accuracy":
        return float(np.mean(mlp.predict(params, batch.x) == batch.y))
    return mlp.loss(params, batch.x, batch.y)


@dataclass
class TrainResult:
    delta: np.ndarray  # float32, full length, zero on local coordinates
    loss_pre: float
    loss_post: float
    samples: int
    macs: int


@dataclass
class Prepared:
    """A device's round up to (not including) quantization: what the fleet coordinates on."""

    model: VerifiedModel
    result: TrainResult
    cost: RoundCost = field(default_factory=RoundCost)


class Device:
    def __init__(
        self,
        index: int,
        data: DeviceData,
        mlp: MLP,
        hyper: Hyper,
        key: Keypair | None = None,
        attack: str | None = None,
        profile: DeviceProfile = NRF52840,
        seed: int = 0,
    ) -> None:
        if attack is not None and attack not in ATTACKS:
            raise ValueError(f"unknown attack {attack!r}: choose one of {', '.join(ATTACKS)}")
        self.index = index
        self.data = data
        self.mlp = mlp
        self.hyper = hyper
        self.key = key
        self.attack = attack
        self.profile = profile
        self.mask = mlp.spec.global_mask()
        self.local: np.ndarray | None = None  # this device's local layers (float32)
        self.verified_downloads = 0
        self._rng = np.random.default_rng(np.random.SeedSequence([seed, 5, index]))

    # --- learning (no chain) -----------------------------------------------------------

    def compose(self, global_params: np.ndarray) -> np.ndarray:
        """The device's model: the downloaded global layers + its own local layers."""
        params = np.array(global_params, dtype=np.float32)
        if self.local is None:
            self.local = params[~self.mask].copy()  # genesis values: local layers never move
        params[~self.mask] = self.local
        return params

    def train(self, global_params: np.ndarray) -> TrainResult:
        """Reptile inner loop on this round's fresh samples; keeps the adapted local layers."""
        params = self.compose(global_params)
        batch = self.data.next_batch(self.hyper.shots)
        loss_pre = self.mlp.loss(params, batch.x, batch.y)
        adapted, macs = adapt(self.mlp, params, batch, self.hyper)
        loss_post = self.mlp.loss(adapted, batch.x, batch.y)
        macs += 2 * self.mlp.forward_macs(len(batch))
        self.local = adapted[~self.mask].copy()
        delta = np.where(self.mask, adapted - params, np.float32(0)).astype(np.float32)
        return TrainResult(delta, loss_pre, loss_post, len(batch), macs)

    def corrupt(
        self, delta: np.ndarray, honest: tuple[np.ndarray, np.ndarray, float] | None = None
    ) -> np.ndarray:
        """What a malicious device sends instead of ``delta`` (honest devices: unchanged).

        ``honest`` = (per-coordinate mean, std, z) of this round's honest deltas, for ALIE.
        """
        mask = self.mask
        if self.attack is None:
            return delta
        if self.attack == "signflip":
            out = -delta
        elif self.attack == "scale":
            out = delta * np.float32(SCALE_FACTOR)
        elif self.attack == "gaussian":
            noise = self._rng.standard_normal(delta.size).astype(np.float32) * mask
            scale = float(np.linalg.norm(delta)) / max(float(np.linalg.norm(noise)), 1e-30)
            out = noise * np.float32(scale)
        elif honest is not None:  # alie with knowledge of the honest deltas
            mean, std, z = honest
            out = (mean - z * std).astype(np.float32)
        else:  # alie without it: a strong negative shift of its own delta
            sigma = float(np.std(delta[mask])) if mask.any() else 0.0
            out = delta - np.float32(ALIE_FALLBACK_SIGMAS * sigma)
        return np.where(mask, out, np.float32(0)).astype(np.float32)

    # --- the chain round ---------------------------------------------------------------

    def prepare(self, node: Caller, verifier: Verifier, model_id: str) -> Prepared:
        """Download + verify the model, then train; raises ProofError on a bad download."""
        model = download_model(node, verifier, model_id)
        vcost = verifier.take_cost()
        self.verified_downloads += 1
        frac = int(model.config["fracBits"])
        result = self.train(to_float(model.weights, frac))
        cost = RoundCost(
            bytes_down=model.bytes_received + vcost.bytes_received,
            hashed_bytes=model.hashed_bytes + vcost.hashed_bytes,
            verifications=vcost.signature_verifications,
            macs=result.macs,
        )
        return Prepared(model, result, cost)

    def encode(self, prepared: Prepared, delta: np.ndarray) -> SubmitDelta:
        """Top-P% + int8 of ``delta`` (global coordinates only), with provenance metrics."""
        spec = self.mlp.spec
        indices, values, exp = quantize_top_p(delta, self.hyper.top_p, spec.frac_bits, self.mask)
        r = prepared.result
        return SubmitDelta(
            prepared.model.model_id,
            prepared.model.version,
            indices,
            values,
            exp,
            r.samples,
            round(r.loss_pre * LOSS_SCALE),
            round(r.loss_post * LOSS_SCALE),
        )

    def sign(self, submit: SubmitDelta, genesis: Hash32, nonce: int) -> SignedTransaction:
        if self.key is None:
            raise ValueError("this device has no key; it cannot sign")
        return sign_transaction(
            self.key, genesis, nonce, "model_state", "submit_delta", submit.to_args()
        )

    def commit(
        self, submit: SubmitDelta, genesis: Hash32, nonce: int
    ) -> tuple[SubmitDelta, SignedTransaction]:
        """Commit-reveal: salt the delta and sign ``commit_delta`` for it. Returns the salted
        delta (sign it as the reveal once the commit window closes) and the commitment."""
        if self.key is None:
            raise ValueError("this device has no key; it cannot sign")
        salted = dataclasses.replace(submit, salt=os.urandom(SALT_BYTES))
        assert salted.salt is not None
        commitment = delta_commitment(salted.delta_args(), salted.salt, self.key.address)
        call = CommitDelta(submit.model, submit.base_version, commitment)
        tx = sign_transaction(
            self.key, genesis, nonce, "model_state", "commit_delta", call.to_args()
        )
        return salted, tx

    def finish(
        self,
        prepared: Prepared,
        submit: SubmitDelta,
        tx: SignedTransaction,
        commit_tx: SignedTransaction | None = None,
    ) -> RoundCost:
        """Complete the round's accounting once the transaction (and, on a commit-reveal
        model, its commitment) is built."""
        cost = prepared.cost
        encoded = len(tx.encode())
        cost.bytes_up = encoded
        cost.signatures = 1
        cost.hashed_bytes += encoded  # Ed25519 hashes the signed payload (SHA-512; same order)
        if commit_tx is not None:  # a second transaction, and the commitment's own hash
            committed = len(commit_tx.encode())
            cost.bytes_up += committed
            cost.signatures += 1
            cost.hashed_bytes += committed + len(codec.encode(submit.delta_args())) + 64
        spec = self.mlp.spec
        plan = memory_plan(
            num_params=spec.num_params,
            num_global=spec.num_global,
            widths=spec.widths,
            batch=self.hyper.batch,
            shots=self.hyper.shots,
            chunk_bytes=prepared.model.largest_chunk_with_proof,
            proof_bytes=0,
            record_bytes=prepared.model.record_with_proof,
            selected=int(submit.indices.size),
            tx_bytes=encoded,
        )
        cost.peak_ram_bytes = plan.peak
        return cost.price(self.profile)
