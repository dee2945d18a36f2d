"""RPC hardening over real sockets: origins, slowloris, idle floods (issue 12).

One dev node on loopback with short timeouts and small caps. Attackers connect from other
loopback addresses (127.0.0.2, 127.0.0.3) so the per-IP caps bite them and not the honest
caller on 127.0.0.1, which must be answered during every attack and after it. Every socket is
closed and every wait bounded.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from deltachain.node.rpc import RpcLimits, RpcServer
from deltachain.primitives.chainspec import dev_chain_spec
from node_process import NodeProcess, start_node, stop_node

pytestmark = pytest.mark.slow

BODY_TIMEOUT = 2.0
IDLE_TIMEOUT = 6.0
PER_IP = 50
FLOOD = 150
RATE = 100


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = start_node(
        tmp_path_factory.mktemp("rpc-hardening"),
        *("--rpc-body-timeout", str(BODY_TIMEOUT), "--rpc-idle-timeout", str(IDLE_TIMEOUT)),
        *("--rpc-max-sockets", "200", "--rpc-max-sockets-per-ip", str(PER_IP)),
        *("--rpc-max-connections", "20", "--rpc-rate-limit", str(RATE)),
    )
    try:
        yield n
    finally:
        stop_node(n)


def post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, Any, dict[str, str]]:
    req = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None, dict(response.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None, dict(exc.headers)


def rpc(method: str, *params: Any) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}
    ).encode()


def honest_call(node: NodeProcess) -> None:
    status, reply, _ = post(node.url, rpc("system_name"))
    assert status == 200, reply
    assert reply["result"] == "deltachain"


def connect_from(source: str, node: NodeProcess) -> socket.socket:
    port = int(node.url.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed it (EOF or reset), after reading any reply it sent."""
    try:
        while chunk := sock.recv(4096):
            del chunk
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


# --- origins ----------------------------------------------------------------------------------


