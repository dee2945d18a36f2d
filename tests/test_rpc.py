"""RPC conformance over real HTTP and WebSocket against dev node subprocesses on loopback.

Two nodes per module: ``node`` (defaults: ``--rpc-methods auto``, metrics on) and ``safe_node``
(``--rpc-methods safe`` and small connection/subscription limits). Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from deltachain import codec
from deltachain.consensus.finality import Justification, verify_justification
from deltachain.crypto.keys import Keypair, parse_address
from deltachain.crypto.merkle import leaf_hash, verify_merkle_proof
from deltachain.crypto.trie import TrieProof, verify_proof
from deltachain.model_state.delta import SubmitDelta, quantize_top_p
from deltachain.node.rpc import is_loopback
from deltachain.node.rpc_client import RpcCallError, WsSession
from deltachain.primitives.chainspec import dev_chain_spec
from deltachain.primitives.transaction import SignedTransaction, sign_transaction
from deltachain.primitives.types import Hash32
from deltachain.runtime.state import key_hash, value_hash
from node_process import CLI, NodeProcess, start_node, stop_node

pytestmark = pytest.mark.slow
WAIT_S = 30.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = start_node(tmp_path_factory.mktemp("rpc-node"), prometheus=True)
    try:
        yield n
    finally:
        stop_node(n)


@pytest.fixture(scope="module")
def safe_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    n = start_node(
        tmp_path_factory.mktemp("rpc-safe-node"),
        "--rpc-methods",
        "safe",
        "--rpc-max-connections",
        "3",
        "--rpc-max-subscriptions-per-connection",
        "4",
        prometheus=False,
    )
    try:
        yield n
    finally:
        stop_node(n)


# --- HTTP helpers -----------------------------------------------------------------------------


def post(url: str, body: bytes | str | object) -> tuple[int, Any]:
    """POST a body; returns (HTTP status, parsed JSON or None)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def request(method: str, *params: Any, req_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "method": method, "params": list(params)}


def call(url: str, method: str, *params: Any) -> Any:
    status, reply = post(url, request(method, *params))
    assert status == 200, reply
    assert "error" not in reply, (method, reply)
    return reply["result"]


def error(url: str, method: str, *params: Any) -> dict[str, Any]:
    status, reply = post(url, request(method, *params))
    assert status == 200
    assert "result" not in reply, (method, reply)
    return dict(reply["error"])


def unhex(value: str) -> bytes:
    assert value.startswith("0x")
    return bytes.fromhex(value[2:])


def genesis(url: str) -> Hash32:
    return Hash32(unhex(call(url, "chain_getGenesisHash")))


def remark_tx(url: str, who: Keypair, nonce: int, text: bytes = b"x") -> SignedTransaction:
    return sign_transaction(who, genesis(url), nonce, "system", "remark", {"data": text})


