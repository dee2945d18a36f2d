"""The network adapter: py-libp2p (trio-only) on one dedicated thread, an asyncio face.

With ``deltachain.p2p`` (the framing and the libp2p import, shared with light clients) this is
the only code that imports libp2p. One thread runs ``trio.run()`` with the libp2p host,
GossipSub and the request/response protocols; the node talks to it through :class:`Network`,
whose methods are called on the node's asyncio loop:

- ``publish(topic, data)`` is non-blocking and thread-safe: it appends to an outbox that a
  trio task drains, paced by the depth of libp2p's per-peer send queues;
- gossip arrives on ``inbound`` (an ``asyncio.Queue``; when full the oldest message is dropped
  and counted in ``dropped``) — our own publications never come back;
- ``request(peer, protocol, data)`` opens one libp2p stream per request and speaks our own
  framing (4-byte big-endian length, then the payload, with a cap checked before the payload is
  read, ``deltachain.p2p.wire``); the serving side runs the registered asyncio handler on the
  node's loop. A protocol registered ``open=True`` (the light-client protocol) is served to any
  peer, even with ``reserved_only``: such an outsider may stay connected while it keeps asking
  (``OUTSIDER_IDLE`` seconds, at most ``MAX_OUTSIDERS`` of them) and never counts as a peer for
  gossip or sync. Every non-reserved peer gets ``OPEN_REQUESTS_PER_MINUTE`` requests a minute
  on open protocols; beyond that it is answered with an error status without asking the chain
  thread.

Hand-offs: into trio with ``TrioToken.run_sync_soon``; back into asyncio with
``loop.call_soon_threadsafe`` and ``asyncio.run_coroutine_threadsafe``.

py-libp2p 0.8.1 traps this module works around (each one measured):

1. gossip RPCs over 1 MiB are dropped silently -> ``publish`` refuses more than
   ``max_message_bytes`` (which must stay below 1 MiB minus the envelope);
2. GossipSub's per-peer spam limit (10 msgs/s per topic, own publishes included) and its
   IHAVE/IWANT rate limits drop messages -> turned off;
3. adaptive gossip stretches the heartbeat to 30-60 s on small networks -> off, fixed 1 s;
4. ``GossipSub._check_equivocation`` keeps full copies of up to ~1000 recent messages ->
   :class:`_LeanGossipSub` keeps a bounded map of SHA-256 digests; the message cache keeps 3
   heartbeats;
5. ``read_exactly`` gives up after 101 partial reads -> our own framed reader loops on ``read``;
6. per-peer send queues and subscription channels hold 32 entries and drop the rest, and there
   is no back-pressure -> publishing is paced on send-queue depth, and delivery bypasses the
   subscription channel (:class:`_BridgePubsub`);
7. a failed dial blocks the peer for 60 s and bootstrap gives up after 3 failures -> our own
   reconnect loop (``unblock_peer`` then ``connect``, every second, concurrently), and
   ``request`` unblocks a peer before dialling it;
8. importing libp2p detaches the ``libp2p`` logger (``propagate = False``) -> re-attached at
   WARNING; its auto-connector forces INFO on itself and every failed TCP dial logs an ERROR ->
   quietened (``deltachain.p2p.host``; reachability changes are logged here instead);
9. TCP listeners bind with ``SO_REUSEPORT``, so a port held by another libp2p node does not fail
   to bind (the kernel would split inbound connections between the two) -> probed first with a
   plain bind;
10. pubsub sequence numbers start at ``int(time.time())`` and count up, so a node that published
    more than one message per second and restarts re-uses ids its peers still hold as "seen"
    (and its gossip vanishes for two minutes) -> seeded from ``time.time_ns()``;
11. ``Pubsub`` starts a sweeper *thread* for its seen-message cache and never stops it ->
    stopped on shutdown;
12. importing libp2p imports the deprecated ``websockets.legacy`` -> that warning is ignored
    around the import (here and in ``deltachain.p2p.host``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import hashlib
import logging
import socket
import threading
import time
import warnings
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio
from google.protobuf.message import DecodeError

from deltachain.errors import DeltachainError, InvalidKey, NetworkError, RequestTooLarge
from deltachain.node.ratelimit import KeyedBuckets
from deltachain.p2p.host import exchange, key_pair, peer_id_from_seed, unblock
from deltachain.p2p.wire import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_TOO_LARGE,
    read_frame,
    write_frame,
)

with warnings.catch_warnings():
    # libp2p 0.8.1 imports the deprecated ``websockets.legacy`` at import time; under
    # ``-W error`` (our pytest settings) that import would fail.
    warnings.filterwarnings("ignore", "websockets.legacy is deprecated", DeprecationWarning)
    import multiaddr
    from libp2p import new_host
    from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
    from libp2p.custom_types import TProtocol
    from libp2p.network.config import ConnectionConfig
    from libp2p.network.swarm import Swarm
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
    from libp2p.peer.peerstore import PeerStoreError
    from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.pubsub.rpc_queue import DefaultMaxMessageSize
    from libp2p.tools.anyio_service import background_trio_service

log = logging.getLogger("deltachain.network")

__all__ = [
    "GossipMessage",
    "Network",
    "NetworkConfig",
    "RequestHandler",
    "peer_id_from_seed",
]

T = TypeVar("T")

RequestHandler = Callable[[str, bytes], Awaitable[bytes]]

# Gossip: libp2p drops RPCs over 1 MiB; leave room for the envelope (ids, seqno, key, signature,
# topic names, sender record).
GOSSIP_HARD_LIMIT = DefaultMaxMessageSize - 16 * 1024
INBOUND_QUEUE_SIZE = 4096
OUTBOX_SIZE = 4096
HEARTBEAT_SECONDS = 1
# Publish pacing: libp2p's per-peer send queue holds 32 RPCs and drops the rest.
SEND_QUEUE_HIGH_WATER = 16
SEND_QUEUE_MAX_WAIT = 2.0

# Connections.
RECONNECT_INTERVAL = 1.0
DIAL_TIMEOUT = 5.0

# Request/response (framing in deltachain.p2p.wire).
REQUEST_READ_TIMEOUT = 10.0
HANDLER_TIMEOUT = 60.0
RESPONSE_WRITE_TIMEOUT = 60.0

# Lifecycle.
START_TIMEOUT = 15.0
STOP_GRACE = 5.0
STOP_JOIN_TIMEOUT = 10.0

EQUIVOCATION_MEMORY = 4096

# Peers outside the reserved set that use an open protocol (light clients).
OUTSIDER_IDLE = 30.0
MAX_OUTSIDERS = 64
OPEN_REQUESTS_PER_MINUTE = 3000
"""Requests a minute one non-reserved peer may make on open protocols (the light protocol):
50/s sustained serves a whole device fleet behind one ``P2pTransport``, yet bounds what one
peer id can put on the chain thread."""


# --- configuration and values ---------------------------------------------------------------


@dataclass(frozen=True)
class NetworkConfig:
    node_key_seed: bytes
    listen_host: str = "127.0.0.1"
    listen_port: int = 30333
    bootnodes: tuple[str, ...] = ()
    reserved_only: bool = False
    reserved_peers: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    max_message_bytes: int = 1_000_000
    max_frame_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if len(self.node_key_seed) != 32:
            raise InvalidKey(f"node key seed must be 32 bytes, got {len(self.node_key_seed)}")
        if not 0 <= self.listen_port <= 65535:
            raise ValueError(f"listen port {self.listen_port} is out of range")
        if not 0 < self.max_message_bytes <= GOSSIP_HARD_LIMIT:
            raise ValueError(
                f"max_message_bytes must be in 1..{GOSSIP_HARD_LIMIT} "
                "(libp2p silently drops larger gossip)"
            )
        if self.max_frame_bytes <= 0 or self.max_frame_bytes >= 1 << 32:
            raise ValueError("max_frame_bytes must fit a 4-byte length prefix")
        for addr in self.bootnodes:
            _parse_bootnode(addr)
        for peer in self.reserved_peers:
            _parse_peer_id(peer)


@dataclass(frozen=True)
class GossipMessage:
    topic: str
    sender: str
    data: bytes


def _parse_bootnode(addr: str) -> PeerInfo:
    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(addr))
    except Exception as exc:
        raise ValueError(f"bootnode {addr!r} is not a multiaddr ending in /p2p/<id>") from exc


def _parse_peer_id(peer: str) -> ID:
    try:
        return ID.from_base58(peer)
    except Exception as exc:
        raise ValueError(f"{peer!r} is not a base58 peer id") from exc


# --- libp2p subclasses ------------------------------------------------------------------------


class _LeanGossipSub(GossipSub):
    """GossipSub that remembers message digests, not messages, for equivocation checks.

    Upstream stores every message object under ``from_id + seqno`` (up to ~1000 of them, trimmed
    to 500 each heartbeat): with 500 KB blocks that alone held hundreds of MB.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._digests: OrderedDict[bytes, bytes] = OrderedDict()
        # GossipSub v1.4 IHAVE/IWANT rate limits (10/s) also drop traffic on a busy link.
        self.max_iwant_requests_per_second = float("inf")
        self.max_ihave_messages_per_second = float("inf")

    def _check_equivocation(self, msg: rpc_pb2.Message) -> bool:
        key = msg.from_id + msg.seqno
        h = hashlib.sha256()
        for topic in msg.topicIDs:
            h.update(topic.encode() + b"\x00")
        h.update(msg.data)
        digest = h.digest()
        seen = self._digests.get(key)
        if seen is not None:
            if seen != digest:
                log.warning("gossip equivocation from %s dropped", ID(msg.from_id))
                return False
            return True
        self._digests[key] = digest
        while len(self._digests) > EQUIVOCATION_MEMORY:
            self._digests.popitem(last=False)
        return True


