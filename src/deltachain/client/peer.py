"""``client run --peer``: the fleet's reads over the p2p light protocol, transactions over RPC.

One ``P2pTransport`` (one libp2p host and thread) serves every device: each device's
``LightVerifier`` follows finality through it, and :class:`PeerCaller` fetches the chunk
proofs of its downloads through it. Only this module imports libp2p, so ``client run``
without ``--peer`` never pays for it.
"""

from __future__ import annotations

from typing import Any

from deltachain.crypto.hashing import Hash32
from deltachain.light.p2p import LightProtocolError, P2pTransport, PeerOnAnotherChain

from .rpc import NOT_FOUND, RpcFailed

__all__ = ["PEER_TIMEOUT", "PeerCaller", "connect_peer"]

PEER_TIMEOUT = 10.0
"""Seconds per light request, dial included (as ``deltachain light sync``'s default)."""

RPC_CHAIN_HINT = "--peer must be a node of the chain --chain/--genesis names"


def connect_peer(peer: str, genesis: Hash32, *, timeout: float = PEER_TIMEOUT) -> P2pTransport:
    """A ``P2pTransport`` to ``peer`` for the chain the user trusts, checked by one request.

    Fails early with the one-line errors of ``deltachain light sync --peer`` (a bad multiaddr,
    an unreachable peer, a peer of another chain), so no device starts on a dead link.
    """
    transport = P2pTransport(peer, genesis, timeout=timeout)  # RemoteError: bad multiaddr
    try:
        transport.call("chain_getGenesisHash", [])
    except PeerOnAnotherChain as exc:
        transport.close()
        raise PeerOnAnotherChain(exc.peer, exc.genesis_hash, RPC_CHAIN_HINT) from None
    except BaseException:
        transport.close()
        raise
    return transport


class PeerCaller:
    """A ``Caller`` over the light protocol, for the reads a device's download makes.

    A missing model or block comes back as ``RpcFailed(NOT_FOUND)``, as over JSON-RPC, so
    ``download_model`` reports it the same way; methods outside the light protocol raise
    ``RemoteError`` (send those over ``--rpc``).
    """

    def __init__(self, transport: P2pTransport) -> None:
        self.transport = transport

    def call(self, method: str, *params: Any) -> Any:
        try:
            return self.transport.call(method, list(params))
        except LightProtocolError as exc:
            if exc.reason == "notFound":
                raise RpcFailed(NOT_FOUND, str(exc)) from None
            raise