def wait_until(predicate: Any, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def metrics(node: NodeProcess) -> dict[str, float]:
    assert node.metrics_url is not None
    with urllib.request.urlopen(node.metrics_url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


# --- WebSocket helpers ------------------------------------------------------------------------


@pytest.fixture
async def ws_session(node: NodeProcess) -> AsyncIterator[WsSession]:
    async with aiohttp.ClientSession() as http, http.ws_connect(node.url) as ws:
        session = WsSession(ws)
        try:
            yield session
        finally:
            await session.close()


async def next_note(session: WsSession, sub_id: str, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        return await session.notification(sub_id)


# --- every method over HTTP ---------------------------------------------------------------------

EXPECTED_METHODS = {
    "rpc_methods",
    "system_name",
    "system_version",
    "system_chain",
    "system_chainType",
    "system_properties",
    "system_nodeRoles",
    "system_health",
    "system_localPeerId",
    "system_peers",
    "system_syncState",
    "system_accountNextIndex",
    "system_addLogFilter",
    "system_resetLogFilter",
    "chain_getBlockHash",
    "chain_getHeader",
    "chain_getBlock",
    "chain_getFinalizedHead",
    "chain_getGenesisHash",
    "chain_getJustification",
    "chain_subscribeNewHeads",
    "chain_unsubscribeNewHeads",
    "chain_subscribeFinalizedHeads",
    "chain_unsubscribeFinalizedHeads",
    "state_getStorage",
    "state_getReadProof",
    "finality_proveFinality",
    "grandpa_proveFinality",
    "author_submitExtrinsic",
    "author_submitAndWatchExtrinsic",
    "author_unwatchExtrinsic",
    "author_pendingExtrinsics",
    "author_removeExtrinsic",
    "author_extrinsicStatus",
    "runtime_query",
    "model_list",
    "model_get",
    "model_getWeights",
    "model_getChunkProof",
    "model_getProvenance",
}


def test_rpc_methods_lists_every_method(node: NodeProcess) -> None:
    assert set(call(node.url, "rpc_methods")["methods"]) == EXPECTED_METHODS


def test_system_methods(node: NodeProcess) -> None:
    assert call(node.url, "system_name") == "deltachain"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", call(node.url, "system_version"))
    assert call(node.url, "system_chain") == "Deltachain Development"
    assert call(node.url, "system_chainType") == "Development"
    assert call(node.url, "system_properties") == {"addressFormat": "hex"}
    assert call(node.url, "system_nodeRoles") == ["Authority"]
    assert call(node.url, "system_health") == {
        "peers": 0,
        "isSyncing": False,
        "shouldHavePeers": False,
    }
    assert call(node.url, "system_localPeerId") is None  # a lone dev node has no network
    assert call(node.url, "system_peers") == []  # unsafe, allowed: we call from loopback
    sync = call(node.url, "system_syncState")
    assert sync["currentBlock"] == sync["highestBlock"] >= sync["finalizedBlock"] >= 1
    charlie = "0x" + Keypair.dev("charlie").address.hex()
    assert call(node.url, "system_accountNextIndex", charlie) == 0
    assert call(node.url, "system_addLogFilter", "deltachain.rpc=debug,warn") is None
    assert call(node.url, "system_resetLogFilter") is None


def test_chain_methods(node: NodeProcess) -> None:
    g = call(node.url, "chain_getGenesisHash")
    assert call(node.url, "chain_getBlockHash", 0) == g
    assert call(node.url, "chain_getBlockHash", 10**9) is None
    best = call(node.url, "chain_getHeader")
    assert call(node.url, "chain_getHeader", best["hash"]) == best
    one = call(node.url, "chain_getBlockHash", 1)
    block = call(node.url, "chain_getBlock", one)["block"]
    assert block["header"]["number"] == 1
    assert block["header"]["parentHash"] == g
    assert isinstance(block["extrinsics"], list)
    assert call(node.url, "chain_getHeader", "0x" + "00" * 32) is None
    assert call(node.url, "chain_getBlock", "0x" + "00" * 32) is None
    finalized = call(node.url, "chain_getHeader", call(node.url, "chain_getFinalizedHead"))
    assert 1 <= finalized["number"] <= call(node.url, "chain_getHeader")["number"]


def test_justifications_and_finality_proofs(node: NodeProcess) -> None:
    alice = Keypair.dev("alice")
    for _ in range(20):  # finality moves every slot: compare within one finalized head
        head = call(node.url, "chain_getFinalizedHead")
        raw = call(node.url, "chain_getJustification", head)
        default = call(node.url, "chain_getJustification")  # default: the finalized head
        if call(node.url, "chain_getFinalizedHead") == head:
            break
    justification = Justification.decode(unhex(raw))
    assert justification.source.hash == unhex(head)
    assert default == raw
    assert call(node.url, "chain_getJustification", call(node.url, "chain_getGenesisHash")) is None
    best = call(node.url, "chain_getHeader")["number"]
    for method in ("finality_proveFinality", "grandpa_proveFinality"):
        proof = Justification.decode(unhex(call(node.url, method, best)))
        assert 1 <= proof.source.number <= best
        # a light client needs only the authority set to check it
        verify_justification(proof, [alice.address], proof.set_id, genesis(node.url))
        at_one = Justification.decode(unhex(call(node.url, method, 1)))
        assert at_one.source.number == 1
    assert call(node.url, "finality_proveFinality", 0) is None  # genesis needs no proof


def test_state_storage_and_read_proofs(node: NodeProcess) -> None:
    key = b"model_state/models"
    value = unhex(call(node.url, "state_getStorage", "0x" + key.hex()))
    assert codec.decode(value) == ["sine-mlp"]
    assert call(node.url, "state_getStorage", "0x" + b"no/such/key".hex()) is None
    header = call(node.url, "chain_getHeader")
    at_block = call(node.url, "state_getStorage", "0x" + key.hex(), header["hash"])
    assert unhex(at_block) == value
    missing = b"no/such/key"
    reply = call(
        node.url, "state_getReadProof", ["0x" + key.hex(), "0x" + missing.hex()], header["hash"]
    )
    assert reply["at"] == header["hash"]
    root = Hash32(unhex(header["stateRoot"]))
    present, absent = (TrieProof.decode(unhex(p)) for p in reply["proof"])
    verify_proof(root, key_hash(key), value_hash(value), present)
    verify_proof(root, key_hash(missing), None, absent)


def test_author_methods_and_remove_extrinsic(node: NodeProcess) -> None:
    dave = Keypair.dev("dave")
    admin = Keypair.dev("alice")
    g = genesis(node.url)
    nonce = call(node.url, "system_accountNextIndex", "0x" + admin.address.hex())
    register = sign_transaction(
        admin, g, nonce, "system", "register_client", {"client": dave.address}
    )
    tx_hash = call(node.url, "author_submitExtrinsic", "0x" + register.encode().hex())
    assert tx_hash == "0x" + register.hash.hex()
    wait_until(
        lambda: call(node.url, "author_extrinsicStatus", tx_hash)["status"] == "finalized",
        "registration finalized",
    )
    status = call(node.url, "author_extrinsicStatus", tx_hash)
    assert status["block"] >= 1
    assert status["index"] == 0
    # a future transaction (nonce gap) waits in the pool until removed (an unsafe method)
    future = remark_tx(node.url, dave, 5)
    assert call(node.url, "author_submitExtrinsic", "0x" + future.encode().hex())
    assert "0x" + future.encode().hex() in call(node.url, "author_pendingExtrinsics")
    assert call(node.url, "author_extrinsicStatus", "0x" + future.hash.hex()) == {"status": "pool"}
    assert call(node.url, "system_accountNextIndex", "0x" + dave.address.hex()) == 0
    removed = call(
        node.url,
        "author_removeExtrinsic",
        [{"extrinsic": "0x" + future.encode().hex()}, {"hash": "0x" + "11" * 32}],
    )
    assert removed == ["0x" + future.hash.hex()]
    assert call(node.url, "author_extrinsicStatus", "0x" + future.hash.hex()) == {
        "status": "dropped",
        "reason": "removed by author_removeExtrinsic",
    }
    assert call(node.url, "author_removeExtrinsic", ["0x" + future.hash.hex()]) == []


def test_model_methods(node: NodeProcess) -> None:
    assert call(node.url, "model_list") == ["sine-mlp"]
    model = call(node.url, "model_get", "sine-mlp")
    assert {"id", "layers", "version", "weightsRoot", "numParams", "chunkCount", "round"} <= set(
        model
    )
    n = model["numParams"]
    raw = call(node.url, "model_getWeights", "sine-mlp")
    assert raw["format"] == "raw"
    assert raw["offset"] == 0
    assert raw["count"] == n
    assert raw["next"] is None
    ints = np.frombuffer(unhex(raw["weights"]), dtype="<i4")
    assert ints.size == n
    floats = call(node.url, "model_getWeights", "sine-mlp", {"format": "float"})["weights"]
    assert np.allclose(np.array(floats), ints / 2.0 ** raw["fracBits"])
    # pages of 500 pinned to one block reassemble the same vector
    pages, options = [], {"format": "raw", "limit": 500, "at": raw["at"]}
    while True:
        page = call(node.url, "model_getWeights", "sine-mlp", options)
        pages.append(np.frombuffer(unhex(page["weights"]), dtype="<i4"))
        if page["next"] is None:
            break
        assert page["count"] == 500
        assert page["next"] == page["offset"] + 500
        options = {**options, "offset": page["next"]}
    assert np.array_equal(np.concatenate(pages), ints)
    middle = call(node.url, "model_getWeights", "sine-mlp", {"offset": 300, "limit": 7})
    assert np.array_equal(np.frombuffer(unhex(middle["weights"]), dtype="<i4"), ints[300:307])
    # a chunk, proven to weightsRoot, whose model record is proven to a block's state root
    proof = call(node.url, "model_getChunkProof", "sine-mlp", 2)
    chunk = unhex(proof["chunk"])
    record = codec.decode(unhex(proof["record"]))
    verify_merkle_proof(
        Hash32(record["weightsRoot"]),
        2,
        proof["count"],
        leaf_hash(chunk),
        [Hash32(unhex(h)) for h in proof["proof"]],
    )
    verify_proof(
        Hash32(unhex(proof["stateRoot"])),
        key_hash(unhex(proof["recordKey"])),
        value_hash(unhex(proof["record"])),
        TrieProof.decode(unhex(proof["recordProof"])),
    )
    header = call(node.url, "chain_getHeader", proof["blockHash"])
    assert header["stateRoot"] == proof["stateRoot"]
    assert np.array_equal(np.frombuffer(chunk, dtype="<i4"), ints[512:768])
    missing = error(node.url, "model_getProvenance", "sine-mlp", 99)
    assert missing["code"] == 4004
    assert "no version 99" in missing["message"]


# --- errors and limits over HTTP -----------------------------------------------------------------


def test_error_codes(node: NodeProcess) -> None:
    for body in (b"{not json", b"", b"\xff\xfe", b'{"jsonrpc": "2.0", "method": "x"'):
        status, reply = post(node.url, body)
        assert status == 200
        assert reply["error"]["code"] == -32700, body
        assert reply["id"] is None
    for bad in (
        [],
        "just a string",
        {"jsonrpc": "1.0", "id": 1, "method": "system_name"},
        {"id": 1, "method": "system_name"},
        {"jsonrpc": "2.0", "id": 1, "method": 7},
        {"jsonrpc": "2.0", "id": {"an": "object"}, "method": "system_name"},
    ):
        assert post(node.url, bad)[1]["error"]["code"] == -32600, bad
    unknown = error(node.url, "no_such_method")
    assert unknown["code"] == -32601
    assert "not found" in unknown["message"]
    over_http = error(node.url, "chain_subscribeNewHeads")
    assert over_http["code"] == -32601
    assert "WebSocket" in over_http["message"]
    wrong_types = [
        ("chain_getBlockHash", "one"),
        ("chain_getBlockHash", -1),
        ("chain_getBlockHash", True),
        ("chain_getHeader", "0x1234"),
        ("chain_getHeader", "nothex"),
        ("state_getStorage",),
        ("state_getStorage", 42),
        ("state_getReadProof", "0x00"),
        ("model_get", 5),
        ("model_getWeights", "sine-mlp", {"format": "png"}),
        ("model_getWeights", "sine-mlp", {"limit": 0}),
        ("model_getWeights", "sine-mlp", {"limit": 10**9}),
        ("model_getWeights", "sine-mlp", {"offset": 10**9}),
        ("model_getWeights", "sine-mlp", {"bogus": 1}),
        ("model_getChunkProof", "sine-mlp", "2"),
        ("model_getChunkProof", "sine-mlp", 999),
        ("model_getProvenance", "sine-mlp", 0),
        ("finality_proveFinality", "7"),
        ("system_accountNextIndex", "0xnothex"),
        ("system_addLogFilter", "deltachain=loud"),
        ("author_submitExtrinsic",),
        ("author_removeExtrinsic", "0x00"),
    ]
    for method, *params in wrong_types:
        assert error(node.url, method, *params)["code"] == -32602, (method, params)
    status, reply = post(
        node.url, {"jsonrpc": "2.0", "id": 3, "method": "model_get", "params": {"id": "x"}}
    )
    assert reply["error"]["code"] == -32602
    assert reply["id"] == 3
    assert error(node.url, "model_get", "no-such-model")["code"] == 4004
    stranger = remark_tx(node.url, Keypair.dev("zed"), 0)
    invalid = error(node.url, "author_submitExtrinsic", "0x" + stranger.encode().hex())
    assert invalid["code"] == 1010
    assert invalid["message"].startswith("invalid transaction: sender is not a registered client")
    garbage = error(node.url, "author_submitExtrinsic", "0xff00")
    assert garbage["code"] == 1010
    assert "CBOR" in garbage["message"]
    future = remark_tx(node.url, Keypair.dev("charlie"), 40)
    assert call(node.url, "author_submitExtrinsic", "0x" + future.encode().hex())
    duplicate = error(node.url, "author_submitExtrinsic", "0x" + future.encode().hex())
    assert duplicate["code"] == 1011
    assert "already in the pool" in duplicate["message"]
    assert call(node.url, "author_removeExtrinsic", ["0x" + future.hash.hex()])


def test_batches_and_notifications(node: NodeProcess) -> None:
    status, replies = post(
        node.url,
        [
            request("system_name", req_id=1),
            {"jsonrpc": "2.0", "method": "system_name", "params": []},  # notification
            request("no_such_method", req_id="two"),
            request("chain_getBlockHash", 0, req_id=3),
        ],
    )
    assert status == 200
    by_id = {r["id"]: r for r in replies}
    assert set(by_id) == {1, "two", 3}
    assert by_id[1]["result"] == "deltachain"
    assert by_id["two"]["error"]["code"] == -32601
    assert by_id[3]["result"] == call(node.url, "chain_getGenesisHash")
    # only notifications (even failing ones): nothing to answer
    assert post(node.url, {"jsonrpc": "2.0", "method": "system_name"}) == (204, None)
    assert post(node.url, [{"jsonrpc": "2.0", "method": "nope", "params": []}]) == (204, None)
    too_many = post(node.url, [request("system_name", req_id=i) for i in range(65)])
    assert too_many[1]["error"]["code"] == -32010
    assert len(post(node.url, [request("system_name", req_id=i) for i in range(64)])[1]) == 64


def test_oversize_body_is_refused(node: NodeProcess) -> None:
    big = json.dumps(request("author_submitExtrinsic", "0x" + "00" * (2 << 20))).encode()
    status, reply = post(node.url, big)
    assert status == 413
    assert reply["error"]["code"] == -32007
    assert call(node.url, "system_name") == "deltachain"  # still serving


def test_health_endpoint_and_plain_get(node: NodeProcess) -> None:
    with urllib.request.urlopen(node.url + "/health", timeout=10) as response:
        assert json.loads(response.read())["isSyncing"] is False
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(node.url + "/", timeout=10)
    assert info.value.code == 405
    assert json.loads(info.value.read())["error"]["code"] == -32600


def test_unsafe_methods_refused_under_rpc_methods_safe(safe_node: NodeProcess) -> None:
    for method, params in (
        ("system_peers", []),
        ("system_addLogFilter", ["debug"]),
        ("system_resetLogFilter", []),
        ("author_removeExtrinsic", [["0x" + "00" * 32]]),
    ):
        refused = error(safe_node.url, method, *params)
        assert refused == {"code": -32601, "message": "RPC call is unsafe to be called externally"}
    assert call(safe_node.url, "system_health")["peers"] == 0  # safe methods still answer


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("10.1.2.3")
    assert not is_loopback(None)
    assert not is_loopback("example")


# --- WebSocket -------------------------------------------------------------------------------


async def test_ws_calls_share_the_method_table(ws_session: WsSession, node: NodeProcess) -> None:
    assert await ws_session.call("system_name") == "deltachain"
    assert await ws_session.call("chain_getBlockHash", 0) == call(node.url, "chain_getGenesisHash")
    with pytest.raises(RpcCallError) as info:
        await ws_session.call("no_such_method")
    assert info.value.code == -32601
    with pytest.raises(RpcCallError) as info:
        await ws_session.call("chain_getHeader", 12)
    assert info.value.code == -32602


async def test_ws_new_heads_arrive_in_order_and_unsubscribe_stops_them(
    ws_session: WsSession,
) -> None:
    sub = await ws_session.call("chain_subscribeNewHeads")
    assert isinstance(sub, str)
    heads = [await next_note(ws_session, sub) for _ in range(6)]
    numbers = [h["number"] for h in heads]
    assert numbers == list(range(numbers[0], numbers[0] + 6))  # one validator: +1 each
    for parent, child in itertools.pairwise(heads):
        assert child["parentHash"] == parent["hash"]
    assert await ws_session.call("chain_unsubscribeNewHeads", sub) is True
    # what arrived before the reply was sent before it; nothing may follow it
    queue = ws_session._notes[sub]
    pending = queue.qsize()
    assert await ws_session.call("chain_unsubscribeNewHeads", sub) is False
    await asyncio.sleep(1.0)  # four slots
    assert queue.qsize() == pending


async def test_ws_finalized_heads_arrive_in_order(ws_session: WsSession, node: NodeProcess) -> None:
    sub = await ws_session.call("chain_subscribeFinalizedHeads")
    heads = [await next_note(ws_session, sub) for _ in range(4)]
    numbers = [h["number"] for h in heads]
    assert numbers == list(range(numbers[0], numbers[0] + 4))
    for head in heads:
        justification = Justification.decode(
            unhex(await ws_session.call("chain_getJustification", head["hash"]))
        )
        assert justification.source.number == head["number"]
    assert await ws_session.call("chain_unsubscribeFinalizedHeads", sub) is True
    # an id from another subscription kind is not ours to cancel
    new = await ws_session.call("chain_subscribeNewHeads")
    assert await ws_session.call("chain_unsubscribeFinalizedHeads", new) is False
    assert await ws_session.call("chain_unsubscribeNewHeads", new) is True


def delta_tx(url: str, who: Keypair, nonce: int, seed: int) -> SignedTransaction:
    model = call(url, "model_get", "sine-mlp")
    mask = np.concatenate(
        [np.full(int(np.prod(la["shape"])), la["global"], dtype=bool) for la in model["layers"]]
    )
    delta = np.random.default_rng(seed).normal(0, 0.01, model["numParams"])
    indices, values, exp = quantize_top_p(delta, 0.1, model["fracBits"], mask)
    call_args = SubmitDelta(
        "sine-mlp", model["version"], indices, values, exp, 10, None, None
    ).to_args()
    return sign_transaction(who, genesis(url), nonce, "model_state", "submit_delta", call_args)


async def test_ws_submit_and_watch_reports_in_block_then_finalized(
    ws_session: WsSession, node: NodeProcess
) -> None:
    before = call(node.url, "model_get", "sine-mlp")["version"]
    subs = []
    for seed, name in enumerate(("bob", "charlie")):
        key = Keypair.dev(name)
        nonce = call(node.url, "system_accountNextIndex", "0x" + key.address.hex())
        tx = delta_tx(node.url, key, nonce, seed)
        subs.append(
            (await ws_session.call("author_submitAndWatchExtrinsic", "0x" + tx.encode().hex()), tx)
        )
    for sub, tx in subs:
        updates = [await next_note(ws_session, sub)]
        while not (isinstance(updates[-1], dict) and "finalized" in updates[-1]):
            updates.append(await next_note(ws_session, sub, timeout=WAIT_S))
        assert updates[0] == "ready"
        assert "inBlock" in updates[1]
        assert updates[-1] == {"finalized": updates[1]["inBlock"]}
        status = call(node.url, "author_extrinsicStatus", "0x" + tx.hash.hex())
        assert status["status"] == "finalized"
        assert status["blockHash"] == updates[1]["inBlock"]
    # two deltas close the round (minDeltas 2, roundLen 3): a new version with provenance
    wait_until(
        lambda: call(node.url, "model_get", "sine-mlp")["version"] == before + 1, "round close"
    )
    provenance = call(node.url, "model_getProvenance", "sine-mlp", before + 1)
    assert provenance["n"] == 2
    assert sorted(d["client"] for d in provenance["deltas"]) == sorted(
        "0x" + Keypair.dev(n).address.hex() for n in ("bob", "charlie")
    )
    samples = metrics(node)
    assert samples["deltachain_aggregation_seconds_count"] >= 1
    assert 0 < samples["deltachain_aggregation_seconds_sum"] < 10
    assert samples['deltachain_rounds_closed_total{model="sine-mlp"}'] >= 1


async def test_ws_watch_says_why_a_transaction_was_dropped(
    ws_session: WsSession, node: NodeProcess
) -> None:
    """A watched transaction the node lets go ends with {"dropped": reason}, never silence."""
    bob = Keypair.dev("bob")
    nonce = call(node.url, "system_accountNextIndex", "0x" + bob.address.hex())
    waiting = sign_transaction(
        bob, genesis(node.url), nonce + 5, "system", "remark", {"data": b"w"}
    )
    sub = await ws_session.call("author_submitAndWatchExtrinsic", "0x" + waiting.encode().hex())
    assert await next_note(ws_session, sub) == "future"
    call(node.url, "author_removeExtrinsic", ["0x" + waiting.hash.hex()])
    assert await next_note(ws_session, sub, timeout=WAIT_S) == {
        "dropped": "removed by author_removeExtrinsic"
    }


async def test_ws_submit_and_watch_rejects_with_the_reason(ws_session: WsSession) -> None:
    with pytest.raises(RpcCallError) as info:
        await ws_session.call("author_submitAndWatchExtrinsic", "0x00")
    assert info.value.code == 1010
    assert str(info.value).startswith("invalid transaction")
    with pytest.raises(RpcCallError) as info:
        await ws_session.call("author_submitAndWatchExtrinsic")
    assert info.value.code == -32602


async def test_ws_subscription_limit_and_cleanup_on_close(node: NodeProcess) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(node.url) as ws:
            for start in range(0, 1024, 64):
                batch = [request("chain_subscribeNewHeads", req_id=start + i) for i in range(64)]
                await ws.send_str(json.dumps(batch))
                while True:  # skip notifications until the batch reply
                    reply = json.loads((await ws.receive(timeout=10)).data)
                    if isinstance(reply, list):
                        break
                assert all("result" in r for r in reply), reply[:2]
            await ws.send_str(json.dumps(request("chain_subscribeNewHeads", req_id="over")))
            while True:
                reply = json.loads((await ws.receive(timeout=10)).data)
                if isinstance(reply, dict) and reply.get("id") == "over":
                    break
            assert reply["error"]["code"] == -32006
            wait_until(
                lambda: metrics(node)["deltachain_rpc_subscriptions"] >= 1024, "subscriptions"
            )
        # the socket closed: the node forgets its subscriptions
        deadline = time.monotonic() + 10
        while metrics(node)["deltachain_rpc_subscriptions"] != 0:
            assert time.monotonic() < deadline, "subscriptions not cleaned up"
            await asyncio.sleep(0.1)
        assert metrics(node)["deltachain_rpc_connections"] == 0


async def test_ws_malformed_and_oversize_messages(node: NodeProcess) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(node.url) as ws:
        await ws.send_str("{oops")
        assert json.loads((await ws.receive(timeout=10)).data)["error"]["code"] == -32700
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1}))
        assert json.loads((await ws.receive(timeout=10)).data)["error"]["code"] == -32600
        await ws.send_str(json.dumps([request("system_name", req_id=i) for i in range(65)]))
        assert json.loads((await ws.receive(timeout=10)).data)["error"]["code"] == -32010
        await ws.send_str("x" * ((2 << 20) + 1))
        closing = await ws.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009  # message too big
    assert call(node.url, "system_name") == "deltachain"


