"""A fleet of learning devices driving rounds on a chain (a node over RPC or a LocalChain).

Per round every training device downloads and verifies the model, trains, corrupts its delta if
malicious, quantizes, signs and submits; the fleet then waits for the model version to bump and
scores the new model on **held-out devices** -- devices that never train: each one downloads and
verifies the model itself, adapts it on its ``K`` support samples exactly as a training device
would, and is scored on fresh query samples (mean MSE for sine, accuracy for digits).
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from deltachain import codec
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.errors import DeltachainError
from deltachain.model_state.delta import SubmitDelta
from deltachain.primitives.transaction import SignedTransaction, sign_transaction

from .device import ATTACKS, Device, Hyper, Prepared, adapt, quality
from .localchain import LocalChain, local_spec, model_json
from .model import MLP, MLPSpec, to_float
from .profile import NRF52840, DeviceProfile, RoundCost
from .rpc import NOT_FOUND, Caller, RpcFailed
from .tasks import Batch, make_task
from .verify import ModelNotFound, TrustNodeVerifier, Verifier, download_model

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "sine": {"model": "sine-mlp", "shots": 10, "inner_steps": 10, "inner_lr": 0.02, "query": 100},
    "digits": {
        "model": "digits-mlp",
        "shots": 20,
        "inner_steps": 10,
        "inner_lr": 0.3,
        "query": 200,
    },
}


class RoundFailed(DeltachainError):
    """A round did not close: deltas were rejected or the chain did not advance in time."""


def device_key(index: int) -> Keypair:
    """Deterministic per-device keys (public dev keys: for testnets only)."""
    return Keypair.dev(f"device-{index}")


@dataclass
class FleetConfig:
    task: str = "sine"
    devices: int = 20
    rounds: int = 30
    top_p: float = 0.1
    inner_steps: int | None = None
    inner_lr: float | None = None
    shots: int | None = None
    clip: float = 1.0
    attack: str | None = None
    malicious: float = 0.0
    seed: int = 0
    heldout: int = 5
    model: str | None = None
    query: int | None = None
    timeout: float = 120.0
    poll: float = 0.25

    def __post_init__(self) -> None:
        if self.task not in TASK_DEFAULTS:
            raise ValueError(f"unknown task {self.task!r}: choose sine or digits")
        if self.attack is not None and self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r}: choose one of {', '.join(ATTACKS)}")
        if not 0 <= self.malicious < 1:
            raise ValueError("--malicious is a fraction in [0, 1)")
        if self.devices < 1 or self.rounds < 0 or self.heldout < 1:
            raise ValueError("need at least one device, one held-out device and rounds ≥ 0")

    def _default(self, name: str) -> Any:
        value = getattr(self, name)
        return TASK_DEFAULTS[self.task][name] if value is None else value

    @property
    def model_id(self) -> str:
        return str(self._default("model"))

    @property
    def query_size(self) -> int:
        return int(self._default("query"))

    def hyper(self) -> Hyper:
        return Hyper(
            shots=int(self._default("shots")),
            inner_steps=int(self._default("inner_steps")),
            inner_lr=float(self._default("inner_lr")),
            clip=self.clip,
            top_p=self.top_p,
        )

    @property
    def num_malicious(self) -> int:
        return round(self.malicious * self.devices) if self.attack else 0


@dataclass
class RoundRow:
    round: int
    version: int
    quality: float
    bytes_up: float  # mean per training device (the encoded transaction)
    bytes_down: float  # mean per training device (header, record, chunks, proofs)
    energy_j: float  # mean modeled energy per training device
    energy_radio_j: float
    energy_compute_j: float
    energy_crypto_j: float
    peak_ram_bytes: int  # max over devices
    macs: float  # mean per training device
    coords_sent: float  # mean coordinates per delta
    deltas_accepted: int
    downloads_verified: int  # training + held-out devices that verified this round's download
    seconds: float

    def as_dict(self, metric: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            key = metric if f.name == "quality" else f.name
            value = getattr(self, f.name)
            out[key] = round(value, 9) if isinstance(value, float) else value
        return out


@dataclass
class FleetResult:
    config: FleetConfig
    metric: str
    rows: list[RoundRow] = field(default_factory=list)

    @property
    def final(self) -> float:
        return self.rows[-1].quality

    @property
    def initial(self) -> float:
        return self.rows[0].quality

    def mean_bytes_up(self) -> float:
        trained = [r.bytes_up for r in self.rows if r.round > 0]
        return statistics.fmean(trained) if trained else 0.0


def alie_z(n: int, malicious: int) -> float:
    """ALIE's z_max (Baruch et al. 2019): the largest shift that stays inside the majority."""
    s = n // 2 + 1 - malicious
    p = (n - s) / n
    return statistics.NormalDist().inv_cdf(min(max(p, 1e-6), 1 - 1e-6))


