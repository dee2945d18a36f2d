"""The module interface: what a runtime module (a Substrate pallet) provides.

A module owns a key prefix in the state, decodes its own calls into typed objects, validates and
applies them, and may act at the end of every block (``on_finalize``). The runtime dispatches to
modules by name and never imports any of them: the chain's composition point hands it the list.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deltachain.errors import NotFound, UnknownCall
from deltachain.primitives.types import Address, BlockNumber, Hash32, Slot
from deltachain.runtime.state import State


@dataclass(frozen=True)
class BlockEnv:
    """What a block's execution may know about its context; identical on every validator."""

    genesis_hash: Hash32
    parent_hash: Hash32
    number: BlockNumber
    slot: Slot
    author: Address


@dataclass(frozen=True)
class Event:
    module: str
    name: str
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_obj(self) -> list[Any]:
        return [self.module, self.name, dict(self.data)]


class Module(ABC):
    """Base class for runtime modules; override what the module needs."""

    name: str = ""

    def build_genesis(self, state: State, config: Mapping[str, Any]) -> None:
        """Write the module's genesis state from its chain-spec section (raise ChainSpecError)."""
        return None

    def decode_call(self, function: str, args: Mapping[str, Any]) -> object:
        """Turn wire arguments into a typed call (raise UnknownCall / InvalidCall)."""
        raise UnknownCall(f"module {self.name!r} has no function {function!r}")

    def precheck_call(self, state: State, sender: Address, call: object) -> None:
        """Checks that hold whatever transactions come first (e.g. against a model's fixed
        configuration): the pool runs them for every transaction, future nonces included."""
        return None

    def validate_call(self, state: State, sender: Address, call: object) -> None:
        """Checks against state that earlier transactions may change (e.g. a round's members);
        the pool runs these for a sender's next nonce, block execution right before
        ``apply_call``. A failure in a block is a failed call, not an invalid block."""
        return None

    @abstractmethod
    def apply_call(
        self, state: State, sender: Address, call: object, env: BlockEnv, tx_hash: Hash32
    ) -> list[Event]:
        """Apply a call that ``precheck_call`` and ``validate_call`` accepted on this very state
        (the executive runs them first, so this does not repeat them)."""

    def priority(self, call: object) -> int:
        """The pool's priority class for a call: 2 consensus and admin, 1 ordinary work
        (deltas), 0 best effort (remarks). Higher classes are authored first."""
        return 1

    def pool_claim(self, call: object) -> Hashable | None:
        """A key under which the pool counts pending calls that compete for one thing (a
        model's round), so admission can refuse what it could no longer take."""
        return None

    def validate_pending(
        self, state: State, sender: Address, call: object, claimants: frozenset[Address]
    ) -> None:
        """``validate_call`` as if the pooled calls of ``claimants`` (same ``pool_claim``)
        were applied first: refuse at submission what would fail once they are."""
        return None

    def check_window(self, state: State, call: object, number: int) -> None:
        """Checks on when a call may land (raise InvalidCall): the pool runs them for the
        next block, so a call that must wait (a commit-reveal reveal) is not pooled early."""
        return None

    def on_finalize(self, state: State, env: BlockEnv) -> list[Event]:
        """End-of-block hook (e.g. closing a model round)."""
        return []

    def warm_up(self) -> None:
        """Prepare slow resources (e.g. compile kernels) before the node authors or imports."""
        return None

    def query(self, state: State, name: str, args: Mapping[str, Any]) -> Any:
        """Read-only queries for RPC and CLI (raise NotFound / InvalidCall)."""
        raise NotFound(f"module {self.name!r} has no query {name!r}")
