"""deltachain: a permissioned chain whose transactions are signed sparse model deltas."""

__version__ = "0.1.0"
