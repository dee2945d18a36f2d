"""The node service: slot timer, block authoring and the RPC server, on one asyncio loop.

The service owns its tasks and stops them all on shutdown; SIGINT/SIGTERM set a stop event
rather than raising inside whatever is running, so a block import is never cut in half (and
if the process is killed anyway, SQLite's transaction keeps the database consistent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from deltachain.chain import construct_runtime
from deltachain.consensus.aura import slot_at
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.errors import DeltachainError
from deltachain.node.chain import Chain, ImportResult
from deltachain.node.rpc import ChainRunner, RpcServer
from deltachain.primitives.chainspec import ChainSpec

log = logging.getLogger("deltachain.node")


@dataclass(frozen=True)
class NodeConfig:
    spec: ChainSpec
    base_path: Path
    key: Keypair | None
    name: str = "deltachain"
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 9944
    archive: bool = False


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
        chain = Chain(config.spec, construct_runtime(), config.base_path, archive=config.archive)
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


async def _serve(chain: Chain, config: NodeConfig, stop: asyncio.Event) -> None:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain")
    run = chain_runner(executor)
    runner = web.AppRunner(RpcServer(chain, run, node_name=config.name).app(), access_log=None)
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, config.rpc_host, config.rpc_port).start()
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
        log.info("JSON-RPC listening on http://%s:%d", config.rpc_host, config.rpc_port)
        if config.key is not None:
            log.info("authoring as %s", address_to_str(config.key.address))
        warm = await run(chain.warm_up)
        log.info("aggregation kernels ready in %.2f s", warm)
        await _slot_loop(chain, config, stop, run)
    finally:
        await runner.cleanup()
        executor.shutdown(wait=True)


async def _slot_loop(
    chain: Chain, config: NodeConfig, stop: asyncio.Event, run: ChainRunner
) -> None:
    slot_ms = config.spec.slot_ms
    while not stop.is_set():
        slot = slot_at(now_ms(), slot_ms)
        if config.key is not None:
            result = await run(chain.author_block, slot, config.key)
            if result is not None:
                finalized = await run(lambda: chain.storage.finalized_header().number)
                log_block(result, finalized, "authored")
        wait_s = ((slot + 1) * slot_ms - now_ms()) / 1000
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=max(wait_s, 0.001))
