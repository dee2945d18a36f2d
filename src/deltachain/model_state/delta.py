"""The sparse delta on the wire, and the device-side codec that produces it.

A ``SubmitDelta`` call carries the global-part coordinates a client changed: their indices as
``gaps`` (below), int8 values (packed), and one power-of-two exponent ``exp``: the value of
coordinate i is ``values[i] · 2^exp``. In model units (F fractional bits) that is exactly
``values[i] << (exp + F)``. Metrics (sample count, optional losses in micro-units) ride along for
provenance; they never influence consensus math.

``gaps`` is the strictly increasing index list as unsigned LEB128 varints of the differences:
``indices[0]``, then ``indices[t] - indices[t-1]`` (≥ 1). A Top-P% selection has small gaps, so
almost every coordinate costs 1 byte of index instead of 4 (2 bytes a coordinate with its value).
The decoding is strict, so the encoding is canonical (one byte string per delta): minimal
varints only (no redundant ``0x80`` continuation), at most 5 bytes and a value below 2^32 each,
no truncated varint at the end, no zero gap after the first (that would repeat an index), a
running index below 2^32, and exactly one varint per value.

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
"""A coordinate costs 2 bytes (dense selections) to 6 (gaps over 2^28); widely spread deltas
hit the 768 KiB transaction size limit first."""
MAX_VARINT_LEN = 5
"""An unsigned LEB128 varint below 2^32 needs at most 5 bytes (7 bits each)."""
LOSS_SCALE = 1_000_000
"""Losses travel as integers in micro-units: CBOR on our wire carries no floats."""
_U64 = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1


def encode_gaps(indices: np.ndarray) -> bytes:
    """Strictly increasing uint32 indices → LEB128 varints of their gaps (see module docstring).

    Raises ValueError when ``indices`` is not strictly increasing or not in the uint32 range: a
    device bug, not a wire error.
    """
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size and (int(idx[0]) < 0 or int(idx[-1]) > _U32_MAX):
        raise ValueError("delta indices must be uint32")
    gaps = np.diff(idx, prepend=np.int64(0))
    if idx.size > 1 and int(gaps[1:].min()) < 1:
        raise ValueError("delta indices must be strictly increasing (sorted, no duplicates)")
    gaps = gaps.astype(np.uint64)
    # Number of 7-bit groups per gap (at least one), then every group's byte, in order.
    lengths = np.ones(gaps.size, dtype=np.int64)
    for bits in (7, 14, 21, 28):
        lengths += gaps >= np.uint64(1 << bits)
    owner = np.repeat(np.arange(gaps.size), lengths)
    ends = np.cumsum(lengths)
    group = np.arange(owner.size) - (ends - lengths)[owner]
    out = ((gaps[owner] >> (7 * group).astype(np.uint64)) & np.uint64(0x7F)).astype(np.uint8)
    out[group < lengths[owner] - 1] |= np.uint8(0x80)
    return out.tobytes()


def decode_gaps(raw: bytes, count: int) -> np.ndarray:
    """LEB128 gap bytes holding exactly ``count`` varints → uint32 indices, strictly increasing.

    Vectorised (no per-byte Python loop). Raises InvalidCall on any non-canonical input; the
    caller caps ``len(raw)`` before calling, so nothing allocated here exceeds it.
    """
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size == 0 or data[-1] & 0x80:
        raise InvalidCall("delta gaps are truncated: the last varint has no final byte")
    ends = np.flatnonzero(data < 0x80)  # the final byte of every varint
    if ends.size != count:
        raise InvalidCall(f"delta has {ends.size} gaps but {count} values")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > MAX_VARINT_LEN:
        raise InvalidCall(f"delta gap varint longer than {MAX_VARINT_LEN} bytes")
    if bool(np.any((lengths > 1) & (data[ends] == 0))):
        raise InvalidCall("delta gap varint is not minimal (ends in a zero byte)")
    if bool(np.any(data[ends[lengths == MAX_VARINT_LEN]] > 0x0F)):
        raise InvalidCall("delta gap is over the uint32 range")
    owner = np.repeat(np.arange(count), lengths)
    shift = (7 * (np.arange(data.size) - starts[owner])).astype(np.uint64)
    parts = (data & np.uint8(0x7F)).astype(np.uint64) << shift
    gaps = np.add.reduceat(parts, starts).astype(np.int64)  # each < 2^32: the sum is exact
    if count > 1 and int(gaps[1:].min()) == 0:
        raise InvalidCall("delta indices must be strictly increasing (a zero gap repeats one)")
    indices = np.cumsum(gaps)  # count · 2^32 < 2^63: no int64 overflow
    if int(indices[-1]) > _U32_MAX:
        raise InvalidCall("delta index runs past the uint32 range")
    return indices.astype(np.uint32)


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
            "gaps": encode_gaps(self.indices),
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


_REQUIRED = {"model", "baseVersion", "gaps", "values", "exp", "samples"}
_OPTIONAL = {"lossPre", "lossPost"}


def _uint(args: Mapping[str, Any], key: str) -> int:
    value = args[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
        raise InvalidCall(f"model_state.submit_delta: {key} must be an unsigned integer")
    return value


def decode_submit_delta(args: Mapping[str, Any]) -> SubmitDelta:
    """Shape checks that need no state: types, lengths, the gap varints. Raises InvalidCall.

    Lengths are capped before anything is decoded: ``values`` at ``MAX_DELTA_ENTRIES`` and
    ``gaps`` at ``MAX_VARINT_LEN`` bytes a value.
    """
    keys = set(args)
    if not keys.issuperset(_REQUIRED) or not keys <= _REQUIRED | _OPTIONAL:
        raise InvalidCall(
            "model_state.submit_delta takes model, baseVersion, gaps, values, exp, samples "
            "[, lossPre, lossPost]"
        )
    model, raw_gaps, raw_val, exp = args["model"], args["gaps"], args["values"], args["exp"]
    if not isinstance(model, str):
        raise InvalidCall("model_state.submit_delta: model must be a model id string")
    if not isinstance(raw_gaps, bytes) or not isinstance(raw_val, bytes):
        raise InvalidCall("model_state.submit_delta: gaps and values must be bytes")
    k = len(raw_val)
    if k == 0:
        raise InvalidCall("delta is empty: send at least one coordinate")
    if k > MAX_DELTA_ENTRIES:
        raise InvalidCall(f"delta has {k} coordinates, over the limit of {MAX_DELTA_ENTRIES}")
    if not k <= len(raw_gaps) <= MAX_VARINT_LEN * k:
        raise InvalidCall(f"delta has {len(raw_gaps)} gap bytes for {k} values")
    if not isinstance(exp, int) or isinstance(exp, bool) or not -64 <= exp <= 64:
        raise InvalidCall("delta exp must be a small integer")
    indices = decode_gaps(raw_gaps, k)
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
