"""JSON-RPC 2.0 over HTTP POST and WebSocket on one port (aiohttp), with Substrate names.

Handlers are plain functions over ``params``; the transport runs every one of them on the
node's single chain thread (``run``), never on the event loop, so storage is only ever touched
from that thread. Subscriptions (WebSocket only) are fed by an :class:`EventHub` that the node
service updates after each block import and finalization.

Binary values are 0x-hex. Errors use the standard codes; a rejected transaction answers with
application code 1010 (Substrate's "invalid transaction") or 1011 (pool rejected) and the
one-line reason. Every method, code and limit is documented in ``docs/rpc.md``.

Hardening (issue 12): a browser ``Origin`` outside ``--rpc-cors`` is refused (403) and a
non-local Origin never reaches an unsafe method; bodies must arrive within ``body_timeout``;
idle or half-sent connections close after ``idle_timeout``; open sockets are capped in total
and per IP (:class:`_GuardedSite`); calls are rate limited per connection and per IP; replies
have a size budget per request and per batch; deep JSON and bad ids are refused before
dispatch, and every number a method takes is range-checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import re
import resource
import secrets
import threading
import time
import urllib.parse
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from aiohttp.web_protocol import RequestHandler

from deltachain import __version__
from deltachain.crypto.keys import address_to_str, parse_address
from deltachain.errors import (
    DecodeError,
    DeltachainError,
    InvalidKey,
    InvalidTransaction,
    NotFound,
    PoolRejected,
)
from deltachain.model_state.module import ModelStateModule, key_chunk
from deltachain.node import queries
from deltachain.node.chain import Chain
from deltachain.node.metrics import NodeMetrics
from deltachain.node.ratelimit import KeyedBuckets, TokenBucket
from deltachain.node.storage import Storage
from deltachain.primitives.block import Block, Header
from deltachain.primitives.transaction import SignedTransaction
from deltachain.primitives.types import Hash32
from deltachain.runtime.executive import check_transaction

log = logging.getLogger("deltachain.rpc")

# --- error codes ------------------------------------------------------------------------------

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
"""Also answers an unsafe method refused by ``--rpc-methods`` (as Substrate does)."""
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TOO_MANY_SUBSCRIPTIONS = -32006
OVERSIZED_REQUEST = -32007
OVERSIZED_RESPONSE = -32008
SERVER_BUSY = -32009
BATCH_TOO_LARGE = -32010
"""Limit codes as jsonrpsee (Substrate's RPC server) uses them."""
RATE_LIMITED = -32029
"""Over ``--rpc-rate-limit`` / ``--rpc-rate-limit-per-ip`` (calls a minute)."""
INVALID_TRANSACTION = 1010
POOL_REJECTED = 1011
NOT_FOUND = 4004

UNSAFE_MESSAGE = "RPC call is unsafe to be called externally"

# --- limits -----------------------------------------------------------------------------------

MAX_BODY = 2 << 20
MAX_BATCH = 64
MAX_CONNECTIONS = 100
"""Requests being answered at once (HTTP calls whose body has arrived, plus WebSockets)."""
MAX_SUBSCRIPTIONS = 1024
MAX_RESPONSE = 10 << 20
"""Bytes of JSON one request — or one whole batch — may answer (Substrate's default, 10 MiB)."""
MAX_SOCKETS = 1024
"""Open TCP connections, idle ones included; also kept at or below half the fd limit."""
MAX_SOCKETS_PER_IP = 128
BODY_TIMEOUT = 5.0
"""Seconds a request body may take to arrive, from the end of its headers (slowloris)."""
IDLE_TIMEOUT = 30.0
"""Seconds a connection may sit without a complete request (headers included) before it is
closed; WebSockets are kept alive by their pings instead."""
LINGER = 1.0
"""Seconds aiohttp keeps reading an unread body after answering (413, 408) before closing;
its default of 10 s would let a refused slow body hold the socket that much longer."""
MAX_JSON_DEPTH = 32
"""Nesting deeper than this is refused (-32700) before the body is parsed."""
MAX_INT = (1 << 63) - 1
"""The largest block number, version, index or offset a method accepts (SQLite's INTEGER)."""
DEFAULT_CORS = (
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
)
"""Browser origins allowed by default (Substrate's list, without polkadot.js.org)."""
MAX_PROOF_KEYS = 256
MAX_WEIGHTS_PAGE = {"raw": 1 << 18, "float": 1 << 16}
HEAVY_READS = frozenset(
    {
        "model_getWeights",
        "model_getChunkProof",
        "state_getReadProof",
        "chain_getBlock",
        "finality_proveFinality",
        "grandpa_proveFinality",
    }
)
"""Reads whose answer can be large: the node runs them after all other work and caps the
share of the chain thread they take (``node/service.py: READ_SHARE``)."""
MAX_QUEUED_EVENTS = 4096
"""A subscriber this far behind is dropped rather than buffered without bound."""
ROUTE_LIMIT = 256
"""At most this many headers are published for one head change (a long sync or reorg)."""

RPC_METHODS_POLICIES = ("auto", "safe", "unsafe")


def fd_socket_cap() -> int:
    """Half the process's soft fd limit: sockets must never starve storage and p2p of fds."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return MAX_SOCKETS if soft == resource.RLIM_INFINITY else max(16, soft // 2)


@dataclass(frozen=True)
class RpcLimits:
    max_body: int = MAX_BODY
    max_batch: int = MAX_BATCH
    max_connections: int = MAX_CONNECTIONS
    max_subscriptions: int = MAX_SUBSCRIPTIONS
    """Per connection."""
    max_response: int = MAX_RESPONSE
    max_sockets: int = MAX_SOCKETS
    max_sockets_per_ip: int = MAX_SOCKETS_PER_IP
    body_timeout: float = BODY_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    rate_limit: int | None = None
    """Calls a minute per connection (polkadot-sdk's ``--rpc-rate-limit``); None: no limit."""
    rate_limit_per_ip: int | None = None
    """Calls a minute per client IP, over all its connections; None: no limit."""
    cors: tuple[str, ...] | None = DEFAULT_CORS
    """Allowed browser origins (``scheme://host[:port|:*]``); None: any (``--rpc-cors all``)."""


# --- origins ----------------------------------------------------------------------------------

_ORIGIN_PATTERN = re.compile(r"^(https?)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:(\*|[0-9]{1,5}))?$")


def parse_cors(value: str) -> tuple[str, ...] | None:
    """``all`` → None (any origin); else comma-separated ``scheme://host[:port|:*]`` origins.

    Raises ValueError naming the first origin that is not one.
    """
    if value.strip().lower() == "all":
        return None
    origins = tuple(o.strip().lower().rstrip("/") for o in value.split(",") if o.strip())
    for origin in origins:
        if not _ORIGIN_PATTERN.match(origin):
            raise ValueError(
                f"{origin!r} is not an origin: use scheme://host[:port], :* for any port, or `all`"
            )
    return origins


def origin_allowed(origin: str, allowed: tuple[str, ...] | None) -> bool:
    """Whether a browser ``Origin`` header value matches ``--rpc-cors``."""
    if allowed is None:
        return True
    origin = origin.strip().lower()
    found = _ORIGIN_PATTERN.match(origin)
    if found is None:
        return False  # "null" (sandboxed pages, file://) and anything malformed
    scheme_host = f"{found.group(1)}://{found.group(2)}"
    for pattern in allowed:
        if pattern == origin:
            return True
        if pattern.endswith(":*") and pattern[:-2] == scheme_host:
            return True
    return False


def is_local_origin(origin: str) -> bool:
    """A page served from this machine (http(s)://localhost, 127.0.0.1, [::1])."""
    try:
        parts = urllib.parse.urlsplit(origin.strip())
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host is not None and is_loopback(host)


# --- sockets ----------------------------------------------------------------------------------

_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _SocketGuard:
    """Counts open RPC sockets, in total and per IP; event-loop thread only."""

    def __init__(self, total: int, per_ip: int) -> None:
        self.total = total
        self.per_ip = per_ip
        self.open = 0
        self.by_ip: dict[str, int] = {}
        self.refused = 0
        self._reported = -60.0

    def admit(self, ip: str) -> bool:
        if self.open >= self.total or self.by_ip.get(ip, 0) >= self.per_ip:
            self.refused += 1
            now = time.monotonic()
            if now - self._reported >= 60.0:  # one line a minute, however hard the flood
                self._reported = now
                log.warning(
                    "RPC refused connections over its socket caps (%d open of %d, %s has %d of "
                    "%d); %d refused so far",
                    self.open,
                    self.total,
                    ip,
                    self.by_ip.get(ip, 0),
                    self.per_ip,
                    self.refused,
                )
            return False
        self.open += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        return True

    def release(self, ip: str) -> None:
        self.open -= 1
        left = self.by_ip.get(ip, 1) - 1
        if left > 0:
            self.by_ip[ip] = left
        else:
            self.by_ip.pop(ip, None)


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler, refusing a socket over the total or per-IP cap at once."""

    __slots__ = ("_admitted_ip", "_guard")
    _guard: _SocketGuard
    _admitted_ip: str | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        self._admitted_ip = None
        if not self._guard.admit(ip):
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(_REFUSED)
            transport.close()
            return
        self._admitted_ip = ip
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        ip = getattr(self, "_admitted_ip", None)
        if ip is not None:
            self._admitted_ip = None
            self._guard.release(ip)
        super().connection_lost(exc)


class _GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a :class:`_SocketGuard`.

    aiohttp has no hook at accept time, so this builds the server's ``RequestHandler`` itself
    (as ``web.Server.__call__`` does, from its ``_kwargs``); checked against aiohttp 3.14, and
    ``tests/test_rpc_hardening.py`` fails if a later aiohttp changes that.
    """

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: _SocketGuard) -> None:
        super().__init__(runner, host, port, shutdown_timeout=5.0)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        if server is None:
            raise RuntimeError("call runner.setup() first")
        guard = self.guard

        def factory() -> RequestHandler:
            handler = _GuardedHandler(server, loop=loop, **server._kwargs)
            handler._guard = guard
            return handler

        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
        sockets = self._server.sockets
        self._bound_port = int(sockets[0].getsockname()[1]) if sockets else self._port


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# --- JSON helpers -----------------------------------------------------------------------------


def hex0x(data: bytes) -> str:
    return "0x" + data.hex()


def unhex(value: Any, what: str, length: int | None = None) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcError(INVALID_PARAMS, f"{what} must be a 0x-prefixed hex string")
    try:
        data = bytes.fromhex(value[2:])
    except ValueError:
        raise RpcError(INVALID_PARAMS, f"{what} is not valid hex") from None
    if length is not None and len(data) != length:
        raise RpcError(INVALID_PARAMS, f"{what} must be {length} bytes")
    return data


def to_json(value: Any) -> Any:
    """Make a runtime query result JSON-safe: bytes become 0x-hex, tuples lists."""
    if isinstance(value, bytes):
        return hex0x(value)
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def header_json(header: Header) -> dict[str, Any]:
    return {
        "parentHash": hex0x(header.parent_hash),
        "number": header.number,
        "slot": header.slot,
        "stateRoot": hex0x(header.state_root),
        "extrinsicsRoot": hex0x(header.extrinsics_root),
        "author": address_to_str(header.author),
        "seal": hex0x(header.seal),
        "hash": hex0x(header.hash),
    }


def block_json(block: Block) -> dict[str, Any]:
    return {
        "block": {
            "header": header_json(block.header),
            "extrinsics": [hex0x(tx.encode()) for tx in block.transactions],
        }
    }


def _int_param(value: Any, what: str, minimum: int = 0, maximum: int = MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise RpcError(INVALID_PARAMS, f"{what} must be an integer in {minimum}..{maximum}")
    return value


def valid_id(value: Any) -> bool:
    """JSON-RPC ids are strings, integers, finite numbers or null — never bools, NaN or ∞."""
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')


def json_depth(body: bytes) -> int:
    """The deepest ``[``/``{`` nesting in a JSON text, strings skipped, without parsing it
    (0 when there are too few brackets to matter)."""
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return 0  # too few brackets to nest too deep: not worth the scan
    bare = np.frombuffer(_STRINGS.sub(b"", body), dtype=np.uint8)
    step = (np.isin(bare, (0x5B, 0x7B)).astype(np.int64)) - np.isin(bare, (0x5D, 0x7D))
    return int(np.cumsum(step).max(initial=0))


def _str_param(params: list[Any], index: int, what: str) -> str:
    if len(params) <= index or not isinstance(params[index], str):
        raise RpcError(INVALID_PARAMS, f"expected {what} (a string) as parameter {index + 1}")
    return str(params[index])


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# --- events for subscriptions -----------------------------------------------------------------


@dataclass(frozen=True)
class HeadEvent:
    kind: str
    """``"newHead"`` (the best chain moved to this block) or ``"finalizedHead"``."""
    header: Header
    tx_hashes: frozenset[Hash32] = frozenset()


class Subscription:
    """One subscriber's queue, fed on the subscriber's own event loop."""

    def __init__(self, kinds: frozenset[str], loop: asyncio.AbstractEventLoop) -> None:
        self.kinds = kinds
        self.loop = loop
        self.queue: asyncio.Queue[HeadEvent | None] = asyncio.Queue()
        self.closed = False

    def _deliver(self, event: HeadEvent) -> None:
        """Runs on ``loop``; a subscriber that stopped reading is ended, not buffered forever."""
        if self.closed:
            return
        if self.queue.qsize() >= MAX_QUEUED_EVENTS:
            self.closed = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(event)


class EventHub:
    """New best and finalized heads, in order, for RPC subscribers. Thread-safe.

    ``update(storage)`` runs on the chain thread (it reads storage) after anything that may
    move the head or finality; it publishes every header on the route from the last published
    head (each new canonical block of a reorg, each newly finalized block), oldest first.
    Delivery is ``call_soon_threadsafe`` under one lock, so every subscriber sees one order.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: set[Subscription] = set()
        self.best: Header | None = None
        self.finalized: Header | None = None
        self._published: dict[int, Hash32] = {}

    def subscribe(self, kinds: Iterable[str]) -> tuple[Subscription, Header | None, Header | None]:
        """Call on the subscriber's event loop; returns the current best and finalized heads,
        consistent with the events that follow (neither repeated nor missed)."""
        sub = Subscription(frozenset(kinds), asyncio.get_running_loop())
        with self._lock:
            self._subs.add(sub)
            return sub, self.best, self.finalized

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)
        sub.closed = True

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subs)

    def update(self, storage: Storage) -> None:
        """Publish what changed since the last call. Chain thread only."""
        with self._lock:
            events: list[HeadEvent] = []
            best = storage.best_header()
            if self.best is None:
                self._published[best.number] = best.hash
            elif best.hash != self.best.hash:
                route: list[Block] = []
                block = storage.block(best.hash)
                while len(route) < ROUTE_LIMIT:
                    if self._published.get(block.number) == block.hash:
                        break
                    route.append(block)
                    if block.number == 0:
                        break
                    try:
                        block = storage.block(block.header.parent_hash)
                    except NotFound:  # pruned: publish what we have
                        break
                for b in reversed(route):
                    self._published[b.number] = b.hash
                    events.append(
                        HeadEvent("newHead", b.header, frozenset(tx.hash for tx in b.transactions))
                    )
                for number in [n for n in self._published if n > best.number]:
                    del self._published[number]  # a reorg to a shorter chain
                while len(self._published) > 2 * ROUTE_LIMIT:
                    del self._published[min(self._published)]
            self.best = best
            finalized = storage.finalized_header()
            if self.finalized is not None and finalized.number > self.finalized.number:
                start = max(self.finalized.number + 1, finalized.number - ROUTE_LIMIT + 1)
                for number in range(start, finalized.number):
                    header = storage.header(storage.canonical_hash(number))
                    events.append(HeadEvent("finalizedHead", header))
                events.append(HeadEvent("finalizedHead", finalized))
            if self.finalized is None or finalized.number > self.finalized.number:
                self.finalized = finalized
            for event in events:
                for sub in self._subs:
                    if event.kind in sub.kinds:
                        with contextlib.suppress(RuntimeError):  # the loop already closed
                            sub.loop.call_soon_threadsafe(sub._deliver, event)


# --- the server -------------------------------------------------------------------------------

ChainRunner = Callable[..., Awaitable[Any]]
"""Runs a function on the chain thread (the only thread that touches storage) and awaits it."""

Handler = Callable[[list[Any]], Any]
"""Handlers are plain functions: they run on the chain thread, never on the event loop."""


@dataclass(frozen=True)
class _SubscriptionKind:
    kinds: frozenset[str]
    notification: str
    unsubscribe: str


SUBSCRIPTIONS = {
    "chain_subscribeNewHeads": _SubscriptionKind(
        frozenset({"newHead"}), "chain_newHead", "chain_unsubscribeNewHeads"
    ),
    "chain_subscribeFinalizedHeads": _SubscriptionKind(
        frozenset({"finalizedHead"}), "chain_finalizedHead", "chain_unsubscribeFinalizedHeads"
    ),
    "author_submitAndWatchExtrinsic": _SubscriptionKind(
        frozenset({"newHead", "finalizedHead"}), "author_extrinsicUpdate", "author_unwatchExtrinsic"
    ),
}
UNSUBSCRIBE = {kind.unsubscribe: name for name, kind in SUBSCRIPTIONS.items()}


@dataclass(eq=False)
class _ActiveSub:
    sub: Subscription
    method: str
    task: asyncio.Task[None] | None = None


@dataclass(eq=False)
class _Session:
    """One WebSocket connection: its subscriptions and a lock that keeps sends whole."""

    ws: web.WebSocketResponse
    allow_unsafe: bool
    subs: dict[str, _ActiveSub] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    starts: list[Callable[[], None]] = field(default_factory=list)

    async def send(self, obj: Any) -> None:
        async with self.send_lock:
            await self.ws.send_str(obj if isinstance(obj, str) else json.dumps(obj))


@dataclass(frozen=True)
class _Caller:
    allow_unsafe: bool
    session: _Session | None = None
    ip: str | None = None
    bucket: TokenBucket | None = None
    """This connection's rate-limit bucket (None: no per-connection limit)."""


_LOG_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 1,
}


class RpcServer:
    """Method table over a Chain, served over HTTP and WebSocket (see ``app``)."""

    def __init__(
        self,
        chain: Chain,
        run: ChainRunner,
        *,
        node_name: str = "deltachain",
        peers: Callable[[], Sequence[str]] = list,
        local_peer_id: Callable[[], str | None] = lambda: None,
        is_syncing: Callable[[], bool] = lambda: False,
        roles: Sequence[str] = ("Full",),
        events: EventHub | None = None,
        metrics: NodeMetrics | None = None,
        rpc_methods: str = "auto",
        limits: RpcLimits | None = None,
        read: ChainRunner | None = None,
    ) -> None:
        if rpc_methods not in RPC_METHODS_POLICIES:
            raise ValueError(f"rpc_methods must be one of {RPC_METHODS_POLICIES}")
        self.chain = chain
        self.run = run
        self.read = read or run
        """Where ``HEAVY_READS`` run: after other users' work, within a share of the thread."""
        self.peers = peers
        self.local_peer_id = local_peer_id
        self.is_syncing = is_syncing
        self.roles = list(roles)
        self.node_name = node_name
        self.events = events or EventHub()
        self.metrics = metrics
        self.rpc_methods = rpc_methods
        self.limits = limits or RpcLimits()
        self._connections = 0
        self._subscriptions = 0
        self._sessions: set[_Session] = set()
        self._log_levels: dict[str, int] = {}
        self._ip_buckets = (
            None
            if self.limits.rate_limit_per_ip is None
            else KeyedBuckets(self.limits.rate_limit_per_ip, max_keys=4 * self.limits.max_sockets)
        )
        self._conn_buckets: weakref.WeakKeyDictionary[Any, TokenBucket] = (
            weakref.WeakKeyDictionary()
        )
        self._slow_bodies = 0
        self.guard = _SocketGuard(
            min(self.limits.max_sockets, fd_socket_cap()), self.limits.max_sockets_per_ip
        )
        self.methods: dict[str, Handler] = {
            "rpc_methods": self._rpc_methods,
            "system_name": self._const("deltachain"),
            "system_version": self._const(__version__),
            "system_chain": self._const(chain.spec.name),
            "system_chainType": self._const(chain.spec.chain_type),
            "system_properties": self._const(to_json(chain.spec.properties)),
            "system_nodeRoles": self._const(self.roles),
            "system_health": self._health,
            "system_localPeerId": lambda params: self.local_peer_id(),
            "system_peers": self._peers,
            "system_syncState": self._sync_state,
            "system_accountNextIndex": self._account_next_index,
            "system_addLogFilter": self._add_log_filter,
            "system_resetLogFilter": self._reset_log_filter,
            "chain_getBlockHash": self._get_block_hash,
            "chain_getHeader": self._get_header,
            "chain_getBlock": self._get_block,
            "chain_getFinalizedHead": self._finalized_head,
            "chain_getGenesisHash": self._const(hex0x(chain.genesis_hash)),
            "chain_getJustification": self._get_justification,
            "state_getStorage": self._get_storage,
            "state_getReadProof": self._get_read_proof,
            "finality_proveFinality": self._prove_finality,
            "grandpa_proveFinality": self._prove_finality,
            "author_submitExtrinsic": self._submit,
            "author_pendingExtrinsics": self._pending,
            "author_removeExtrinsic": self._remove_extrinsic,
            "author_extrinsicStatus": self._tx_status,
            "runtime_query": self._runtime_query,
            "model_list": self._model_list,
            "model_get": self._model_get,
            "model_getWeights": self._model_weights,
            "model_getProvenance": self._model_provenance,
            "model_getChunkProof": self._chunk_proof,
        }
        self.unsafe = frozenset(
            {
                "system_peers",
                "system_addLogFilter",
                "system_resetLogFilter",
                "author_removeExtrinsic",
            }
        )

    def allows_unsafe(self, remote: str | None) -> bool:
        """``unsafe``: always; ``safe``: never; ``auto``: only for callers on this machine."""
        if self.rpc_methods == "unsafe":
            return True
        return self.rpc_methods == "auto" and is_loopback(remote)

    # --- system ------------------------------------------------------------------------------

    @staticmethod
    def _const(value: Any) -> Handler:
        def handler(params: list[Any]) -> Any:
            return value

        return handler

    def _rpc_methods(self, params: list[Any]) -> Any:
        return {"methods": sorted([*self.methods, *SUBSCRIPTIONS, *UNSUBSCRIBE])}

    def _health(self, params: list[Any]) -> Any:
        return {
            "peers": len(self.peers()),
            "isSyncing": self.is_syncing(),
            "shouldHavePeers": len(self.chain.spec.authorities) > 1,
        }

    def _peers(self, params: list[Any]) -> Any:
        return [{"peerId": peer} for peer in self.peers()]

    def _sync_state(self, params: list[Any]) -> Any:
        best = self.chain.storage.best_header()
        return {
            "startingBlock": 0,
            "currentBlock": best.number,
            "highestBlock": best.number,
            "finalizedBlock": self.chain.storage.finalized_header().number,
        }

    def _account_next_index(self, params: list[Any]) -> Any:
        """The next nonce, counting the sender's transactions already in the pool."""
        address = _str_param(params, 0, "an address")
        try:
            who = parse_address(address)
        except InvalidKey as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        return self.chain.pool_nonce(who)

    def _add_log_filter(self, params: list[Any]) -> Any:
        """``"deltachain.rpc=debug,deltachain.chain=warn"``; a bare level sets the root."""
        directives = _str_param(params, 0, "log directives")
        changes: list[tuple[str, int]] = []
        for part in filter(None, (p.strip() for p in directives.split(","))):
            target, _, level = part.rpartition("=")
            if level.lower() not in _LOG_LEVELS:
                raise RpcError(INVALID_PARAMS, f"unknown log level {level!r} in {part!r}")
            changes.append((target, _LOG_LEVELS[level.lower()]))
        for target, number in changes:
            logger = logging.getLogger(target or None)
            self._log_levels.setdefault(target, logger.level)
            logger.setLevel(number)
        return None

    def _reset_log_filter(self, params: list[Any]) -> Any:
        for target, level in self._log_levels.items():
            logging.getLogger(target or None).setLevel(level)
        self._log_levels.clear()
        return None

    # --- chain -------------------------------------------------------------------------------

    def _block_hash_param(self, params: list[Any], index: int = 0) -> Hash32:
        if len(params) <= index or params[index] is None:
            return self.chain.storage.best_hash()
        return Hash32(unhex(params[index], "block hash", 32))

    def _get_block_hash(self, params: list[Any]) -> Any:
        if not params or params[0] is None:
            return hex0x(self.chain.storage.best_hash())
        number = _int_param(params[0], "block number")
        try:
            return hex0x(self.chain.storage.canonical_hash(number))
        except NotFound:
            return None

    def _get_header(self, params: list[Any]) -> Any:
        header = queries.header(self.chain, self._block_hash_param(params))
        return None if header is None else header_json(header)

    def _get_block(self, params: list[Any]) -> Any:
        try:
            return block_json(self.chain.storage.block(self._block_hash_param(params)))
        except NotFound:
            return None

    def _finalized_head(self, params: list[Any]) -> Any:
        return hex0x(self.chain.storage.finalized_hash())

    def _get_justification(self, params: list[Any]) -> Any:
        """The stored finality proof of a block (default: the finalized head); null if none."""
        block_hash = (
            self.chain.storage.finalized_hash()
            if not params or params[0] is None
            else Hash32(unhex(params[0], "block hash", 32))
        )
        found = queries.justification(self.chain, block_hash)
        return None if found is None else hex0x(found)

    def _prove_finality(self, params: list[Any]) -> Any:
        """The latest justification at or below ``number``: proves that block (its source)
        final to anyone who knows the authority set. Null before anything is finalized."""
        if len(params) != 1:
            raise RpcError(INVALID_PARAMS, "expected [block number]")
        found = queries.prove_finality(self.chain, _int_param(params[0], "block number"))
        return None if found is None else hex0x(found)

    # --- state -------------------------------------------------------------------------------

    def _get_storage(self, params: list[Any]) -> Any:
        if not params:
            raise RpcError(INVALID_PARAMS, "expected [0x-hex key, (block hash)]")
        key = unhex(params[0], "storage key")
        value = queries.storage_value(self.chain, key, self._block_hash_param(params, 1))
        return None if value is None else hex0x(value)

    def _get_read_proof(self, params: list[Any]) -> Any:
        if not params or not isinstance(params[0], list):
            raise RpcError(INVALID_PARAMS, "expected [[0x-hex keys], (block hash)]")
        if len(params[0]) > MAX_PROOF_KEYS:
            raise RpcError(INVALID_PARAMS, f"at most {MAX_PROOF_KEYS} keys per proof")
        keys = [unhex(k, "storage key") for k in params[0]]
        block_hash = self._block_hash_param(params, 1)
        return {
            "at": hex0x(block_hash),
            "proof": [hex0x(p) for p in queries.read_proof(self.chain, keys, block_hash)],
        }

    # --- author ------------------------------------------------------------------------------

    def submit_raw(self, raw: bytes) -> tuple[Hash32, str]:
        """Pool an encoded transaction; RpcError 1010/1011 with the reason if refused."""
        try:
            return self.chain.submit_transaction(raw)
        except (InvalidTransaction, DecodeError) as exc:
            self._count_rejected(exc)
            raise RpcError(INVALID_TRANSACTION, f"invalid transaction: {exc}") from None
        except PoolRejected as exc:
            self._count_rejected(exc)
            raise RpcError(POOL_REJECTED, f"transaction pool rejected it: {exc}") from None

    def _count_rejected(self, exc: Exception) -> None:
        if self.metrics is not None:
            self.metrics.rejected_txs.inc(1, type(exc).__name__)

    def _submit(self, params: list[Any]) -> Any:
        if len(params) != 1:
            raise RpcError(INVALID_PARAMS, "expected [0x-hex encoded transaction]")
        tx_hash, _ = self.submit_raw(unhex(params[0], "transaction"))
        return hex0x(tx_hash)

    def _pending(self, params: list[Any]) -> Any:
        return [hex0x(tx.encode()) for tx in self.chain.pool.all()]

    def _remove_extrinsic(self, params: list[Any]) -> Any:
        """Drop pooled transactions given as ``{"hash": h}``, ``{"extrinsic": bytes}`` or a
        bare hash; returns the hashes that were in the pool."""
        if len(params) != 1 or not isinstance(params[0], list):
            raise RpcError(INVALID_PARAMS, 'expected [[{"hash": 0x…} | {"extrinsic": 0x…}]]')
        hashes: list[Hash32] = []
        for item in params[0]:
            if isinstance(item, str):
                hashes.append(Hash32(unhex(item, "transaction hash", 32)))
            elif isinstance(item, dict) and set(item) == {"hash"}:
                hashes.append(Hash32(unhex(item["hash"], "transaction hash", 32)))
            elif isinstance(item, dict) and set(item) == {"extrinsic"}:
                raw = unhex(item["extrinsic"], "transaction")
                try:
                    hashes.append(SignedTransaction.decode(raw).hash)
                except DecodeError as exc:
                    raise RpcError(INVALID_PARAMS, f"extrinsic does not decode: {exc}") from None
            else:
                raise RpcError(INVALID_PARAMS, 'each item is {"hash": 0x…} or {"extrinsic": 0x…}')
        removed = self.chain.remove_transactions(
            list(dict.fromkeys(hashes)), "removed by author_removeExtrinsic"
        )
        return [hex0x(h) for h in removed]

    def _tx_status(self, params: list[Any]) -> Any:
        if len(params) != 1:
            raise RpcError(INVALID_PARAMS, "expected [transaction hash]")
        return self.chain.transaction_status(Hash32(unhex(params[0], "transaction hash", 32)))

    def watch_status(self, tx_hash: Hash32, raw: bytes) -> dict[str, Any]:
        """``transaction_status``, telling a transaction that became invalid (e.g. its nonce
        was used by another) from one merely dropped from the pool."""
        status = self.chain.transaction_status(tx_hash)
        if status["status"] != "unknown":
            return status
        try:
            tx = SignedTransaction.decode(raw)
            check_transaction(
                self.chain.runtime,
                self.chain.best_state(),
                tx,
                self.chain.genesis_hash,
                allow_future=True,
            )
        except (InvalidTransaction, DecodeError) as exc:
            return {"status": "invalid", "reason": str(exc)}
        return {"status": "dropped"}

    # --- runtime queries ---------------------------------------------------------------------

    def _runtime_query(self, params: list[Any]) -> Any:
        if len(params) not in (2, 3) or not all(isinstance(p, str) for p in params[:2]):
            raise RpcError(INVALID_PARAMS, "expected [module, query, {args}]")
        args = dict(params[2]) if len(params) == 3 and isinstance(params[2], dict) else {}
        for name, value in args.items():
            if isinstance(value, int) and not isinstance(value, bool):
                _int_param(value, name)  # every number a query takes is a u63
        if "address" in args:
            try:
                args["address"] = parse_address(_str_param([args["address"]], 0, "address"))
            except InvalidKey as exc:
                raise RpcError(INVALID_PARAMS, str(exc)) from None
        module = self.chain.runtime.modules.get(params[0])
        if module is None:
            raise RpcError(INVALID_PARAMS, f"no runtime module {params[0]!r}")
        return module.query(self.chain.best_state(), params[1], args)

    def _models(self) -> ModelStateModule:
        module = queries.model_module(self.chain)
        if module is None:
            raise RpcError(METHOD_NOT_FOUND, "this runtime has no model_state module")
        return module

    def _model_list(self, params: list[Any]) -> Any:
        state = self.chain.state_at(self._block_hash_param(params, 0))
        return self._models().query(state, "list", {})

    def _model_get(self, params: list[Any]) -> Any:
        model = _str_param(params, 0, "a model id")
        block_hash = self._block_hash_param(params, 1)
        at = self.chain.storage.header(block_hash).number
        state = self.chain.state_at(block_hash)
        return to_json(self._models().query(state, "get", {"model": model, "at": at}))

    def _model_provenance(self, params: list[Any]) -> Any:
        model = _str_param(params, 0, "a model id")
        if len(params) < 2:
            raise RpcError(INVALID_PARAMS, "expected [model id, version, (block hash)]")
        version = _int_param(params[1], "version", 1)
        state = self.chain.state_at(self._block_hash_param(params, 2))
        return to_json(
            self._models().query(state, "provenance", {"model": model, "version": version})
        )

    def _model_weights(self, params: list[Any]) -> Any:
        """A page of the model's weights: ``[model, {format, offset, limit, at}]``."""
        model = _str_param(params, 0, "a model id")
        options = params[1] if len(params) > 1 and params[1] is not None else {}
        if not isinstance(options, dict) or not set(options) <= {
            "format",
            "offset",
            "limit",
            "at",
        }:
            raise RpcError(INVALID_PARAMS, "options are {format, offset, limit, at}")
        fmt = options.get("format", "raw")
        if fmt not in MAX_WEIGHTS_PAGE:
            raise RpcError(INVALID_PARAMS, 'format must be "raw" or "float"')
        offset = _int_param(options.get("offset", 0), "offset")
        limit = _int_param(options.get("limit", MAX_WEIGHTS_PAGE[fmt]), "limit", 1)
        if limit > MAX_WEIGHTS_PAGE[fmt]:
            raise RpcError(INVALID_PARAMS, f"limit is at most {MAX_WEIGHTS_PAGE[fmt]} for {fmt}")
        at = self._block_hash_param([options.get("at")])
        state = self.chain.state_at(at)
        record = self._models().record(state, model)
        config = record.config
        if offset > config.num_params:
            raise RpcError(INVALID_PARAMS, f"offset is past the {config.num_params} parameters")
        end = min(config.num_params, offset + limit)
        size = config.chunk_size
        parts = []
        for index in range(offset // size, -(-end // size)):
            chunk = state.get(key_chunk(model, index))
            if chunk is None:
                raise NotFound(f"model {model!r} chunk {index} is missing")
            parts.append(chunk)
        start = offset - (offset // size) * size
        raw = b"".join(parts)[start * 4 : (start + end - offset) * 4]
        if fmt == "raw":
            weights: Any = hex0x(raw)
        else:
            ints = np.frombuffer(raw, dtype="<i4").astype(np.float64)
            weights = (ints / float(1 << config.frac_bits)).tolist()
        return {
            "model": model,
            "version": record.version,
            "fracBits": config.frac_bits,
            "numParams": config.num_params,
            "format": fmt,
            "offset": offset,
            "count": end - offset,
            "next": end if end < config.num_params else None,
            "weights": weights,
            "at": hex0x(at),
        }

    def _chunk_proof(self, params: list[Any]) -> Any:
        """A chunk, its Merkle path to weightsRoot, and the model record's proof to a state root."""
        model = _str_param(params, 0, "a model id")
        if len(params) < 2:
            raise RpcError(INVALID_PARAMS, "expected [model id, chunk index, (block hash)]")
        index = _int_param(params[1], "chunk index")
        found = queries.chunk_proof(
            self.chain, self._models(), model, index, self._block_hash_param(params, 2)
        )
        return to_json(
            {
                "chunk": found.chunk,
                "index": found.index,
                "count": found.count,
                "proof": found.proof,
                "record": found.record,
                "recordKey": found.record_key,
                "recordProof": found.record_proof,
                "stateRoot": found.state_root,
                "blockHash": found.block_hash,
            }
        )

    # --- dispatch ----------------------------------------------------------------------------

    async def dispatch(self, request: Any, caller: _Caller | None = None) -> dict[str, Any] | None:
        """One request object → its response (None for a notification)."""
        caller = caller or _Caller(allow_unsafe=self.rpc_methods == "unsafe")
        req_id = request.get("id") if isinstance(request, dict) else None
        if not valid_id(req_id):
            req_id = None
        method = request.get("method") if isinstance(request, dict) else None
        notification = (
            isinstance(request, dict)
            and "id" not in request
            and request.get("jsonrpc") == "2.0"
            and isinstance(method, str)
        )
        try:
            if (
                not isinstance(request, dict)
                or request.get("jsonrpc") != "2.0"
                or not isinstance(method, str)
                or ("id" in request and req_id is None and request["id"] is not None)
            ):
                raise RpcError(INVALID_REQUEST, "not a JSON-RPC 2.0 request")
            params = request.get("params", [])
            if not isinstance(params, list):
                raise RpcError(INVALID_PARAMS, "params must be an array (by position)")
            if method in self.unsafe and not caller.allow_unsafe:
                raise RpcError(METHOD_NOT_FOUND, UNSAFE_MESSAGE)
            if method in SUBSCRIPTIONS or method in UNSUBSCRIBE:
                if caller.session is None:
                    raise RpcError(
                        METHOD_NOT_FOUND,
                        f"{method} needs a WebSocket connection (ws:// on the same port)",
                    )
                result = await self._subscription_call(caller.session, method, params)
            else:
                handler = self.methods.get(method)
                if handler is None:
                    raise RpcError(METHOD_NOT_FOUND, f"method {method!r} not found")
                runner = self.read if method in HEAVY_READS else self.run
                result = await runner(handler, params)
            if self.metrics is not None:
                self.metrics.rpc_calls.inc(1, method)
        except RpcError as exc:
            error = _error(req_id, exc.code, exc.message)
        except NotFound as exc:
            error = _error(req_id, NOT_FOUND, str(exc))
        except DeltachainError as exc:
            error = _error(req_id, INVALID_PARAMS, str(exc))
        except Exception:
            log.exception("RPC method %s failed", method)
            error = _error(req_id, INTERNAL_ERROR, "internal error (see node log)")
        else:
            error = {"jsonrpc": "2.0", "id": req_id, "result": to_json(result)}
        return None if notification else error  # a notification gets no response

    def _rate_limited(self, caller: _Caller, calls: int) -> str | None:
        """Take ``calls`` from the caller's connection and IP buckets; the refusal, if any."""
        limits = self.limits
        if limits.rate_limit is not None and caller.bucket and not caller.bucket.take(calls):
            return f"rate limit: {limits.rate_limit} calls a minute per connection; slow down"
        if (
            self._ip_buckets is not None
            and caller.ip is not None
            and not self._ip_buckets.take(caller.ip, calls)
        ):
            return f"rate limit: {limits.rate_limit_per_ip} calls a minute per IP; slow down"
        return None

    def _encode(self, reply: dict[str, Any], budget: int) -> str:
        """One reply as JSON within ``budget`` bytes, else that request's -32008 error."""
        try:
            text = json.dumps(reply, allow_nan=False)
        except ValueError:  # NaN or infinity in a result: a bug, but never invalid JSON out
            log.error("RPC reply for id %r is not valid JSON (NaN or infinity)", reply.get("id"))
            return json.dumps(_error(reply.get("id"), INTERNAL_ERROR, "internal error"))
        if len(text) > budget:
            text = json.dumps(
                _error(
                    reply.get("id"),
                    OVERSIZED_RESPONSE,
                    f"response over the {self.limits.max_response}-byte budget (per request and "
                    "per batch); ask for less (a smaller page, fewer keys, a smaller batch)",
                )
            )
        return text

    async def handle_payload(self, body: bytes | str, caller: _Caller) -> str | None:
        """A request body (object or batch) → the JSON text to send, or None to send nothing."""
        raw = body.encode() if isinstance(body, str) else body
        if json_depth(raw) > MAX_JSON_DEPTH:
            return json.dumps(
                _error(None, PARSE_ERROR, f"parse error: JSON nested over {MAX_JSON_DEPTH} deep")
            )
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):
            return json.dumps(_error(None, PARSE_ERROR, "parse error: the body is not valid JSON"))
        batch = isinstance(payload, list)
        items = payload if isinstance(payload, list) else [payload]
        if batch and not items:
            return json.dumps(_error(None, INVALID_REQUEST, "empty batch"))
        if len(items) > self.limits.max_batch:
            return json.dumps(
                _error(
                    None,
                    BATCH_TOO_LARGE,
                    f"batch of {len(items)} requests is over the limit of {self.limits.max_batch}",
                )
            )
        refused = self._rate_limited(caller, len(items))
        if refused is not None:
            return json.dumps(_error(None, RATE_LIMITED, refused))
        budget = self.limits.max_response
        parts: list[str] = []
        for item in items:
            reply = await self.dispatch(item, caller)
            if reply is None:
                continue
            text = self._encode(reply, budget)
            budget = max(0, budget - len(text))
            parts.append(text)
        if not parts:
            return None
        return "[" + ",".join(parts) + "]" if batch else parts[0]

    # --- HTTP --------------------------------------------------------------------------------

    def origin_refusal(self, request: web.Request) -> web.Response | None:
        """403 for a browser ``Origin`` outside ``--rpc-cors`` (before any body is read)."""
        origin = request.headers.get("Origin")
        if origin is None or origin_allowed(origin, self.limits.cors):
            return None
        return _http_error(
            INVALID_REQUEST,
            f"origin {origin[:100]!r} is not allowed; the node operator can add it with --rpc-cors",
            403,
        )

    def caller_for(self, request: web.Request, session: _Session | None = None) -> _Caller:
        """Unsafe methods need the policy to allow the TCP peer *and* no foreign page behind it:
        a browser request from a non-local Origin never reaches them."""
        origin = request.headers.get("Origin")
        allow = self.allows_unsafe(request.remote) and (origin is None or is_local_origin(origin))
        bucket = None
        if self.limits.rate_limit is not None:
            key: Any = session if session is not None else request.transport
            if key is not None:
                bucket = self._conn_buckets.get(key)
                if bucket is None:
                    bucket = self._conn_buckets[key] = TokenBucket(self.limits.rate_limit)
        return _Caller(allow, session, request.remote, bucket)

    def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"

    async def handle_options(self, request: web.Request) -> web.StreamResponse:
        """CORS preflight: allowed origins may POST JSON."""
        refused = self.origin_refusal(request)
        if refused is not None:
            return refused
        response = web.Response(status=204)
        self._cors_headers(request, response)
        response.headers["Access-Control-Allow-Methods"] = "POST, GET, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "content-type"
        response.headers["Access-Control-Max-Age"] = "600"
        return response

    async def handle_http(self, request: web.Request) -> web.StreamResponse:
        refused = self.origin_refusal(request)
        if refused is not None:
            return refused
        limit = self.limits.max_body
        if request.content_length is not None and request.content_length > limit:
            return _http_error(OVERSIZED_REQUEST, f"request body over {limit} bytes", 413)
        try:
            # the body must arrive in time; a request still sending it holds no call slot
            body = await asyncio.wait_for(request.read(), self.limits.body_timeout)
        except web.HTTPRequestEntityTooLarge:
            return _http_error(OVERSIZED_REQUEST, f"request body over {limit} bytes", 413)
        except TimeoutError:
            self._slow_bodies += 1
            late = f"request body not received within {self.limits.body_timeout} s"
            response = _http_error(INVALID_REQUEST, late, 408)
            response.force_close()
            return response
        if self._connections >= self.limits.max_connections:
            return _http_error(SERVER_BUSY, "server is busy (too many connections)", 503)
        self._connection_opened()
        try:
            reply = await self.handle_payload(body, self.caller_for(request))
            response = (
                web.Response(text=reply, content_type="application/json")
                if reply is not None
                else web.Response(status=204)
            )
            self._cors_headers(request, response)
            return response
        finally:
            self._connection_closed()

    async def handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(await self.run(self._health, []))

    def _connection_opened(self) -> None:
        self._connections += 1
        if self.metrics is not None:
            self.metrics.rpc_connections.set(self._connections)

    def _connection_closed(self) -> None:
        self._connections -= 1
        if self.metrics is not None:
            self.metrics.rpc_connections.set(self._connections)

    # --- WebSocket ---------------------------------------------------------------------------

    async def handle_get(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=self.limits.max_body, heartbeat=30.0)
        if not ws.can_prepare(request).ok:
            return _http_error(
                INVALID_REQUEST,
                "use HTTP POST for JSON-RPC, or open a WebSocket on this URL",
                405,
            )
        refused = self.origin_refusal(request)
        if refused is not None:
            return refused
        if self._connections >= self.limits.max_connections:
            return _http_error(SERVER_BUSY, "server is busy (too many connections)", 503)
        self._connection_opened()
        session = _Session(ws, False)
        caller = self.caller_for(request, session)
        session.allow_unsafe = caller.allow_unsafe
        self._sessions.add(session)
        try:
            await ws.prepare(request)
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    break
                reply = await self.handle_payload(message.data, caller)
                if reply is not None:
                    await session.send(reply)
                starts, session.starts = session.starts, []
                for start in starts:
                    start()
        except ConnectionError:
            pass
        finally:
            self._sessions.discard(session)
            for active in list(session.subs.values()):
                self._end_subscription(session, active)
            session.subs.clear()
            self._connection_closed()
        return ws

    async def _close_sessions(self, app: web.Application) -> None:
        """On shutdown, close every WebSocket so the server does not wait for clients."""
        for session in list(self._sessions):
            with contextlib.suppress(Exception):
                await session.ws.close(code=1001, message=b"node shutting down")

    def _end_subscription(self, session: _Session, active: _ActiveSub) -> None:
        self.events.unsubscribe(active.sub)
        if active.task is not None and active.task is not asyncio.current_task():
            active.task.cancel()
        self._subscriptions -= 1
        if self.metrics is not None:
            self.metrics.rpc_subscriptions.set(self._subscriptions)

    async def _subscription_call(self, session: _Session, method: str, params: list[Any]) -> Any:
        if method in UNSUBSCRIBE:
            sub_id = params[0] if len(params) == 1 else None
            if not isinstance(sub_id, str):
                raise RpcError(INVALID_PARAMS, "expected [subscription id]")
            active = session.subs.get(sub_id)
            if active is None or active.method != UNSUBSCRIBE[method]:
                return False
            del session.subs[sub_id]
            self._end_subscription(session, active)
            return True
        if len(session.subs) >= self.limits.max_subscriptions:
            raise RpcError(
                TOO_MANY_SUBSCRIPTIONS,
                f"too many subscriptions on this connection (limit "
                f"{self.limits.max_subscriptions})",
            )
        kind = SUBSCRIPTIONS[method]
        watch = method == "author_submitAndWatchExtrinsic"
        tx_hash, raw, pool_kind, initial = Hash32(bytes(32)), b"", "", None
        if watch:
            if len(params) != 1:
                raise RpcError(INVALID_PARAMS, "expected [0x-hex encoded transaction]")
            raw = unhex(params[0], "transaction")
            # Subscribe before submitting so no block that includes it can be missed.
            sub, _, _ = self.events.subscribe(kind.kinds)
            try:
                tx_hash, pool_kind = await self.run(self.submit_raw, raw)
            except BaseException:
                self.events.unsubscribe(sub)
                raise
        else:
            if params:
                raise RpcError(INVALID_PARAMS, f"{method} takes no parameters")
            sub, best, finalized = self.events.subscribe(kind.kinds)
            initial = best if "newHead" in kind.kinds else finalized
        sub_id = secrets.token_hex(8)
        active = _ActiveSub(sub, method)
        session.subs[sub_id] = active
        self._subscriptions += 1
        if self.metrics is not None:
            self.metrics.rpc_subscriptions.set(self._subscriptions)

        def start() -> None:
            if session.subs.get(sub_id) is not active:
                return  # unsubscribed in the same batch
            pump = (
                self._pump_transaction(session, sub_id, sub, tx_hash, raw, pool_kind)
                if watch
                else self._pump_heads(session, sub_id, sub, kind, initial)
            )
            active.task = asyncio.create_task(pump, name=f"rpc-sub-{sub_id}")

        session.starts.append(start)
        return sub_id

    async def _notify(self, session: _Session, method: str, sub_id: str, result: Any) -> None:
        await session.send(
            {
                "jsonrpc": "2.0",
                "method": method,
                "params": {"subscription": sub_id, "result": result},
            }
        )

    def _finish(self, session: _Session, sub_id: str) -> None:
        active = session.subs.pop(sub_id, None)
        if active is not None:
            self._end_subscription(session, active)

    async def _pump_heads(
        self,
        session: _Session,
        sub_id: str,
        sub: Subscription,
        kind: _SubscriptionKind,
        initial: Header | None,
    ) -> None:
        try:
            if initial is not None:
                await self._notify(session, kind.notification, sub_id, header_json(initial))
            while (event := await sub.queue.get()) is not None:
                await self._notify(session, kind.notification, sub_id, header_json(event.header))
            log.info("RPC subscriber %s fell %d events behind; ended", sub_id, MAX_QUEUED_EVENTS)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._finish(session, sub_id)

    async def _pump_transaction(
        self,
        session: _Session,
        sub_id: str,
        sub: Subscription,
        tx_hash: Hash32,
        raw: bytes,
        first: str,
    ) -> None:
        """ready/future → inBlock (→ retracted → inBlock…) → finalized, or dropped/invalid."""
        method = SUBSCRIPTIONS["author_submitAndWatchExtrinsic"].notification
        included: tuple[str, int] | None = None  # block hash, number

        async def send(result: Any) -> None:
            await self._notify(session, method, sub_id, result)

        try:
            await send(first)
            while (event := await sub.queue.get()) is not None:
                number = event.header.number
                if included is None and event.kind == "finalizedHead":
                    continue
                if included is not None and (
                    (event.kind == "newHead" and number > included[1])
                    or (event.kind == "finalizedHead" and number < included[1])
                ):
                    continue  # the chain grew above the block, or finality is still below it
                status = await self.run(self.watch_status, tx_hash, raw)
                state = status["status"]
                block = status.get("blockHash")
                if state in ("inBlock", "finalized") and (included is None or included[0] != block):
                    if included is not None:
                        await send({"retracted": included[0]})
                    included = (str(block), int(status["block"]))
                    await send({"inBlock": included[0]})
                if state == "finalized":
                    await send({"finalized": block})
                    return
                if state == "pool" and included is not None:
                    await send({"retracted": included[0]})
                    await send("ready")
                    included = None
                if state in ("dropped", "invalid"):  # with the reason (Substrate sends none)
                    await send({state: status.get("reason", "")})
                    return
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._finish(session, sub_id)

    # --- app ---------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.limits.max_body)
        app.router.add_post("/", self.handle_http)
        app.router.add_get("/", self.handle_get)
        app.router.add_route("OPTIONS", "/", self.handle_options)
        app.router.add_get("/health", self.handle_health)
        app.on_shutdown.append(self._close_sessions)
        return app

    def runner(self) -> web.AppRunner:
        """The app's runner; ``idle_timeout`` also bounds how long headers may take, and a
        body refused unread is drained for at most ``LINGER`` s."""
        return web.AppRunner(
            self.app(),
            access_log=None,
            keepalive_timeout=self.limits.idle_timeout,
            lingering_time=LINGER,
        )

    def site(self, runner: web.AppRunner, host: str, port: int) -> web.TCPSite:
        """A listening site whose sockets are capped in total and per IP."""
        return _GuardedSite(runner, host, port, self.guard)


def _error(req_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


def _http_error(code: int, message: str, status: int = 200) -> web.Response:
    return web.json_response(_error(None, code, message), status=status)
