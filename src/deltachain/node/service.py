"""The node service: slot timer, block authoring and the RPC server, on one asyncio loop.

The service owns its tasks and stops them all on shutdown; SIGINT/SIGTERM set a stop event
rather than raising inside whatever is running, so a block import is never cut in half (and
if the process is killed anyway, SQLite's transaction keeps the database consistent).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from deltachain import codec
from deltachain.chain import construct_runtime
from deltachain.consensus.aura import slot_at
from deltachain.consensus.finality import Justification, Vote
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.errors import DecodeError, DeltachainError, NetworkError, NotFound
from deltachain.light.protocol import MAX_REQUEST_BYTES as MAX_LIGHT_REQUEST
from deltachain.light.protocol import light_protocol
from deltachain.model_state.module import ModelStateModule
from deltachain.node import light_server
from deltachain.node.chain import Chain, ImportResult
from deltachain.node.metrics import MetricsServer, NodeMetrics
from deltachain.node.network import Network, NetworkConfig
from deltachain.node.rpc import ChainRunner, EventHub, RpcLimits, RpcServer
from deltachain.node.signing_state import SigningState
from deltachain.node.sync import (
    GOSSIP_BLOCK_LIMIT,
    MAX_BLOCKS_PER_RESPONSE,
    PeerStatus,
    decode_list,
    request_block,
    request_blocks,
    request_justification,
    request_status,
    request_votes,
    serve,
    sync_protocol,
    topics,
)
from deltachain.node.txpool import PoolLimits
from deltachain.primitives.block import MAX_BLOCK_SIZE, Block, Header
from deltachain.primitives.chainspec import ChainSpec
from deltachain.primitives.transaction import MAX_TX_SIZE, sign_transaction
from deltachain.primitives.types import Hash32

log = logging.getLogger("deltachain.node")


SYNC_INTERVAL_S = 1.0
STARTUP_SYNC_WAIT_S = 3.0
"""A validator with no reachable peer authors alone after this long (a fresh network)."""
FORK_OVERLAP = 8
REGOSSIP_SLOTS = 4
"""Finality stalled this many slots (or a new peer): re-send the votes above finality."""
SHUTDOWN_GRACE_S = 3.0
"""How long a stopping node waits for the block it is authoring to be stored and logged."""
TX_GOSSIP_INTERVAL_S = 0.05
"""Accepted transactions are gossiped in batches at this pace: one message carries many (the
mesh drops beyond ~400 messages/s a link), and a delta still reaches every pool well within a
slot."""
TX_BATCH_BYTES = 128 * 1024
"""A batch stays well under the 1 MiB gossip limit (above which messages vanish silently) and
under yamux's 256 KiB window, so a vote behind it on the same stream is not held up long."""
MAX_TXS_PER_BATCH = 4096
REANNOUNCE_EVERY_S = 6.0
"""Pool transactions still waiting after this long are gossiped again (and at once when a
peer connects): a peer that was away or restarted missed the first announcement."""
MAX_REANNOUNCE = 2048
TX_INBOUND_BATCHES = 256
"""Peers' transaction batches waiting for the chain thread; beyond this the oldest is dropped
(its transactions come again with the next re-announcement)."""


def tx_batches(raws: list[bytes]) -> list[bytes]:
    """Encoded ``txs`` gossip messages, each under TX_BATCH_BYTES and MAX_TXS_PER_BATCH."""
    batches: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for raw in raws:
        if current and (size + len(raw) + 8 > TX_BATCH_BYTES or len(current) >= MAX_TXS_PER_BATCH):
            batches.append(codec.encode(current))
            current, size = [], 0
        current.append(raw)
        size += len(raw) + 8
    if current:
        batches.append(codec.encode(current))
    return batches


def decode_tx_batch(data: bytes) -> list[bytes]:
    items = codec.decode(data, max_size=TX_BATCH_BYTES + MAX_TX_SIZE, what="transaction gossip")
    if (
        not isinstance(items, list)
        or len(items) > MAX_TXS_PER_BATCH
        or not all(isinstance(item, bytes) for item in items)
    ):
        raise DecodeError(
            f"transaction gossip is a list of at most {MAX_TXS_PER_BATCH} byte strings"
        )
    return items


