"""model_state: the on-chain model registry and deterministic robust aggregation (a pallet)."""
