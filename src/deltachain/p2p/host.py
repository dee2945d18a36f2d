"""The libp2p side both the node and light clients need, and a blocking dial-only host.

Importing this module imports py-libp2p 0.8.1 with the fixes every user of it needs:

* importing libp2p imports the deprecated ``websockets.legacy`` -> that warning is ignored
  around the import (our pytest settings turn warnings into errors);
* importing libp2p detaches the ``libp2p`` logger (``propagate = False``) -> re-attached at
  WARNING; its auto-connector forces INFO on itself, every failed TCP dial logs an ERROR and so
  does every stream whose protocol the peer refuses -> quietened (callers get typed errors
  instead: ``NetworkError``, ``UnsupportedProtocol``);
* a failed dial blocks the peer for 60 s -> ``unblock`` before each dial, the caller decides
  when to retry.

:class:`ClientHost` runs one libp2p host (no listener, no pubsub) on its own trio thread and
offers ``request(peer, protocol, data)`` to ordinary threads: what a light client needs to talk
to a node's request/response protocols.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass

import trio

from deltachain.errors import InvalidKey, NetworkError, RequestTooLarge, UnsupportedProtocol
from deltachain.p2p.wire import (
    STATUS_OK,
    STATUS_TOO_LARGE,
    Stream,
    read_exact,
    read_frame,
    write_frame,
)

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    import multiaddr
    from libp2p import new_host
    from libp2p.abc import IHost, INetStream
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.keys import KeyPair
    from libp2p.custom_types import TProtocol
    from libp2p.host.exceptions import StreamFailure
    from libp2p.network.config import ConnectionConfig
    from libp2p.network.swarm import Swarm
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

__all__ = [
    "STOP_GRACE",
    "ClientHost",
    "PeerAddress",
    "exchange",
    "key_pair",
    "parse_peer_address",
    "peer_id_from_seed",
    "unblock",
]

log = logging.getLogger("deltachain.p2p")

DIAL_TIMEOUT = 5.0
STOP_GRACE = 5.0
START_TIMEOUT = 15.0
STOP_JOIN_TIMEOUT = 10.0


class _DropNoise(logging.Filter):
    """Failed dials and refused protocols are reported to our callers as typed errors."""

    PREFIXES = ("Failed to open TCP stream", "Failed to open stream to peer")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


def _reattach_libp2p_logging() -> None:
    """Undo what ``import libp2p`` did to its logger, unless LIBP2P_DEBUG asked for it.

    ``libp2p.utils.logging.setup_logging`` (run at import) clears the ``libp2p`` logger's
    handlers and sets ``propagate = False``, so its warnings never reach our handlers.
    """
    if os.environ.get("LIBP2P_DEBUG"):
        return
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.handlers.clear()
    libp2p_logger.propagate = True
    libp2p_logger.setLevel(logging.WARNING)
    # This one forces INFO on itself and logs a dial plan every 30 s.
    logging.getLogger("libp2p.network.auto_connector").setLevel(logging.WARNING)
    for name in ("libp2p.transport.tcp.tcp", "libp2p.host.basic_host"):
        noisy = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in noisy.filters):
            noisy.addFilter(_DropNoise())


_reattach_libp2p_logging()


# --- keys and addresses -----------------------------------------------------------------------


def key_pair(seed: bytes) -> KeyPair:
    """The ed25519 libp2p key pair of a 32-byte seed. Raises InvalidKey."""
    if len(seed) != 32:
        raise InvalidKey(f"node key seed must be 32 bytes, got {len(seed)}")
    try:
        return create_new_key_pair(seed)
    except ValueError as exc:
        raise InvalidKey(f"unusable node key seed: {exc}") from exc


def peer_id_from_seed(seed: bytes) -> str:
    """The base58 libp2p peer id of the ed25519 node key with this 32-byte seed.

    Raises InvalidKey for a seed of the wrong length.
    """
    return ID.from_pubkey(key_pair(seed).public_key).to_base58()


@dataclass(frozen=True)
class PeerAddress:
    """A dialable peer: ``/ip4/…/tcp/…/p2p/<id>`` parsed once."""

    text: str
    info: PeerInfo

    @property
    def peer_id(self) -> str:
        return str(self.info.peer_id.to_base58())


def parse_peer_address(addr: str) -> PeerAddress:
    """Raises NetworkError unless ``addr`` is a multiaddr ending in ``/p2p/<peer id>``."""
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception:
        raise NetworkError(
            f"{addr!r} is not a peer multiaddr like /ip4/127.0.0.1/tcp/30333/p2p/12D3KooW… "
            "(a node logs its own as 'network listening on …')"
        ) from None
    return PeerAddress(addr, info)


def unblock(host: IHost, peer: ID) -> None:
    """A failed dial blocks the peer for 60 s in py-libp2p; our callers decide on retries."""
    network = host.get_network()
    if isinstance(network, Swarm) and peer not in network.connections:
        network.unblock_peer(peer)


# --- the requesting half of a request/response exchange ----------------------------------------


async def _send_request(stream: Stream, data: bytes, scope: trio.CancelScope) -> None:
    with scope:
        try:
            await write_frame(stream, data)
        except Exception as exc:  # the reader sees the reset or the refusal
            log.debug("writing a request failed: %r", exc)


async def exchange(
    host: IHost,
    nursery: trio.Nursery,
    peer: ID,
    protocol: str,
    data: bytes,
    max_response: int,
) -> bytes:
    """Open a stream to a connected ``peer``, send one request frame, read the response.

    The request is written in the background (``nursery``) while the response is read: a
    server that refuses the request (too large) answers without reading it, and yamux flow
    control would block our write. Raises UnsupportedProtocol if the peer does not speak
    ``protocol``, RequestTooLarge if either side's cap is exceeded, NetworkError otherwise.
    """
    try:
        stream: INetStream = await host.new_stream(peer, [TProtocol(protocol)])
    except StreamFailure:
        raise UnsupportedProtocol(f"{peer} does not speak {protocol}") from None
    writing = trio.CancelScope()
    try:
        nursery.start_soon(_send_request, stream, data, writing)
        status = (await read_exact(stream, 1))[0]
        body = await read_frame(stream, max_response, "response")
    except BaseException:
        with contextlib.suppress(Exception):
            await stream.reset()
        raise
    finally:
        writing.cancel()
    with contextlib.suppress(Exception):
        await stream.close()
    if status == STATUS_OK:
        return body
    reason = body.decode("utf-8", "replace")[:200]
    if status == STATUS_TOO_LARGE:
        raise RequestTooLarge(f"{peer} on {protocol}: {reason}")
    raise NetworkError(f"{peer} failed to answer on {protocol}: {reason}")


# --- a dial-only host for ordinary threads ----------------------------------------------------


class ClientHost:
    """One libp2p host on its own trio thread; ``request`` blocks the calling thread.

    No listener, no pubsub: it dials, asks and reads. ``close`` (or leaving the ``with``
    block) closes the host and joins the thread, so nothing outlives it.
    """

    def __init__(self, seed: bytes | None = None) -> None:
        self._key_pair = key_pair(seed) if seed is not None else create_new_key_pair()
        self.peer_id = ID.from_pubkey(self._key_pair.public_key).to_base58()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._host: IHost | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._error: BaseException | None = None
        self._closed = False

    def __enter__(self) -> ClientHost:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the trio thread; returns once the host runs. Raises NetworkError."""
        if self._thread is not None:
            return
        if self._closed:
            raise NetworkError("this p2p client was closed")
        self._thread = threading.Thread(
            target=self._thread_main, name=f"libp2p-client-{self.peer_id[-8:]}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._token is None:
            self.close()
            raise NetworkError(f"libp2p did not start: {self._error!r}")

    def request(
        self,
        peer: PeerAddress,
        protocol: str,
        data: bytes,
        *,
        timeout: float,
        max_response: int,
    ) -> bytes:
        """Dial ``peer`` if not connected, send ``data`` on ``protocol``, return the response.

        Raises NetworkError (unreachable, no answer within ``timeout``, stopped),
        UnsupportedProtocol, RequestTooLarge.
        """
        self.start()
        token = self._token
        if token is None or self._closed:
            raise NetworkError("this p2p client was closed")
        try:
            return trio.from_thread.run(
                self._request, peer, protocol, data, timeout, max_response, trio_token=token
            )
        except trio.RunFinishedError:
            raise NetworkError("this p2p client was closed") from None

    def close(self) -> None:
        """Close the host and join its thread. Idempotent; bounded in time."""
        self._closed = True
        thread, token, stop = self._thread, self._token, self._stop
        if thread is None:
            return
        if token is not None and stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        thread.join(STOP_JOIN_TIMEOUT)
        if thread.is_alive():
            log.error("libp2p client thread did not stop within %.0f s", STOP_JOIN_TIMEOUT)
        self._thread = None

    # -- the trio thread ---------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as exc:
            self._error = exc
            log.debug("libp2p client thread failed", exc_info=exc)
        finally:
            self._token = self._host = self._nursery = None
            self._ready.set()

    async def _run(self) -> None:
        self._stop = trio.Event()
        host = new_host(
            key_pair=self._key_pair,
            connection_config=ConnectionConfig(min_connections=0, low_watermark=0),
        )
        try:
            async with host.run([]), trio.open_nursery() as nursery:
                self._host, self._nursery = host, nursery
                self._token = trio.lowlevel.current_trio_token()
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._host = self._nursery = None
            with trio.move_on_after(STOP_GRACE) as scope:
                scope.shield = True
                await host.close()

    async def _request(
        self, peer: PeerAddress, protocol: str, data: bytes, timeout: float, max_response: int
    ) -> bytes:
        host, nursery = self._host, self._nursery
        if host is None or nursery is None:
            raise NetworkError("this p2p client was closed")
        try:
            with trio.fail_after(timeout):
                if peer.info.peer_id not in host.get_network().connections:
                    unblock(host, peer.info.peer_id)
                    try:
                        with trio.fail_after(min(timeout, DIAL_TIMEOUT)):
                            await host.connect(peer.info)
                    except Exception as exc:  # TooSlowError included
                        log.debug("dial %s failed: %r", peer.text, exc)
                        raise NetworkError(
                            f"cannot reach a node at {peer.text}; check that it runs and that "
                            "this is the address it logs as 'network listening on …'"
                        ) from None
                return await exchange(
                    host, nursery, peer.info.peer_id, protocol, data, max_response
                )
        except trio.TooSlowError:
            raise NetworkError(f"no answer from {peer.text} within {timeout} s") from None
