"""The light client: persistent-state size, verification times, peak memory for a whole model.

    python benchmarks/bench_light.py [--quick] [--json FILE]

Prints: the saved state (genesis hash + authority set + set id + finalized header) in bytes for
4/16/64 authorities; the time to verify one justification (> 2/3 of n ed25519 signatures) plus
its set proof; wire sizes of a justification, a set proof and a chunk proof; the time to verify
one weight chunk (record trie proof + Merkle path, and the path alone); and the peak Python
heap (tracemalloc) while downloading and verifying a whole model chunk by chunk — into one
preallocated buffer, and streamed to a sink (flash) — against the model's own size; and, over
loopback, a light client syncing from genesis to a real chain's finalized head and downloading
a model, once over JSON-RPC (HTTP) and once over the libp2p light protocol (``…/light/1``):
time, requests and payload bytes each way (HTTP headers, Noise and yamux framing excluded).

The chunk proofs come from a real node's ``model_getChunkProof`` handler; they are encoded to
JSON bytes before measuring starts and replayed one reply at a time, so the peak counts only what
the light client holds (the reply being parsed, one chunk and its proof, and the model buffer).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from deltachain.chain import construct_runtime
from deltachain.consensus.aura import author_of
from deltachain.consensus.finality import Checkpoint, Justification, Link, VoteRecord, sign_vote
from deltachain.crypto.hashing import Hash32
from deltachain.crypto.keys import Keypair, address_to_str
from deltachain.crypto.trie import trie_prove
from deltachain.light import LightClient, SetProof
from deltachain.light.keys import KEY_AUTHORITIES, KEY_SET_ID, state_key_hash
from deltachain.light.p2p import P2pTransport
from deltachain.light.proofs import ChunkProof
from deltachain.light.protocol import MAX_REQUEST_BYTES as MAX_LIGHT_REQUEST
from deltachain.light.protocol import light_protocol
from deltachain.light.remote import HttpTransport, RemoteLightClient, Transport
from deltachain.node import light_server
from deltachain.node.chain import Chain
from deltachain.node.network import Network, NetworkConfig
from deltachain.node.rpc import RpcServer
from deltachain.node.service import chain_runner
from deltachain.primitives.block import Header
from deltachain.primitives.chainspec import DEV_MODEL, dev_chain_spec, parse_chain_spec
from deltachain.primitives.types import BlockNumber, Signature, Slot
from deltachain.runtime.executive import build_genesis
from deltachain.runtime.state import MemoryStateStore, State
from support import realistic_header


def spec_with(authorities: list[Keypair], num_params: int | None = None) -> Any:
    raw = dev_chain_spec().to_json()
    raw["genesis"]["consensus"]["authorities"] = [address_to_str(k.address) for k in authorities]
    if num_params is not None:
        model = copy.deepcopy(DEV_MODEL)
        model["id"] = "big"
        rows = num_params // 1024
        model["layers"] = [
            {"name": "w", "shape": [rows, 1024], "kind": "global", "initStd": "1/32"},
            {"name": "b", "shape": [1024], "kind": "local", "initStd": "0/1"},
        ]
        model["chunkSize"] = 1024
        raw["genesis"]["runtime"]["model_state"]["models"] = [model]
    return parse_chain_spec(raw)


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call (the box may be shared)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def state_size(n: int) -> int:
    keys = [Keypair.dev(f"a{i}").address for i in range(n)]
    return len(LightClient(Hash32(b"\x66" * 32), 2**40, keys, realistic_header()).save())


def justification_case(n: int, repeats: int) -> dict[str, float]:
    """A genesis with n authorities, a child header; > 2/3 of them sign genesis → child."""
    keys = [Keypair.dev(f"a{i}") for i in range(n)]
    store = MemoryStateStore()
    genesis = build_genesis(construct_runtime("reference"), spec_with(keys), store)
    store.apply(genesis.diff)
    g = genesis.header
    # a child and grandchild that share genesis' state (what is signed is their hashes)
    child = Header(
        g.hash,
        BlockNumber(1),
        Slot(1),
        g.state_root,
        g.extrinsics_root,
        keys[0].address,
        Signature(b"\x01" * 64),
    )
    grandchild = Header(
        child.hash,
        BlockNumber(2),
        Slot(2),
        g.state_root,
        g.extrinsics_root,
        keys[1].address,
        Signature(b"\x02" * 64),
    )
    link = Link(0, Checkpoint(child.hash, child.number), Checkpoint(grandchild.hash, 2))
    signers = keys[: 2 * n // 3 + 1]
    sigs = sorted((k.address, sign_vote(k, link, genesis.hash).signature) for k in signers)
    j = Justification(0, child, grandchild, tuple(sigs))
    state = State(store, g.state_root)

    def prove(key: bytes) -> Any:
        return state.get(key), trie_prove(store, g.state_root, state_key_hash(key))

    sid, sid_proof = prove(KEY_SET_ID)
    auth, auth_proof = prove(KEY_AUTHORITIES)
    set_proof = SetProof(sid, sid_proof, auth, auth_proof)
    same_set = SetProof(sid, sid_proof)

    def follow(proof: SetProof | None) -> Callable[[], object]:
        return lambda: LightClient.from_genesis(
            genesis.hash, [k.address for k in keys], genesis_header=g
        ).follow(j, proof)

    return {
        "signatures": len(signers),
        "justification_bytes": len(j.encode()),
        "set_proof_bytes": len(set_proof.encode()),
        "set_id_proof_bytes": len(same_set.encode()),
        "follow_s": median_time(follow(None), repeats),
        "follow_with_set_proof_s": median_time(follow(set_proof), repeats),
    }


class Replay(Transport):
    """Answers from pre-encoded JSON reply bytes, parsing one at a time (as off the wire)."""

    def __init__(self, replies: dict[tuple[Any, ...], bytes]) -> None:
        self.replies = replies

    def call(self, method: str, params: list[Any]) -> Any:
        return json.loads(self.replies[(method, *params)])["result"]


def model_case(num_params: int, repeats: int) -> dict[str, float]:
    keys = [Keypair.dev(f"a{i}") for i in range(4)]
    with tempfile.TemporaryDirectory() as tmp:
        chain = Chain(spec_with(keys, num_params), construct_runtime("reference"), Path(tmp))

        async def run(fn: Callable[..., Any], *args: Any) -> Any:
            return fn(*args)

        server = RpcServer(chain, run)
        genesis = chain.storage.header(chain.genesis_hash)
        block = "0x" + genesis.hash.hex()
        record = chain.runtime.modules["model_state"].record(chain.best_state(), "big")
        count = record.config.num_chunks
        replies: dict[tuple[Any, ...], bytes] = {}
        for index in range(count):
            params = ["big", index, block]
            result = server.methods["model_getChunkProof"](params)
            reply = {"jsonrpc": "2.0", "id": 1, "result": result}
            replies[("model_getChunkProof", *params)] = json.dumps(reply).encode()
        chain.close()
    client = LightClient.from_genesis(
        genesis.hash, [k.address for k in keys], genesis_header=genesis
    )
    verifier = client.verifier()
    sample = ChunkProof.from_json("big", json.loads(replies[next(iter(replies))])["result"])
    view = verifier.verify_chunk_proof(sample)
    chunk_full = median_time(lambda: verifier.verify_chunk_proof(sample), repeats * 20)
    chunk_only = median_time(
        lambda: view.verify_chunk(sample.index, sample.chunk, sample.merkle_proof), repeats * 20
    )
    remote = RemoteLightClient(client, Replay(replies))

    def peak(sink: Callable[[int, bytes], None] | None) -> tuple[int, float]:
        tracemalloc.start()
        start = time.perf_counter()
        remote.download_model("big", verifier, sink)
        seconds = time.perf_counter() - start
        peak_bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak_bytes, seconds

    peak_buffer, seconds = peak(None)
    peak_stream, _ = peak(lambda i, c: None)
    proof_wire = sample.record_proof.encode()
    return {
        "num_params": num_params,
        "model_bytes": 4 * num_params,
        "chunks": count,
        "chunk_json_bytes": len(next(iter(replies.values()))),
        "chunk_proof_bytes": len(sample.chunk)
        + 32 * len(sample.merkle_proof)
        + len(sample.record)
        + len(proof_wire),
        "verify_chunk_with_record_s": chunk_full,
        "verify_chunk_path_only_s": chunk_only,
        "download_verify_s": seconds,
        "peak_buffer_bytes": peak_buffer,
        "peak_streamed_bytes": peak_stream,
    }


class CountingHttp(HttpTransport):
    """HttpTransport that counts JSON-RPC body bytes each way."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.bytes_sent = 0
        self.bytes_received = 0

    def _post(self, payload: Any) -> Any:
        self.bytes_sent += len(json.dumps(payload).encode())
        reply = super()._post(payload)
        self.bytes_received += len(json.dumps(reply).encode())
        return reply


