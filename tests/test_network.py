"""The libp2p adapter over loopback: gossip, request/response, reserved peers, reconnects.

Every node runs libp2p on its own trio thread; these tests drive it from pytest-asyncio.
Ports come from the OS (bind to port 0, read it, release it) so that every node can be given
every other node's address up front, as the node's chain spec does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest

from deltachain.errors import InvalidKey, NetworkError, NotFound, RequestTooLarge
from deltachain.node.network import (
    GossipMessage,
    Network,
    NetworkConfig,
    RequestHandler,
    peer_id_from_seed,
)
from node_process import free_ports

TOPIC = "deltachain/test/blocks"
ECHO = "/deltachain/test/echo/1"


def seed(i: int) -> bytes:
    return hashlib.sha256(f"test-node-{i}".encode()).digest()


def addr(i: int, port: int) -> str:
    return f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_from_seed(seed(i))}"


def mesh_configs(n: int, **overrides: Any) -> list[NetworkConfig]:
    """n nodes on free loopback ports, each with every other node as a bootnode."""
    ports = free_ports(n)
    return [
        NetworkConfig(
            node_key_seed=seed(i),
            listen_port=ports[i],
            bootnodes=tuple(addr(j, ports[j]) for j in range(n) if j != i),
            topics=(TOPIC,),
            **overrides,
        )
        for i in range(n)
    ]


async def eventually(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


def drain(net: Network) -> list[GossipMessage]:
    out = []
    while not net.inbound.empty():
        out.append(net.inbound.get_nowait())
    return out


async def wait_gossip_ready(nets: Sequence[Network], timeout: float = 10.0) -> None:
    """Connected, subscribed and grafted: every node's probe reaches every other node."""
    await eventually(
        lambda: all(len(n.peers()) >= len(nets) - 1 for n in nets), timeout, "connections"
    )
    deadline = time.monotonic() + timeout
    for i, publisher in enumerate(nets):
        others = [n for n in nets if n is not publisher]
        got = [False] * len(others)
        k = 0
        while not all(got):
            if time.monotonic() > deadline:
                pytest.fail(f"gossip from node {i} did not reach every node")
            publisher.publish(TOPIC, f"probe-{i}-{k}".encode())
            k += 1
            await asyncio.sleep(0.2)
            for j, other in enumerate(others):
                got[j] = got[j] or any(m.sender == publisher.peer_id for m in drain(other))
    await asyncio.sleep(0.3)
    for n in nets:
        drain(n)


@asynccontextmanager
async def running(
    configs: Sequence[NetworkConfig],
    handlers: dict[str, RequestHandler] | None = None,
) -> AsyncIterator[list[Network]]:
    nets = [Network(c) for c in configs]
    for net in nets:
        for protocol, handler in (handlers or {}).items():
            net.set_request_handler(protocol, handler)
    try:
        for net in nets:
            await net.start()
        yield nets
    finally:
        for net in nets:
            await net.stop()


async def collect(net: Network, count: int, timeout: float) -> list[GossipMessage]:
    out: list[GossipMessage] = []
    async with asyncio.timeout(timeout):
        while len(out) < count:
            out.append(await net.inbound.get())
    return out


# --- identity ---------------------------------------------------------------------------------


async def test_peer_id_is_stable_and_matches_the_started_node() -> None:
    assert peer_id_from_seed(seed(1)) == peer_id_from_seed(seed(1))
    assert peer_id_from_seed(seed(1)) != peer_id_from_seed(seed(2))
    assert peer_id_from_seed(seed(1)).startswith("12D3KooW")  # ed25519, identity multihash
    with pytest.raises(InvalidKey):
        peer_id_from_seed(b"short")
    with pytest.raises(InvalidKey):
        NetworkConfig(node_key_seed=b"x" * 31)

    config = NetworkConfig(node_key_seed=seed(1), listen_port=0)
    async with running([config]) as (net,):
        assert net.peer_id == peer_id_from_seed(seed(1))
        assert net.listen_addr.endswith(f"/p2p/{net.peer_id}")
        assert "/tcp/0/" not in net.listen_addr  # port 0 resolved to the bound port
    assert Network(config).peer_id == net.peer_id  # same seed, same id, no thread needed


async def test_bind_failure_raises_network_error() -> None:
    (config,) = mesh_configs(1)
    async with running([config]) as (first,):
        second = Network(replace(config, node_key_seed=seed(9)))
        with pytest.raises(NetworkError, match="cannot listen"):
            await second.start()
        await second.stop()
        assert first.peers() == []


async def test_libp2p_logging_is_reattached(caplog: pytest.LogCaptureFixture) -> None:
    libp2p_logger = logging.getLogger("libp2p")
    assert libp2p_logger.propagate
    assert libp2p_logger.getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("libp2p.network.auto_connector").getEffectiveLevel() >= logging.WARNING
    caplog.set_level(logging.INFO, logger="deltachain.network")
    async with running([NetworkConfig(node_key_seed=seed(1), listen_port=0)]):
        pass
    assert any("network listening on" in r.getMessage() for r in caplog.records)


