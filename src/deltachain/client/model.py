"""A tiny numpy MLP laid out exactly like a chain model record, and fixed point ↔ float.

The chain stores a model as a flat vector of int32 fixed-point values with ``fracBits``
fractional bits, in the order of the record's ``config.layers``. This module reads that layout:
layers come in ``(name.w [in, out], name.b [out])`` pairs, each pair a dense layer; hidden
layers use ReLU and the last one is linear (regression) or feeds a softmax (classification).
A layer is ``global`` (aggregated on chain) or ``local`` (stays on the device).

Forward and backward run in the parameters' dtype (float32 on devices; float64 in gradient
checks). MAC counts are exact for the dense products, so the energy model can charge them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deltachain.errors import DeltachainError

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


class ModelMismatch(DeltachainError):
    """The chain's model layout cannot serve this task (not an MLP, or wrong input/output)."""


@dataclass(frozen=True)
class LayerSpec:
    name: str
    shape: tuple[int, ...]
    is_global: bool
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Dense:
    """One dense layer: where its weight matrix ``[in, out]`` and bias ``[out]`` live."""

    name: str
    n_in: int
    n_out: int
    w: LayerSpec
    b: LayerSpec


@dataclass(frozen=True)
class MLPSpec:
    model_id: str
    layers: tuple[LayerSpec, ...]
    dense: tuple[Dense, ...]
    frac_bits: int
    chunk_size: int

    @property
    def num_params(self) -> int:
        return sum(la.size for la in self.layers)

    @property
    def input_dim(self) -> int:
        return self.dense[0].n_in

    @property
    def output_dim(self) -> int:
        return self.dense[-1].n_out

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.input_dim, *(d.n_out for d in self.dense))

    def global_mask(self) -> np.ndarray:
        mask = np.zeros(self.num_params, dtype=bool)
        for la in self.layers:
            if la.is_global:
                mask[la.offset : la.offset + la.size] = True
        return mask

    @property
    def num_global(self) -> int:
        return sum(la.size for la in self.layers if la.is_global)

    def check_task(self, input_dim: int, output_dim: int, task: str) -> None:
        if (self.input_dim, self.output_dim) != (input_dim, output_dim):
            raise ModelMismatch(
                f"model {self.model_id!r} maps {self.input_dim} inputs to {self.output_dim} "
                f"outputs; the {task} task needs {input_dim} → {output_dim}"
            )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MLPSpec:
        """From a model record's ``config`` (or ``model_get``): ``layers`` with name, shape,
        ``global`` (bool) or ``kind`` ("global"/"local"), plus ``id``, ``fracBits``,
        ``chunkSize``. Raises ModelMismatch if the layers are not dense (w, b) pairs."""
        model_id = str(config.get("id", "?"))
        raw = config.get("layers")
        if not isinstance(raw, Sequence) or not raw:
            raise ModelMismatch(f"model {model_id!r} has no layers")
        layers, offset = [], 0
        for la in raw:
            shape = tuple(int(s) for s in la["shape"])
            is_global = bool(la["global"]) if "global" in la else la.get("kind") != "local"
            layers.append(LayerSpec(str(la["name"]), shape, is_global, offset))
            offset += layers[-1].size
        if len(layers) % 2:
            raise ModelMismatch(f"model {model_id!r}: layers must come in (weight, bias) pairs")
        dense: list[Dense] = []
        for w, b in zip(layers[0::2], layers[1::2], strict=True):
            if len(w.shape) != 2 or b.shape != (w.shape[1],):
                raise ModelMismatch(
                    f"model {model_id!r}: {w.name} {list(w.shape)} and {b.name} "
                    f"{list(b.shape)} are not a dense layer's [in, out] weights and [out] bias"
                )
            if dense and dense[-1].n_out != w.shape[0]:
                raise ModelMismatch(
                    f"model {model_id!r}: {w.name} takes {w.shape[0]} inputs but the layer "
                    f"before gives {dense[-1].n_out}"
                )
            dense.append(Dense(w.name.rsplit(".", 1)[0], w.shape[0], w.shape[1], w, b))
        return cls(
            model_id,
            tuple(layers),
            tuple(dense),
            int(config.get("fracBits", 16)),
            int(config.get("chunkSize", 1024)),
        )


