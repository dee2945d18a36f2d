"""JSON-RPC clients for the CLI: synchronous calls over HTTP (stdlib), and a WebSocket session
(aiohttp) to watch a submitted transaction through ``author_submitAndWatchExtrinsic``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp

from deltachain.errors import DeltachainError
from deltachain.primitives.transaction import SignedTransaction

DEFAULT_RPC = "http://127.0.0.1:9944"


class RpcUnavailable(DeltachainError):
    """The node could not be reached."""


class WebSocketUnavailable(RpcUnavailable):
    """The node answers HTTP but a WebSocket could not be opened (nothing was sent)."""


class RpcCallError(DeltachainError):
    """The node answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _unreachable(url: str, reason: object) -> RpcUnavailable:
    return RpcUnavailable(
        f"cannot reach a node at {url} ({reason}); is it running? "
        "Start one with `deltachain node --dev` or pass --rpc URL"
    )


def _raise_for_error(reply: Any) -> Any:
    if isinstance(reply, dict) and "error" in reply:
        error = reply["error"] if isinstance(reply["error"], dict) else {}
        raise RpcCallError(int(error.get("code", 0)), str(error.get("message")))
    if not isinstance(reply, dict):
        raise RpcUnavailable("the node answered with something that is not a JSON-RPC response")
    return reply.get("result")


StatusCallback = Callable[[str, str | None, int | None], None]
"""``(status, block hash or None, block number or None)`` for each watched update."""


class RpcClient:
    def __init__(self, url: str = DEFAULT_RPC, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise RpcUnavailable(f"--rpc {url!r} must be an http:// or https:// URL")
        self.url = url
        self.timeout = timeout
        self._ids = itertools.count(1)

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[4:]

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        ).encode()
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            # The server refused the request as a whole (busy, too large): say why.
            try:
                reply = json.loads(exc.read())
            except ValueError:
                raise RpcUnavailable(f"{self.url} answered HTTP {exc.code} {exc.reason}") from None
            return _raise_for_error(reply)
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise _unreachable(self.url, getattr(exc, "reason", exc)) from None
        except ValueError:
            raise RpcUnavailable(
                f"{self.url} did not answer with JSON; is it a deltachain node?"
            ) from None
        return _raise_for_error(reply)

    def submit_and_watch(
        self, tx_hex: str, until: str, timeout: float, on_status: StatusCallback
    ) -> str:
        """Submit over a WebSocket and report each status until ``until`` ("in-block" or
        "finalized") is reached; returns the final status.

        Raises WebSocketUnavailable (nothing sent; the caller may fall back to HTTP),
        RpcCallError (rejected, with the node's reason), DeltachainError (dropped, invalid,
        or not there within ``timeout`` seconds).
        """
        return asyncio.run(self._watch(tx_hex, until, timeout, on_status))

    async def _watch(
        self, tx_hex: str, until: str, timeout: float, on_status: StatusCallback
    ) -> str:
        async with aiohttp.ClientSession() as http:
            try:
                ws = await http.ws_connect(self.ws_url, timeout=aiohttp.ClientWSTimeout(10.0))
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                raise WebSocketUnavailable(f"no WebSocket at {self.ws_url} ({exc})") from None
            session = WsSession(ws)
            try:
                async with asyncio.timeout(timeout):
                    return await _follow(session, tx_hex, until, on_status)
            except TimeoutError:
                raise DeltachainError(
                    f"transaction not {until} within {timeout:.0f} s; check the node is authoring"
                ) from None
            finally:
                await session.close()


async def _follow(session: WsSession, tx_hex: str, until: str, on_status: StatusCallback) -> str:
    sub_id = await session.call("author_submitAndWatchExtrinsic", tx_hex)
    while True:
        note = await session.notification(sub_id)
        status, detail = (note, None) if isinstance(note, str) else next(iter(note.items()))
        if status in ("dropped", "invalid", "usurped"):
            on_status(str(status), None, None)
            if not detail:
                tx_hash = "0x" + SignedTransaction.decode(bytes.fromhex(tx_hex[2:])).hash.hex()
                fate = await session.call("author_extrinsicStatus", tx_hash)
                detail = fate.get("reason") if isinstance(fate, dict) else None
            raise DeltachainError(
                f"the node reports the transaction {status}: {detail or 'no reason recorded'}"
            )
        number = None
        if isinstance(detail, str):
            header = await session.call("chain_getHeader", detail)
            number = header["number"] if isinstance(header, dict) else None
        on_status(str(status), detail, number)
        if status == "finalized" or (status == "inBlock" and until == "in-block"):
            return str(status)


class WsSession:
    """Calls and subscription notifications over one WebSocket (a reader task routes them)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._notes: dict[str, asyncio.Queue[Any]] = {}
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                obj = json.loads(message.data)
                for item in obj if isinstance(obj, list) else [obj]:
                    if isinstance(item, dict) and item.get("id") in self._pending:
                        self._pending.pop(item["id"]).set_result(item)
                    elif isinstance(item, dict) and isinstance(item.get("params"), dict):
                        sub = str(item["params"].get("subscription"))
                        self._notes.setdefault(sub, asyncio.Queue()).put_nowait(
                            item["params"].get("result")
                        )
        finally:
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(RpcUnavailable("the node closed the WebSocket"))
            for queue in self._notes.values():
                queue.put_nowait(_CLOSED)

    async def call(self, method: str, *params: Any) -> Any:
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        await self.ws.send_str(
            json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": list(params)})
        )
        return _raise_for_error(await fut)

    async def notification(self, sub_id: str) -> Any:
        if self._reader.done() and self._notes.get(sub_id, asyncio.Queue()).empty():
            raise RpcUnavailable("the node closed the WebSocket")
        item = await self._notes.setdefault(sub_id, asyncio.Queue()).get()
        if item is _CLOSED:
            raise RpcUnavailable("the node closed the WebSocket")
        return item

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


_CLOSED = object()
