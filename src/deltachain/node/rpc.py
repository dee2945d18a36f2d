"""JSON-RPC 2.0 over HTTP (aiohttp): the methods the CLI needs, with Substrate names.

Binary values are 0x-hex. Errors use the standard codes; a rejected transaction answers with
application code 1010 (Substrate's "invalid transaction") or 1011 (pool rejected) and the
one-line reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

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
from deltachain.node.chain import Chain
from deltachain.primitives.block import Block, Header
from deltachain.primitives.types import Hash32
from deltachain.runtime import system

log = logging.getLogger("deltachain.rpc")

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
INVALID_TRANSACTION = 1010
POOL_REJECTED = 1011
NOT_FOUND = 4004
MAX_BODY = 2 << 20
MAX_BATCH = 64


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
    if isinstance(value, dict):
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


ChainRunner = Callable[..., Awaitable[Any]]
"""Runs a function on the chain thread (the only thread that touches storage) and awaits it."""

Handler = Callable[[list[Any]], Any]
"""Handlers are plain functions: they run on the chain thread, never on the event loop."""


class RpcServer:
    """Method table over a Chain; a subclass or later module may register more methods."""

    def __init__(
        self,
        chain: Chain,
        run: ChainRunner,
        *,
        node_name: str = "deltachain",
        peers: Callable[[], int] = lambda: 0,
    ) -> None:
        self.chain = chain
        self.run = run
        self.peer_count = peers
        self.node_name = node_name
        self.methods: dict[str, Handler] = {
            "rpc_methods": self._rpc_methods,
            "system_name": self._const("deltachain"),
            "system_version": self._const(__version__),
            "system_chain": self._const(chain.spec.name),
            "system_chainType": self._const(chain.spec.chain_type),
            "system_health": self._health,
            "system_syncState": self._sync_state,
            "system_accountNextIndex": self._account_next_index,
            "chain_getBlockHash": self._get_block_hash,
            "chain_getHeader": self._get_header,
            "chain_getBlock": self._get_block,
            "chain_getFinalizedHead": self._finalized_head,
            "chain_getGenesisHash": self._const(hex0x(chain.genesis_hash)),
            "author_submitExtrinsic": self._submit,
            "author_pendingExtrinsics": self._pending,
            "author_extrinsicStatus": self._tx_status,
            "runtime_query": self._runtime_query,
            "model_list": self._model_query("list"),
            "model_get": self._model_query("get"),
            "model_getWeights": self._model_query("weights"),
            "model_getProvenance": self._model_query("provenance", "version"),
            "model_getChunkProof": self._chunk_proof,
        }

    # --- methods ---------------------------------------------------------------------------

    @staticmethod
    def _const(value: Any) -> Handler:
        def handler(params: list[Any]) -> Any:
            return value

        return handler

    def _rpc_methods(self, params: list[Any]) -> Any:
        return {"methods": sorted(self.methods)}

    def _health(self, params: list[Any]) -> Any:
        return {
            "peers": self.peer_count(),
            "isSyncing": False,
            "shouldHavePeers": len(self.chain.spec.authorities) > 1,
        }

    def _sync_state(self, params: list[Any]) -> Any:
        best = self.chain.storage.best_header()
        return {
            "startingBlock": 0,
            "currentBlock": best.number,
            "highestBlock": best.number,
            "finalizedBlock": self.chain.storage.finalized_header().number,
        }

    def _block_hash_param(self, params: list[Any]) -> Hash32:
        if not params or params[0] is None:
            return self.chain.storage.best_hash()
        return Hash32(unhex(params[0], "block hash", 32))

    def _account_next_index(self, params: list[Any]) -> Any:
        if len(params) != 1 or not isinstance(params[0], str):
            raise RpcError(INVALID_PARAMS, "expected [address]")
        try:
            who = parse_address(params[0])
        except InvalidKey as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        return system.get_nonce(self.chain.best_state(), who)

    def _get_block_hash(self, params: list[Any]) -> Any:
        if not params or params[0] is None:
            return hex0x(self.chain.storage.best_hash())
        number = params[0]
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise RpcError(INVALID_PARAMS, "block number must be a non-negative integer")
        try:
            return hex0x(self.chain.storage.canonical_hash(number))
        except NotFound:
            return None

    def _get_header(self, params: list[Any]) -> Any:
        try:
            return header_json(self.chain.storage.header(self._block_hash_param(params)))
        except NotFound:
            return None

    def _get_block(self, params: list[Any]) -> Any:
        try:
            return block_json(self.chain.storage.block(self._block_hash_param(params)))
        except NotFound:
            return None

    def _finalized_head(self, params: list[Any]) -> Any:
        return hex0x(self.chain.storage.finalized_hash())

    def _submit(self, params: list[Any]) -> Any:
        if len(params) != 1:
            raise RpcError(INVALID_PARAMS, "expected [0x-hex encoded transaction]")
        raw = unhex(params[0], "transaction")
        try:
            tx_hash, _ = self.chain.submit_transaction(raw)
        except (InvalidTransaction, DecodeError) as exc:
            raise RpcError(INVALID_TRANSACTION, f"invalid transaction: {exc}") from None
        except PoolRejected as exc:
            raise RpcError(POOL_REJECTED, f"transaction pool rejected it: {exc}") from None
        return hex0x(tx_hash)

    def _pending(self, params: list[Any]) -> Any:
        return [hex0x(tx.encode()) for tx in self.chain.pool.all()]

    def _tx_status(self, params: list[Any]) -> Any:
        if len(params) != 1:
            raise RpcError(INVALID_PARAMS, "expected [transaction hash]")
        return self.chain.transaction_status(Hash32(unhex(params[0], "transaction hash", 32)))

    def _runtime_query(self, params: list[Any]) -> Any:
        if len(params) not in (2, 3) or not all(isinstance(p, str) for p in params[:2]):
            raise RpcError(INVALID_PARAMS, "expected [module, query, {args}]")
        args = dict(params[2]) if len(params) == 3 and isinstance(params[2], dict) else {}
        if "address" in args:
            try:
                args["address"] = parse_address(args["address"])
            except InvalidKey as exc:
                raise RpcError(INVALID_PARAMS, str(exc)) from None
        module = self.chain.runtime.modules.get(params[0])
        if module is None:
            raise RpcError(INVALID_PARAMS, f"no runtime module {params[0]!r}")
        return module.query(self.chain.best_state(), params[1], args)

    def _model_query(self, name: str, extra: str | None = None) -> Handler:
        def handler(params: list[Any]) -> Any:
            args: dict[str, Any] = {}
            if name != "list":
                if not params or not isinstance(params[0], str):
                    raise RpcError(INVALID_PARAMS, "expected [model id, ...]")
                args["model"] = params[0]
                if extra is not None:
                    if len(params) < 2:
                        raise RpcError(INVALID_PARAMS, f"expected [model id, {extra}]")
                    args[extra] = params[1]
            module = self.chain.runtime.module("model_state")
            return to_json(module.query(self.chain.best_state(), name, args))

        return handler

    def _chunk_proof(self, params: list[Any]) -> Any:
        """A chunk, its Merkle path to weightsRoot, and the model record's proof to a state root."""
        if len(params) < 2 or not isinstance(params[0], str) or not isinstance(params[1], int):
            raise RpcError(INVALID_PARAMS, "expected [model id, chunk index, (block hash)]")
        block_hash = self._block_hash_param(params[2:])
        state = self.chain.state_at(block_hash)
        module = self.chain.runtime.module("model_state")
        found = module.query(state, "chunk", {"model": params[0], "index": params[1]})
        proof = self.chain.prove(found["recordKey"], block_hash)
        return to_json(
            {
                **found,
                "recordProof": proof.encode(),
                "stateRoot": state.base_root,
                "blockHash": block_hash,
            }
        )

    # --- transport -------------------------------------------------------------------------

    async def dispatch(self, request: Any) -> dict[str, Any] | None:
        req_id = request.get("id") if isinstance(request, dict) else None
        try:
            if (
                not isinstance(request, dict)
                or request.get("jsonrpc") != "2.0"
                or not isinstance(request.get("method"), str)
            ):
                raise RpcError(INVALID_REQUEST, "not a JSON-RPC 2.0 request")
            params = request.get("params", [])
            if not isinstance(params, list):
                raise RpcError(INVALID_PARAMS, "params must be an array")
            handler = self.methods.get(request["method"])
            if handler is None:
                raise RpcError(METHOD_NOT_FOUND, f"method {request['method']!r} not found")
            result = await self.run(handler, params)
        except RpcError as exc:
            return {
                "jsonrpc": "2.0",
                "id": req_id,
                "error": {"code": exc.code, "message": exc.message},
            }
        except NotFound as exc:
            return {
                "jsonrpc": "2.0",
                "id": req_id,
                "error": {"code": NOT_FOUND, "message": str(exc)},
            }
        except DeltachainError as exc:
            return {
                "jsonrpc": "2.0",
                "id": req_id,
                "error": {"code": INVALID_PARAMS, "message": str(exc)},
            }
        except Exception:
            log.exception("RPC method %s failed", request.get("method"))
            return {
                "jsonrpc": "2.0",
                "id": req_id,
                "error": {"code": INTERNAL_ERROR, "message": "internal error (see node log)"},
            }
        if isinstance(request, dict) and "id" not in request:
            return None  # a notification gets no response
        return {"jsonrpc": "2.0", "id": req_id, "result": to_json(result)}

    async def handle_http(self, request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_BODY:
            return _error_response(INVALID_REQUEST, f"request body over {MAX_BODY} bytes", 413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error_response(INVALID_REQUEST, f"request body over {MAX_BODY} bytes", 413)
        try:
            payload = json.loads(body)
        except ValueError:
            return _error_response(PARSE_ERROR, "parse error: body is not JSON")
        if isinstance(payload, list):
            if not payload or len(payload) > MAX_BATCH:
                return _error_response(INVALID_REQUEST, f"a batch holds 1..{MAX_BATCH} requests")
            replies = [r for r in [await self.dispatch(item) for item in payload] if r is not None]
            return web.json_response(replies)
        reply = await self.dispatch(payload)
        return web.json_response(reply) if reply is not None else web.Response(status=204)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_post("/", self.handle_http)
        return app


def _error_response(code: int, message: str, status: int = 200) -> web.Response:
    return web.json_response(
        {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}, status=status
    )
