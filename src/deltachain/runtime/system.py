"""The system module: accounts and nonces, the admin, the client registry and the authority set.

This is part of the runtime itself (every chain has it); other modules read the registry through
the plain functions here, e.g. ``is_client``, rather than through the dispatcher.

State layout (raw keys; the trie hashes them):
  ``system/admin``             → admin address
  ``system/authorities``       → CBOR array of authority addresses (the current set)
  ``system/set_id``            → CBOR uint, bumped each time the authority set changes
  ``system/chain``             → CBOR map {"id": chain id, "slotMs": slot length}
  ``system/nonce/<address>``   → CBOR uint, the next nonce the account must use
  ``system/client/<address>``  → CBOR map {"since": block number}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deltachain import codec
from deltachain.crypto.keys import address_to_str, is_valid_public_key, parse_address
from deltachain.errors import (
    ChainSpecError,
    DecodeError,
    InvalidCall,
    InvalidKey,
    NotFound,
    Unauthorized,
    UnknownCall,
)
from deltachain.primitives.types import Address, Hash32, Nonce, as_address
from deltachain.runtime.module import BlockEnv, Event, Module
from deltachain.runtime.state import State

KEY_ADMIN = b"system/admin"
KEY_AUTHORITIES = b"system/authorities"
KEY_CHAIN = b"system/chain"
KEY_SET_ID = b"system/set_id"
PREFIX_NONCE = b"system/nonce/"
PREFIX_CLIENT = b"system/client/"
MAX_REMARK = 1024


def get_nonce(state: State, who: Address) -> Nonce:
    raw = state.get(PREFIX_NONCE + who)
    return Nonce(0 if raw is None else codec.decode_stored(raw))


def bump_nonce(state: State, who: Address) -> None:
    state.set(PREFIX_NONCE + who, codec.encode(get_nonce(state, who) + 1))


def get_admin(state: State) -> Address:
    raw = state.get(KEY_ADMIN)
    if raw is None:
        raise NotFound("this chain has no admin")
    return Address(raw)


def get_authorities(state: State) -> tuple[Address, ...]:
    raw = state.get(KEY_AUTHORITIES)
    return () if raw is None else tuple(Address(a) for a in codec.decode_stored(raw))


def get_set_id(state: State) -> int:
    raw = state.get(KEY_SET_ID)
    return 0 if raw is None else int(codec.decode_stored(raw))


def set_authorities(state: State, authorities: list[Address]) -> None:
    """Enact a new authority set (at a block boundary: called from on_finalize)."""
    state.set(KEY_AUTHORITIES, codec.encode(list(authorities)))
    state.set(KEY_SET_ID, codec.encode(get_set_id(state) + 1))


def is_client(state: State, who: Address) -> bool:
    return state.get(PREFIX_CLIENT + who) is not None


def list_clients(state: State) -> list[Address]:
    return [Address(k[len(PREFIX_CLIENT) :]) for k, _ in state.iter_prefix(PREFIX_CLIENT)]


def may_transact(state: State, who: Address) -> bool:
    """A permissioned chain: only the admin, the authorities and registered clients may send."""
    return who == state.get(KEY_ADMIN) or who in get_authorities(state) or is_client(state, who)


@dataclass(frozen=True)
class RegisterClient:
    client: Address


@dataclass(frozen=True)
class RevokeClient:
    client: Address


@dataclass(frozen=True)
class Remark:
    data: bytes


class SystemModule(Module):
    name = "system"

    def build_genesis(self, state: State, config: Mapping[str, Any]) -> None:
        try:
            admin = parse_address(config["admin"])
            clients = [parse_address(c) for c in config.get("clients", [])]
        except KeyError:
            raise ChainSpecError("chain spec: genesis.runtime.system.admin is required") from None
        except (InvalidKey, AttributeError, TypeError) as exc:
            raise ChainSpecError(f"chain spec: genesis.runtime.system: {exc}") from None
        if len(set(clients)) != len(clients):
            raise ChainSpecError("chain spec: duplicate client in genesis.runtime.system.clients")
        state.set(KEY_ADMIN, admin)
        for client in clients:
            state.set(PREFIX_CLIENT + client, codec.encode({"since": 0}))

    def decode_call(self, function: str, args: Mapping[str, Any]) -> object:
        if function in ("register_client", "revoke_client"):
            if set(args) != {"client"}:
                raise InvalidCall(f"system.{function} takes exactly one argument: client")
            try:
                client = as_address(args["client"], "client")
            except DecodeError as exc:
                raise InvalidCall(f"system.{function}: {exc}") from None
            if function == "register_client" and not is_valid_public_key(client):
                raise InvalidCall(
                    f"system.register_client: {address_to_str(client)} is not an ed25519 key "
                    "anyone can sign with (small-order or not a curve point)"
                )
            return RegisterClient(client) if function == "register_client" else RevokeClient(client)
        if function == "remark":
            data = args.get("data")
            if set(args) != {"data"} or not isinstance(data, bytes) or len(data) > MAX_REMARK:
                raise InvalidCall(f"system.remark takes data: bytes of at most {MAX_REMARK}")
            return Remark(data)
        raise UnknownCall(f"module 'system' has no function {function!r}")

    def validate_call(self, state: State, sender: Address, call: object) -> None:
        if isinstance(call, RegisterClient | RevokeClient):
            if sender != state.get(KEY_ADMIN):
                raise Unauthorized("only the chain admin may register or revoke clients")
            registered = is_client(state, call.client)
            if isinstance(call, RegisterClient) and registered:
                raise InvalidCall(f"client {address_to_str(call.client)} is already registered")
            if isinstance(call, RevokeClient) and not registered:
                raise InvalidCall(f"client {address_to_str(call.client)} is not registered")

    def priority(self, call: object) -> int:
        return 0 if isinstance(call, Remark) else 2

    def apply_call(
        self, state: State, sender: Address, call: object, env: BlockEnv, tx_hash: Hash32
    ) -> list[Event]:
        if isinstance(call, RegisterClient):
            state.set(PREFIX_CLIENT + call.client, codec.encode({"since": env.number}))
            return [Event("system", "ClientRegistered", {"client": call.client})]
        if isinstance(call, RevokeClient):
            state.delete(PREFIX_CLIENT + call.client)
            return [Event("system", "ClientRevoked", {"client": call.client})]
        if isinstance(call, Remark):
            return [Event("system", "Remarked", {"sender": sender, "size": len(call.data)})]
        raise UnknownCall(f"system cannot apply {type(call).__name__}")

    def query(self, state: State, name: str, args: Mapping[str, Any]) -> Any:
        if name == "account":
            raw = args.get("address")
            if not isinstance(raw, bytes) or len(raw) != 32:
                raise InvalidCall("system.account needs an address (0x and 64 hex digits)")
            who = Address(raw)
            role = (
                "admin"
                if who == state.get(KEY_ADMIN)
                else "authority"
                if who in get_authorities(state)
                else "client"
                if is_client(state, who)
                else "unknown"
            )
            return {"address": address_to_str(who), "nonce": get_nonce(state, who), "role": role}
        if name == "clients":
            return [address_to_str(c) for c in list_clients(state)]
        if name == "authorities":
            return [address_to_str(a) for a in get_authorities(state)]
        if name == "admin":
            return address_to_str(get_admin(state))
        return super().query(state, name, args)