def finalized_chain(base: Path, keys: list[Keypair], blocks: int) -> Chain:
    """A chain of ``blocks`` blocks, each finalized by votes of every authority."""
    chain = Chain(spec_with(keys, 16 * 1024), construct_runtime("reference"), base)
    for _ in range(blocks):
        parent = chain.storage.best_header()
        slot = Slot(parent.slot + 1)
        owner = author_of(slot, chain.authorities_at(parent.hash))
        chain.author_block(slot, next(k for k in keys if k.address == owner))
        link = chain.gadget.proposal(chain.storage.best_header(), chain.storage, VoteRecord())
        if link is not None:
            for key in keys:
                chain.add_vote(sign_vote(key, link, chain.genesis_hash))
    return chain


class Servers:
    """The chain behind RPC (aiohttp) and the light protocol (libp2p), on one loop thread,
    every handler on one "chain" thread, as a node runs them."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chain")
        self.url = ""
        self.addr = ""

    async def _start(self) -> None:
        run = chain_runner(self.executor)
        self.runner = web.AppRunner(RpcServer(self.chain, run).app())
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

        async def serve(peer: str, request: bytes) -> bytes:
            return bytes(await run(light_server.serve, self.chain, request))

        self.network = Network(NetworkConfig(node_key_seed=b"\x07" * 32, listen_port=0))
        self.network.set_request_handler(
            light_protocol(self.chain.genesis_hash),
            serve,
            open_to_all=True,
            max_request=MAX_LIGHT_REQUEST,
        )
        await self.network.start()
        self.addr = self.network.listen_addr

    async def _stop(self) -> None:
        await self.network.stop()
        await self.runner.cleanup()

    def __enter__(self) -> Servers:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()
        self.executor.shutdown(wait=True)


def wire_case(blocks: int, repeats: int) -> dict[str, dict[str, float]]:
    """Sync from genesis to the finalized head, then download "big", over RPC and over p2p.

    Each repetition starts a fresh client and a fresh transport (p2p: the dial and handshakes
    are inside the sync time). Medians of ``repeats``.
    """
    keys = [Keypair.dev(f"a{i}") for i in range(4)]
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        chain = finalized_chain(Path(tmp), keys, blocks)
        genesis = chain.storage.header(chain.genesis_hash)
        try:
            with Servers(chain) as servers:
                for name in ("rpc", "p2p"):
                    rows: list[dict[str, float]] = []
                    for _ in range(repeats):
                        transport: CountingHttp | P2pTransport = (
                            CountingHttp(servers.url)
                            if name == "rpc"
                            else P2pTransport(servers.addr, chain.genesis_hash)
                        )
                        client = LightClient.from_genesis(
                            genesis.hash, [k.address for k in keys], genesis_header=genesis
                        )
                        remote = RemoteLightClient(client, transport)
                        start = time.perf_counter()
                        header = remote.sync()
                        synced = time.perf_counter()
                        sync_requests = remote.requests
                        sync_in = transport.bytes_received
                        remote.download_model("big", sink=lambda i, c: None)
                        done = time.perf_counter()
                        if isinstance(transport, P2pTransport):
                            transport.close()
                        rows.append(
                            {
                                "finalized": header.number,
                                "sync_s": synced - start,
                                "sync_requests": sync_requests,
                                "sync_bytes_in": sync_in,
                                "download_s": done - synced,
                                "requests": remote.requests,
                                "bytes_out": transport.bytes_sent,
                                "bytes_in": transport.bytes_received,
                            }
                        )
                    out[name] = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        finally:
            chain.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    repeats = 5 if args.quick else 25
    sizes = [4, 16, 64]
    params = [16 * 1024] if args.quick else [16 * 1024, 256 * 1024]
    results: dict[str, Any] = {"state_bytes": {}, "justification": {}, "model": {}}

    print(
        f"{'authorities':>12}{'state B':>10}{'sigs':>6}{'justif. B':>11}{'set proof B':>13}"
        f"{'follow ms':>11}{'+set proof ms':>15}{'µs/sig':>8}"
    )
    for n in sizes:
        size = state_size(n)
        case = justification_case(n, repeats)
        results["state_bytes"][n] = size
        results["justification"][n] = case
        print(
            f"{n:>12}{size:>10}{case['signatures']:>6}{case['justification_bytes']:>11}"
            f"{case['set_proof_bytes']:>13}{case['follow_s'] * 1e3:>11.2f}"
            f"{case['follow_with_set_proof_s'] * 1e3:>15.2f}"
            f"{case['follow_s'] * 1e6 / case['signatures']:>8.0f}"
        )
    assert results["state_bytes"][4] <= 4096
    assert results["state_bytes"][16] <= 4096

    print(
        f"\n{'params':>9}{'model KiB':>10}{'chunks':>7}{'proof B':>9}{'chunk µs':>10}"
        f"{'path µs':>9}{'download s':>11}{'peak KiB':>10}{'peak/model':>11}"
        f"{'streamed KiB':>13}"
    )
    for num in params:
        m = model_case(num, repeats)
        results["model"][num] = m
        print(
            f"{num:>9}{m['model_bytes'] / 1024:>10.0f}{m['chunks']:>7}"
            f"{m['chunk_proof_bytes']:>9}{m['verify_chunk_with_record_s'] * 1e6:>10.1f}"
            f"{m['verify_chunk_path_only_s'] * 1e6:>9.1f}{m['download_verify_s']:>11.3f}"
            f"{m['peak_buffer_bytes'] / 1024:>10.1f}"
            f"{m['peak_buffer_bytes'] / m['model_bytes']:>11.3f}"
            f"{m['peak_streamed_bytes'] / 1024:>13.1f}"
        )

    blocks = 20 if args.quick else 100
    wire = wire_case(blocks, 3 if args.quick else 5)
    results["wire"] = wire
    print(
        f"\nsync from genesis to finalized #{int(wire['rpc']['finalized'])} (4 authorities), "
        "then download + verify model 'big' chunk by chunk; loopback, median of runs"
    )
    print(
        f"{'transport':>10}{'sync ms':>9}{'sync req':>9}{'sync B in':>10}{'model ms':>10}"
        f"{'requests':>9}{'B out':>9}{'B in':>10}"
    )
    for name, w in wire.items():
        print(
            f"{name:>10}{w['sync_s'] * 1e3:>9.1f}{int(w['sync_requests']):>9}"
            f"{int(w['sync_bytes_in']):>10}{w['download_s'] * 1e3:>10.1f}"
            f"{int(w['requests']):>9}{int(w['bytes_out']):>9}{int(w['bytes_in']):>10}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.exit(main())