async def test_max_connections(safe_node: NodeProcess) -> None:
    async with aiohttp.ClientSession() as http:
        sockets = [await http.ws_connect(safe_node.url) for _ in range(3)]
        try:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(safe_node.url)
            assert info.value.status == 503
            status, reply = post(safe_node.url, request("system_name"))
            assert status == 503
            assert reply["error"]["code"] == -32009
            # per-connection subscription limit (4 on this node)
            session = WsSession(sockets[0])
            for _ in range(4):
                await session.call("chain_subscribeFinalizedHeads")
            with pytest.raises(RpcCallError) as limit:
                await session.call("chain_subscribeNewHeads")
            assert limit.value.code == -32006
        finally:
            for ws in sockets:
                await ws.close()
        wait_until(lambda: post(safe_node.url, request("system_name"))[0] == 200, "slot freed")


def test_node_stops_promptly_with_an_open_websocket(tmp_path: Path) -> None:
    n = start_node(tmp_path / "n", prometheus=False)
    try:

        async def hold_open_and_stop() -> float:
            async with aiohttp.ClientSession() as http, http.ws_connect(n.url) as ws:
                session = WsSession(ws)
                sub = await session.call("chain_subscribeNewHeads")
                await next_note(session, sub)
                started = time.monotonic()
                n.proc.send_signal(signal.SIGINT)
                await asyncio.to_thread(n.proc.wait, 10)
                return time.monotonic() - started

        # well under aiohttp's 60 s wait for open WebSockets; slack for a loaded machine
        assert asyncio.run(hold_open_and_stop()) < 8.0
        assert "stopped cleanly" in n.log.read_text()
    finally:
        if n.proc.poll() is None:
            stop_node(n)


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_endpoint(node: NodeProcess) -> None:
    assert call(node.url, "system_name") == "deltachain"
    error(
        node.url,
        "author_submitExtrinsic",
        "0x" + remark_tx(node.url, Keypair.dev("zed"), 0).encode().hex(),
    )
    samples = metrics(node)
    best = samples['deltachain_block_height{status="best"}']
    finalized = samples['deltachain_block_height{status="finalized"}']
    assert best >= finalized >= 1
    assert samples["deltachain_peers_count"] == 0
    assert samples["deltachain_ready_transactions_number"] >= 0
    assert samples["deltachain_future_transactions_number"] >= 0
    assert samples["deltachain_blocks_authored_total"] >= best  # a fresh chain, authored here
    assert samples["deltachain_blocks_imported_total"] == 0
    count = samples['deltachain_block_import_seconds_count{origin="own"}']
    assert count == samples["deltachain_blocks_authored_total"]
    assert samples['deltachain_block_import_seconds_bucket{origin="own",le="+Inf"}'] == count
    assert 0 < samples['deltachain_block_import_seconds_sum{origin="own"}'] < count
    assert samples['deltachain_rejected_transactions_total{reason="Unauthorized"}'] >= 1
    assert samples['deltachain_rpc_calls_total{method="system_name"}'] >= 1
    assert "deltachain_aggregation_seconds_count" in samples
    assert samples['deltachain_build_info{version="0.1.0",chain="deltachain_dev"}'] == 1
    assert "deltachain_rpc_connections" in samples
    assert "deltachain_rpc_subscriptions" in samples


