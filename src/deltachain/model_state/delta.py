"""The sparse delta on the wire, and the device-side codec that produces it.

A ``SubmitDelta`` call carries the global-part coordinates a client changed: their indices as
``gaps`` (below), int8 values (packed), and one power-of-two exponent ``exp``: the value of
coordinate i is ``values[i] · 2^exp``. In model units (F fractional bits) that is exactly
``values[i] << (exp + F)``. Metrics (sample count, optional losses in micro-units) ride along for
provenance; they never influence consensus math.

``gaps`` is the strictly increasing index list as one Rice (Golomb, power-of-two) code. The
coded values are ``indices[0]``, then every gap minus one, ``indices[t] - indices[t-1] - 1`` (≥ 0,
so no value can repeat an index). Each value v is split into a quotient ``v >> k``, sent in unary
(that many 0 bits, then a 1), and ``k`` remainder bits. The bit string, most significant bit
first, is: ``k`` in 5 bits, then all ``count`` remainders (k bits each, big-endian), then all
``count`` unary quotients, then zero bits up to the next byte. Keeping the remainders and the
quotients in two blocks is what lets numpy decode it without a per-value loop. A Top-P% selection
has small gaps, so an index costs about 4 bits at Top-P 10-20% (3.6 is the entropy of a random
20% subset) instead of 8 as an LEB128 varint.

The decoding is strict, so the encoding is canonical (one byte string per delta). ``k`` must be
the smallest one that minimises the code length: that length, ``n·(1 + k) + Σ (v >> k)``, is
convex in k (the step from k to k + 1 is ``n − Σ ceil((v >> k) / 2)``, which never decreases), so
it suffices to check that k − 1 gives a strictly longer code and k + 1 one at least as long. The
code must hold exactly ``count`` quotients, end in fewer than 8 zero padding bits (no trailing
bytes, no set padding bit, no truncation), and every index must stay below 2^32. With that k, a
value costs at most 35 bits (k = ⌊log2(2^32 / n)⌋ already gives n·(1 + k) + 2n), which bounds
``gaps`` at ``max_gap_bytes(n) = 5·n + 1`` before decoding.

``quantize_top_p`` (floats allowed: it runs on the device) turns a float delta into that form.
It imports only numpy, the codec, hashing and the error tree, so light clients can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deltachain import codec
from deltachain.crypto.hashing import Hash32, tagged_hash
from deltachain.errors import InvalidCall
from deltachain.model_state.config import MAX_EXP_SHIFT

MAX_DELTA_ENTRIES = 150_000
"""A coordinate costs ≈ 1.5 bytes at Top-P ≥ 5% and at most 6 (a value and a 35-bit index
code): widely spread deltas hit the 768 KiB transaction size limit first."""
RICE_K_BITS = 5
"""The Rice parameter ``k`` (0-31) travels in the first 5 bits of ``gaps``."""
LOSS_SCALE = 1_000_000
"""Losses travel as integers in micro-units: CBOR on our wire carries no floats."""
_U64 = (1 << 64) - 1
_U32_MAX = (1 << 32) - 1
_MAX_K = (1 << RICE_K_BITS) - 1


def max_gap_bytes(count: int) -> int:
    """The cap on ``len(gaps)`` for ``count`` indices, checked before decoding (docstring)."""
    return 5 * count + 1


def _rice_values(indices: np.ndarray) -> np.ndarray:
    """int64 indices → the coded values: the first index, then each gap minus one."""
    values = np.diff(indices, prepend=np.int64(-1)) - 1
    values[0] = indices[0]
    return values


def _rice_length(values: np.ndarray, k: int) -> int:
    """Bits of the code without the header: per value a terminator, k remainder bits and q 0s."""
    return values.size * (1 + k) + int(np.sum(values >> np.int64(k)))


def rice_parameter(values: np.ndarray) -> int:
    """The canonical k for these coded values: the smallest shortest (brute force)."""
    lengths = [_rice_length(values, k) for k in range(_MAX_K + 1)]
    return lengths.index(min(lengths))


def encode_gaps(indices: np.ndarray) -> bytes:
    """Strictly increasing uint32 indices → their canonical Rice code (see module docstring).

    No indices encode as no bytes (which the chain rejects as an empty delta). Raises ValueError
    when ``indices`` is not strictly increasing or not in the uint32 range: a device bug, not a
    wire error.
    """
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0:
        return b""
    if int(idx.min()) < 0 or int(idx.max()) > _U32_MAX:
        raise ValueError("delta indices must be uint32")
    if idx.size > 1 and int(np.diff(idx).min()) < 1:
        raise ValueError("delta indices must be strictly increasing (sorted, no duplicates)")
    values = _rice_values(idx)
    k = rice_parameter(values)
    n = values.size
    quotients = values >> np.int64(k)
    unary_at = RICE_K_BITS + n * k
    bits = np.zeros(unary_at + n + int(quotients.sum()), dtype=np.uint8)
    bits[:RICE_K_BITS] = np.unpackbits(np.uint8(k << (8 - RICE_K_BITS)))[:RICE_K_BITS]
    if k:  # the low k bits of each value, big-endian: the last k of its 32
        be32 = np.unpackbits(values.astype(">u4").view(np.uint8).reshape(n, 4), axis=1)
        bits[RICE_K_BITS:unary_at] = be32[:, 32 - k :].ravel()
    bits[unary_at + np.cumsum(quotients + 1) - 1] = 1  # q zeros, then the terminating one
    return np.packbits(bits).tobytes()  # pads the last byte with zero bits


def decode_gaps(raw: bytes, count: int) -> np.ndarray:
    """The Rice code of exactly ``count`` indices → uint32 indices, strictly increasing.

    Vectorised (no per-bit Python loop). Raises InvalidCall on any non-canonical input. The
    caller caps ``len(raw)`` at ``max_gap_bytes(count)``; the largest arrays here are one byte a
    bit of ``raw`` and 32 bytes a value.
    """
    if count < 1:
        raise InvalidCall("delta is empty: send at least one coordinate")
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
    if bits.size < RICE_K_BITS:
        raise InvalidCall("delta gaps are truncated: no Rice parameter")
    k = int(np.packbits(bits[:RICE_K_BITS])[0]) >> (8 - RICE_K_BITS)
    unary_at = RICE_K_BITS + count * k
    if bits.size < unary_at + count:
        raise InvalidCall(f"delta gaps are truncated: {len(raw)} bytes for {count} values")
    # Count the quotients' terminating ones before listing them, so a stream of set bits cannot
    # make an index array 8 bytes a bit.
    found = int(np.count_nonzero(bits[unary_at:]))
    if found < count:
        raise InvalidCall(f"delta gaps hold {found} codes but {count} values")
    if found > count:  # extra ones: inside the last byte they are padding, else more codes
        if np.count_nonzero(bits[unary_at : bits.size - 8]) < count:
            raise InvalidCall("delta gaps have a padding bit set after the last code")
        raise InvalidCall(f"delta gaps hold {found} codes but {count} values")
    ends = np.flatnonzero(bits[unary_at:])
    if bits.size - (unary_at + int(ends[-1]) + 1) >= 8:
        raise InvalidCall("delta gaps have trailing bytes after the last code")
    quotients = np.diff(ends, prepend=np.int64(-1)) - 1
    values = quotients << np.int64(k)  # Σ quotients < 8·len(raw): no int64 overflow
    if k:
        be32 = np.zeros((count, 32), dtype=np.uint8)
        be32[:, 32 - k :] = bits[RICE_K_BITS:unary_at].reshape(count, k)
        values |= np.packbits(be32, axis=1).view(">u4").ravel().astype(np.int64)
    indices = np.cumsum(values) + np.arange(count)
    if int(indices[-1]) > _U32_MAX:
        raise InvalidCall("delta index runs past the uint32 range")
    length = _rice_length(values, k)
    if (k > 0 and _rice_length(values, k - 1) <= length) or (
        k < _MAX_K and _rice_length(values, k + 1) < length
    ):
        raise InvalidCall(f"delta gaps use Rice parameter {k}, not the canonical (smallest best)")
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
    wire_gaps: bytes | None = field(default=None, compare=False, repr=False)
    """The canonical Rice code it was decoded from, so storing it does not encode it again."""
    salt: bytes | None = None
    """On a commit-reveal model: the 32-byte salt that opens this sender's commitment."""

    def delta_args(self) -> dict[str, Any]:
        """The wire arguments without the salt: what a commitment binds."""
        args = self.to_args()
        args.pop("salt", None)
        return args

    def to_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {
            "model": self.model,
            "baseVersion": self.base_version,
            "gaps": self.wire_gaps if self.wire_gaps is not None else encode_gaps(self.indices),
            "values": self.values.astype(np.int8).tobytes(),
            "exp": self.exp,
            "samples": self.samples,
        }
        if self.loss_pre is not None:
            args["lossPre"] = self.loss_pre
        if self.loss_post is not None:
            args["lossPost"] = self.loss_post
        if self.salt is not None:
            args["salt"] = self.salt
        return args

    def model_units(self, frac_bits: int) -> np.ndarray:
        """Values as int32 fixed point: v << (exp + F), exact (checked at decode)."""
        return self.values.astype(np.int32) << np.int32(self.exp + frac_bits)


