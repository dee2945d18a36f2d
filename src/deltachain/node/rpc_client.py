"""A small synchronous JSON-RPC client for the CLI (stdlib only)."""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from typing import Any

from deltachain.errors import DeltachainError

DEFAULT_RPC = "http://127.0.0.1:9944"


class RpcUnavailable(DeltachainError):
    """The node could not be reached."""


class RpcCallError(DeltachainError):
    """The node answered with a JSON-RPC error."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class RpcClient:
    def __init__(self, url: str = DEFAULT_RPC, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise RpcUnavailable(f"--rpc {url!r} must be an http:// or https:// URL")
        self.url = url
        self.timeout = timeout
        self._ids = itertools.count(1)

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
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise RpcUnavailable(
                f"cannot reach a node at {self.url} ({getattr(exc, 'reason', exc)}); "
                "is it running? "
                "Start one with `deltachain node --dev` or pass --rpc URL"
            ) from None
        except ValueError:
            raise RpcUnavailable(
                f"{self.url} did not answer with JSON; is it a deltachain node?"
            ) from None
        if "error" in reply:
            raise RpcCallError(
                int(reply["error"].get("code", 0)), str(reply["error"].get("message"))
            )
        return reply.get("result")
