"""Serving the light-client protocol (``light/protocol.py``) from the node's storage.

``serve`` runs on the chain thread, like the sync protocol's and every RPC handler, and calls
the same query code as the RPC (``node/queries.py``). It never raises for anything a peer can
send: a malformed, unknown or oversized request, a bad argument or an unknown block gets a
typed error response, and an unexpected failure is logged and answered ``internal``.
"""

from __future__ import annotations

import logging
from typing import Any

from deltachain import codec
from deltachain.errors import DeltachainError, NotFound
from deltachain.light.protocol import (
    MAX_RESPONSE_BYTES,
    BadLightRequest,
    LightRequest,
    encode_error,
    error_envelope,
    parse_request,
)
from deltachain.node import queries
from deltachain.node.chain import Chain

__all__ = ["serve"]

log = logging.getLogger("deltachain.light_server")


def _result(chain: Chain, request: LightRequest) -> Any:
    kind, args = request.kind, request.args
    if kind == "genesis":
        return chain.genesis_hash
    if kind == "finalizedHead":
        return chain.storage.finalized_hash()
    if kind == "header":
        header = queries.header(chain, args[0])
        return None if header is None else header.encode()
    if kind == "justification":
        return queries.justification(chain, args[0])
    if kind == "proveFinality":
        return queries.prove_finality(chain, args[0])
    if kind == "readProof":
        return queries.read_proof(chain, args[0], args[1])
    if kind == "storage":
        return queries.storage_value(chain, args[0], args[1])
    if kind == "chunkProof":
        module = queries.model_module(chain)
        if module is None:
            raise BadLightRequest("unknownRequest", "this runtime has no model_state module")
        found = queries.chunk_proof(chain, module, args[0], args[1], args[2])
        return [
            found.index,
            found.count,
            found.chunk,
            found.proof,
            found.record,
            found.record_proof,
            found.state_root,
            found.block_hash,
        ]
    raise BadLightRequest("unknownRequest", f"unknown light request {kind!r}")


def _answer(chain: Chain, request: LightRequest) -> list[Any]:
    """One response envelope; every failure becomes a typed error."""
    try:
        return [0, _result(chain, request)]
    except BadLightRequest as exc:
        return error_envelope(exc.code, str(exc))
    except NotFound as exc:
        return error_envelope("notFound", str(exc))
    except DeltachainError as exc:  # e.g. InvalidCall: chunk index out of range
        return error_envelope("badRequest", str(exc))
    except Exception:
        log.exception("light request %s failed", request.kind)
        return error_envelope("internal", "internal error (see the node's log)")


def serve(chain: Chain, request: bytes) -> bytes:
    """Answer one light request (runs on the chain thread). Never raises for peer input."""
    try:
        parsed = parse_request(request)
    except BadLightRequest as exc:
        return encode_error(exc.code, str(exc))
    if isinstance(parsed, list):
        out = codec.encode([0, [_answer(chain, item) for item in parsed]])
    else:
        out = codec.encode(_answer(chain, parsed))
    if len(out) > MAX_RESPONSE_BYTES:
        return encode_error(
            "tooLarge", f"the response is {len(out)} bytes, over {MAX_RESPONSE_BYTES}; ask less"
        )
    return out