def few_shot_quality(
    mlp: MLP, hyper: Hyper, params: np.ndarray, split: tuple[Batch, Batch], metric: str
) -> float:
    """Adapt ``params`` on the support set as a training device would; score on the query."""
    support, query = split
    adapted, _ = adapt(mlp, params, support, hyper)
    return quality(mlp, adapted, query, metric)


class Progress:
    """A one-line text progress bar on a terminal; silent when the stream is not a TTY."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 30) -> None:
        self.total, self.stream, self.width = max(total, 1), stream, width
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())

    def show(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{self.total} {note}".ljust(80))
        self.stream.flush()

    def clear(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()


class Fleet:
    """Training devices + held-out devices against one chain (``node``: any ``Caller``).

    ``downloads`` is where devices fetch model chunks (default ``node``): with ``client run
    --peer`` the p2p light protocol, while transactions and round bookkeeping stay on ``node``.
    """

    def __init__(
        self,
        node: Caller,
        config: FleetConfig,
        *,
        admin: Keypair | None = None,
        verifier: Callable[[Caller], Verifier] = TrustNodeVerifier,
        downloads: Caller | None = None,
        profile: DeviceProfile = NRF52840,
        out: TextIO | None = sys.stdout,
        progress: TextIO | None = sys.stderr,
    ) -> None:
        self.node = node
        self.config = config
        self.admin = admin
        self.make_verifier = verifier
        self.downloads = downloads or node
        self.profile = profile
        self.out = out
        self.progress = Progress(config.rounds, progress) if progress is not None else None
        self.local = node if isinstance(node, LocalChain) else None
        self.task = make_task(config.task, config.seed)
        self.genesis = Hash32(b"")
        self.spec: MLPSpec | None = None
        self.devices: list[Device] = []
        self.heldout: list[Device] = []
        self.verifiers: dict[int, Verifier] = {}
        self.nonces: dict[int, int] = {}
        self.max_deltas = 0
        self.commit_reveal = False

    # --- setup ---------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        genesis = self.node.call("chain_getGenesisHash")
        self.genesis = Hash32(bytes.fromhex(genesis[2:]))
        try:
            model = self.node.call("model_get", cfg.model_id)
        except RpcFailed as exc:
            if exc.code == NOT_FOUND or "no model" in str(exc):
                raise ModelNotFound(
                    f"the chain has no model {cfg.model_id!r} (models: "
                    f"{', '.join(self.node.call('model_list')) or 'none'}); pass --model"
                ) from None
            raise
        if self.local is None and cfg.devices < int(model["minDeltas"]):
            raise DeltachainError(
                f"model {cfg.model_id!r} closes a round only with minDeltas = "
                f"{model['minDeltas']} deltas, but the fleet has {cfg.devices} devices; "
                f"run with --devices {model['minDeltas']} or more"
            )
        self.max_deltas = int(model["maxDeltas"])
        self.commit_reveal = bool(model.get("commitReveal", False))
        spec = MLPSpec.from_config(model)
        spec.check_task(self.task.input_dim, self.task.output_dim, cfg.task)
        self.spec = spec
        mlp = MLP(spec, self.task.loss)
        hyper = cfg.hyper()
        bad = cfg.num_malicious
        self.devices = [
            Device(
                i,
                self.task.device(i),
                mlp,
                hyper,
                key=device_key(i),
                attack=cfg.attack if i < bad else None,
                profile=self.profile,
                seed=cfg.seed,
            )
            for i in range(cfg.devices)
        ]
        self.heldout = [
            Device(cfg.devices + i, self.task.heldout(i), mlp, hyper, profile=self.profile)
            for i in range(cfg.heldout)
        ]
        self._splits = [
            d.data.eval_split(hyper.shots, cfg.query_size) for d in self.heldout
        ]  # fixed per held-out device
        self.verifiers = {d.index: self.make_verifier(self.node) for d in self.devices}
        self.verifiers.update({d.index: self.make_verifier(self.node) for d in self.heldout})
        self._register()

    def _register(self) -> None:
        """Register device keys that the chain does not know yet (needs the admin key)."""
        known = set(self.node.call("runtime_query", "system", "clients", {}))
        missing = [d for d in self.devices if address_to_str(d.key.address) not in known]  # type: ignore[union-attr]
        if missing:
            if self.admin is None:
                raise DeltachainError(
                    f"{len(missing)} device keys are not registered clients; pass --admin-key"
                )
            nonce = int(
                self.node.call("system_accountNextIndex", address_to_str(self.admin.address))
            )
            for d in missing:
                assert d.key is not None
                tx = sign_transaction(
                    self.admin,
                    self.genesis,
                    nonce,
                    "system",
                    "register_client",
                    {"client": d.key.address},
                )
                try:
                    self.node.call("author_submitExtrinsic", "0x" + tx.encode().hex())
                except RpcFailed as exc:
                    raise DeltachainError(f"cannot register device {d.index}: {exc}") from None
                nonce += 1
            self._say(f"registering {len(missing)} device keys with the admin key …")
            self._wait(
                lambda: (
                    {address_to_str(d.key.address) for d in missing}  # type: ignore[union-attr]
                    <= set(self.node.call("runtime_query", "system", "clients", {}))
                ),
                "device registration",
            )
        for d in self.devices:
            assert d.key is not None
            self.nonces[d.index] = int(
                self.node.call("system_accountNextIndex", address_to_str(d.key.address))
            )

    # --- helpers -------------------------------------------------------------------------

    def _say(self, line: str) -> None:
        if self.out is not None:
            if self.progress is not None:
                self.progress.clear()
            print(line, file=self.out, flush=True)

    def _wait(self, done: Callable[[], bool], what: str) -> None:
        """Author blocks (local chain) or poll (node) until ``done()``; RoundFailed on timeout."""
        if self.local is not None:
            for _ in range(64):
                if done():
                    return
                self.local.produce_block()
            raise RoundFailed(f"{what} did not complete within 64 blocks")
        deadline = time.monotonic() + self.config.timeout
        while not done():
            if time.monotonic() > deadline:
                raise RoundFailed(
                    f"{what} did not complete within {self.config.timeout:.0f} s; "
                    + self._round_state()
                )
            time.sleep(self.config.poll)

    def _included(self, first: int, last: int) -> int:
        """How many of this fleet's deltas the chain aggregated into versions first..last:
        what the devices were told is accepted counts only once provenance shows it."""
        ours = {address_to_str(d.key.address) for d in self.devices if d.key is not None}
        count = 0
        for version in range(first, last + 1):
            record = self.node.call("model_getProvenance", self.config.model_id, version)
            count += sum(1 for delta in record["deltas"] if delta["client"] in ours)
        return count

    def _round_state(self) -> str:
        """Why a round may not have closed yet, from the chain's own round progress."""
        try:
            progress = self.node.call("model_get", self.config.model_id)["round"]
        except (RpcFailed, KeyError, TypeError):
            return "is the node authoring and finalizing blocks?"
        if progress.get("needs"):
            return (
                f"the round holds {progress['count']} of the minDeltas {progress['minDeltas']} "
                "deltas it needs to close"
            )
        return (
            f"the round holds {progress['count']} deltas (minDeltas {progress['minDeltas']}); "
            "is the node authoring and finalizing blocks?"
        )

    def _send(self, d: Device, tx: SignedTransaction, errors: list[str]) -> bool:
        """Submit one device's transaction; on refusal note why and re-read its nonce."""
        try:
            self.node.call("author_submitExtrinsic", "0x" + tx.encode().hex())
        except RpcFailed as exc:
            errors.append(f"device {d.index}: {exc}")
            assert d.key is not None
            self.nonces[d.index] = int(
                self.node.call("system_accountNextIndex", address_to_str(d.key.address))
            )
            return False
        self.nonces[d.index] += 1
        return True

    def _window(self) -> tuple[int, dict[str, Any]]:
        """The number of the next block and the open round's progress."""
        best = int(self.node.call("chain_getHeader")["number"])
        return best + 1, self.node.call("model_get", self.config.model_id)["round"]

    def _commit(
        self, submits: list[tuple[Device, Prepared, SubmitDelta]]
    ) -> tuple[list[tuple[Device, Prepared, SubmitDelta]], dict[int, SignedTransaction], list[str]]:
        """Commit-reveal: wait for the round's commit window, commit every device's delta,
        then wait for the reveal window. Returns the salted deltas whose commitment the chain
        holds (only those are worth revealing), the commitments, and the refusals."""
        errors: list[str] = []

        def in_commit_window() -> bool:
            number, progress = self._window()
            return number <= int(progress["commitUntil"])

        self._wait(in_commit_window, "the commit window")
        salted: list[tuple[Device, Prepared, SubmitDelta]] = []
        commits: dict[int, SignedTransaction] = {}
        for d, p, submit in submits:
            revealed, tx = d.commit(submit, self.genesis, self.nonces[d.index])
            if self._send(d, tx, errors):
                salted.append((d, p, revealed))
                commits[d.index] = tx
        if self.local is not None:
            self.local.produce_block()

        def in_reveal_window() -> bool:
            number, progress = self._window()
            return number >= int(progress["revealFrom"])

        self._wait(in_reveal_window, "the reveal window")
        held = set(self._window()[1]["commits"])
        kept = [
            (d, p, s)
            for d, p, s in salted
            if d.key is not None and address_to_str(d.key.address) in held
        ]
        if len(kept) < len(salted):
            errors.append(f"{len(salted) - len(kept)} commitments missed the commit window")
        return kept, {i: commits[i] for i in (d.index for d, _, _ in kept)}, errors

    def _finalized_version(self) -> int:
        block = self.node.call("chain_getFinalizedHead")
        answer = self.node.call("model_getChunkProof", self.config.model_id, 0, block)
        record = codec.decode(bytes.fromhex(answer["record"][2:]))
        return int(record["version"])

    def evaluate(self) -> tuple[float, int]:
        """Mean few-shot quality over held-out devices, each on its own verified download."""
        scores, verified = [], 0
        metric = self.task.metric
        for device, split in zip(self.heldout, self._splits, strict=True):
            model = download_model(
                self.downloads, self.verifiers[device.index], self.config.model_id
            )
            self.verifiers[device.index].take_cost()
            device.verified_downloads += 1
            verified += 1
            params = device.compose(to_float(model.weights, int(model.config["fracBits"])))
            scores.append(few_shot_quality(device.mlp, device.hyper, params, split, metric))
        return statistics.fmean(scores), verified

    # --- rounds --------------------------------------------------------------------------

    def run_round(self, number: int) -> RoundRow:
        cfg = self.config
        started = time.perf_counter()
        prepared: list[Prepared] = [
            d.prepare(self.downloads, self.verifiers[d.index], cfg.model_id) for d in self.devices
        ]
        version = prepared[0].model.version
        honest_stats = None
        if cfg.attack == "alie":
            honest = [
                p.result.delta
                for p, d in zip(prepared, self.devices, strict=False)
                if d.attack is None
            ]
            if honest:
                stack = np.stack(honest)
                z = alie_z(cfg.devices, cfg.num_malicious)
                honest_stats = (stack.mean(axis=0), stack.std(axis=0), z)
        costs: list[RoundCost] = []
        coords: list[int] = []
        accepted = 0
        errors: list[str] = []
        submits: list[tuple[Device, Prepared, SubmitDelta]] = []
        for d, p in zip(self.devices, prepared, strict=True):
            submits.append((d, p, d.encode(p, d.corrupt(p.result.delta, honest_stats))))
        commits: dict[int, SignedTransaction] = {}
        if self.commit_reveal:
            submits, commits, refused = self._commit(submits)
            errors.extend(refused)
        for d, p, submit in submits:
            tx = d.sign(submit, self.genesis, self.nonces[d.index])
            costs.append(d.finish(p, submit, tx, commits.get(d.index)))
            coords.append(int(submit.indices.size))
            if self._send(d, tx, errors):
                accepted += 1
        if self.local is not None:
            self.local.produce_block()
            errors.extend(f"device ?: {exc}" for _, exc in self.local.rejected)
            self.local.rejected.clear()
        if accepted == 0:
            raise RoundFailed("no delta was accepted: " + "; ".join(errors[:3]))
        for e in errors[:3]:
            self._say(f"  refused: {e}")
        if len(errors) > 3:
            self._say(f"  … and {len(errors) - 3} more refused")
        self._wait(lambda: self._finalized_version() > version, f"round {number}")
        accepted = self._included(version + 1, self._finalized_version())
        score, verified = self.evaluate()
        n = len(costs)
        total = sum(costs, RoundCost())
        return RoundRow(
            round=number,
            version=self._finalized_version(),
            quality=score,
            bytes_up=total.bytes_up / n,
            bytes_down=total.bytes_down / n,
            energy_j=total.energy_j / n,
            energy_radio_j=total.energy_radio_j / n,
            energy_compute_j=total.energy_compute_j / n,
            energy_crypto_j=total.energy_crypto_j / n,
            peak_ram_bytes=total.peak_ram_bytes,
            macs=total.macs / n,
            coords_sent=statistics.fmean(coords),
            deltas_accepted=accepted,
            downloads_verified=verified + len(prepared),
            seconds=time.perf_counter() - started,
        )

    def run(self) -> FleetResult:
        if self.spec is None:
            self.setup()
        cfg = self.config
        metric = self.task.metric
        result = FleetResult(cfg, metric)
        started = time.perf_counter()
        score, verified = self.evaluate()
        result.rows.append(
            RoundRow(
                0,
                self._finalized_version(),
                score,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                verified,
                time.perf_counter() - started,
            )
        )
        self._say(self._describe())
        self._say(self._line(result.rows[0], metric))
        for number in range(1, cfg.rounds + 1):
            if self.progress is not None:
                self.progress.show(number - 1, f"round {number} …")
            row = self.run_round(number)
            result.rows.append(row)
            self._say(self._line(row, metric))
        if self.progress is not None:
            self.progress.show(cfg.rounds, "done")
            self.progress.clear()
        return result

    def _describe(self) -> str:
        cfg, h = self.config, self.config.hyper()
        assert self.spec is not None
        bad = f", {cfg.num_malicious} malicious ({cfg.attack})" if cfg.num_malicious else ""
        return (
            f"{cfg.task}: model {cfg.model_id!r} ({self.spec.num_params} params, "
            f"{self.spec.num_global} global), {cfg.devices} devices{bad}, {cfg.heldout} held-out, "
            f"{cfg.rounds} rounds; K={h.shots} shots, {h.inner_steps} inner steps, "
            f"lr {h.inner_lr}, top-p {cfg.top_p:.0%}"
        )

    @staticmethod
    def _line(row: RoundRow, metric: str) -> str:
        q = f"{metric} {row.quality:.4f}" if metric == "loss" else f"accuracy {row.quality:.3f}"
        if row.round == 0:
            return f"round  0  v{row.version:<4} held-out {q}  (before training)"
        return (
            f"round {row.round:2d}  v{row.version:<4} held-out {q}  "
            f"up {row.bytes_up:,.0f} B  down {row.bytes_down:,.0f} B  "
            f"energy {row.energy_j * 1e3:.2f} mJ  peak RAM {row.peak_ram_bytes / 1024:.1f} KiB  "
            f"deltas {row.deltas_accepted}  verified {row.downloads_verified}"
        )


