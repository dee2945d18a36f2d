"""The MCU light client: follows finality by justifications, verifies state and chunk proofs.

Imports only primitives, crypto, the codec, errors and the pure justification check — never the
node, the runtime or numpy — so what it needs on a device is SHA-256, ed25519 and CBOR.
"""

from __future__ import annotations

from deltachain.light.client import LightClient, Verifier
from deltachain.light.errors import StaleData
from deltachain.light.proofs import ChunkProof, ModelRecordView, SetProof

__all__ = ["ChunkProof", "LightClient", "ModelRecordView", "SetProof", "StaleData", "Verifier"]
