"""The chain's runtime definition (Substrate's ``construct_runtime``): the modules this chain runs.

This is the one place that names concrete modules; the runtime itself never imports them.
"""

from __future__ import annotations

from deltachain.model_state.module import ModelStateModule
from deltachain.runtime.executive import Runtime


def construct_runtime(kernel: str = "numba") -> Runtime:
    """``kernel`` picks model_state's aggregation kernel: ``numba`` (nodes) or ``reference``."""
    return Runtime([ModelStateModule(kernel=kernel)])