# --- CLI ---------------------------------------------------------------------------------------


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed: {proc.stderr}")
    return proc


def test_cli_query_tables_and_json(node: NodeProcess) -> None:
    table = cli("query", "model", "sine-mlp", "--rpc", node.url).stdout
    assert re.search(r"^id\s+sine-mlp$", table, re.M)
    assert re.search(r"^name\s+shape\s+global$", table, re.M)  # the layers table
    assert re.search(r"^hidden2\.w\s+40×40\s+yes$", table, re.M)
    as_json = json.loads(cli("query", "model", "sine-mlp", "--rpc", node.url, "--json").stdout)
    assert as_json["id"] == "sine-mlp"
    assert isinstance(as_json["layers"], list)

    clients = cli("query", "clients", "--rpc", node.url).stdout.splitlines()
    assert clients[0].split() == ["#", "address"]
    bob = "0x" + Keypair.dev("bob").address.hex()
    assert any(line.split()[-1] == bob for line in clients[2:])
    assert bob in json.loads(cli("query", "clients", "--rpc", node.url, "--json").stdout)

    head = cli("query", "head", "--rpc", node.url).stdout
    assert re.search(r"^number\s+\d+$", head, re.M)
    assert json.loads(cli("query", "head", "--rpc", node.url, "--json").stdout)["number"] >= 1

    models = cli("query", "models", "--rpc", node.url).stdout.splitlines()
    assert models[0].split()[:3] == ["id", "version", "params"]
    assert models[2].split()[0] == "sine-mlp"
    assert json.loads(cli("query", "models", "--rpc", node.url, "--json").stdout) == ["sine-mlp"]