# --- outputs -----------------------------------------------------------------------------


def write_csv(result: FleetResult, path: Path) -> None:
    rows = [r.as_dict(result.metric) for r in result.rows]
    with Path(path).open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_plot(results: Sequence[tuple[str, FleetResult]], path: Path, title: str = "") -> None:
    """Quality vs round for one or more runs (matplotlib, Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    metric = results[0][1].metric
    for label, res in results:
        ax.plot([r.round for r in res.rows], [r.quality for r in res.rows], marker=".", label=label)
    ax.set_xlabel("round")
    ax.set_ylabel("held-out few-shot MSE" if metric == "loss" else "held-out few-shot accuracy")
    ax.set_title(title or f"{results[0][1].config.task}: held-out quality vs round")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def local_fleet(
    config: FleetConfig,
    *,
    semantics: str = "present-quorum",
    eta: str = "1/1",
    trim_beta: str = "1/5",
    kernel: str = "reference",
    commit_reveal: bool = False,
    out: TextIO | None = None,
    progress: TextIO | None = None,
) -> Fleet:
    """A fleet on a fresh LocalChain whose model section the caller controls.

    Rounds close each block (``roundLen`` 1) once every device's delta is in
    (``minDeltas`` = ``maxDeltas`` = devices). With ``commit_reveal`` a round takes two
    blocks: the commitments, then the reveals (``roundLen`` 2, ``commitLen`` 1).
    """
    model = model_json(
        config.task,
        aggregation=semantics,
        eta=eta,
        trimBeta=trim_beta,
        roundLen=2 if commit_reveal else 1,
        minDeltas=config.devices,
        maxDeltas=config.devices,
        staleness=0,
        **({"commitReveal": True, "commitLen": 1} if commit_reveal else {}),
    )
    if config.model is not None:
        model["id"] = config.model
    keys = [device_key(i).address for i in range(config.devices)]
    chain = LocalChain(local_spec([model], keys), kernel=kernel)
    return Fleet(chain, config, out=out, progress=progress)