def test_cross_origin_post_is_refused_before_any_method(node: NodeProcess) -> None:
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    status, reply, _ = post(node.url, rpc("system_addLogFilter", "deltachain=debug"), evil)
    assert status == 403
    assert reply["error"]["code"] == -32600
    assert "--rpc-cors" in reply["error"]["message"]
    status, reply, _ = post(node.url, rpc("system_name"), {"Origin": "null"})
    assert status == 403
    # a page on this machine is allowed, and told so with CORS headers
    status, reply, headers = post(node.url, rpc("system_name"), {"Origin": "http://localhost:3000"})
    assert status == 200
    assert reply["result"] == "deltachain"
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    # preflight
    preflight = {"Origin": "http://127.0.0.1:8000"}
    req = urllib.request.Request(node.url, method="OPTIONS", headers=preflight)
    with urllib.request.urlopen(req, timeout=10) as response:
        assert response.status == 204
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
    req = urllib.request.Request(node.url, method="OPTIONS", headers={"Origin": "http://e.vil"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 403
    honest_call(node)  # no Origin (curl, our clients): allowed


async def test_cross_origin_websocket_is_refused(node: NodeProcess) -> None:
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(node.url, origin="http://evil.example")
        assert info.value.status == 403
        async with http.ws_connect(node.url, origin="http://localhost:8080") as ws:
            await ws.send_str(rpc("system_addLogFilter", "deltachain.rpc=info").decode())
            reply = json.loads((await ws.receive(timeout=10)).data)
            assert reply["result"] is None  # a local page on a loopback peer: auto allows it


async def test_websocket_calls_are_rate_limited_per_connection(node: NodeProcess) -> None:
    """--rpc-rate-limit RATE: a batch counts every call; one that would take a connection past
    RATE calls a minute is refused whole (-32029); a fresh connection has its own budget."""
    batch = json.dumps([json.loads(rpc("system_name"))] * 60)  # 60 + 60 > RATE = 100
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(node.url) as ws:
            await ws.send_str(batch)
            assert len(json.loads((await ws.receive(timeout=10)).data)) == 60
            await ws.send_str(batch)  # would need 60 of the ~40 left (12 s of refill)
            refused = json.loads((await ws.receive(timeout=10)).data)
            assert refused["error"]["code"] == -32029
            assert f"{RATE} calls a minute per connection" in refused["error"]["message"]
        async with http.ws_connect(node.url) as fresh:
            await fresh.send_str(batch)
            assert len(json.loads((await fresh.receive(timeout=10)).data)) == 60


def test_foreign_origin_never_reaches_unsafe_methods_even_with_cors_all(tmp_path: Any) -> None:
    """``--rpc-cors all`` lets any page read, but unsafe methods need a local page or none."""

    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)

    chain = SimpleNamespace(spec=dev_chain_spec(), genesis_hash=bytes(32))
    server = RpcServer(chain, run, limits=RpcLimits(cors=None))  # type: ignore[arg-type]

    class Loopback(asyncio.Transport):
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("127.0.0.1", 5555) if name == "peername" else default

    def caller(origin: str | None) -> bool:
        headers = {} if origin is None else {"Origin": origin}
        request = make_mocked_request("POST", "/", headers=headers, transport=Loopback())
        assert server.origin_refusal(request) is None  # cors=all: nobody refused outright
        return server.caller_for(request).allow_unsafe

    assert caller(None)
    assert caller("http://localhost:3000")
    assert not caller("http://evil.example")
    assert not caller("null")


# --- slowloris and idle sockets ---------------------------------------------------------------


def test_slow_bodies_are_dropped_and_do_not_block_others(node: NodeProcess) -> None:
    """40 POSTs that never finish their body (twice --rpc-max-connections) used to make every
    call answer 503 while they stayed open; now they hold no call slot and are dropped."""
    slow: list[socket.socket] = []
    try:
        for _ in range(40):
            sock = connect_from("127.0.0.3", node)
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"jsonrpc":'
            )
            slow.append(sock)
        started = time.monotonic()
        honest_call(node)  # during
        assert time.monotonic() - started < BODY_TIMEOUT
        time.sleep(BODY_TIMEOUT + 0.5)
        for sock in slow:
            assert closed_by_server(sock)
        honest_call(node)  # after
        # half-sent headers are closed by the idle timer
        half = connect_from("127.0.0.3", node)
        slow.append(half)
        half.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        time.sleep(IDLE_TIMEOUT + 1.0)
        assert closed_by_server(half)
    finally:
        for sock in slow:
            sock.close()


def test_idle_flood_is_capped_per_ip_and_closed(node: NodeProcess) -> None:
    """FLOOD idle connections from one address: PER_IP are held, the rest refused at once,
    the accepted ones closed after --rpc-idle-timeout; others are answered throughout."""
    idle: list[socket.socket] = []
    try:
        started = time.monotonic()
        for _ in range(FLOOD):
            idle.append(connect_from("127.0.0.2", node))
        honest_call(node)  # during
        readable: list[socket.socket] = []
        while len(readable) < FLOOD - PER_IP and time.monotonic() - started < IDLE_TIMEOUT - 1:
            time.sleep(0.1)
            readable = select.select(idle, [], [], 0)[0]
        assert time.monotonic() - started < IDLE_TIMEOUT, "too slow to tell refused from idle"
        assert len(readable) == FLOOD - PER_IP  # refused at once (503, closed) ...
        assert not set(readable) & set(idle[:PER_IP])  # ... but the first PER_IP are held
        assert all(closed_by_server(sock) for sock in readable)
        assert node.log.read_text().count("RPC refused connections over its socket caps") == 1
        time.sleep(IDLE_TIMEOUT + 1.0)
        for sock in idle:
            sock.settimeout(5)
        assert all(closed_by_server(sock) for sock in idle)
        honest_call(node)  # after
        # and the address may connect again once its sockets are gone
        again = connect_from("127.0.0.2", node)
        idle.append(again)
        again.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(rpc("system_name"))
            + rpc("system_name")
        )
        assert b"deltachain" in again.recv(4096)
    finally:
        for sock in idle:
            sock.close()
