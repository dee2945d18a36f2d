"""The sparse delta on the wire, and the device-side codec that produces it.

A ``SubmitDelta`` call carries the global-part coordinates a client changed: sorted unique uint32
indices (little-endian, packed), int8 values (packed), and one power-of-two exponent ``exp``:
the value of coordinate i is ``values[i] · 2^exp``. In model units (F fractional bits) that is
exactly ``values[i] << (exp + F)``. Metrics (sample count, optional losses in micro-units) ride
along for provenance; they never influence consensus math.

``quantize_top_p`` (floats allowed: it runs on the device) turns a float delta into that form.
This module imports only numpy, the codec and the error tree, so light clients can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from deltachain.errors import InvalidCall
from deltachain.model_state.config import MAX_EXP_SHIFT

MAX_DELTA_ENTRIES = 150_000
"""Fits the transaction size limit: 5 bytes a coordinate."""
LOSS_SCALE = 1_000_000
"""Losses travel as integers in micro-units: CBOR on our wire carries no floats."""
_U64 = (1 << 64) - 1


@dataclass(frozen=True)
class SubmitDelta:
    model: str
    base_version: int
    indices: np.ndarray  # uint32, strictly increasing
    values: np.ndarray  # int8
    exp: int
    samples: int
    loss_pre: int | None
    loss_post: int | None

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": self.model,
            "baseVersion": self.base_version,
            "indices": self.indices.astype("<u4").tobytes(),
            "values": self.values.astype(np.int8).tobytes(),
            "exp": self.exp,
            "samples": self.samples,
        }
        if self.loss_pre is not None:
            args["lossPre"] = self.loss_pre
        if self.loss_post is not None:
            args["lossPost"] = self.loss_post
        return args

    def model_units(self, frac_bits: int) -> np.ndarray:
        """Values as int32 fixed point: v << (exp + F), exact (checked at decode)."""
        return self.values.astype(np.int32) << np.int32(self.exp + frac_bits)


_REQUIRED = {"model", "baseVersion", "indices", "values", "exp", "samples"}
_OPTIONAL = {"lossPre", "lossPost"}


def _uint(args: Mapping[str, Any], key: str) -> int:
    value = args[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
        raise InvalidCall(f"model_state.submit_delta: {key} must be an unsigned integer")
    return value


def decode_submit_delta(args: Mapping[str, Any]) -> SubmitDelta:
    """Shape checks that need no state: types, lengths, sortedness. Raises InvalidCall."""
    keys = set(args)
    if not keys.issuperset(_REQUIRED) or not keys <= _REQUIRED | _OPTIONAL:
        raise InvalidCall(
            "model_state.submit_delta takes model, baseVersion, indices, values, exp, samples "
            "[, lossPre, lossPost]"
        )
    model, raw_idx, raw_val, exp = args["model"], args["indices"], args["values"], args["exp"]
    if not isinstance(model, str):
        raise InvalidCall("model_state.submit_delta: model must be a model id string")
    if not isinstance(raw_idx, bytes) or not isinstance(raw_val, bytes):
        raise InvalidCall("model_state.submit_delta: indices and values must be bytes")
    if len(raw_idx) % 4:
        raise InvalidCall("delta indices must be packed uint32 (length a multiple of 4)")
    k = len(raw_idx) // 4
    if k != len(raw_val):
        raise InvalidCall(f"delta has {k} indices but {len(raw_val)} values")
    if k == 0:
        raise InvalidCall("delta is empty: send at least one coordinate")
    if k > MAX_DELTA_ENTRIES:
        raise InvalidCall(f"delta has {k} coordinates, over the limit of {MAX_DELTA_ENTRIES}")
    if not isinstance(exp, int) or isinstance(exp, bool) or not -64 <= exp <= 64:
        raise InvalidCall("delta exp must be a small integer")
    indices = np.frombuffer(raw_idx, dtype="<u4").astype(np.uint32)
    if k > 1 and not bool(np.all(indices[1:] > indices[:-1])):
        raise InvalidCall("delta indices must be strictly increasing (sorted, no duplicates)")
    losses = []
    for key in ("lossPre", "lossPost"):
        value = args.get(key)
        if value is not None and (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not -(1 << 62) <= value <= 1 << 62
        ):
            raise InvalidCall(f"model_state.submit_delta: {key} must be an integer (micro-units)")
        losses.append(value)
    return SubmitDelta(
        model,
        _uint(args, "baseVersion"),
        indices,
        np.frombuffer(raw_val, dtype=np.int8).copy(),
        exp,
        _uint(args, "samples"),
        losses[0],
        losses[1],
    )


def check_exponent(exp: int, frac_bits: int) -> None:
    shift = exp + frac_bits
    if not 0 <= shift <= MAX_EXP_SHIFT:
        raise InvalidCall(
            f"delta exp {exp} out of range for this model: exp + fracBits must be in "
            f"[0, {MAX_EXP_SHIFT}], i.e. exp in [{-frac_bits}, {MAX_EXP_SHIFT - frac_bits}]"
        )


# --- device side (floats allowed) ------------------------------------------------------------


def quantize_top_p(
    delta: np.ndarray, top_p: float, frac_bits: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """Top-P% of coordinates by magnitude → (sorted uint32 indices, int8 values, exponent).

    ``allowed`` (bool mask) restricts selection to the model's global coordinates. The exponent
    is the smallest power of two that fits the largest selected magnitude into int8, clamped to
    what the chain accepts; values round to nearest and saturate.
    """
    if not 0 < top_p <= 1:
        raise ValueError("top_p must be in (0, 1]")
    flat = np.asarray(delta, dtype=np.float64).ravel()
    candidates = np.flatnonzero(allowed) if allowed is not None else np.arange(flat.size)
    k = max(1, math.ceil(top_p * candidates.size))
    magnitudes = np.abs(flat[candidates])
    if k < candidates.size:
        chosen = candidates[np.argpartition(-magnitudes, k - 1)[:k]]
    else:
        chosen = candidates
    chosen = np.sort(chosen).astype(np.uint32)
    selected = flat[chosen]
    peak = float(np.max(np.abs(selected))) if selected.size else 0.0
    exp = math.ceil(math.log2(peak / 127.0)) if peak > 0 else -frac_bits
    exp = min(max(exp, -frac_bits), MAX_EXP_SHIFT - frac_bits)
    values = np.clip(np.rint(selected / 2.0**exp), -128, 127).astype(np.int8)
    return chosen, values, exp


def dequantize(indices: np.ndarray, values: np.ndarray, exp: int, size: int) -> np.ndarray:
    """The float delta a quantized one stands for (for devices and reports)."""
    out = np.zeros(size, dtype=np.float64)
    out[indices] = values.astype(np.float64) * 2.0**exp
    return out