# --- fixed point ---------------------------------------------------------------------------


def to_float(weights: np.ndarray, frac_bits: int) -> np.ndarray:
    """int32 fixed point → float32 (exact for |w| < 2^24 units, i.e. small models)."""
    return (np.asarray(weights, dtype=np.float64) / float(1 << frac_bits)).astype(np.float32)


def to_fixed(params: np.ndarray, frac_bits: int) -> np.ndarray:
    """float → int32 fixed point, round half to even, saturating at the int32 range."""
    scaled = np.rint(np.asarray(params, dtype=np.float64) * float(1 << frac_bits))
    return np.clip(scaled, INT32_MIN, INT32_MAX).astype(np.int32)


# --- forward / backward --------------------------------------------------------------------


class MLP:
    """Stateless maths over a flat parameter vector laid out as ``spec`` says."""

    def __init__(self, spec: MLPSpec, loss: str) -> None:
        if loss not in ("mse", "xent"):
            raise ValueError("loss must be mse or xent")
        self.spec = spec
        self.loss_kind = loss
        self._slices = [
            (slice(d.w.offset, d.w.offset + d.w.size), slice(d.b.offset, d.b.offset + d.b.size))
            for d in spec.dense
        ]
        self._shapes = [(d.n_in, d.n_out) for d in spec.dense]

    def _views(self, params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (params[ws].reshape(shape), params[bs])
            for (ws, bs), shape in zip(self._slices, self._shapes, strict=True)
        ]

    def forward(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        h = x.astype(params.dtype, copy=False)
        views = self._views(params)
        for i, (w, b) in enumerate(views):
            h = h @ w + b
            if i < len(views) - 1:
                h = np.maximum(h, 0)
        return h

    def loss(self, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        return self._loss_and_dout(self.forward(params, x), y)[0]

    def _loss_and_dout(self, out: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        n = out.shape[0]
        if self.loss_kind == "mse":
            diff = out - y.astype(out.dtype, copy=False)
            return float(np.mean(diff * diff)), (2.0 / diff.size) * diff
        shifted = out - out.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        probs = exp / exp.sum(axis=1, keepdims=True)
        labels = y.astype(np.int64)
        loss = float(-np.mean(np.log(probs[np.arange(n), labels] + 1e-12)))
        grad = probs.copy()
        grad[np.arange(n), labels] -= 1.0
        return loss, grad / n

    def loss_and_grad(
        self, params: np.ndarray, x: np.ndarray, y: np.ndarray
    ) -> tuple[float, np.ndarray]:
        """Mean loss over the batch and its gradient (flat, same layout and dtype as params)."""
        views = self._views(params)
        acts = [x.astype(params.dtype, copy=False)]
        for i, (w, b) in enumerate(views):
            z = acts[-1] @ w + b
            acts.append(np.maximum(z, 0) if i < len(views) - 1 else z)
        loss, delta = self._loss_and_dout(acts[-1], y)
        grad = np.zeros_like(params)
        for i in range(len(views) - 1, -1, -1):
            ws, bs = self._slices[i]
            w, _ = views[i]
            grad[ws] = (acts[i].T @ delta).ravel()
            grad[bs] = delta.sum(axis=0)
            if i:
                delta = (delta @ w.T) * (acts[i] > 0)
        return loss, grad

    def predict(self, params: np.ndarray, x: np.ndarray) -> np.ndarray:
        labels: np.ndarray = np.argmax(self.forward(params, x), axis=1)
        return labels

    # --- cost model ----------------------------------------------------------------------

    def forward_macs(self, batch: int) -> int:
        return batch * sum(d.n_in * d.n_out for d in self.spec.dense)

    def backward_macs(self, batch: int) -> int:
        """Weight gradients for every layer, input gradients for all but the first."""
        dense = self.spec.dense
        return batch * (
            sum(d.n_in * d.n_out for d in dense) + sum(d.n_in * d.n_out for d in dense[1:])
        )

    def step_macs(self, batch: int) -> int:
        """One SGD step: forward + backward + the update (one MAC per parameter)."""
        return self.forward_macs(batch) + self.backward_macs(batch) + self.spec.num_params