class _BridgePubsub(Pubsub):
    """Pubsub that hands every delivered message to a callback instead of a 32-slot channel,
    writes one RPC at a time per stream, and survives a peer's unreadable frame."""

    def __init__(
        self, host: IHost, router: GossipSub, sink: Callable[[rpc_pb2.Message], None]
    ) -> None:
        super().__init__(host, router)
        self._sink = sink
        self._write_locks: weakref.WeakKeyDictionary[INetStream, trio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        self._sink(publish_message)

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        """Yamux splits a write into window-sized chunks, each under its own lock, so two
        concurrent RPCs on one stream (a forwarded batch and a heartbeat's control message)
        could interleave and the peer would read garbage (seen under transaction load:
        "Error parsing message with type 'pubsub.pb.RPC'"). One whole RPC at a time."""
        lock = self._write_locks.get(stream)
        if lock is None:
            lock = self._write_locks[stream] = trio.Lock()
        async with lock:
            return bool(await super().write_msg(stream, rpc_msg))

    async def continuously_read_stream(self, stream: INetStream) -> None:
        """A frame that does not parse ends that peer's connection (it reconnects), never the
        whole libp2p service: in py-libp2p 0.8.1 the DecodeError escapes into the swarm's
        nursery and stops every connection of this node."""
        try:
            await super().continuously_read_stream(stream)
        except DecodeError as exc:
            log.warning(
                "unreadable gossip from %s (%s); closing that connection",
                stream.muxed_conn.peer_id,
                exc,
            )
            with contextlib.suppress(Exception):
                await stream.muxed_conn.close()


class _ConnectionWatcher(INotifee):
    def __init__(self, network: Network) -> None:
        self._network = network

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._network._on_connected(conn.muxed_conn.peer_id)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._network._refresh_peers()

    async def listen(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, maddr: multiaddr.Multiaddr) -> None:
        return None


# --- asyncio <-> trio helpers -----------------------------------------------------------------


def _settle(fut: asyncio.Future[T], result: T | None, error: BaseException | None) -> None:
    """Runs on the asyncio loop."""
    if fut.done():
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)  # type: ignore[arg-type]


