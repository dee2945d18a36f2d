"""Property: no method in the RPC table answers -32603 (internal error) to any parameters.

Drives the real ``RpcServer.handle_payload`` (parsing, id checks, dispatch, encoding) over an
in-process chain with out-of-range numbers, wrong types and malformed hex for every method.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deltachain.chain import construct_runtime
from deltachain.node.chain import Chain
from deltachain.node.cli import main
from deltachain.node.ratelimit import TokenBucket
from deltachain.node.rpc import (
    DEFAULT_CORS,
    INTERNAL_ERROR,
    RpcLimits,
    RpcServer,
    _Caller,
    is_local_origin,
    json_depth,
    origin_allowed,
    parse_cors,
)
from deltachain.primitives.chainspec import dev_chain_spec

EDGE_INTS = [
    -(2**64),
    -(2**63) - 1,
    -1,
    0,
    1,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    10**30,
]
ADDRESS = "0x" + "ab" * 32


def hexes() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(["0x", "0x0", "0xzz", "nothex", "0x" + "00" * 32, ADDRESS]),
        st.just("0x" + "ff" * 33),
        st.binary(max_size=40).map(lambda b: "0x" + b.hex()),
    )


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(EDGE_INTS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    hexes(),
    st.sampled_from(["sine-mlp", "system", "model_state", "authority", "account", "clients"]),
)
OPTION_KEYS = ["address", "model", "version", "index", "offset", "limit", "format", "at", "id"]
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.sampled_from(OPTION_KEYS), inner, max_size=4),
    ),
    max_leaves=8,
)
params = st.lists(values, max_size=4)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RpcServer]:
    base: Path = tmp_path_factory.mktemp("fuzz-chain")
    chain = Chain(dev_chain_spec(), construct_runtime("reference"), base)

    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)

    try:
        yield RpcServer(chain, run, rpc_methods="unsafe")
    finally:
        chain.storage.close()


def answer(server: RpcServer, body: str | bytes) -> Any:
    text = asyncio.run(server.handle_payload(body, _Caller(allow_unsafe=True)))
    return None if text is None else json.loads(text)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_method_answers_internal_error(server: RpcServer, data: st.DataObject) -> None:
    method = data.draw(st.sampled_from(sorted(server.methods)))
    drawn = data.draw(params)
    if method == "system_addLogFilter":
        drawn = drawn[:0]  # changing log levels is not what this test is about
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": drawn}
    try:
        body = json.dumps(request)
    except ValueError:
        return
    reply = answer(server, body)
    assert reply is not None
    assert reply.get("error", {}).get("code") != INTERNAL_ERROR, (method, drawn, reply)


def test_every_method_is_driven(server: RpcServer) -> None:
    """Hypothesis picks from the live table: every method, old and new, gets fuzzed."""
    assert len(server.methods) >= 30


QUERIES = {
    "system": ["account", "clients", "authorities", "admin", "nope"],
    "model_state": ["list", "get", "weights", "chunk", "provenance", "nope"],
    "authority": ["proposals", "evidence", "set", "nope"],
}


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    module=st.sampled_from([*QUERIES, "nope"]),
    data=st.data(),
    args=st.dictionaries(st.sampled_from(OPTION_KEYS), values, max_size=4),
)
def test_runtime_queries_never_answer_internal_error(
    server: RpcServer, module: str, data: st.DataObject, args: dict[str, Any]
) -> None:
    name = data.draw(st.sampled_from(QUERIES.get(module, ["list"])))
    reply = answer(server, json.dumps(request("runtime_query", module, name, args)))
    assert reply["error"]["code"] != INTERNAL_ERROR if "error" in reply else True, reply


def request(method: str, *params: Any, req_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "method": method, "params": list(params)}


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("chain_getBlockHash", [2**63]),
        ("chain_getBlockHash", [2**64 - 1]),
        ("finality_proveFinality", [2**64]),
        ("model_getProvenance", ["sine-mlp", 2**64]),
        ("model_getChunkProof", ["sine-mlp", 2**63]),
        ("model_getWeights", ["sine-mlp", {"offset": 2**64}]),
        ("runtime_query", ["system", "account", {}]),
        ("runtime_query", ["system", "account", {"address": 7}]),
        ("runtime_query", ["model_state", "provenance", {"model": "sine-mlp", "version": 2**64}]),
        ("runtime_query", ["model_state", "chunk", {"model": "sine-mlp", "index": 2**70}]),
    ],
)
def test_out_of_range_numbers_are_invalid_params(
    server: RpcServer, method: str, params: list[Any]
) -> None:
    reply = answer(server, json.dumps(request(method, *params)))
    assert reply["error"]["code"] == -32602, reply


def test_sync_requests_for_heights_past_sqlite_are_empty(server: RpcServer) -> None:
    """A peer may ask ``…/sync/1`` for any u64 height; SQLite holds i64 (was an overflow)."""
    from deltachain import codec
    from deltachain.node.sync import request_blocks, request_justification, serve

    top = 2**64 - 1
    assert codec.decode(serve(server.chain, request_blocks(top, 8))) == []
    assert codec.decode(serve(server.chain, request_justification(top))) == []  # none yet


# --- payload-level refusals (no network) ---------------------------------------------------


def test_deep_json_is_a_parse_error_before_parsing(server: RpcServer) -> None:
    assert json_depth(b"[" * 32 + b"]" * 32) == 0  # too few brackets to scan
    assert json_depth(b'[["[[[["],' + b"[" * 40 + b"]" * 40 + b"]") == 41
    for depth in (33, 1_000, 100_000):
        body = '{"jsonrpc":"2.0","id":1,"method":"system_name","params":' + "[" * depth
        body += "]" * depth + "}"
        reply = answer(server, body)
        assert reply["error"]["code"] == -32700, depth
        assert "nested" in reply["error"]["message"]
    # brackets inside strings do not count, and ordinary nesting still answers
    text = "[" * 5000
    reply = answer(server, json.dumps(request("model_get", text)))
    assert reply["error"]["code"] == 4004
    assert answer(server, json.dumps(request("system_name")))["result"] == "deltachain"


@pytest.mark.parametrize(
    "raw_id", ["NaN", "Infinity", "-Infinity", "1e400", "true", "false", "[1]", '{"a": 1}']
)
def test_ids_that_are_not_json_rpc_ids_are_refused(server: RpcServer, raw_id: str) -> None:
    body = '{"jsonrpc":"2.0","id":' + raw_id + ',"method":"system_name","params":[]}'
    text = asyncio.run(server.handle_payload(body, _Caller(allow_unsafe=True)))
    assert text is not None
    reply = json.loads(text, parse_constant=lambda c: pytest.fail(f"echoed {c}"))
    assert reply == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "not a JSON-RPC 2.0 request"},
    }


def test_good_ids_are_echoed(server: RpcServer) -> None:
    for good in (0, -5, 2**64, 1.5, "x", None):
        reply = answer(server, json.dumps(request("system_name", req_id=good)))
        assert reply["id"] == good
        assert reply["result"] == "deltachain"


def test_response_budget_per_request_and_per_batch(tmp_path: Path) -> None:
    chain = Chain(dev_chain_spec(), construct_runtime("reference"), tmp_path)

    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)

    small = RpcServer(chain, run, limits=RpcLimits(max_response=3_000))
    try:
        page = request("model_getWeights", "sine-mlp", {"limit": 1000})
        text = asyncio.run(small.handle_payload(json.dumps(page), _Caller(False)))
        assert text is not None
        assert json.loads(text)["error"]["code"] == -32008
        names = [request("chain_getHeader", req_id=i) for i in range(10)]
        text = asyncio.run(small.handle_payload(json.dumps(names), _Caller(False)))
        assert text is not None
        replies = json.loads(text)
        assert len(text) < 3_000 + 10 * 200
        assert "result" in replies[0]
        assert replies[-1]["error"]["code"] == -32008  # the batch's budget ran out
        assert [r["id"] for r in replies] == list(range(10))
    finally:
        chain.storage.close()


def test_rate_limits_per_connection_and_per_ip(tmp_path: Path) -> None:
    chain = Chain(dev_chain_spec(), construct_runtime("reference"), tmp_path)

    async def run(fn: Any, *args: Any) -> Any:
        return fn(*args)

    limited = RpcServer(chain, run, limits=RpcLimits(rate_limit=5, rate_limit_per_ip=8))
    body = json.dumps(request("system_name"))
    try:
        conn = _Caller(False, ip="10.0.0.1", bucket=TokenBucket(5))
        codes = [
            json.loads(asyncio.run(limited.handle_payload(body, conn)) or "{}").get("error", {})
            for _ in range(6)
        ]
        assert codes[:5] == [{}] * 5
        assert codes[5]["code"] == -32029
        assert "per connection" in codes[5]["message"]
        other = _Caller(False, ip="10.0.0.1", bucket=TokenBucket(5))  # same IP, new connection
        replies = [asyncio.run(limited.handle_payload(body, other)) or "" for _ in range(4)]
        assert "result" in replies[2]
        assert "per IP" in replies[3]  # 8 a minute for the IP: 5 + 3
        stranger = _Caller(False, ip="10.0.0.2", bucket=TokenBucket(5))
        assert "result" in (asyncio.run(limited.handle_payload(body, stranger)) or "")
    finally:
        chain.storage.close()


def test_origin_rules() -> None:
    assert parse_cors("all") is None
    assert origin_allowed("http://localhost:3000", DEFAULT_CORS)
    assert origin_allowed("https://127.0.0.1", DEFAULT_CORS)
    assert origin_allowed("http://[::1]:8080", DEFAULT_CORS)
    for foreign in ("http://evil.example", "null", "http://localhost.evil.example:80", "file://"):
        assert not origin_allowed(foreign, DEFAULT_CORS), foreign
    mine = parse_cors("https://dash.example.org, http://10.1.2.3:*")
    assert mine is not None
    assert origin_allowed("https://dash.example.org", mine)
    assert not origin_allowed("https://dash.example.org:444", mine)
    assert origin_allowed("http://10.1.2.3:9000", mine)
    with pytest.raises(ValueError, match="is not an origin"):
        parse_cors("evil.example")
    assert is_local_origin("http://localhost:1234")
    assert not is_local_origin("http://evil.example")
    assert not is_local_origin("null")


BAD_VALUES: list[Any] = [
    *EDGE_INTS,
    True,
    None,
    1.5,
    float("nan"),
    float("inf"),
    "",
    "0x",
    "0xzz",
    "0x" + "00" * 31,
    "x" * 10_000,
    [],
    [[[]]],
    {},
    {"offset": 2**64, "limit": -1, "format": 7, "at": 5},
]


def test_every_method_every_position_every_bad_value(server: RpcServer) -> None:
    """The exhaustive sweep behind the property test: each method, each of its first three
    parameters in turn set to each bad value, after plausible ones (a model id, the genesis)."""
    genesis = "0x" + server.chain.genesis_hash.hex()
    plausible: list[Any] = ["sine-mlp", 0, genesis]
    failures = []
    for method in sorted(server.methods):
        if method == "system_addLogFilter":
            continue
        for position in range(3):
            for bad in BAD_VALUES:
                params = [*plausible[:position], bad]
                reply = answer(server, json.dumps(request(method, *params)))
                if reply.get("error", {}).get("code") == INTERNAL_ERROR:
                    failures.append((method, params))
    assert failures == []


@pytest.mark.parametrize(
    "flag",
    [
        ("--rpc-port", "70000"),
        ("--port", "-1"),
        ("--rpc-body-timeout", "nan"),
        ("--rpc-idle-timeout", "0"),
        ("--rpc-max-response-size", "0"),
        ("--rpc-rate-limit", "0"),
        ("--rpc-cors", "evil.example"),
    ],
)
def test_node_flags_are_range_checked(
    flag: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["node", "--dev", *flag])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag[0]}" in err
    assert "Traceback" not in err
