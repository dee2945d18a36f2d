"""The light client over libp2p: the node's ``…/light/1`` protocol and ``P2pTransport``.

A real ``Chain`` (two authority-set changes, finalized by votes this test signs) is served by a
real ``Network`` on loopback, wired as ``NodeService`` wires it (handler on a one-thread
"chain" executor, open to outsiders of a reserved-only node); one test runs a whole node
process and the ``deltachain light sync --peer`` command. Every wait is bounded and every
thread and process is stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from deltachain import codec
from deltachain.consensus.finality import InvalidVote
from deltachain.errors import DecodeError, ProofError, RequestTooLarge, UnsupportedProtocol
from deltachain.light.p2p import LightProtocolError, P2pTransport
from deltachain.light.protocol import MAX_REQUEST_BYTES, encode_request, light_protocol
from deltachain.light.remote import RemoteError, RemoteLightClient
from deltachain.node import light_server
from deltachain.node.network import (
    OPEN_REQUESTS_PER_MINUTE,
    Network,
    NetworkConfig,
    peer_id_from_seed,
)
from deltachain.node.service import chain_runner
from deltachain.p2p.host import ClientHost, parse_peer_address
from node_process import CLI, start_node, stop_node
from test_light import (
    ALICE,
    BOB,
    CHARLIE,
    DAVE,
    EVE,
    FRANK,
    MODEL_A,
    SET0,
    InProcess,
    LocalNode,
    make_spec,
)

Handler = Callable[[str, bytes], Awaitable[bytes]]


def seed(name: str) -> bytes:
    return hashlib.sha256(f"light-p2p-{name}".encode()).digest()


class Served:
    """``chain`` behind a reserved-only Network serving the light protocol on its own loop."""

    def __init__(self, node: LocalNode, tamper: Callable[[bytes, bytes], bytes] | None = None):
        self.node = node
        self.tamper = tamper
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain")
        self.network: Network | None = None

    def __enter__(self) -> Served:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=20)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.network is not None:
            asyncio.run_coroutine_threadsafe(self.network.stop(), self.loop).result(timeout=20)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
        self.executor.shutdown(wait=True)

    async def _start(self) -> None:
        run = chain_runner(self.executor)
        chain = self.node.chain

        async def handle(peer: str, request: bytes) -> bytes:
            response = bytes(await run(light_server.serve, chain, request))
            return response if self.tamper is None else self.tamper(request, response)

        self.network = Network(
            NetworkConfig(
                node_key_seed=seed("server"),
                listen_port=0,
                reserved_only=True,
                reserved_peers=(peer_id_from_seed(seed("validator")),),
            )
        )
        self.network.set_request_handler(
            light_protocol(chain.genesis_hash),
            handle,
            open_to_all=True,
            max_request=MAX_REQUEST_BYTES,
        )
        await self.network.start()

    @property
    def addr(self) -> str:
        assert self.network is not None
        return self.network.listen_addr

    def transport(self, **kwargs: Any) -> P2pTransport:
        return P2pTransport(self.addr, self.node.chain.genesis_hash, **kwargs)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> LocalNode:
    local = LocalNode(tmp_path_factory.mktemp("light-p2p"), make_spec(SET0))
    for _ in range(2):
        local.step()
    local.change_set(EVE, DAVE, [ALICE, BOB, CHARLIE])
    for _ in range(2):
        local.step()
    local.change_set(FRANK, ALICE, [BOB, CHARLIE, EVE])
    local.step()
    assert local.chain.gadget.set_id == 2
    return local


@pytest.fixture(scope="module")
def served(node: LocalNode) -> Iterator[Served]:
    with Served(node) as s:
        yield s


def client_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("libp2p-client")]


@pytest.fixture(scope="module")
def host() -> Iterator[ClientHost]:
    with ClientHost() as h:
        yield h


def raw_request(host: ClientHost, served: Served, data: bytes) -> Any:
    reply = host.request(
        parse_peer_address(served.addr),
        light_protocol(served.node.chain.genesis_hash),
        data,
        timeout=10,
        max_response=1 << 22,
    )
    return codec.decode(reply, max_size=1 << 22)


def test_p2p_transport_never_imports_node_runtime_or_numpy() -> None:
    code = (
        "import sys, deltachain.light.p2p; "
        "bad = [m for m in sys.modules if m.startswith(('deltachain.node', 'deltachain.runtime',"
        " 'deltachain.model_state', 'numpy'))]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- syncing and downloading over p2p --------------------------------------------------------


def test_p2p_sync_warps_across_set_changes_and_verifies_chunks(
    node: LocalNode, served: Served
) -> None:
    chain = node.chain
    with served.transport() as transport:
        remote = RemoteLightClient(node.client(), transport)
        header = remote.sync()
        assert header == chain.storage.finalized_header()
        assert remote.client.set_id == 2
        assert remote.client.authorities == chain.gadget.authorities
        record, buffer = remote.download_model(MODEL_A)
        module = chain.runtime.modules["model_state"]
        state = chain.state_at(chain.storage.finalized_hash())
        expected = module.weights(state, module.record(state, MODEL_A).config)
        assert buffer == expected.astype("<i4").tobytes()
        assert record.chunk_count > 1
        # the same answers as the JSON-RPC, request for request
        rpc = RemoteLightClient(node.client(), InProcess(node.server))
        assert rpc.sync() == header
        assert rpc.requests == remote.requests - record.chunk_count
        assert transport.bytes_received > 0
        assert transport.bytes_sent > 0
        # the node moves on: the same transport (and connection) follows
        node.step()
        assert remote.sync() == chain.storage.finalized_header()
    assert len(client_threads()) <= 1  # only the module's raw-request host, if started


def test_p2p_bootstrap_from_the_genesis_hash(node: LocalNode, served: Served) -> None:
    with served.transport() as transport:
        remote = RemoteLightClient.bootstrap(node.chain.genesis_hash, transport)
        assert remote.client.authorities == tuple(k.address for k in SET0)
        remote.sync()
        assert remote.client.set_id == 2


def test_light_clients_are_outsiders_not_peers(served: Served) -> None:
    """A reserved-only node serves light clients but never gossips or syncs with them."""
    with served.transport() as transport:
        transport.call("chain_getFinalizedHead", [])
        assert served.network is not None
        assert served.network.peers() == []


def test_each_outsider_gets_a_request_budget(served: Served) -> None:
    """A non-reserved peer over ``open_requests_per_minute`` is refused (without the chain
    thread); another peer is still served, and so is the first once its budget refills."""
    network = served.network
    assert network is not None
    network.open_requests_per_minute = 3
    try:
        with served.transport() as greedy, served.transport() as other:
            answers = []
            for _ in range(6):
                try:
                    answers.append(greedy.call("chain_getFinalizedHead", []))
                except RemoteError as exc:
                    answers.append(str(exc))
            refused = [a for a in answers if "rate limited" in a]
            assert len(refused) >= 3, answers
            assert "3 requests a minute per peer" in refused[0]
            assert answers[0].startswith("0x")  # the first ones were served
            assert other.call("chain_getFinalizedHead", []).startswith("0x")
            assert network.rate_limited >= 3
    finally:
        network.open_requests_per_minute = OPEN_REQUESTS_PER_MINUTE
    with served.transport() as transport:  # budgets back to the default
        transport.call("chain_getFinalizedHead", [])


# --- what the client refuses -------------------------------------------------------------------


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 1
    return bytes(out)


def tamper_chunk(request: bytes, response: bytes) -> bytes:
    obj = codec.decode(request, max_size=1 << 20)
    if obj[0] != "chunkProof":
        return response
    envelope = codec.decode(response, max_size=1 << 22)
    envelope[1][2] = flip(envelope[1][2], 5)  # a weight byte
    return codec.encode(envelope)


def tamper_justification(request: bytes, response: bytes) -> bytes:
    obj = codec.decode(request, max_size=1 << 20)
    if obj[0] != "justification":
        return response
    envelope = codec.decode(response, max_size=1 << 22)
    envelope[1] = flip(envelope[1], -10)  # a signature byte
    return codec.encode(envelope)


def tamper_set(request: bytes, response: bytes) -> bytes:
    obj = codec.decode(request, max_size=1 << 20)
    if obj[0] != "batch":
        return response
    envelope = codec.decode(response, max_size=1 << 22)
    proof = envelope[1][0][1]
    envelope[1][0][1] = [flip(p, -3) for p in proof]
    return codec.encode(envelope)


@pytest.mark.parametrize(
    ("tamper", "error"),
    [
        (lambda req, resp: b"\xff\x00garbage", DecodeError),
        (lambda req, resp: codec.encode({"ok": True}), DecodeError),
        (lambda req, resp: codec.encode([0]), DecodeError),
        (lambda req, resp: codec.encode([1, "nonsense", "x"]), DecodeError),
        (lambda req, resp: codec.encode([1, "notFound", "nothing here"]), LightProtocolError),
        (lambda req, resp: codec.encode([0, b"\x01" * 31]), DecodeError),
        (lambda req, resp: b"\x00" * 200_000, RemoteError),  # over the client's cap
        (tamper_justification, (InvalidVote, DecodeError)),
        (tamper_set, (ProofError, DecodeError)),
        (tamper_chunk, ProofError),
    ],
    ids=[
        "not-cbor",
        "not-an-envelope",
        "short-envelope",
        "unknown-error-code",
        "error",
        "short-hash",
        "oversize",
        "justification",
        "set-proof",
        "chunk",
    ],
)
def test_p2p_rejects_garbage_and_tampered_answers(
    node: LocalNode,
    tamper: Callable[[bytes, bytes], bytes],
    error: type[Exception] | tuple[type[Exception], ...],
) -> None:
    with Served(node, tamper) as lying, lying.transport(max_response=100_000) as transport:
        remote = RemoteLightClient(node.client(), transport)
        before = remote.client.save()

        def sync_and_download() -> None:
            remote.sync()
            remote.download_model(MODEL_A)

        with pytest.raises(error):
            sync_and_download()
        if tamper is tamper_justification:
            # the untampered warp steps verified; the tampered latest justification did not
            assert remote.client.finalized != node.chain.storage.finalized_header()
        elif tamper is not tamper_chunk:
            assert remote.client.save() == before  # nothing unverified was adopted


# --- what the server refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_obj", "code"),
    [
        (["nonsense"], "unknownRequest"),
        (["batch", [["genesis"], ["nonsense"]]], "unknownRequest"),
        ([], "badRequest"),
        ({"kind": "genesis"}, "badRequest"),
        ([7], "badRequest"),
        (["genesis", 1], "badRequest"),
        (["header", b"\x00" * 31], "badRequest"),
        (["proveFinality", -1], "badRequest"),
        (["proveFinality", True], "badRequest"),
        (["readProof", [], b"\x00" * 32], "badRequest"),
        (["readProof", [b"k"] * 257, b"\x00" * 32], "badRequest"),
        (["storage", "text key", b"\x00" * 32], "badRequest"),
        (["chunkProof", 5, 0, b"\x00" * 32], "badRequest"),
        (["batch", []], "badRequest"),
        (["batch", [["batch", [["genesis"]]]]], "unknownRequest"),  # no nesting
        (["batch", [["genesis"], ["storage", b"k", b"\x00" * 32]]], None),  # per-item errors
        (["batch", [["genesis"]] * 17], "badRequest"),
        (["storage", b"system/set_id", b"\x00" * 32], "notFound"),  # unknown block
        (["justification", b"\x00" * 32], None),  # no justification: null
    ],
)
def test_server_answers_bad_requests_with_typed_errors(
    host: ClientHost, served: Served, request_obj: Any, code: str | None
) -> None:
    reply = raw_request(host, served, codec.encode(request_obj))
    if code is not None:
        assert reply[0] == 1, reply
        assert reply[1] == code, reply
    else:
        assert reply[0] == 0, reply


def test_server_refuses_oversize_and_malformed_bytes_and_keeps_serving(
    host: ClientHost, node: LocalNode, served: Served
) -> None:
    big = codec.encode(["readProof", [b"k" * 1000] * 20, b"\x00" * 32])
    assert len(big) > MAX_REQUEST_BYTES
    with pytest.raises(RequestTooLarge):
        raw_request(host, served, big)
    for garbage in (b"", b"\xff", b"\x9f\x01\xff", b"\x81" * 100, codec.encode(["genesis"]) + b"x"):
        reply = raw_request(host, served, garbage)
        assert reply[0] == 1
        assert reply[1] == "badRequest"
    chain = node.chain
    index = 10_000
    block = chain.storage.finalized_hash()
    reply = raw_request(host, served, encode_request("chunkProof", MODEL_A, index, block))
    assert reply[0] == 1
    assert reply[1] == "badRequest"
    reply = raw_request(host, served, encode_request("chunkProof", "no-such-model", 0, block))
    assert reply[0] == 1
    assert reply[1] in ("notFound", "badRequest")
    # still serving
    assert raw_request(host, served, encode_request("genesis")) == [0, chain.genesis_hash]


def test_serve_never_raises_on_fuzzed_input(node: LocalNode) -> None:
    valid = [
        encode_request("genesis"),
        encode_request("proveFinality", 3),
        encode_request("readProof", [b"system/set_id"], node.chain.genesis_hash),
    ]
    for data in valid:
        for i in range(len(data)):
            for bit in (0x01, 0x20, 0x80):
                mutated = bytearray(data)
                mutated[i] ^= bit
                reply = codec.decode(light_server.serve(node.chain, bytes(mutated)))
                assert reply[0] in (0, 1)
        for cut in range(len(data)):
            assert codec.decode(light_server.serve(node.chain, data[:cut]))[0] == 1


# --- addressing mistakes -----------------------------------------------------------------------


def test_wrong_chain_bad_address_and_unreachable_peer(served: Served) -> None:
    with (
        P2pTransport(served.addr, served.node.chain.genesis_hash[::-1]) as wrong,
        pytest.raises(RemoteError, match="does not serve the light protocol"),
    ):
        wrong.call("chain_getGenesisHash", [])
    with pytest.raises(RemoteError, match="not a peer multiaddr"):
        P2pTransport("/ip4/127.0.0.1/tcp/1", served.node.chain.genesis_hash)
    peer = served.addr.rsplit("/p2p/", 1)[1]
    started = time.monotonic()
    with (
        P2pTransport(f"/ip4/127.0.0.1/tcp/1/p2p/{peer}", served.node.chain.genesis_hash) as gone,
        pytest.raises(RemoteError, match="cannot reach"),
    ):
        gone.call("chain_getFinalizedHead", [])
    assert time.monotonic() - started < 15
    with (
        served.transport() as transport,
        pytest.raises(RemoteError, match="not part of the light protocol"),
    ):
        transport.call("author_submitExtrinsic", ["0x00"])
    assert len(client_threads()) <= 1  # only the module's raw-request host


def test_client_host_reports_unsupported_protocol(host: ClientHost, served: Served) -> None:
    with pytest.raises(UnsupportedProtocol):
        host.request(parse_peer_address(served.addr), "/nope/1", b"", timeout=10, max_response=100)


# --- a whole node process and the CLI ----------------------------------------------------------


@pytest.mark.slow
def test_node_process_serves_the_light_cli(tmp_path: Path) -> None:
    node = start_node(tmp_path, "--port", "0", "--reserved-only", ready=r"finalized #[1-9]")
    spec, addr, proc = node.spec, node.p2p_addr, node.proc
    try:

        def light(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*CLI, "light", "sync", "--chain", str(spec), *args],
                capture_output=True,
                text=True,
                timeout=60,
            )

        state = tmp_path / "light.state"
        done = light("--peer", addr, "--model", MODEL_A, "--state", str(state), "--json")
        assert done.returncode == 0, done.stderr
        result = json.loads(done.stdout)
        assert result["finalized"] >= 1
        assert result["model"]["chunks"] >= 1
        again = light("--peer", addr, "--state", str(state))
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("finalized #"), again.stderr
        bad = light("--peer", "/ip4/127.0.0.1/tcp/9")
        assert bad.returncode == 1
        assert bad.stderr.strip().count("\n") == 0
        assert "not a peer multiaddr" in bad.stderr
        wrong = light("--peer", addr, "--genesis", "0x" + "11" * 32)
        assert wrong.returncode == 1, wrong.stderr
        assert "another chain" in wrong.stderr, wrong.stderr
        assert proc.poll() is None  # the node keeps running
    finally:
        stop_node(node)