def test_cli_submit_waits_over_websocket_and_query_tx(node: NodeProcess, tmp_path: Path) -> None:
    out = cli(
        "remark",
        "hello",
        "--key",
        "//charlie",
        "--rpc",
        node.url,
        "--wait",
        "finalized",
        "--chain",
        str(node.spec),
    ).stdout.splitlines()
    assert out[0].startswith("submitted system.remark as 0x")
    statuses = [line.split()[1] for line in out[1:]]
    assert statuses[0] in ("ready", "future")
    assert statuses[-2:] == ["inBlock", "finalized"]
    tx_hash = out[0].split()[-1]
    table = cli("query", "tx", tx_hash, "--rpc", node.url).stdout
    assert re.search(r"^status\s+finalized$", table, re.M)
    assert re.search(r"^call\s+system\.remark$", table, re.M)
    as_json = json.loads(cli("query", "tx", tx_hash, "--rpc", node.url, "--json").stdout)
    assert as_json["status"] == "finalized"
    unknown = cli("query", "tx", "0x" + "ab" * 32, "--rpc", node.url).stdout
    assert "unknown" in unknown
    bad = cli("query", "tx", "0x12", "--rpc", node.url, check=False)
    assert bad.returncode == 1
    assert "is not a hash" in bad.stderr
    weights = tmp_path / "w.npy"
    cli("query", "weights", "sine-mlp", "--out", str(weights), "--rpc", node.url)
    model = call(node.url, "model_get", "sine-mlp")
    assert np.load(weights).shape == (model["numParams"],)


def test_cli_wrong_chain_and_rejections(node: NodeProcess, tmp_path: Path) -> None:
    other = dev_chain_spec(slot_ms=300).to_json()
    other["name"] = "Another Chain"
    spec = tmp_path / "other.json"
    spec.write_text(json.dumps(other))
    for args in (
        ("query", "head", "--rpc", node.url, "--chain", str(spec)),
        ("remark", "x", "--key", "//bob", "--rpc", node.url, "--chain", str(spec)),
    ):
        proc = cli(*args, check=False)
        assert proc.returncode == 1
        assert proc.stderr.startswith("error: wrong chain: the node at")
        assert "'Another Chain'" in proc.stderr
        assert "Traceback" not in proc.stderr
    rejected = cli("remark", "x", "--key", "//zed", "--rpc", node.url, check=False)
    assert rejected.returncode == 1
    assert rejected.stderr.startswith("error: invalid transaction: sender is not a registered")
    parse_address(json.loads(cli("key", "inspect", "//zed", "--json").stdout)["address"])