@dataclass(frozen=True)
class NodeConfig:
    spec: ChainSpec
    base_path: Path
    key: Keypair | None
    name: str = "deltachain"
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 9944
    archive: bool = False
    pool_limits: PoolLimits = dataclasses.field(default_factory=PoolLimits)
    network: NetworkConfig | None = None
    """None runs without peers (the dev chain)."""
    rpc_methods: str = "auto"
    """auto | safe | unsafe: who may call unsafe RPC methods (auto: callers on this machine)."""
    rpc_limits: RpcLimits = dataclasses.field(default_factory=RpcLimits)
    prometheus_host: str = "127.0.0.1"
    prometheus_port: int | None = None
    """None: no metrics endpoint."""
    signing_state: Path | None = None
    """The validator's double-sign protection file (``node/signing_state.py``); None: none."""
    double_sign_check_slots: int = 0
    """Listen this many slots for votes by our own key before the first vote (0: don't)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def log_block(result: ImportResult, finalized: int, verb: str) -> None:
    block = result.block
    log.info(
        "%s #%d (0x%s…) slot %d, %d txs in %.1f ms; finalized #%d",
        verb,
        block.number,
        block.hash.hex()[:12],
        block.header.slot,
        len(block.transactions),
        result.seconds * 1e3,
        finalized,
    )


async def run_node(config: NodeConfig, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGINT/SIGTERM).

    Raises StorageError etc. before starting, DeltachainError if the RPC port cannot be bound.
    "stopped cleanly" is logged only when the node stopped because it was asked to.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        signer = (
            SigningState(config.signing_state, config.key.address)
            if config.key is not None and config.signing_state is not None
            else None
        )
        chain = Chain(
            config.spec,
            construct_runtime(),
            config.base_path,
            archive=config.archive,
            pool_limits=config.pool_limits,
            signing_state=signer,
            double_sign_check_slots=config.double_sign_check_slots,
        )
        try:
            await _serve(chain, config, stop)
        finally:
            chain.close()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    log.info("stopped cleanly")


def chain_runner(executor: ThreadPoolExecutor) -> ChainRunner:
    """Everything that touches the chain runs on one thread: storage is never shared between
    threads, and a long block import (numba aggregation) never stalls the event loop."""

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    return run


READ_SHARE = 0.2
"""The most of the chain thread's time heavy reads (weights pages, proofs, whole blocks) may
take while they keep arriving: after a read that took t, the next waits t · (1 − share) / share
unless other work comes first. Four validators on two cores flooded with 1 MiB weight pages
missed 29 of 44 slots without it (docs/performance.md)."""


class ChainThread:
    """The one thread that touches the chain, with three queues: consensus work (authoring,
    block import, votes, justifications, sync) always goes before work for users (RPC calls,
    light-protocol reads, peers' transaction batches), and that before heavy reads, which
    also get at most ``READ_SHARE`` of the thread's time. A fleet flooding the pool or readers
    flooding the RPC then wait for each other, never the slot or the vote; and readers cannot
    take the whole CPU from the network and the event loop that deliver blocks and votes."""

    CONSENSUS = 0
    USERS = 1
    READS = 2

    def __init__(self, read_share: float = READ_SHARE) -> None:
        if not 0 < read_share <= 1:
            raise ValueError("read_share must be in (0, 1]")
        self.read_share = read_share
        self._queue: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._other_work = threading.Event()
        self._reads_resume = 0.0
        self._thread = threading.Thread(target=self._work, name="chain", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            priority, seq, job = self._queue.get()
            if job is None:
                return
            if priority == self.READS:
                wait = self._reads_resume - time.monotonic()
                if wait > 0:  # reads had their share: wait, unless other work arrives
                    self._other_work.clear()
                    self._queue.put((priority, seq, job))
                    self._other_work.wait(min(wait, 0.01))
                    continue
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            started = time.monotonic()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)
            if priority == self.READS:
                spent = time.monotonic() - started
                self._reads_resume = time.monotonic() + spent * (1 / self.read_share - 1)

    def _submit(self, priority: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((priority, next(self._seq), (future, fn, args)))
        if priority != self.READS:
            self._other_work.set()
        return asyncio.wrap_future(future)

    async def urgent(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._submit(self.CONSENSUS, fn, args)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._submit(self.USERS, fn, args)

    async def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A heavy read for a user: after every other queue, within ``read_share``."""
        return await self._submit(self.READS, fn, args)

    def pending(self) -> int:
        return self._queue.qsize()

    def shutdown(self) -> None:
        """Finish what is queued, then stop (the queue's last entry ends the thread)."""
        self._queue.put((self.READS + 1, next(self._seq), None))
        self._other_work.set()
        self._thread.join()


async def _serve(chain: Chain, config: NodeConfig, stop: asyncio.Event) -> None:
    chain_thread = ChainThread()
    run = chain_thread.run
    events = EventHub()
    metrics = NodeMetrics(config.spec.id)
    service = NodeService(
        chain, config, chain_thread.urgent, stop, events=events, metrics=metrics, users=run
    )
    rpc = RpcServer(
        chain,
        run,
        read=chain_thread.read,
        node_name=config.name,
        peers=service.peer_ids,
        local_peer_id=service.local_peer_id,
        is_syncing=lambda: not service.synced.is_set(),
        roles=("Authority",) if config.key is not None else ("Full",),
        events=events,
        metrics=metrics,
        rpc_methods=config.rpc_methods,
        limits=config.rpc_limits,
    )
    runner = rpc.runner()
    prometheus = web.AppRunner(
        MetricsServer(metrics, service.refresh_metrics).app(), access_log=None
    )
    try:
        await run(events.update, chain.storage)
        await runner.setup()
        try:
            await rpc.site(runner, config.rpc_host, config.rpc_port).start()
        except OSError as exc:
            raise DeltachainError(
                f"cannot listen for JSON-RPC on {config.rpc_host}:{config.rpc_port} "
                f"({exc.strerror or exc}); choose another --rpc-port or stop the process using it"
            ) from None
        best = chain.storage.best_header()
        log.info(
            "chain %r (%s), genesis 0x%s…, best #%d, database %s",
            config.spec.name,
            config.spec.id,
            chain.genesis_hash.hex()[:16],
            best.number,
            chain.storage.path,
        )
        log.info(
            "JSON-RPC listening on http://%s:%d (HTTP and WebSocket; unsafe methods: %s)",
            config.rpc_host,
            config.rpc_port,
            config.rpc_methods,
        )
        if config.prometheus_port is not None:
            await _start_prometheus(prometheus, config.prometheus_host, config.prometheus_port)
        if config.key is not None:
            log.info("authoring as %s", address_to_str(config.key.address))
        warm = await run(chain.warm_up)
        log.info("aggregation kernels ready in %.2f s", warm)
        await service.run()
    finally:
        await prometheus.cleanup()
        await runner.cleanup()
        chain_thread.shutdown()


async def _start_prometheus(runner: web.AppRunner, host: str, port: int) -> None:
    """Metrics are not worth refusing to start over: a busy port is logged and skipped."""
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.warning(
            "Prometheus metrics disabled: cannot listen on %s:%d (%s); choose another "
            "--prometheus-port or pass --no-prometheus",
            host,
            port,
            exc.strerror or exc,
        )
        return
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)