def _network_error_in(exc: BaseException) -> NetworkError | None:
    """Our own NetworkError, possibly wrapped in trio's exception groups."""
    if isinstance(exc, NetworkError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _network_error_in(inner)) is not None:
                return found
    return None


async def _call(handler: RequestHandler, peer: str, request: bytes) -> bytes:
    """Runs on the asyncio loop: any awaitable handler as a coroutine."""
    response = await handler(peer, request)
    if not isinstance(response, bytes | bytearray | memoryview):
        raise TypeError(f"request handler returned {type(response).__name__}, not bytes")
    return bytes(response)


async def _await_concurrent(fut: concurrent.futures.Future[T]) -> T:
    """Wait in trio for a future completed on another thread; cancel it if we are cancelled."""
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def wake(_: concurrent.futures.Future[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        fut.cancel()
        raise
    return fut.result()


@dataclass
class _RequestJob:
    peer: ID
    protocol: str
    data: bytes
    timeout: float
    fut: asyncio.Future[bytes]
    loop: asyncio.AbstractEventLoop
    scope: trio.CancelScope | None = None
    cancelled: bool = False


class _Runtime:
    """What exists only while the trio thread runs (set and cleared on the trio thread)."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self.token = token
        self.stop = trio.Event()
        self.outer: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None
        self.host: IHost | None = None
        self.wake_pump = trio.Event()


# --- the adapter ------------------------------------------------------------------------------


class Network:
    """libp2p behind an asyncio API. Create, ``set_request_handler``, ``start``, ..., ``stop``."""

    def __init__(self, config: NetworkConfig) -> None:
        self.config = config
        self._key_pair = key_pair(config.node_key_seed)
        self._id = ID.from_pubkey(self._key_pair.public_key)
        self._peer_id = self._id.to_base58()
        self._targets = [
            info
            for info in (_parse_bootnode(a) for a in config.bootnodes)
            if info.peer_id != self._id
        ]
        self._allowed: frozenset[ID] = frozenset(
            [info.peer_id for info in self._targets]
            + [_parse_peer_id(p) for p in config.reserved_peers]
        )
        self._topics = tuple(dict.fromkeys(config.topics))
        self._handlers: dict[str, RequestHandler] = {}
        self._request_caps: dict[str, int] = {}
        self._open: set[str] = set()
        # outsiders (not reserved) using an open protocol -> trio time of their last request
        self._outsiders: dict[ID, float] = {}
        # open-protocol request budgets of non-reserved peers (trio thread only)
        self.open_requests_per_minute = OPEN_REQUESTS_PER_MINUTE
        self._open_budgets = KeyedBuckets(OPEN_REQUESTS_PER_MINUTE)
        self.rate_limited = 0

        self.inbound: asyncio.Queue[GossipMessage] = asyncio.Queue(INBOUND_QUEUE_SIZE)
        self.dropped = 0
        self.publish_dropped = 0

        self._outbox: deque[tuple[str, bytes]] = deque()
        self._outbox_lock = threading.Lock()
        self._peers: tuple[str, ...] = ()
        self._listen_addr: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._rt: _Runtime | None = None
        self._finished: asyncio.Future[None] | None = None
        self._pending: set[asyncio.Future[bytes]] = set()
        self._started = False
        self._stopped = False
        self._stop_requested = threading.Event()

    # -- public API --------------------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self._peer_id

    @property
    def listen_addr(self) -> str:
        if self._listen_addr is None:
            raise NetworkError("the network is not listening (call start() first)")
        return self._listen_addr

    def set_request_handler(
        self,
        protocol: str,
        handler: RequestHandler,
        *,
        open_to_all: bool = False,
        max_request: int | None = None,
    ) -> None:
        """Serve ``protocol`` with an asyncio coroutine ``handler(peer_id, request) -> bytes``.

        ``open_to_all``: also serve peers outside the reserved set (light clients); they never
        become gossip or sync peers. ``max_request``: a request cap below ``max_frame_bytes``,
        checked before the request is read (answered ``STATUS_TOO_LARGE``).
        """
        if self._started:
            raise RuntimeError("set_request_handler must be called before start()")
        self._handlers[protocol] = handler
        if open_to_all:
            self._open.add(protocol)
        if max_request is not None:
            if not 0 < max_request <= self.config.max_frame_bytes:
                raise ValueError(f"max_request must be in 1..{self.config.max_frame_bytes}")
            self._request_caps[protocol] = max_request

    async def start(self) -> None:
        """Start the libp2p thread; return once it listens.

        Raises NetworkError if the address cannot be bound or libp2p fails to start.
        """
        if self._started:
            raise RuntimeError("a Network can be started only once")
        self._started = True
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._probe_port()
        ready: asyncio.Future[str] = loop.create_future()
        self._finished = loop.create_future()
        self._thread = threading.Thread(
            target=self._thread_main,
            args=(loop, ready),
            name=f"libp2p-{self._peer_id[-8:]}",
            daemon=True,
        )
        self._thread.start()
        try:
            async with asyncio.timeout(START_TIMEOUT):
                self._listen_addr = await asyncio.shield(ready)
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, NetworkError):
                raise
            if isinstance(exc, TimeoutError):
                raise NetworkError(f"libp2p did not start within {START_TIMEOUT} s") from exc
            if isinstance(exc, Exception):
                raise NetworkError(f"libp2p failed to start: {exc!r}") from exc
            raise
        log.info("network listening on %s", self._listen_addr)

    async def stop(self) -> None:
        """Close the host, end the trio thread and join it. Idempotent; bounded in time."""
        if self._stopped or self._thread is None:
            self._stopped = True
            return
        self._stopped = True
        # Set the flag before reading ``_rt``; the thread publishes ``_rt`` before reading the flag,
        # so a stop that races with startup is seen by one side or the other.
        self._stop_requested.set()
        rt = self._rt
        if rt is not None:
            with contextlib.suppress(trio.RunFinishedError):
                rt.token.run_sync_soon(self._begin_stop, rt)
        finished = self._finished
        if finished is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_JOIN_TIMEOUT):
                    await asyncio.shield(finished)
        self._thread.join(timeout=1.0)
        if self._thread.is_alive():
            log.error("libp2p thread did not stop within %.0f s", STOP_JOIN_TIMEOUT + 1)
        for fut in list(self._pending):
            _settle(fut, None, NetworkError("the network stopped"))
        self._pending.clear()
        self._peers = ()

    def publish(self, topic: str, data: bytes) -> None:
        """Queue ``data`` for gossip on ``topic``. Thread-safe, never blocks.

        Raises RequestTooLarge over ``max_message_bytes``, NetworkError if not running.
        """
        if len(data) > self.config.max_message_bytes:
            raise RequestTooLarge(
                f"gossip message of {len(data)} bytes is over the cap of "
                f"{self.config.max_message_bytes} bytes; fetch it over a stream instead"
            )
        rt = self._running()
        with self._outbox_lock:
            if len(self._outbox) >= OUTBOX_SIZE:
                self._outbox.popleft()
                self.publish_dropped += 1
            self._outbox.append((topic, bytes(data)))
        try:
            rt.token.run_sync_soon(self._wake_pump, rt)
        except trio.RunFinishedError as exc:
            raise NetworkError("the network stopped") from exc

    async def request(
        self, peer_id: str, protocol: str, data: bytes, timeout: float = 10.0
    ) -> bytes:
        """Send one request frame on a new stream and return the response frame.

        Raises RequestTooLarge if the request or the response is over ``max_frame_bytes``,
        NetworkError if the peer cannot be reached, does not speak ``protocol``, fails to answer
        within ``timeout`` or its handler failed (retry elsewhere).
        """
        if len(data) > self.config.max_frame_bytes:
            raise RequestTooLarge(
                f"request of {len(data)} bytes is over the cap of "
                f"{self.config.max_frame_bytes} bytes"
            )
        peer = _parse_peer_id_network(peer_id)
        rt = self._running()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        job = _RequestJob(peer, protocol, bytes(data), timeout, fut, loop)
        self._pending.add(fut)
        try:
            try:
                rt.token.run_sync_soon(self._spawn_request, rt, job)
            except trio.RunFinishedError as exc:
                raise NetworkError("the network stopped") from exc
            try:
                # The trio side enforces ``timeout``; this is only a backstop.
                async with asyncio.timeout(timeout + 5.0):
                    return await asyncio.shield(fut)
            except TimeoutError as exc:
                raise NetworkError(f"request to {peer_id} timed out") from exc
        except BaseException:
            if not fut.done():
                with contextlib.suppress(trio.RunFinishedError):
                    rt.token.run_sync_soon(self._cancel_request, job)
                fut.cancel()
            raise
        finally:
            self._pending.discard(fut)

    def peers(self) -> list[str]:
        """Connected peer ids (a snapshot refreshed by the libp2p thread), without outsiders
        that only use open protocols (light clients)."""
        return list(self._peers)

    # -- asyncio side helpers ----------------------------------------------------------------

    def _running(self) -> _Runtime:
        rt = self._rt
        if rt is None or self._stopped:
            raise NetworkError("the network is not running")
        return rt

    def _probe_port(self) -> None:
        """Fail fast if the port is taken: libp2p binds with SO_REUSEPORT, which would let two
        nodes share a port silently (the kernel would split inbound connections between them)."""
        if self.config.listen_port == 0:
            return
        family = socket.AF_INET6 if ":" in self.config.listen_host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.config.listen_host, self.config.listen_port))
            except OSError as exc:
                reason = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
                raise NetworkError(
                    f"cannot listen on {self.config.listen_host}:{self.config.listen_port}: "
                    f"{reason}"
                ) from exc

    def _deliver(self, message: GossipMessage) -> None:
        """Runs on the asyncio loop."""
        if self.inbound.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.inbound.get_nowait()
            self.dropped += 1
        self.inbound.put_nowait(message)

    def _to_loop(self, fn: Callable[..., object], *args: object) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # loop closed
            loop.call_soon_threadsafe(fn, *args)

    # -- the trio thread ---------------------------------------------------------------------

    def _thread_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[str]) -> None:
        try:
            trio.run(self._trio_main, loop, ready)
        except BaseException as exc:
            error = _network_error_in(exc)
            if error is None:
                log.error("libp2p thread failed", exc_info=exc)
                error = NetworkError(f"libp2p failed: {exc!r}")
            self._to_loop(_settle, ready, None, error)
        finally:
            self._rt = None
            self._peers = ()
            self._to_loop(_settle, ready, None, NetworkError("stopped before listening"))
            if self._finished is not None:
                self._to_loop(_settle, self._finished, None, None)

    async def _trio_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[str]) -> None:
        rt = _Runtime(trio.lowlevel.current_trio_token())
        self._rt = rt
        try:
            with trio.CancelScope() as outer:
                rt.outer = outer
                if self._stop_requested.is_set():
                    self._begin_stop(rt)
                await self._serve(rt, loop, ready)
        finally:
            rt.host = rt.nursery = None

    async def _serve(
        self, rt: _Runtime, loop: asyncio.AbstractEventLoop, ready: asyncio.Future[str]
    ) -> None:
        listen = multiaddr.Multiaddr(
            f"/{'ip6' if ':' in self.config.listen_host else 'ip4'}/{self.config.listen_host}"
            f"/tcp/{self.config.listen_port}"
        )
        host = new_host(
            key_pair=self._key_pair,
            listen_addrs=[listen],
            # min_connections=0 keeps libp2p's auto-connector out of its 1 s "critical" polling;
            # our own reconnect loop keeps the validator mesh.
            connection_config=ConnectionConfig(min_connections=0, low_watermark=0),
        )
        router = _LeanGossipSub(
            protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11],
            degree=6,
            degree_low=4,
            degree_high=12,
            time_to_live=30,
            gossip_window=2,
            gossip_history=3,
            heartbeat_initial_delay=0.1,
            heartbeat_interval=HEARTBEAT_SECONDS,
            prune_back_off=10,
            unsubscribe_back_off=5,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            eclipse_protection_enabled=False,
        )
        pubsub = _BridgePubsub(host, router, self._on_gossip)
        # Sequence numbers must not repeat across restarts (peers remember ids for 120 s).
        pubsub.counter = time.time_ns()
        if self.config.reserved_only:
            for topic in self._topics:
                pubsub.set_topic_validator(topic, self._gossip_allowed, False)
        for protocol in self._handlers:
            host.set_stream_handler(
                TProtocol(protocol), functools.partial(self._serve_stream, protocol)
            )
        host.get_network().register_notifee(_ConnectionWatcher(self))
        rt.host = host

        try:
            async with host.run([listen]):
                addrs = host.get_addrs()
                if not host.get_transport_addrs() or not addrs:
                    raise NetworkError(f"cannot listen on {listen}")
                try:
                    async with background_trio_service(pubsub), background_trio_service(router):
                        await pubsub.wait_until_ready()
                        for topic in self._topics:
                            await pubsub.subscribe(topic)
                        async with trio.open_nursery() as nursery:
                            rt.nursery = nursery
                            nursery.start_soon(self._publish_pump, rt, pubsub)
                            nursery.start_soon(self._reconnect_loop, rt, host)
                            loop.call_soon_threadsafe(_settle, ready, str(addrs[0]), None)
                            await rt.stop.wait()
                            rt.nursery = None
                            nursery.cancel_scope.cancel()
                finally:
                    with trio.move_on_after(STOP_GRACE) as scope:
                        scope.shield = True
                        await host.close()
        finally:
            # Pubsub's seen-message cache runs a sweeper *thread* that nothing else stops.
            pubsub.seen_messages.stop()

    def _begin_stop(self, rt: _Runtime) -> None:
        """Runs on the trio thread: ask for a graceful exit, bounded by STOP_GRACE."""
        rt.stop.set()
        if rt.outer is not None:
            rt.outer.deadline = trio.current_time() + STOP_GRACE

    # -- gossip (trio thread) ----------------------------------------------------------------

    def _wake_pump(self, rt: _Runtime) -> None:
        rt.wake_pump.set()

    def _pop_outbox(self) -> tuple[str, bytes] | None:
        with self._outbox_lock:
            return self._outbox.popleft() if self._outbox else None

    async def _publish_pump(self, rt: _Runtime, pubsub: _BridgePubsub) -> None:
        stalled: set[ID] = set()
        while True:
            rt.wake_pump = trio.Event()
            while (item := self._pop_outbox()) is not None:
                topic, data = item
                await self._wait_for_send_room(pubsub, stalled)
                try:
                    await pubsub.publish(topic, data)
                except Exception:
                    log.warning("gossip publish on %s failed", topic, exc_info=True)
            await rt.wake_pump.wait()

    @staticmethod
    async def _wait_for_send_room(pubsub: _BridgePubsub, stalled: set[ID]) -> None:
        """Back-pressure libp2p does not give us: wait while a peer's send queue is deep.

        A peer whose queue stays deep for SEND_QUEUE_MAX_WAIT is marked stalled and not waited
        for again until its queue drains, so one stuck peer cannot throttle gossip to the rest.
        """
        deadline = trio.current_time() + SEND_QUEUE_MAX_WAIT
        while True:
            deep = {p for p, q in pubsub.peer_queues.items() if len(q) >= SEND_QUEUE_HIGH_WATER}
            stalled &= deep
            waiting = deep - stalled
            if not waiting:
                break
            if trio.current_time() >= deadline:
                log.debug("gossip send queues of %d peer(s) stay full", len(waiting))
                stalled |= waiting
                break
            await trio.sleep(0.002)
        await trio.lowlevel.checkpoint()

    def _on_gossip(self, msg: rpc_pb2.Message) -> None:
        """Every message libp2p accepted (ours included); runs on the trio thread."""
        origin = ID(msg.from_id)
        if origin == self._id:
            return
        if self.config.reserved_only and origin not in self._allowed:
            return
        sender = origin.to_base58()
        for topic in msg.topicIDs:
            if topic in self._topics:
                self._to_loop(self._deliver, GossipMessage(topic, sender, bytes(msg.data)))

    def _gossip_allowed(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        return forwarder == self._id or (
            forwarder in self._allowed and ID(msg.from_id) in self._allowed | {self._id}
        )

    # -- connections (trio thread) -----------------------------------------------------------

    def _refresh_peers(self) -> None:
        rt = self._rt
        if rt is None or rt.host is None:
            return
        connected = set(rt.host.get_connected_peers())
        for gone in set(self._outsiders) - connected:
            del self._outsiders[gone]
        self._peers = tuple(
            peer.to_base58()
            for peer in connected
            if peer != self._id
            and peer not in self._outsiders
            and (peer in self._allowed or not self.config.reserved_only)
        )

    def _on_connected(self, peer: ID) -> None:
        rt = self._rt
        outsider = self.config.reserved_only and peer not in self._allowed
        if outsider and self._open and len(self._outsiders) < MAX_OUTSIDERS:
            # may stay while it uses an open protocol (a light client about to ask)
            self._outsiders[peer] = trio.current_time()
        # Without a nursery yet, the reconnect loop's sweep evicts it within a second.
        elif outsider and rt is not None and rt.nursery is not None:
            rt.nursery.start_soon(self._evict, rt, peer)
        self._refresh_peers()

    async def _evict(self, rt: _Runtime, peer: ID) -> None:
        host = rt.host
        if host is None:
            return
        log.debug("disconnecting %s: not a reserved peer", peer)
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                await host.disconnect(peer)
            except Exception:
                log.debug("disconnect from %s failed", peer, exc_info=True)
        self._refresh_peers()

    def _dial_targets(self, host: IHost) -> list[PeerInfo]:
        targets = list(self._targets)
        known = {info.peer_id for info in targets}
        peerstore = host.get_peerstore()
        for peer in self._allowed - known:
            with contextlib.suppress(PeerStoreError):  # no (unexpired) addresses known
                if addrs := peerstore.addrs(peer):
                    targets.append(PeerInfo(peer, addrs))
        return targets

    async def _reconnect_loop(self, rt: _Runtime, host: IHost) -> None:
        dialing: set[ID] = set()
        reachable: dict[ID, bool] = {}
        async with trio.open_nursery() as dials:
            while True:
                connected = set(host.get_connected_peers())
                for info in self._dial_targets(host):
                    up = info.peer_id in connected
                    if reachable.get(info.peer_id, False) != up:
                        if up:
                            log.info("connected to %s", info.peer_id)
                        else:
                            log.info(
                                "lost %s; redialling every %.0f s", info.peer_id, RECONNECT_INTERVAL
                            )
                    reachable[info.peer_id] = up
                    if not up and info.peer_id not in dialing:
                        dialing.add(info.peer_id)
                        dials.start_soon(self._dial, host, info, dialing)
                if self.config.reserved_only:
                    idle = trio.current_time() - OUTSIDER_IDLE
                    for peer in connected - self._allowed - {self._id}:
                        if self._outsiders.get(peer, idle) <= idle:
                            self._outsiders.pop(peer, None)
                            dials.start_soon(self._evict, rt, peer)
                self._refresh_peers()
                await trio.sleep(RECONNECT_INTERVAL)

    @staticmethod
    async def _dial(host: IHost, info: PeerInfo, dialing: set[ID]) -> None:
        try:
            network = host.get_network()
            if isinstance(network, Swarm):
                network.unblock_peer(info.peer_id)  # a failed dial blocks the peer for 60 s
            with trio.move_on_after(DIAL_TIMEOUT):
                await host.connect(info)
        except Exception as exc:
            log.debug("dial %s failed: %s", info.peer_id, exc)
        finally:
            dialing.discard(info.peer_id)

    # -- request/response (trio thread) ------------------------------------------------------

    def _spawn_request(self, rt: _Runtime, job: _RequestJob) -> None:
        if rt.nursery is None:
            with contextlib.suppress(RuntimeError):  # loop closed
                job.loop.call_soon_threadsafe(
                    _settle, job.fut, None, NetworkError("the network is stopping")
                )
            return
        rt.nursery.start_soon(self._run_request, rt, job)

    @staticmethod
    def _cancel_request(job: _RequestJob) -> None:
        job.cancelled = True
        if job.scope is not None:
            job.scope.cancel()

    async def _run_request(self, rt: _Runtime, job: _RequestJob) -> None:
        result: bytes | None = None
        error: BaseException | None = None
        with trio.CancelScope() as scope:
            job.scope = scope
            if job.cancelled:
                scope.cancel()
            try:
                result = await self._exchange(rt, job)
            except NetworkError as exc:
                error = exc
            except trio.TooSlowError:
                error = NetworkError(
                    f"no answer from {job.peer} on {job.protocol} within {job.timeout} s"
                )
            except Exception as exc:
                error = NetworkError(f"request to {job.peer} on {job.protocol} failed: {exc!r}")
        if scope.cancelled_caught and error is None and result is None:
            error = NetworkError("request cancelled (the network is stopping)")
        with contextlib.suppress(RuntimeError):
            job.loop.call_soon_threadsafe(_settle, job.fut, result, error)

    async def _exchange(self, rt: _Runtime, job: _RequestJob) -> bytes:
        host, nursery = rt.host, rt.nursery
        if host is None or nursery is None:
            raise NetworkError("the network is stopping")
        unblock(host, job.peer)  # the caller decides when to retry, not libp2p
        with trio.fail_after(job.timeout):
            return await exchange(
                host, nursery, job.peer, job.protocol, job.data, self.config.max_frame_bytes
            )

    async def _serve_stream(self, protocol: str, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        try:
            if peer not in self._allowed and not self._admit_outsider(peer, protocol):
                await stream.reset()
                return
            status, body = await self._answer(protocol, peer, stream)
            with trio.fail_after(RESPONSE_WRITE_TIMEOUT):
                await write_frame(stream, body, prefix=bytes([status]))
                await stream.close()
        except Exception as exc:
            log.debug("serving %s to %s failed: %r", protocol, peer, exc)
            with contextlib.suppress(Exception):
                await stream.reset()

    def _admit_outsider(self, peer: ID, protocol: str) -> bool:
        """A peer outside the reserved set may use open protocols (while under MAX_OUTSIDERS);
        using one marks it an outsider, which is never a gossip or sync peer."""
        if protocol not in self._open:
            return not self.config.reserved_only
        if peer not in self._outsiders:
            if len(self._outsiders) >= MAX_OUTSIDERS:
                return False
            self._outsiders[peer] = trio.current_time()
            self._refresh_peers()
        self._outsiders[peer] = trio.current_time()
        return True

    def _within_budget(self, peer: ID, protocol: str) -> bool:
        """Non-reserved peers get ``open_requests_per_minute`` on open protocols."""
        if protocol not in self._open or peer in self._allowed:
            return True
        if self._open_budgets.per_minute != self.open_requests_per_minute:
            self._open_budgets = KeyedBuckets(self.open_requests_per_minute)
        if self._open_budgets.take(peer):
            return True
        self.rate_limited += 1
        return False

    async def _answer(self, protocol: str, peer: ID, stream: INetStream) -> tuple[int, bytes]:
        cap = self.config.max_frame_bytes
        try:
            with trio.fail_after(REQUEST_READ_TIMEOUT):
                request = await read_frame(stream, self._request_caps.get(protocol, cap), "request")
        except RequestTooLarge as exc:
            return STATUS_TOO_LARGE, str(exc).encode()
        if not self._within_budget(peer, protocol):
            return STATUS_ERROR, (
                f"rate limited: {self.open_requests_per_minute} requests a minute per peer on "
                f"{protocol}; slow down"
            ).encode()
        handler = self._handlers[protocol]
        loop = self._loop
        if loop is None:
            return STATUS_ERROR, b"node is stopping"
        try:
            with trio.fail_after(HANDLER_TIMEOUT):
                response = await _await_concurrent(
                    asyncio.run_coroutine_threadsafe(
                        _call(handler, peer.to_base58(), request), loop
                    )
                )
        except trio.TooSlowError:
            log.warning("%s handler for %s took over %.0f s", protocol, peer, HANDLER_TIMEOUT)
            return STATUS_ERROR, b"handler timed out"
        except DeltachainError as exc:  # an expected refusal: tell the requester why
            log.debug("%s handler refused %s: %s", protocol, peer, exc)
            return STATUS_ERROR, f"{type(exc).__name__}: {exc}".encode()
        except Exception:
            log.warning("%s handler failed for %s", protocol, peer, exc_info=True)
            return STATUS_ERROR, b"handler failed"
        if len(response) > cap:
            return STATUS_TOO_LARGE, f"response of {len(response)} bytes is over the cap".encode()
        return STATUS_OK, response


def _parse_peer_id_network(peer: str) -> ID:
    try:
        return ID.from_base58(peer)
    except Exception as exc:
        raise NetworkError(f"{peer!r} is not a peer id") from exc
