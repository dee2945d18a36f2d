"""The chain's runtime definition (Substrate's ``construct_runtime``): the modules this chain runs.

This is the one place that names concrete modules; the runtime itself never imports them.
"""

from __future__ import annotations

from deltachain.model_state.module import ModelStateModule
from deltachain.primitives.block import Header
from deltachain.primitives.chainspec import ChainSpec
from deltachain.runtime.executive import Runtime, build_genesis
from deltachain.runtime.state import MemoryStateStore


def construct_runtime(kernel: str = "numba") -> Runtime:
    """``kernel`` picks model_state's aggregation kernel: ``numba`` (nodes) or ``reference``."""
    return Runtime([ModelStateModule(kernel=kernel)])


def genesis_header(spec: ChainSpec) -> Header:
    """The genesis header ``spec`` commits to, computed here without asking any node.

    A device's trust root: its hash is what a node of this chain must report, and its state
    root commits to the initial authority set. Raises ChainSpecError for a bad spec.
    """
    return build_genesis(construct_runtime("reference"), spec, MemoryStateStore()).header