class NodeService:
    """Slots, gossip, sync and votes around one Chain. Owns its tasks; stops them all."""

    def __init__(
        self,
        chain: Chain,
        config: NodeConfig,
        run: ChainRunner,
        stop: asyncio.Event,
        *,
        events: EventHub | None = None,
        metrics: NodeMetrics | None = None,
        users: ChainRunner | None = None,
    ) -> None:
        self.chain = chain
        self.config = config
        self.on_chain = run
        """Consensus work on the chain thread."""
        self.for_users = users or run
        """Work done for others (peers' transactions, light-client reads): after consensus."""
        self.stop = stop
        self.events = events
        self.metrics = metrics
        self.topics = topics(chain.genesis_hash)
        self.network: Network | None = None
        self._tx_inbound: asyncio.Queue[bytes] = asyncio.Queue(TX_INBOUND_BATCHES)
        self.synced = asyncio.Event()
        self.sync_wanted = asyncio.Event()
        self._regossip_at = 0.0
        self._known_peers: frozenset[str] = frozenset()

    def peer_count(self) -> int:
        return 0 if self.network is None else len(self.network.peers())

    def peer_ids(self) -> list[str]:
        """Connected peers (a snapshot; safe to call from any thread)."""
        return [] if self.network is None else self.network.peers()

    def local_peer_id(self) -> str | None:
        return None if self.network is None else self.network.peer_id

    # --- RPC events and metrics --------------------------------------------------------------

    async def _notify_rpc(self) -> None:
        """Publish new best/finalized heads to RPC subscribers (reads storage on the chain
        thread; the hub delivers to each subscriber's loop in one order)."""
        if self.events is not None:
            await self.on_chain(self.events.update, self.chain.storage)

    def _observe_import(self, result: ImportResult, origin: str) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        (metrics.blocks_authored if origin == "own" else metrics.blocks_imported).inc()
        metrics.import_seconds.observe(result.seconds, origin)
        for event in result.output.finalize_events:
            if event.module == "model_state" and event.name == "RoundClosed":
                module = self.chain.runtime.modules.get("model_state")
                if isinstance(module, ModelStateModule):
                    metrics.aggregation_seconds.observe(module.last_aggregation_seconds)
                metrics.rounds_closed.inc(1, str(event.data.get("model")))

    async def refresh_metrics(self) -> None:
        """Set the state gauges (heights, pool, peers) just before a scrape."""
        metrics = self.metrics
        if metrics is None:
            return

        def read() -> tuple[int, int, dict[str, int]]:
            storage = self.chain.storage
            best = storage.best_header().number
            return best, storage.finalized_header().number, self.chain.pool.stats()

        best, finalized, pool = await self.on_chain(read)
        metrics.block_height.set(best, "best")
        metrics.block_height.set(finalized, "finalized")
        metrics.ready_txs.set(pool["ready"])
        metrics.future_txs.set(pool["future"])
        metrics.peers.set(self.peer_count())

    async def run(self) -> None:
        network_config = self.config.network
        if network_config is not None:
            self.network = Network(
                dataclasses.replace(network_config, topics=tuple(self.topics.values()))
            )
            self.network.set_request_handler(
                sync_protocol(self.chain.genesis_hash), self._serve_sync
            )
            # light clients are never reserved peers: the light protocol is open to anyone
            self.network.set_request_handler(
                light_protocol(self.chain.genesis_hash),
                self._serve_light,
                open_to_all=True,
                max_request=MAX_LIGHT_REQUEST,
            )
            await self.network.start()
        else:
            self.synced.set()  # a lone dev node has nobody to catch up with
        tasks = [asyncio.create_task(self._slot_loop(), name="slots")]
        if self.network is not None:
            tasks += [
                asyncio.create_task(self._gossip_loop(), name="gossip"),
                asyncio.create_task(self._sync_loop(), name="sync"),
                asyncio.create_task(self._tx_gossip_loop(), name="tx-gossip"),
                asyncio.create_task(self._tx_inbound_loop(), name="tx-inbound"),
            ]
        try:
            stopper = asyncio.create_task(self.stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopper and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            # The slot loop sees the stop event after its current slot: let a block being
            # authored finish (and be logged and announced) rather than cut it off.
            slots = tasks[0]
            if self.stop.is_set() and not slots.done():
                with contextlib.suppress(TimeoutError, Exception):
                    await asyncio.wait_for(asyncio.shield(slots), timeout=SHUTDOWN_GRACE_S)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.network is not None:
                await self.network.stop()

    # --- authoring ---------------------------------------------------------------------------

    async def _slot_loop(self) -> None:
        slot_ms = self.config.spec.slot_ms
        key = self.config.key
        while not self.stop.is_set():
            slot = slot_at(now_ms(), slot_ms)
            if key is not None and self.synced.is_set():
                result = await self.on_chain(self.chain.author_block, slot, key)
                if result is not None:
                    self._observe_import(result, "own")
                    await self._announce(result)
                    log_block(result, await self._finalized_number(), "authored")
            wait_s = ((slot + 1) * slot_ms - now_ms()) / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), timeout=max(wait_s, 0.001))

    async def _finalized_number(self) -> int:
        return int(await self.on_chain(lambda: self.chain.storage.finalized_header().number))

    async def _announce(self, result: ImportResult) -> None:
        """Gossip a block we authored, our vote, new finality and any evidence we hold."""
        if self.network is not None:
            encoded = result.block.encode()
            message = (
                ["block", encoded]
                if len(encoded) <= GOSSIP_BLOCK_LIMIT
                else ["header", result.block.header.encode()]
            )
            self._publish("blocks", codec.encode(message))
        await self._after_import(result)

    async def _after_import(self, result: ImportResult) -> None:
        if result.vote is not None:
            self._publish("votes", result.vote.encode())
        if result.finalized is not None:
            self._publish("justifications", result.finalized.encode())
        await self._notify_rpc()
        await self._report_evidence()

    async def _report_evidence(self) -> None:
        key = self.config.key
        if key is None:
            return
        for kind, first, second in await self.on_chain(self.chain.take_evidence):

            def submit(kind: str = kind, first: bytes = first, second: bytes = second) -> bytes:
                nonce = self.chain.pool_nonce(key.address)
                tx = sign_transaction(
                    key,
                    self.chain.genesis_hash,
                    nonce,
                    "authority",
                    "report_equivocation",
                    {"kind": kind, "first": first, "second": second},
                )
                self.chain.submit_transaction(tx.encode())  # gossiped from the outbox
                return tx.encode()

            try:
                encoded = await self.on_chain(submit)
            except DeltachainError as exc:
                log.info("evidence not submitted: %s", exc)
                continue
            log.warning("submitted %s equivocation evidence (%d bytes)", kind, len(encoded))

    def _publish(self, topic: str, data: bytes) -> None:
        if self.network is None:
            return
        try:
            self.network.publish(self.topics[topic], data)
        except NetworkError as exc:
            log.debug("gossip on %s failed: %s", topic, exc)

    # --- gossip ------------------------------------------------------------------------------

    async def _gossip_loop(self) -> None:
        assert_network = self.network
        if assert_network is None:
            return
        by_topic = {v: k for k, v in self.topics.items()}
        while True:
            message = await assert_network.inbound.get()
            kind = by_topic.get(message.topic)
            try:
                if kind == "blocks":
                    await self._on_block_gossip(message.sender, message.data)
                elif kind == "txs":  # off this loop: blocks and votes must not queue behind
                    if self._tx_inbound.full():
                        self._tx_inbound.get_nowait()  # the oldest; re-announcement repairs it
                    self._tx_inbound.put_nowait(message.data)
                elif kind == "votes":
                    outcome = await self.on_chain(self.chain.add_vote, Vote.decode(message.data))
                    if outcome.finalized is not None:
                        self._log_finality(outcome.finalized.source.number)
                    await self._vote_if_head_moved(outcome.justified)
                elif kind == "justifications":
                    justification = Justification.decode(message.data)
                    if await self.on_chain(self.chain.add_justification, justification):
                        self._log_finality(justification.source.number)
            except NotFound:
                self.sync_wanted.set()
            except DeltachainError as exc:
                log.debug("ignored %s gossip from %s: %s", kind, message.sender[-8:], exc)
                if kind == "txs" and self.metrics is not None:
                    self.metrics.rejected_txs.inc(1, type(exc).__name__)
            if kind in ("votes", "justifications"):
                await self._notify_rpc()  # finality (or a vote-driven reorg) may have moved
            await self._report_evidence()

    async def _tx_inbound_loop(self) -> None:
        """Peers' transaction batches, pooled one batch at a time after consensus work."""
        while True:
            data = await self._tx_inbound.get()
            try:
                counts = await self.for_users(self.chain.submit_batch, decode_tx_batch(data))
            except DeltachainError as exc:
                log.debug("ignored a transaction batch: %s", exc)
                counts = {type(exc).__name__: 1}
            self._count_gossiped(counts)

    def _count_gossiped(self, counts: dict[str, int]) -> None:
        """Peers' transactions we refused: AlreadyKnown is the normal echo of gossip."""
        if self.metrics is None:
            return
        for outcome, n in counts.items():
            if outcome not in ("accepted", "AlreadyKnown"):
                self.metrics.rejected_txs.inc(n, outcome)

    async def _tx_gossip_loop(self) -> None:
        """Gossip what this node's users submitted, in paced batches; re-announce what still
        waits (periodically, and at once when a new peer appears)."""
        network = self.network
        if network is None:
            return
        outbox = self.chain.outbox
        known_peers: set[str] = set(network.peers())
        next_reannounce = time.monotonic() + REANNOUNCE_EVERY_S
        while True:
            await asyncio.sleep(TX_GOSSIP_INTERVAL_S)
            raws = []
            while outbox:
                raws.append(outbox.popleft())
            peers = set(network.peers())
            joined = bool(peers - known_peers)
            known_peers = peers
            if joined or time.monotonic() >= next_reannounce:
                next_reannounce = time.monotonic() + REANNOUNCE_EVERY_S
                waiting = await self.on_chain(
                    self.chain.announce_pending, 0.0 if joined else REANNOUNCE_EVERY_S
                )
                raws.extend(waiting[:MAX_REANNOUNCE])
            for batch in tx_batches(raws):
                self._publish("txs", batch)

    def _log_finality(self, number: int) -> None:
        log.info("finalized #%d", number)

    async def _vote_if_head_moved(self, justified: list[Hash32]) -> None:
        if justified and self.config.key is not None:
            vote = await self.on_chain(self.chain.vote, self.config.key)
            if vote is not None:
                self._publish("votes", vote.encode())

    async def _on_block_gossip(self, sender: str, data: bytes) -> None:
        obj = codec.decode(data, max_size=MAX_BLOCK_SIZE + 64, what="block gossip")
        if not isinstance(obj, list) or len(obj) != 2 or not isinstance(obj[1], bytes):
            raise DecodeError("block gossip is [kind, bytes]")
        if obj[0] == "header":
            header = Header.decode(obj[1])
            if await self.on_chain(self.chain.storage.has_block, header.hash):
                return
            block = await self._fetch_block(sender, header.hash)
        elif obj[0] == "block":
            block = Block.decode(obj[1])
        else:
            raise DecodeError("block gossip kind must be block or header")
        await self._import(block, live=True)

    async def _import(self, block: Block, *, live: bool) -> bool:
        now = slot_at(now_ms(), self.config.spec.slot_ms) if live else None
        try:
            result = await self.on_chain(lambda: self.chain.import_block(block, now_slot=now))
        except NotFound:
            self.sync_wanted.set()  # unknown parent: fetch the gap from peers
            return False
        if result is None:
            return False
        self._observe_import(result, "network")
        log_block(result, await self._finalized_number(), "imported")
        if self.config.key is not None:
            result.vote = await self.on_chain(self.chain.vote, self.config.key)
        if result.finalized is not None:
            self._log_finality(result.finalized.source.number)
        await self._after_import(result)
        return True

    async def _fetch_block(self, peer: str, block_hash: Hash32) -> Block:
        if self.network is None:
            raise NetworkError("no network")
        reply = await self.network.request(
            peer, sync_protocol(self.chain.genesis_hash), request_block(block_hash), timeout=10.0
        )
        items = decode_list(reply, "block response")
        if len(items) != 1:
            raise NotFound(f"peer does not have block 0x{block_hash.hex()[:16]}")
        block = Block.decode(items[0])
        if block.hash != block_hash:
            raise DecodeError("peer answered with a different block")
        return block

    # --- sync ---------------------------------------------------------------------------------

    async def _serve_sync(self, peer: str, request: bytes) -> bytes:
        return bytes(await self.on_chain(serve, self.chain, request))  # validators catching up

    async def _serve_light(self, peer: str, request: bytes) -> bytes:
        """The light-client protocol, on the chain thread like sync (``light_server``)."""
        return bytes(await self.for_users(light_server.serve, self.chain, request))

    async def _sync_loop(self) -> None:
        """Catch up from peers: at start (before authoring), every second, and on demand."""
        network = self.network
        if network is None:
            return
        started = time.monotonic()
        while True:
            behind = await self._sync_round(network)
            if (
                not self.synced.is_set()
                and not behind
                and (network.peers() or time.monotonic() - started > STARTUP_SYNC_WAIT_S)
            ):
                log.info("in sync with %d peers; authoring enabled", len(network.peers()))
                self.synced.set()
            if behind:
                continue
            self.sync_wanted.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.sync_wanted.wait(), timeout=SYNC_INTERVAL_S)

    async def _sync_round(self, network: Network) -> bool:
        """Ask every peer for its status and fetch what we miss; True if still behind."""
        protocol = sync_protocol(self.chain.genesis_hash)
        behind = False
        for peer in network.peers():
            try:
                status = PeerStatus.decode(
                    await network.request(peer, protocol, request_status(), timeout=5.0)
                )
                best = await self.on_chain(self.chain.storage.best_header)
                finalized = await self.on_chain(self.chain.storage.finalized_header)
                if status.best_number > best.number or not await self.on_chain(
                    self.chain.storage.has_block, status.best_hash
                ):
                    behind |= await self._fetch_range(
                        network, peer, finalized.number + 1, status.best_number
                    )
                if status.finalized_number > finalized.number:
                    reply = decode_list(
                        await network.request(
                            peer, protocol, request_justification(status.finalized_number)
                        ),
                        "justification response",
                    )
                    for item in reply:
                        justification = Justification.decode(item)
                        if await self.on_chain(self.chain.add_justification, justification):
                            self._log_finality(justification.source.number)
                            await self._notify_rpc()
            except (NetworkError, DeltachainError) as exc:
                log.debug("sync with %s failed: %s", peer[-8:], exc)
        await self._catch_up_votes(network)
        return behind

    # --- votes above finality ---------------------------------------------------------------

    async def _catch_up_votes(self, network: Network) -> None:
        """When finality stalls or a peer (re)connects: send our votes above finality again
        and ask the peers for theirs.

        Votes are otherwise gossiped once; a validator that restarted, was paused or was cut
        off would never learn what the others justified meanwhile and would vote from an older
        source forever (docs/consensus.md §2.1).
        """
        peers = frozenset(network.peers())
        new_peer = bool(peers - self._known_peers)
        self._known_peers = peers
        slot_s = self.config.spec.slot_ms / 1000
        now = time.monotonic()
        stalled = now - self.chain.last_finalized_at > REGOSSIP_SLOTS * slot_s
        if not peers or not (new_peer or (stalled and now - self._regossip_at > 2 * slot_s)):
            return
        self._regossip_at = now
        for vote in await self.on_chain(self.chain.pending_votes):
            self._publish("votes", vote.encode())
        protocol = sync_protocol(self.chain.genesis_hash)
        for peer in peers:
            try:
                reply = await network.request(peer, protocol, request_votes(), timeout=5.0)
                for item in decode_list(reply, "votes response"):
                    with contextlib.suppress(DeltachainError):
                        outcome = await self.on_chain(self.chain.add_vote, Vote.decode(item))
                        if outcome.finalized is not None:
                            self._log_finality(outcome.finalized.source.number)
                        await self._vote_if_head_moved(outcome.justified)
            except (NetworkError, DeltachainError) as exc:
                log.debug("votes from %s failed: %s", peer[-8:], exc)
        await self._notify_rpc()

    async def _fetch_range(self, network: Network, peer: str, start: int, peer_best: int) -> bool:
        """Import the peer's canonical blocks from ``start``; True if more remain."""
        protocol = sync_protocol(self.chain.genesis_hash)
        best = await self.on_chain(self.chain.storage.best_header)
        # Skip what we already share on the canonical chain, but re-fetch a short overlap so a
        # fork point a few blocks back is found.
        floor, start = start, max(start, best.number - FORK_OVERLAP)
        while True:
            reply = await network.request(
                peer, protocol, request_blocks(start, MAX_BLOCKS_PER_RESPONSE), timeout=20.0
            )
            items = decode_list(reply, "blocks response")
            # A fork deeper than the overlap (e.g. after a partition, when finality halted):
            # the first block's parent is unknown, so look further back, at most to just above
            # our finalized block, which the peer's chain contains.
            if not items or start <= floor:
                break
            parent = Block.decode(items[0]).header.parent_hash
            if await self.on_chain(self.chain.storage.has_block, parent):
                break
            start = max(floor, start - MAX_BLOCKS_PER_RESPONSE)
        imported = 0
        last = start - 1
        for item in items:
            block = Block.decode(item)
            last = block.number
            if await self._import(block, live=False):
                imported += 1
        return imported > 0 and last < peer_best
