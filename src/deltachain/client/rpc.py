"""A tiny synchronous JSON-RPC 2.0 client (stdlib only), so devices never import the node.

``Caller`` is the one interface the device and the fleet use: ``call(method, *params)``. Both
this HTTP client and the in-process :class:`~deltachain.client.localchain.LocalChain` implement
it with the node's method names and JSON shapes (binary values as 0x-hex).
"""

from __future__ import annotations

import itertools
import json
import urllib.error
import urllib.request
from typing import Any, Protocol

from deltachain.errors import DeltachainError, NetworkError

NOT_FOUND = 4004
"""The node's JSON-RPC code for a missing block, state entry or model."""


class Caller(Protocol):
    def call(self, method: str, *params: Any) -> Any: ...


class NodeUnreachable(NetworkError):
    """No deltachain node answered at the given URL."""


class RpcFailed(DeltachainError):
    """The node answered with a JSON-RPC error (``code`` as sent)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class JsonRpc:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise NodeUnreachable(f"--rpc {url!r} must be an http:// or https:// URL")
        self.url = url
        self.timeout = timeout
        self._ids = itertools.count(1)
        self.calls = 0

    def call(self, method: str, *params: Any) -> Any:
        body = json.dumps(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        ).encode()
        request = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self.url, data=body, headers={"Content-Type": "application/json"}
        )
        self.calls += 1
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                reply = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise NodeUnreachable(f"{self.url} answered HTTP {exc.code} to {method}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            raise NodeUnreachable(
                f"cannot reach a node at {self.url} ({getattr(exc, 'reason', exc)}); is it "
                "running? Start one with `make testnet` (or `deltachain node --dev`) or pass --rpc"
            ) from None
        except ValueError:
            raise NodeUnreachable(f"{self.url} did not answer with JSON; is it a node?") from None
        if not isinstance(reply, dict):
            raise NodeUnreachable(f"{self.url} sent a malformed JSON-RPC reply")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {}
            raise RpcFailed(int(error.get("code", 0)), str(error.get("message")))
        return reply.get("result")
