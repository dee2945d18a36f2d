"""Model registry entries from genesis: parsed once into a typed, validated ``ModelConfig``.

Everything that reaches consensus is an integer or a rational ``num/den``; floats never appear.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deltachain.errors import ChainSpecError
from deltachain.model_state.aggregate import round_half_even_div

ZERO_FILL = "zero-fill"
PRESENT_QUORUM = "present-quorum"
SEMANTICS = (ZERO_FILL, PRESENT_QUORUM)

MAX_PARAMS = 1 << 24
MAX_CLIENTS_PER_ROUND = 4096
MAX_FRAC_BITS = 24
MAX_EXP_SHIFT = 23
"""A delta value v·2^e becomes v << (e + F) model units; e + F ≤ 23 keeps |value| ≤ 2^30."""
MAX_ETA_TERM = 1 << 16
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Rational:
    num: int
    den: int

    def __str__(self) -> str:
        return f"{self.num}/{self.den}"


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple[int, ...]
    is_global: bool
    init_std: Rational | None

    @functools.cached_property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class ModelConfig:
    id: str
    layers: tuple[Layer, ...]
    frac_bits: int
    chunk_size: int
    semantics: str
    trim_beta: Rational
    eta: Rational
    round_len: int
    min_deltas: int
    max_deltas: int
    staleness: int
    init: Mapping[str, Any]
    commit_reveal: bool = False
    """Deltas count only when revealed after a commitment made in the commit window."""
    commit_len: int = 0
    """The commit window: the first ``commit_len`` blocks of a round (0 when off)."""

    @functools.cached_property
    def num_params(self) -> int:
        return sum(layer.size for layer in self.layers)

    @property
    def num_chunks(self) -> int:
        return -(-self.num_params // self.chunk_size)

    def global_ranges(self) -> list[tuple[int, int]]:
        """[start, end) of every global layer in the flat parameter vector."""
        return list(self._global_ranges)

    @functools.cached_property
    def _global_ranges(self) -> tuple[tuple[int, int], ...]:
        ranges, offset = [], 0
        for layer in self.layers:
            if layer.is_global:
                ranges.append((offset, offset + layer.size))
            offset += layer.size
        return tuple(ranges)

    def global_mask(self) -> np.ndarray:
        mask = np.zeros(self.num_params, dtype=bool)
        for start, end in self.global_ranges():
            mask[start:end] = True
        return mask

    def trimmed(self, n: int) -> int:
        """f = floor(beta · n): how many values are trimmed from each side with n deltas."""
        return n * self.trim_beta.num // self.trim_beta.den

    def to_obj(self) -> dict[str, Any]:
        """Canonical form stored in the model record (CBOR: ints and strings only)."""
        return {
            "id": self.id,
            "layers": [
                {"name": la.name, "shape": list(la.shape), "global": la.is_global}
                for la in self.layers
            ],
            "fracBits": self.frac_bits,
            "chunkSize": self.chunk_size,
            "aggregation": self.semantics,
            "trimBeta": str(self.trim_beta),
            "eta": str(self.eta),
            "roundLen": self.round_len,
            "minDeltas": self.min_deltas,
            "maxDeltas": self.max_deltas,
            "staleness": self.staleness,
            # Only when on: a model without it keeps the record (and state root) it always had.
            **({"commitReveal": True, "commitLen": self.commit_len} if self.commit_reveal else {}),
        }


def _err(model: str, message: str) -> ChainSpecError:
    return ChainSpecError(f"chain spec: model {model!r}: {message}")


def parse_rational(value: Any, model: str, what: str) -> Rational:
    """Accept "num/den" or an integer; floats are refused so genesis is exact."""
    if isinstance(value, int) and not isinstance(value, bool):
        num, den = value, 1
    elif isinstance(value, str) and re.fullmatch(r"\d+/\d+", value.strip()):
        num, den = (int(p) for p in value.strip().split("/"))
    else:
        raise _err(model, f'{what} must be a rational like "1/10" (not a float), got {value!r}')
    if den <= 0 or num < 0:
        raise _err(model, f"{what} must be a non-negative rational with a positive denominator")
    return Rational(num, den)


def _int(
    obj: Mapping[str, Any], key: str, model: str, lo: int, hi: int, default: int | None = None
) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _err(model, f"{key} must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def parse_model(obj: Any) -> ModelConfig:
    """Validate one genesis model entry; raises ChainSpecError naming the model and field."""
    if not isinstance(obj, Mapping):
        raise ChainSpecError("chain spec: each model must be an object")
    model_id = obj.get("id")
    if not isinstance(model_id, str) or not _ID_RE.match(model_id):
        raise ChainSpecError(f"chain spec: model id {model_id!r} must match {_ID_RE.pattern}")
    raw_layers = obj.get("layers")
    if not isinstance(raw_layers, list | tuple) or not raw_layers:
        raise _err(model_id, "layers must be a non-empty list")
    layers, names = [], set()
    for raw in raw_layers:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str):
            raise _err(model_id, "each layer needs a name")
        shape = raw.get("shape")
        if (
            not isinstance(shape, list | tuple)
            or not shape
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise _err(
                model_id, f"layer {raw['name']!r}: shape must be a list of positive integers"
            )
        kind = raw.get("kind", "global")
        if kind not in ("global", "local"):
            raise _err(model_id, f"layer {raw['name']!r}: kind must be global or local")
        if raw["name"] in names:
            raise _err(model_id, f"duplicate layer {raw['name']!r}")
        names.add(raw["name"])
        std = raw.get("initStd")
        layers.append(
            Layer(
                raw["name"],
                tuple(shape),
                kind == "global",
                None if std is None else parse_rational(std, model_id, "initStd"),
            )
        )
    if not any(la.is_global for la in layers):
        raise _err(model_id, "at least one layer must be global")
    semantics = obj.get("aggregation", PRESENT_QUORUM)
    if semantics not in SEMANTICS:
        raise _err(model_id, f"aggregation must be one of {', '.join(SEMANTICS)}")
    beta = parse_rational(obj.get("trimBeta", "1/10"), model_id, "trimBeta")
    if 2 * beta.num >= beta.den:
        # beta < 1/2 is exactly what makes n ≥ 2f + 1 hold for every n (n − 2⌊βn⌋ ≥ n(1 − 2β) > 0),
        # so no round size can trim away every value.
        raise _err(model_id, "trimBeta must be below 1/2")
    eta = parse_rational(obj.get("eta", 1), model_id, "eta")
    if not (1 <= eta.num <= MAX_ETA_TERM and 1 <= eta.den <= MAX_ETA_TERM):
        raise _err(model_id, f"eta numerator and denominator must be in [1, {MAX_ETA_TERM}]")
    config = ModelConfig(
        id=model_id,
        layers=tuple(layers),
        frac_bits=_int(obj, "fracBits", model_id, 0, MAX_FRAC_BITS, 16),
        chunk_size=_int(obj, "chunkSize", model_id, 1, 1 << 16, 1024),
        semantics=semantics,
        trim_beta=beta,
        eta=eta,
        round_len=_int(obj, "roundLen", model_id, 1, 1 << 20, 10),
        min_deltas=_int(obj, "minDeltas", model_id, 1, MAX_CLIENTS_PER_ROUND, 3),
        max_deltas=_int(obj, "maxDeltas", model_id, 1, MAX_CLIENTS_PER_ROUND, 100),
        staleness=_int(obj, "staleness", model_id, 0, 1 << 16, 0),
        init=obj.get("init", {"kind": "zeros"}),
    )
    commit_reveal = obj.get("commitReveal", False)
    if not isinstance(commit_reveal, bool):
        raise _err(model_id, f"commitReveal must be true or false, got {commit_reveal!r}")
    if commit_reveal:
        if config.round_len < 2:
            raise _err(model_id, "commitReveal needs roundLen ≥ 2 (a commit and a reveal block)")
        commit_len = _int(
            obj, "commitLen", model_id, 1, config.round_len - 1, max(1, config.round_len // 2)
        )
        config = dataclasses.replace(config, commit_reveal=True, commit_len=commit_len)
    elif "commitLen" in obj:
        raise _err(model_id, "commitLen needs commitReveal: true")
    if config.num_params > MAX_PARAMS:
        raise _err(model_id, f"{config.num_params} parameters exceed the limit of {MAX_PARAMS}")
    if config.max_deltas < config.min_deltas:
        raise _err(model_id, "maxDeltas must be at least minDeltas")
    initial_weights(config)  # validate the init section now, not at first use
    return config


def _shake_normal(seed: int, layer_index: int, size: int) -> np.ndarray:
    """Approximately standard-normal int64 values in 2^-24 units, from integers only.

    Irwin–Hall: the sum of 12 uniforms on [0, 1) minus 6 has mean 0 and variance 1. Uniforms are
    24-bit integers from SHAKE-256(seed, layer): exact, so every node derives identical weights.
    """
    stream = hashlib.shake_256(f"deltachain/init/{seed}/{layer_index}".encode()).digest(
        size * 12 * 3
    )
    raw = np.frombuffer(stream, dtype=np.uint8).reshape(size, 12, 3).astype(np.int64)
    uniforms = raw[..., 0] | (raw[..., 1] << 8) | (raw[..., 2] << 16)  # [0, 2^24)
    normal: np.ndarray = uniforms.sum(axis=1) - 6 * (1 << 24)
    return normal


def initial_weights(config: ModelConfig) -> np.ndarray:
    """Genesis weights as int32 fixed point with ``frac_bits`` fractional bits."""
    init = config.init
    kind = init.get("kind") if isinstance(init, Mapping) else None
    if kind == "zeros":
        return np.zeros(config.num_params, dtype=np.int32)
    if kind == "normal":
        seed = init.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise _err(config.id, "init.seed must be a non-negative integer")
        default_std = parse_rational(init.get("std", "1/10"), config.id, "init.std")
        parts = []
        for index, layer in enumerate(config.layers):
            std = layer.init_std or default_std
            normal = _shake_normal(seed, index, layer.size)  # 2^-24 units
            # w = normal · std in 2^-F units = normal · std.num · 2^F / (std.den · 2^24)
            scaled = round_half_even_div(normal * std.num, std.den * (1 << (24 - config.frac_bits)))
            parts.append(np.clip(scaled, -(1 << 31), (1 << 31) - 1).astype(np.int32))
        return np.concatenate(parts)
    if kind == "file":
        path, pinned = init.get("path"), init.get("sha256")
        if not isinstance(path, str) or not isinstance(pinned, str):
            raise _err(config.id, "init kind file needs path and sha256")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise _err(config.id, f"cannot read init file {path}: {exc}") from None
        if "0x" + hashlib.sha256(data).hexdigest() != pinned.lower():
            raise _err(config.id, f"init file {path} does not match its pinned sha256")
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise _err(config.id, f"init file {path} is not a .npy array: {exc}") from None
        if array.dtype != np.int32 or array.shape != (config.num_params,):
            raise _err(config.id, f"init file must hold int32[{config.num_params}] fixed point")
        weights: np.ndarray = array.copy()
        return weights
    raise _err(config.id, "init.kind must be zeros, normal or file")