# --- gossip -----------------------------------------------------------------------------------


async def test_gossip_reaches_every_other_node_exactly_once() -> None:
    async with running(mesh_configs(3)) as nets:
        await wait_gossip_ready(nets)
        a, b, c = nets
        small, large = b"s" * 1024, bytes(range(256)) * 2000  # 1 KB and 500 KB
        started = time.perf_counter()
        a.publish(TOPIC, small)
        a.publish(TOPIC, large)
        for other in (b, c):
            got = await collect(other, 2, timeout=5.0)
            assert sorted(m.data for m in got) == sorted([small, large])
            assert all(m.sender == a.peer_id and m.topic == TOPIC for m in got)
        latency = time.perf_counter() - started
        await asyncio.sleep(1.5)  # a heartbeat of gossip: no duplicates may follow
        assert drain(b) == []
        assert drain(c) == []
        assert drain(a) == []  # our own publications never come back
        assert latency < 2.0


async def test_burst_of_100_messages_all_arrive() -> None:
    async with running(mesh_configs(3)) as nets:
        await wait_gossip_ready(nets)
        a, b, c = nets
        sent = [f"tx-batch-{i:03d}".encode() * 8 for i in range(100)]
        for data in sent:
            a.publish(TOPIC, data)
        for other in (b, c):
            got = await collect(other, 100, timeout=10.0)
            assert sorted(m.data for m in got) == sorted(sent)
        await asyncio.sleep(0.5)
        assert drain(b) == []
        assert drain(c) == []
        assert drain(a) == []
        assert b.dropped == c.dropped == 0


async def test_publish_over_the_cap_is_refused_and_full_inbound_drops_oldest() -> None:
    async with running(mesh_configs(2, max_message_bytes=10_000)) as (a, b):
        with pytest.raises(RequestTooLarge):
            a.publish(TOPIC, b"x" * 10_001)
        await wait_gossip_ready([a, b])
        b.inbound = asyncio.Queue(2)
        for i in range(5):
            a.publish(TOPIC, b"m%d" % i)
        await eventually(lambda: b.dropped == 3, 5.0, "three drops")
        assert [m.data for m in drain(b)] == [b"m3", b"m4"]


# --- request / response -----------------------------------------------------------------------