_REQUIRED = {"model", "baseVersion", "gaps", "values", "exp", "samples"}
_OPTIONAL = {"lossPre", "lossPost", "salt"}
SALT_BYTES = 32
COMMIT_TAG = b"deltachain/commit-delta/v1"


def delta_commitment(delta_args: Mapping[str, Any], salt: bytes, sender: bytes) -> Hash32:
    """tagged_hash(canonical CBOR of the delta's arguments (no salt) ‖ salt ‖ sender): binding
    the sender is what makes a copied delta useless to anyone else."""
    return tagged_hash(COMMIT_TAG, codec.encode(dict(delta_args)), salt, sender)


@dataclass(frozen=True)
class CommitDelta:
    """``model_state.commit_delta``: the promise of a delta, opened later by its reveal."""

    model: str
    base_version: int
    commitment: Hash32

    def to_args(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "baseVersion": self.base_version,
            "commitment": self.commitment,
        }


def decode_commit_delta(args: Mapping[str, Any]) -> CommitDelta:
    """Shape checks of a commitment; raises InvalidCall."""
    if set(args) != {"model", "baseVersion", "commitment"}:
        raise InvalidCall("model_state.commit_delta takes model, baseVersion, commitment")
    model, commitment = args["model"], args["commitment"]
    if not isinstance(model, str):
        raise InvalidCall("model_state.commit_delta: model must be a model id string")
    if not isinstance(commitment, bytes) or len(commitment) != 32:
        raise InvalidCall("model_state.commit_delta: commitment must be 32 bytes")
    version = args["baseVersion"]
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= _U64:
        raise InvalidCall("model_state.commit_delta: baseVersion must be an unsigned integer")
    return CommitDelta(model, version, Hash32(commitment))


