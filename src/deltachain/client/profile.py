"""The device profile (nRF52840-class) and per-round accounting: bytes, modeled energy, RAM.

Every constant is documented with its source in ``docs/devices.md``; the ones marked
*assumption* are our modelling choices, stated so they can be replaced by measurements.

Energy per round = radio (on-air bytes × J/byte, TX and RX separately)
                 + MCU (MACs × cycles/MAC + SHA-256 cycles + Ed25519 cycles) × J/cycle.
Peak working memory is computed from sizes (float32 parameters and buffers), phase by phase:
download (model + one chunk + its proof + the record and its proof), training (model + the
global snapshot Reptile subtracts + one gradient buffer + activations + the round's samples),
submission (model + snapshot + selected indices/values + the encoded transaction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

FLOAT_BYTES = 4


@dataclass(frozen=True)
class DeviceProfile:
    name: str = "nRF52840 (Cortex-M4F 64 MHz, 256 KB RAM, 1 MB flash, BLE 1M)"
    clock_hz: float = 64e6
    ram_bytes: int = 256 * 1024
    flash_bytes: int = 1024 * 1024
    supply_v: float = 3.0
    cpu_current_a: float = 2.0e-3
    radio_tx_current_a: float = 6.4e-3  # 0 dBm, BLE 1M, DC/DC
    radio_rx_current_a: float = 6.26e-3  # BLE 1M, DC/DC
    radio_bitrate: float = 1e6  # BLE 1M PHY
    frame_payload: int = 244  # app bytes per BLE packet with data length extension (assumption)
    frame_overhead: int = 21  # preamble+AA+header+MIC+CRC (14) + L2CAP+ATT headers (7)
    cycles_per_mac: float = 4.0  # float32 MAC incl. loads on Cortex-M4F (assumption)
    sha256_cycles_per_byte: float = 50.0  # software SHA-256 on Cortex-M4 (assumption)
    ed25519_verify_cycles: float = 175e-3 * 168e6  # 175 ms at 168 MHz (brief §11)
    ed25519_sign_cycles: float = 0.5 * 175e-3 * 168e6  # one base-point mult: ≈ half (assumption)

    @property
    def joule_per_cycle(self) -> float:
        return self.cpu_current_a * self.supply_v / self.clock_hz

    @property
    def joule_per_mac(self) -> float:
        return self.cycles_per_mac * self.joule_per_cycle

    @property
    def tx_joule_per_byte(self) -> float:
        return self.radio_tx_current_a * self.supply_v * 8 / self.radio_bitrate

    @property
    def rx_joule_per_byte(self) -> float:
        return self.radio_rx_current_a * self.supply_v * 8 / self.radio_bitrate

    def on_air(self, payload: int) -> int:
        """Bytes on air for ``payload`` application bytes (framing per BLE packet)."""
        if payload <= 0:
            return 0
        return payload + math.ceil(payload / self.frame_payload) * self.frame_overhead


NRF52840 = DeviceProfile()


@dataclass
class RoundCost:
    """What one device spent in one round. Energies in joules; memory in bytes."""

    bytes_up: int = 0
    bytes_down: int = 0
    macs: int = 0
    hashed_bytes: int = 0
    signatures: int = 0
    verifications: int = 0
    energy_radio_j: float = 0.0
    energy_compute_j: float = 0.0
    energy_crypto_j: float = 0.0
    peak_ram_bytes: int = 0

    @property
    def energy_j(self) -> float:
        return self.energy_radio_j + self.energy_compute_j + self.energy_crypto_j

    def price(self, profile: DeviceProfile) -> RoundCost:
        """Fill in the energies from the counters (idempotent)."""
        self.energy_radio_j = (
            profile.on_air(self.bytes_up) * profile.tx_joule_per_byte
            + profile.on_air(self.bytes_down) * profile.rx_joule_per_byte
        )
        self.energy_compute_j = self.macs * profile.joule_per_mac
        self.energy_crypto_j = (
            self.hashed_bytes * profile.sha256_cycles_per_byte
            + self.signatures * profile.ed25519_sign_cycles
            + self.verifications * profile.ed25519_verify_cycles
        ) * profile.joule_per_cycle
        return self

    def __add__(self, other: RoundCost) -> RoundCost:
        out = RoundCost()
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            setattr(out, f.name, max(a, b) if f.name == "peak_ram_bytes" else a + b)
        return out


@dataclass(frozen=True)
class MemoryPlan:
    """Peak working memory of one round, phase by phase (bytes)."""

    download: int
    train: int
    submit: int
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return max(self.download, self.train, self.submit)


def memory_plan(
    *,
    num_params: int,
    num_global: int,
    widths: tuple[int, ...],
    batch: int,
    shots: int,
    chunk_bytes: int,
    proof_bytes: int,
    record_bytes: int,
    selected: int,
    tx_bytes: int,
) -> MemoryPlan:
    """Sizes of what must be resident at once in each phase (float32 model and buffers)."""
    model = FLOAT_BYTES * num_params
    snapshot = FLOAT_BYTES * num_global
    gradient = FLOAT_BYTES * num_params
    activations = FLOAT_BYTES * batch * sum(widths) * 2  # pre- and post-activation
    samples = FLOAT_BYTES * shots * (widths[0] + widths[-1])
    selection = 5 * selected  # uint32 index + int8 value per coordinate, before gap coding
    parts = {
        "model": model,
        "snapshot": snapshot,
        "gradient": gradient,
        "activations": activations,
        "samples": samples,
        "chunk+proof": chunk_bytes + proof_bytes,
        "record+proof": record_bytes,
        "selection": selection,
        "transaction": tx_bytes,
    }
    return MemoryPlan(
        download=model + chunk_bytes + proof_bytes + record_bytes,
        train=model + snapshot + gradient + activations + samples,
        submit=model + snapshot + selection + tx_bytes,
        parts=parts,
    )
