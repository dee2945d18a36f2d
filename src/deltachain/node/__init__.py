"""Service wiring: storage, transaction pool, RPC, CLI, (later) the network."""