async def test_request_response() -> None:
    big = hashlib.sha256(b"seed").digest() * (5 * 1024 * 1024 // 32)  # 5 MiB
    calls: list[str] = []

    async def serve(peer: str, request: bytes) -> bytes:
        calls.append(peer)
        assert threading.current_thread() is threading.main_thread()  # on the asyncio loop
        await asyncio.sleep(0)
        if request == b"big":
            return big
        if request == b"huge":
            return b"h" * (3 << 20)
        if request == b"boom":
            raise ValueError("handler bug")
        if request == b"missing":
            raise NotFound("no block 0xabc")
        return request[::-1]

    a_cfg, b_cfg = mesh_configs(2)
    a_cfg = replace(a_cfg, max_frame_bytes=8 << 20)
    async with running([a_cfg, b_cfg], {ECHO: serve}) as (a, b):
        await eventually(lambda: bool(a.peers()), 5.0, "connection")

        assert await a.request(b.peer_id, ECHO, b"abc") == b"cba"
        assert calls == [a.peer_id]

        started = time.perf_counter()
        response = await a.request(b.peer_id, ECHO, b"big")
        elapsed = time.perf_counter() - started
        assert hashlib.sha256(response).digest() == hashlib.sha256(big).digest()
        logging.getLogger(__name__).info(
            "5 MiB response in %.3f s (%.0f MB/s)", elapsed, len(big) / elapsed / 1e6
        )

        # A request over the requester's own cap is refused before anything is sent.
        with pytest.raises(RequestTooLarge):
            await a.request(b.peer_id, ECHO, b"x" * ((8 << 20) + 1))

        with pytest.raises(NetworkError, match="failed to answer"):
            await a.request(b.peer_id, ECHO, b"boom")
        assert await a.request(b.peer_id, ECHO, b"still here") == b"ereh llits"
        with pytest.raises(NetworkError, match="NotFound: no block 0xabc"):
            await a.request(b.peer_id, ECHO, b"missing")

        started = time.perf_counter()
        with pytest.raises(NetworkError):
            await a.request(b.peer_id, "/deltachain/test/unknown/1", b"x", timeout=3.0)
        assert time.perf_counter() - started < 3.5

        started = time.perf_counter()
        with pytest.raises(NetworkError):
            await a.request(peer_id_from_seed(seed(42)), ECHO, b"x", timeout=2.0)
        assert time.perf_counter() - started < 2.5

        # Concurrent requests share the connection.
        answers = await asyncio.gather(*(a.request(b.peer_id, ECHO, b"%d" % i) for i in range(20)))
        assert answers == [(b"%d" % i)[::-1] for i in range(20)]


async def test_frames_over_a_cap_raise_request_too_large() -> None:
    async def serve(peer: str, request: bytes) -> bytes:
        return b"r" * (2 << 20)

    a_cfg, b_cfg = mesh_configs(2)
    async with running([replace(a_cfg, max_frame_bytes=1 << 20), b_cfg], {ECHO: serve}) as (a, b):
        await eventually(lambda: bool(a.peers()), 5.0, "connection")
        with pytest.raises(RequestTooLarge):
            await a.request(b.peer_id, ECHO, b"please")
        # ...and the server's own cap: b refuses to send more than it allows.
    b_small = replace(b_cfg, max_frame_bytes=1 << 20)
    async with running([a_cfg, b_small], {ECHO: serve}) as (a, b):
        await eventually(lambda: bool(a.peers()), 5.0, "connection")
        with pytest.raises(RequestTooLarge):
            await a.request(b.peer_id, ECHO, b"please")
        # A request over the server's cap is refused without being read, and said so at once.
        started = time.perf_counter()
        with pytest.raises(RequestTooLarge):
            await a.request(b.peer_id, ECHO, b"q" * (4 << 20), timeout=5.0)
        assert time.perf_counter() - started < 2.0


# --- reserved peers ---------------------------------------------------------------------------


async def test_reserved_only_refuses_outsiders() -> None:
    ports = free_ports(3)
    insiders = [
        NetworkConfig(
            node_key_seed=seed(i),
            listen_port=ports[i],
            bootnodes=(addr(1 - i, ports[1 - i]),),
            reserved_only=True,
            topics=(TOPIC,),
        )
        for i in (0, 1)
    ]
    outsider = NetworkConfig(
        node_key_seed=seed(2),
        listen_port=ports[2],
        bootnodes=(addr(0, ports[0]), addr(1, ports[1])),
        topics=(TOPIC,),
    )

    async def serve(peer: str, request: bytes) -> bytes:
        return b"ok"

    async with running([*insiders, outsider], {ECHO: serve}) as (a, b, c):
        await wait_gossip_ready([a, b])
        # c redials every second; a and b must drop it each time, quickly.
        longest, run, interval = 0.0, 0.0, 0.05
        for k in range(50):
            if k % 10 == 0:
                c.publish(TOPIC, b"from outside")
            inside = c.peer_id in a.peers() or c.peer_id in b.peers()
            run = run + interval if inside else 0.0
            longest = max(longest, run)
            await asyncio.sleep(interval)
        assert longest < 1.5, f"outsider stayed connected for {longest:.2f} s"
        assert [m for m in drain(a) + drain(b) if m.sender == c.peer_id] == []
        with pytest.raises(NetworkError):
            await c.request(a.peer_id, ECHO, b"hi", timeout=2.0)
        a.publish(TOPIC, b"inside")
        assert [m.data for m in await collect(b, 1, 5.0)] == [b"inside"]


# --- reconnects and shutdown ------------------------------------------------------------------


async def test_restarted_node_is_reconnected_and_gossip_flows() -> None:
    configs = mesh_configs(3)
    async with running(configs) as (a, b, c):
        await wait_gossip_ready([a, b, c])
        await c.stop()
        await eventually(lambda: c.peer_id not in a.peers(), 5.0, "a to notice c left")
        await asyncio.sleep(1.5)  # several failed redials: libp2p would block c for 60 s
        started = time.monotonic()
        with pytest.raises(NetworkError):  # known address, nobody listening
            await a.request(c.peer_id, ECHO, b"x", timeout=2.0)
        assert time.monotonic() - started < 2.5
        restarted = Network(configs[2])
        await restarted.start()
        try:
            started = time.monotonic()
            await eventually(
                lambda: restarted.peer_id in a.peers() and restarted.peer_id in b.peers(),
                5.0,
                "a and b to reconnect to the restarted node",
            )
            logging.getLogger(__name__).info(
                "reconnected %.2f s after restart", time.monotonic() - started
            )
            await wait_gossip_ready([a, b, restarted])
            a.publish(TOPIC, b"after restart")
            assert [m.data for m in await collect(restarted, 1, 5.0)] == [b"after restart"]
        finally:
            await restarted.stop()


async def test_stop_leaves_no_threads_and_is_idempotent() -> None:
    baseline = threading.active_count()
    async with running(mesh_configs(2)) as (a, b):
        await wait_gossip_ready([a, b])
        assert threading.active_count() > baseline
        await asyncio.wait_for(a.stop(), 10.0)
        await a.stop()
        with pytest.raises(NetworkError):
            a.publish(TOPIC, b"late")
        with pytest.raises(NetworkError):
            await a.request(b.peer_id, ECHO, b"late")
    await eventually(lambda: threading.active_count() == baseline, 2.0, "threads to end")


async def test_stop_during_start_leaves_nothing_running() -> None:
    baseline = threading.active_count()
    for i in range(5):
        net = Network(NetworkConfig(node_key_seed=seed(100 + i), listen_port=0))
        starting = asyncio.create_task(net.start())
        await asyncio.sleep(0.002 * i)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError, NetworkError):
            await starting
        await asyncio.wait_for(net.stop(), 10.0)
    await eventually(lambda: threading.active_count() == baseline, 2.0, "threads to end")