def _uint(args: Mapping[str, Any], key: str) -> int:
    value = args[key]
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U64:
        raise InvalidCall(f"model_state.submit_delta: {key} must be an unsigned integer")
    return value


def decode_submit_delta(args: Mapping[str, Any]) -> SubmitDelta:
    """Shape checks that need no state: types, lengths, the index code. Raises InvalidCall.

    Lengths are capped before anything is decoded: ``values`` at ``MAX_DELTA_ENTRIES`` and
    ``gaps`` at ``max_gap_bytes``.
    """
    keys = set(args)
    if not keys.issuperset(_REQUIRED) or not keys <= _REQUIRED | _OPTIONAL:
        raise InvalidCall(
            "model_state.submit_delta takes model, baseVersion, gaps, values, exp, samples "
            "[, lossPre, lossPost, salt]"
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
    if len(raw_gaps) > max_gap_bytes(k):
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
    salt = args.get("salt")
    if salt is not None and (not isinstance(salt, bytes) or len(salt) != SALT_BYTES):
        raise InvalidCall(f"model_state.submit_delta: salt must be {SALT_BYTES} bytes")
    return SubmitDelta(
        model,
        _uint(args, "baseVersion"),
        indices,
        np.frombuffer(raw_val, dtype=np.int8).copy(),
        exp,
        _uint(args, "samples"),
        losses[0],
        losses[1],
        raw_gaps,  # decode_gaps accepted only the canonical code, so this is what encode gives
        salt,
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
