"""The learning device: tasks, a tiny numpy MLP, Reptile, Top-P% + int8 deltas, energy model.

Layers (imports point downward; never ``deltachain.node``):

* :mod:`~deltachain.client.tasks`      -- sine-wave regression and non-IID ``digits``
* :mod:`~deltachain.client.model`      -- the MLP parsed from a model record, fixed point ↔ float
* :mod:`~deltachain.client.profile`    -- the nRF52840-class device profile and accounting
* :mod:`~deltachain.client.verify`     -- verified downloads (Merkle + trie proofs), ``Verifier``
* :mod:`~deltachain.client.device`     -- one device: download, adapt, quantize, sign, attacks
* :mod:`~deltachain.client.rpc`        -- a tiny stdlib JSON-RPC client (the RPC backend)
* :mod:`~deltachain.client.localchain` -- an in-process chain speaking the same methods
* :mod:`~deltachain.client.fleet`      -- rounds, held-out evaluation, CSV/plot, progress
* :mod:`~deltachain.client.cli`        -- ``deltachain client run``
"""
