"""The ``deltachain`` command line: run a node, manage keys, send transactions, query the chain.

Every failure a user can cause ends with one line ``error: <what is wrong and what to do>`` and
exit status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deltachain import __version__
from deltachain.chain import construct_runtime, genesis_header
from deltachain.crypto.keys import (
    Keypair,
    address_to_str,
    parse_address,
    refuse_well_known_key,
)
from deltachain.crypto.keystore import (
    encrypt_key,
    plain_key,
    read_key_file,
    warn_if_exposed,
    write_key_file,
)
from deltachain.errors import DeltachainError, KeystoreError
from deltachain.model_state.delta import (
    LOSS_SCALE,
    SALT_BYTES,
    CommitDelta,
    SubmitDelta,
    delta_commitment,
    quantize_top_p,
)
from deltachain.node.metrics import DEFAULT_PORT as DEFAULT_PROMETHEUS_PORT
from deltachain.node.rpc import (
    BODY_TIMEOUT,
    DEFAULT_CORS,
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    MAX_RESPONSE,
    MAX_SOCKETS,
    MAX_SOCKETS_PER_IP,
    MAX_SUBSCRIPTIONS,
    RPC_METHODS_POLICIES,
    RpcError,
    RpcLimits,
    block_json,
    header_json,
    parse_cors,
    to_json,
    unhex,
)
from deltachain.node.rpc_client import (
    DEFAULT_RPC,
    RpcClient,
    StatusCallback,
    WebSocketUnavailable,
)
from deltachain.node.storage import Storage
from deltachain.node.txpool import PoolLimits
from deltachain.primitives.chainspec import ChainSpec, dev_chain_spec, load_chain_spec
from deltachain.primitives.transaction import SignedTransaction, sign_transaction
from deltachain.primitives.types import Hash32
from deltachain.runtime.state import State

log = logging.getLogger("deltachain")


def default_base_path(chain_id: str) -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "deltachain" / chain_id


# --- keys -------------------------------------------------------------------------------------


def read_password(password_file: str | None, *, confirm: bool = False) -> str | None:
    if password_file:
        warn_if_exposed(Path(password_file), "password file")
        try:
            return Path(password_file).read_text().rstrip("\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeystoreError(f"cannot read password file {password_file}: {exc}") from None
    if "DELTACHAIN_PASSWORD" in os.environ:
        return os.environ["DELTACHAIN_PASSWORD"]
    if not sys.stdin.isatty():
        return None
    password = getpass.getpass("key password: ")
    if confirm and getpass.getpass("repeat password: ") != password:
        raise KeystoreError("the passwords do not match")
    return password


def load_key(spec: str, password_file: str | None = None) -> Keypair:
    """``//name`` is a well-known dev key; anything else is a key file path."""
    if spec.startswith("//"):
        return Keypair.dev(spec[2:])
    path = Path(spec)
    if not path.exists():
        raise KeystoreError(f"key {spec!r} is neither a //dev name nor an existing key file")
    content = path.read_text()
    needs_password = "plain_seed" not in content
    return read_key_file(path, read_password(password_file) if needs_password else None)


def cmd_key_generate(args: argparse.Namespace) -> int:
    keypair = Keypair.generate()
    if args.out:
        if args.plain:
            content = plain_key(keypair)
        else:
            password = read_password(args.password_file, confirm=True)
            if password is None:
                raise KeystoreError(
                    "no password: use --password-file, DELTACHAIN_PASSWORD, a "
                    "terminal, or --plain for an unencrypted dev key"
                )
            content = encrypt_key(keypair, password)
        write_key_file(Path(args.out), content)
        print(f"address: {address_to_str(keypair.address)}")
        print(f"key file: {args.out} ({'plain' if args.plain else 'encrypted'}, mode 0600)")
    else:
        print(f"address: {address_to_str(keypair.address)}")
        print(f"secret seed: 0x{keypair.seed.hex()}  (keep it secret; use --out FILE to store it)")
    return 0


def cmd_key_inspect(args: argparse.Namespace) -> int:
    if args.key.startswith("0x") and len(args.key) == 66 and not Path(args.key).exists():
        address = parse_address(args.key)
    else:
        address = load_key(args.key, args.password_file).address
    _emit(args, {"address": address_to_str(address), "publicKey": "0x" + bytes(address).hex()})
    return 0


def cmd_key_node_key(args: argparse.Namespace) -> int:
    keypair = Keypair.generate()
    write_key_file(Path(args.out), plain_key(keypair))
    print(f"node key written to {args.out}")
    return 0


# --- node -------------------------------------------------------------------------------------


def resolve_spec(args: argparse.Namespace) -> ChainSpec:
    if args.chain:
        return load_chain_spec(Path(args.chain))
    if getattr(args, "dev", False):
        return dev_chain_spec()
    raise DeltachainError("no chain given: pass --dev or --chain genesis.json")


def node_key_seed(path: Path) -> bytes:
    """The p2p identity: a plain key file, created on first start so the peer id is stable."""
    if not path.exists():
        write_key_file(path, plain_key(Keypair.generate()))
    return read_key_file(path, None).seed


def network_config(args: argparse.Namespace, spec: ChainSpec, base_path: Path) -> Any:
    """None (no networking) for a lone authority with no peers configured, e.g. ``--dev``."""
    from deltachain.node.network import NetworkConfig

    bootnodes = tuple(args.bootnodes or ()) + tuple(spec.boot_nodes)
    if args.dev or (len(spec.authorities) == 1 and not bootnodes and args.port is None):
        return None
    seed = node_key_seed(Path(args.node_key) if args.node_key else base_path / "node-key.json")
    reserved = tuple(b.rsplit("/p2p/", 1)[1] for b in bootnodes if "/p2p/" in b)
    try:
        return NetworkConfig(
            node_key_seed=seed,
            listen_host=args.listen_host,
            listen_port=30333 if args.port is None else args.port,
            bootnodes=tuple(dict.fromkeys(bootnodes)),
            reserved_only=args.reserved_only,
            reserved_peers=reserved,
        )
    except ValueError as exc:
        raise DeltachainError(f"bad network option: {exc}") from None


def cmd_node(args: argparse.Namespace) -> int:
    from deltachain.node.service import NodeConfig, run_node

    spec = resolve_spec(args)
    key = None
    if args.key:
        key = load_key(args.key, args.password_file)
        refuse_well_known_key(key, args.key, spec.chain_type, "validator")
    elif args.dev or args.validator:
        key = Keypair.dev("alice") if args.dev else None
        if key is None:
            raise DeltachainError("--validator needs --key (a key file or //name)")
    base_path = Path(args.base_path) if args.base_path else default_base_path(spec.id)
    config = NodeConfig(
        spec=spec,
        base_path=base_path,
        key=key,
        name=args.name,
        rpc_host=args.rpc_host,
        rpc_port=args.rpc_port,
        archive=args.archive,
        pool_limits=PoolLimits(
            ready_count=args.pool_limit,
            ready_bytes=args.pool_kbytes * 1024,
            future_count=max(1, args.pool_limit // 16),
            future_bytes=max(1, args.pool_kbytes * 1024 // 20),
            per_sender=args.pool_sender_limit,
            per_sender_future=max(1, min(16, args.pool_sender_limit // 4)),
            ban_seconds=args.tx_ban_seconds,
        ),
        network=network_config(args, spec, base_path),
        rpc_methods=args.rpc_methods,
        rpc_limits=RpcLimits(
            max_connections=args.rpc_max_connections,
            max_subscriptions=args.rpc_max_subscriptions_per_connection,
            max_response=args.rpc_max_response_size << 20,
            max_sockets=args.rpc_max_sockets,
            max_sockets_per_ip=args.rpc_max_sockets_per_ip,
            body_timeout=args.rpc_body_timeout,
            idle_timeout=args.rpc_idle_timeout,
            rate_limit=args.rpc_rate_limit,
            rate_limit_per_ip=args.rpc_rate_limit_per_ip,
            cors=args.rpc_cors,
        ),
        prometheus_host="0.0.0.0" if args.prometheus_external else "127.0.0.1",  # noqa: S104
        prometheus_port=None if args.no_prometheus else args.prometheus_port,
        signing_state=signing_state_path(args, base_path) if key is not None else None,
        double_sign_check_slots=args.double_sign_check,
    )
    asyncio.run(run_node(config))
    return 0


def signing_state_path(args: argparse.Namespace, base_path: Path) -> Path:
    """--signing-state, else beside the key file (or in the base path for a //dev key)."""
    from deltachain.node.signing_state import default_path

    if args.signing_state:
        return Path(args.signing_state)
    return default_path(args.key or "//alice", base_path)


def cmd_check_db(args: argparse.Namespace) -> int:
    """SQLite's integrity check and the chain's invariants; one line per problem."""
    from deltachain.node.storage import DB_FILE, check_database

    base_path = Path(args.base_path)
    problems = check_database(base_path)
    for line in problems:
        print(line)
    if problems:
        return 1
    print(f"{base_path / DB_FILE}: ok")
    return 0


# --- transactions -----------------------------------------------------------------------------


def spec_genesis_hash(spec: ChainSpec) -> Hash32:
    """The genesis hash a chain spec gives (what a node built from it reports)."""
    from deltachain.runtime.executive import build_genesis
    from deltachain.runtime.state import MemoryStateStore

    return build_genesis(construct_runtime(), spec, MemoryStateStore()).hash


def connect(args: argparse.Namespace) -> RpcClient:
    """An RPC client for ``--rpc``; with ``--chain SPEC``, first check the node runs that chain."""
    client = RpcClient(args.rpc)
    if getattr(args, "chain", None):
        spec = load_chain_spec(Path(args.chain))
        expected = spec_genesis_hash(spec)
        actual = _hash(client.call("chain_getGenesisHash"))
        if actual != expected:
            name = client.call("system_chain")
            raise DeltachainError(
                f"wrong chain: the node at {args.rpc} runs {name!r} "
                f"(genesis 0x{actual.hex()[:16]}…), but {args.chain} is {spec.name!r} "
                f"(genesis 0x{expected.hex()[:16]}…); pass the right --rpc or --chain"
            )
    return client


def _status_printer(submitted: str) -> StatusCallback:
    first = True

    def show(status: str, block_hash: str | None, number: int | None) -> None:
        nonlocal first
        if first:
            print(submitted, flush=True)
            first = False
        where = ""
        if block_hash is not None:
            where = f" in block #{number} ({block_hash[:14]}…)" if number is not None else ""
            where = where or f" in block {block_hash}"
        print(f"  status: {status}{where}", flush=True)

    return show


def send_call(
    args: argparse.Namespace, module: str, function: str, call_args: dict[str, Any]
) -> int:
    """Sign and submit; with ``--wait``, follow it over a WebSocket (author_submitAndWatch-
    Extrinsic), or by polling if the endpoint has no WebSocket."""
    client = connect(args)
    key = load_key(args.key, args.password_file)
    chain_type = client.call("system_chainType")
    refuse_well_known_key(key, args.key, str(chain_type), "signing")
    genesis = _hash(client.call("chain_getGenesisHash"))
    nonce = client.call("system_accountNextIndex", address_to_str(key.address))
    tx = sign_transaction(key, genesis, nonce, module, function, call_args)
    tx_hex = "0x" + tx.encode().hex()
    submitted = f"submitted {module}.{function} as 0x{tx.hash.hex()}"
    if args.wait != "none":
        try:
            client.submit_and_watch(tx_hex, args.wait, args.timeout, _status_printer(submitted))
            return _call_outcome(client, "0x" + tx.hash.hex())
        except WebSocketUnavailable as exc:
            log.debug("%s; submitting over HTTP and polling", exc)
    tx_hash = client.call("author_submitExtrinsic", tx_hex)
    print(f"submitted {module}.{function} as {tx_hash}", flush=True)
    if args.wait != "none":
        wait_for(client, tx_hash, args.wait, args.timeout)
        return _call_outcome(client, tx_hash)
    return 0


def _call_outcome(client: RpcClient, tx_hash: str) -> int:
    """An included transaction whose call the runtime refused (ExtrinsicFailed) is a failure
    for the user, though its nonce was used: say why, exit 1."""
    status = client.call("author_extrinsicStatus", tx_hash)
    failed = status.get("failed") if isinstance(status, dict) else None
    if failed:
        print(f"error: included, but the call failed: {failed['reason']}", file=sys.stderr)
        return 1
    return 0


def wait_for(client: RpcClient, tx_hash: str, until: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    wanted = {"in-block": ("inBlock", "finalized"), "finalized": ("finalized",)}[until]
    last = None
    while time.monotonic() < deadline:
        status = client.call("author_extrinsicStatus", tx_hash)
        if status["status"] != last:
            last = status["status"]
            where = f" in block #{status['block']}" if "block" in status else ""
            print(f"  status: {last}{where}", flush=True)
        if status["status"] in wanted:
            return
        if status["status"] in ("dropped", "invalid"):
            raise DeltachainError(f"the node reports the transaction {last}: {status['reason']}")
        if status["status"] == "unknown":
            raise DeltachainError("the node does not know the transaction; it was never pooled")
        time.sleep(0.25)
    raise DeltachainError(
        f"transaction not {until} within {timeout:.0f} s; check the node is authoring"
    )


def global_mask_of(model: dict[str, Any]) -> np.ndarray:
    """Which flat coordinates belong to global layers, from a ``model_get`` answer."""
    parts = [np.full(int(np.prod(la["shape"])), la["global"], dtype=bool) for la in model["layers"]]
    return np.concatenate(parts)


def load_delta(path: Path, model: dict[str, Any], top_p: float) -> SubmitDelta:
    """A float ``.npy`` delta (Top-P% + int8 here) or a pre-sparsified ``.npz``."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DeltachainError(f"cannot read delta file {path}: {exc}") from None
    mask = global_mask_of(model)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        missing = {"indices", "values", "exp"} - set(loaded.files)
        if missing:
            raise DeltachainError(f"{path}: an .npz delta needs arrays indices, values, exp")
        indices = loaded["indices"].astype(np.uint32)
        values = loaded["values"].astype(np.int8)
        exp = int(loaded["exp"])
    else:
        flat = np.asarray(loaded, dtype=np.float64).ravel()
        if flat.size == int(mask.sum()) and flat.size != mask.size:
            full = np.zeros(mask.size)
            full[mask] = flat
            flat = full
        if flat.size != mask.size:
            raise DeltachainError(
                f"{path} has {flat.size} values; model {model['id']!r} has {mask.size} parameters "
                f"({int(mask.sum())} global)"
            )
        if not np.all(np.isfinite(flat)):
            raise DeltachainError(f"{path} contains NaN or infinite values")
        indices, values, exp = quantize_top_p(flat, top_p, int(model["fracBits"]), mask)
    return SubmitDelta(model["id"], int(model["version"]), indices, values, exp, 0, None, None)


def cmd_submit_delta(args: argparse.Namespace) -> int:
    client = connect(args)
    model = client.call("model_get", args.model)
    delta = load_delta(Path(args.delta), model, args.top_p)
    base = model["version"] if args.base_version is None else args.base_version
    micro = {
        k: None if v is None else round(v * LOSS_SCALE)
        for k, v in (("pre", args.loss_pre), ("post", args.loss_post))
    }
    delta = dataclasses.replace(
        delta,
        base_version=base,
        samples=args.samples,
        loss_pre=micro["pre"],
        loss_post=micro["post"],
    )
    print(f"delta for {args.model} v{base}: {delta.indices.size} coordinates, exp {delta.exp}")
    if model.get("commitReveal"):
        return _commit_and_reveal(args, client, delta)
    return send_call(args, "model_state", "submit_delta", delta.to_args())


def _next_block_and_round(client: RpcClient, model: str) -> tuple[int, dict[str, Any]]:
    best = int(client.call("chain_getHeader")["number"])
    return best + 1, client.call("model_get", model)["round"]


def _commit_and_reveal(args: argparse.Namespace, client: RpcClient, delta: SubmitDelta) -> int:
    """A commit-reveal model: commit in the commit window (waiting for it to be in a block),
    hold the delta until the reveal window opens, then reveal it with its salt (``--wait``
    applies to the reveal)."""
    key = load_key(args.key, args.password_file)
    deadline = time.monotonic() + args.timeout
    salted = dataclasses.replace(delta, salt=os.urandom(SALT_BYTES))
    assert salted.salt is not None
    commitment = delta_commitment(salted.delta_args(), salted.salt, key.address)
    while True:
        number, progress = _next_block_and_round(client, args.model)
        if number <= int(progress["commitUntil"]):
            break
        if time.monotonic() > deadline:
            raise DeltachainError(
                f"no commit window for model {args.model!r} within {args.timeout:.0f} s "
                f"(the next opens at block {progress['start']} + roundLen or later)"
            )
        time.sleep(0.25)
    print(f"committing (commit window until block {progress['commitUntil']})", flush=True)
    call = CommitDelta(args.model, salted.base_version, commitment)
    in_block = argparse.Namespace(**{**vars(args), "wait": "in-block"})
    code = send_call(in_block, "model_state", "commit_delta", call.to_args())
    if code != 0:
        return code
    while True:
        number, progress = _next_block_and_round(client, args.model)
        if number >= int(progress["revealFrom"]):
            break
        if time.monotonic() > deadline:
            raise DeltachainError(f"the reveal window did not open within {args.timeout:.0f} s")
        time.sleep(0.25)
    print(f"revealing (reveal window from block {progress['revealFrom']})", flush=True)
    return send_call(args, "model_state", "submit_delta", salted.to_args())


def cmd_register_client(args: argparse.Namespace) -> int:
    return send_call(args, "system", "register_client", {"client": parse_address(args.client)})


def cmd_revoke_client(args: argparse.Namespace) -> int:
    return send_call(args, "system", "revoke_client", {"client": parse_address(args.client)})


def cmd_remark(args: argparse.Namespace) -> int:
    return send_call(args, "system", "remark", {"data": args.text.encode()})


# --- queries ----------------------------------------------------------------------------------


def _emit(args: argparse.Namespace, value: Any) -> None:
    """``--json``: the RPC answer as is, for scripts; otherwise a table for people."""
    if getattr(args, "json", False):
        print(json.dumps(value, indent=2, sort_keys=True))
    elif isinstance(value, dict):
        _print_record(value)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        _print_table(value)
    elif isinstance(value, list):
        for item in value:
            print(item)
        if not value:
            print("(none)")
    else:
        print(value)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if not value:
            return "(none)"
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return "×".join(map(str, value))  # a shape
        return ", ".join(map(_cell, value))
    return str(value)


def _print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    """Aligned columns under a header; numbers right-aligned."""
    if title:
        print(f"\n{title}")
    if not rows:
        print("  (none)")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), int | float) for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(columns))
    print("  ".join("-" * w for w in widths))
    for row_cells in cells:
        print(line(row_cells))


def _print_record(record: dict[str, Any]) -> None:
    """``key  value`` lines; nested objects flatten to ``a.b``, lists of objects become
    tables after the record."""
    flat: list[tuple[str, Any]] = []
    tables: list[tuple[str, list[dict[str, Any]]]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            tables.append((prefix, value))
        else:
            flat.append((prefix, value))

    walk("", record)
    width = max((len(k) for k, _ in flat), default=0)
    for key, value in flat:
        print(f"{key:<{width}}  {_cell(value)}")
    for title, rows in tables:
        _print_table(rows, f"{title}:")


def _hash(value: str) -> Hash32:
    try:
        return Hash32(unhex(value, "hash", 32))
    except RpcError:
        raise DeltachainError(f"{value!r} is not a hash (0x and 64 hex digits)") from None


class OfflineChain:
    """Answers queries from a (possibly running) node's database, for use without RPC."""

    def __init__(self, base_path: Path) -> None:
        self.storage = Storage.open_existing(base_path)
        self.runtime = construct_runtime()

    def call(self, method: str, *params: Any) -> Any:
        s = self.storage
        if method == "chain_getHeader":
            return header_json(s.best_header() if not params else s.header(_hash(params[0])))
        if method == "chain_getFinalizedHead":
            return "0x" + s.finalized_hash().hex()
        if method == "chain_getBlockHash":
            return "0x" + s.canonical_hash(params[0]).hex()
        if method == "chain_getBlock":
            return block_json(s.block(_hash(params[0])))
        if method == "author_extrinsicStatus":
            loc = s.tx_location(_hash(params[0]))
            return {
                "status": "inBlock",
                "block": loc.block_number,
                "blockHash": "0x" + loc.block_hash.hex(),
                "index": loc.index,
            }
        if method == "runtime_query":
            module, name, qargs = params
            if "address" in qargs:
                qargs = {**qargs, "address": parse_address(qargs["address"])}
            state = State(s, s.state_root_at(s.best_hash()))
            return to_json(self.runtime.module(module).query(state, name, qargs))
        raise DeltachainError(f"{method} needs a running node (--rpc)")


def _need(args: argparse.Namespace, usage: str) -> str:
    if args.arg is None:
        raise DeltachainError(f"usage: {usage}")
    return str(args.arg)


def _block_number(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise DeltachainError(f"{text!r} is not a block number (or a 0x block hash)") from None
    if number < 0:
        raise DeltachainError("a block number cannot be negative")
    return number


def _tx_rows(extrinsics: list[str]) -> list[dict[str, Any]]:
    rows = []
    for i, raw in enumerate(extrinsics):
        tx = SignedTransaction.decode(bytes.fromhex(raw[2:]))
        rows.append(
            {
                "#": i,
                "hash": "0x" + tx.hash.hex(),
                "sender": address_to_str(tx.sender),
                "nonce": int(tx.nonce),
                "call": f"{tx.call.module}.{tx.call.function}",
            }
        )
    return rows


def _fetch_weights(source: Any, model: str) -> tuple[np.ndarray, int, int]:
    """Raw int32 weights, version, fracBits: paged (``model_getWeights``) over RPC, all at
    one block so the pages agree."""
    if not isinstance(source, RpcClient):
        found = source.call("runtime_query", "model_state", "weights", {"model": model})
        raw = np.frombuffer(bytes.fromhex(found["weights"][2:]), dtype="<i4").astype(np.int32)
        return raw, int(found["version"]), int(found["fracBits"])
    parts = []
    options: dict[str, Any] = {"format": "raw", "offset": 0}
    while True:
        page = source.call("model_getWeights", model, options)
        parts.append(np.frombuffer(bytes.fromhex(page["weights"][2:]), dtype="<i4"))
        if page["next"] is None:
            break
        options = {"format": "raw", "offset": page["next"], "at": page["at"]}
    return np.concatenate(parts).astype(np.int32), int(page["version"]), int(page["fracBits"])


def cmd_query(args: argparse.Namespace) -> int:
    source: Any = OfflineChain(Path(args.base_path)) if args.base_path else connect(args)
    what = args.what
    if what == "head":
        header = source.call("chain_getHeader")
        finalized = source.call("chain_getFinalizedHead")
        _emit(args, {**header, "finalizedHash": finalized})
    elif what == "block":
        arg = _need(args, "deltachain query block NUMBER|0xHASH")
        if arg.startswith("0x"):
            block_hash = "0x" + _hash(arg).hex()
        else:
            block_hash = source.call("chain_getBlockHash", _block_number(arg))
            if block_hash is None:
                raise DeltachainError(f"no block #{arg} yet")
        found = source.call("chain_getBlock", block_hash)
        if found is None:
            raise DeltachainError(f"the node has no block {block_hash}")
        block = found["block"]
        if args.json:
            _emit(args, block)
        else:
            _print_record({**block["header"], "extrinsics": len(block["extrinsics"])})
            if block["extrinsics"]:
                _print_table(_tx_rows(block["extrinsics"]), "extrinsics:")
    elif what == "tx":
        arg = _need(args, "deltachain query tx 0xHASH")
        status = source.call("author_extrinsicStatus", "0x" + _hash(arg).hex())
        if args.json:
            _emit(args, status)
        elif status["status"] == "unknown":
            print(f"transaction {arg}: unknown (not in the pool nor in any block this node has)")
        else:
            if "blockHash" in status:
                block = source.call("chain_getBlock", status["blockHash"])["block"]
                row = _tx_rows(block["extrinsics"])[status["index"]]
                status = {**status, **{k: row[k] for k in ("sender", "nonce", "call")}}
            _print_record(status)
    elif what == "account":
        address = _need(args, "deltachain query account 0xADDRESS")
        _emit(args, source.call("runtime_query", "system", "account", {"address": address}))
    elif what == "models":
        ids = source.call("runtime_query", "model_state", "list", {})
        if args.json:
            _emit(args, ids)
        else:
            rows = []
            for model_id in ids:
                m = source.call("runtime_query", "model_state", "get", {"model": model_id})
                rows.append(
                    {
                        "id": m["id"],
                        "version": m["version"],
                        "params": m["numParams"],
                        "chunks": m["chunkCount"],
                        "round start": m["round"]["start"],
                        "deltas (in/min/max)": "{count}/{minDeltas}/{maxDeltas}".format(
                            **m["round"]
                        ),
                        "weightsRoot": m["weightsRoot"][:18] + "…",
                    }
                )
            _print_table(rows)
    elif what == "model":
        model = _need(args, "deltachain query model MODEL")
        _emit(args, source.call("runtime_query", "model_state", "get", {"model": model}))
    elif what == "weights":
        model = _need(args, "deltachain query weights MODEL --out FILE.npy [--raw]")
        if not args.out:
            raise DeltachainError("usage: deltachain query weights MODEL --out FILE.npy")
        raw, version, frac_bits = _fetch_weights(source, model)
        array = raw if args.raw else raw.astype(np.float64) / float(1 << frac_bits)
        np.save(args.out, array)
        print(
            f"wrote {args.out}: version {version}, {raw.size} parameters "
            f"({'raw int32 fixed point' if args.raw else 'float64'})"
        )
    elif what == "provenance":
        model = _need(args, "deltachain query provenance MODEL VERSION")
        version = args.version if args.version is not None else args.extra
        if version is None:
            raise DeltachainError("usage: deltachain query provenance MODEL VERSION")
        _emit(
            args,
            source.call(
                "runtime_query",
                "model_state",
                "provenance",
                {"model": model, "version": _block_number(str(version))},
            ),
        )
    elif what in ("clients", "validators"):
        name = "clients" if what == "clients" else "authorities"
        addresses = source.call("runtime_query", "system", name, {})
        if args.json:
            _emit(args, addresses)
        else:
            _print_table([{"#": i, "address": a} for i, a in enumerate(addresses)])
    return 0


# --- light client -------------------------------------------------------------------------------


def _light_genesis(args: argparse.Namespace) -> Hash32 | None:
    """The genesis hash the user trusts: --genesis, else --chain's (None: neither given)."""
    if args.genesis:
        return _hash(args.genesis)
    if args.chain:
        return spec_genesis_hash(load_chain_spec(Path(args.chain)))
    return None


def cmd_light_sync(args: argparse.Namespace) -> int:
    """Follow a node's finality as a light client (RPC or the p2p light protocol); optionally
    download and verify a model; save the light client's state."""
    from deltachain.light.client import LightClient
    from deltachain.light.p2p import P2pTransport
    from deltachain.light.remote import HttpTransport, RemoteLightClient, Transport

    state_path = Path(args.state) if args.state else None
    saved = state_path.read_bytes() if state_path is not None and state_path.exists() else None
    client = None if saved is None else LightClient.load(saved)
    genesis = _light_genesis(args)
    if client is not None and genesis is not None and genesis != client.genesis_hash:
        raise DeltachainError(
            f"{args.state} follows chain 0x{client.genesis_hash.hex()[:16]}…, not "
            f"0x{genesis.hex()[:16]}…; use another --state file"
        )
    genesis = genesis or (client.genesis_hash if client is not None else None)
    if genesis is None:
        raise DeltachainError("which chain? pass --chain genesis.json or --genesis 0x<hash>")
    transport: Transport
    if args.peer:
        transport = P2pTransport(args.peer, genesis, timeout=args.timeout)
    else:
        transport = HttpTransport(args.rpc, timeout=args.timeout)
    started = time.monotonic()
    try:
        if client is None and args.chain and not args.genesis:
            # the spec gives genesis and the first set: nothing about the start comes from the
            # node (which may have pruned its genesis state anyway)
            spec = load_chain_spec(Path(args.chain))
            client = LightClient.from_genesis(
                genesis, spec.authorities, genesis_header=genesis_header(spec)
            )
        if client is None:
            remote = RemoteLightClient.bootstrap(genesis, transport)
        else:
            remote = RemoteLightClient(client, transport)
        header = remote.sync()
        result: dict[str, Any] = {
            "finalized": header.number,
            "hash": "0x" + header.hash.hex(),
            "setId": remote.client.set_id,
            "authorities": len(remote.client.authorities),
        }
        if args.model:
            record, _ = remote.download_model(args.model, sink=lambda index, chunk: None)
            result["model"] = {
                "id": record.model_id,
                "version": record.version,
                "chunks": record.chunk_count,
                "weightsRoot": "0x" + record.weights_root.hex(),
            }
        result["requests"] = remote.requests
        result["seconds"] = round(time.monotonic() - started, 3)
        if isinstance(transport, P2pTransport):
            result["bytesReceived"] = transport.bytes_received
    finally:
        if isinstance(transport, P2pTransport):
            transport.close()
    if state_path is not None:
        state_path.write_bytes(remote.client.save())
    if args.json:
        print(json.dumps(result))
    else:
        line = (
            f"finalized #{result['finalized']} {result['hash'][:18]}… (set {result['setId']} of "
            f"{result['authorities']}), verified in {result['requests']} requests, "
            f"{result['seconds']} s"
        )
        if args.model:
            model = result["model"]
            line += f"; model {model['id']} v{model['version']}: {model['chunks']} chunks verified"
        print(line)
    return 0


def cmd_vectors(args: argparse.Namespace) -> int:
    from deltachain.vectors import run_files

    return 1 if run_files([Path(p) for p in args.files]) else 0


# --- parser -----------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1 << 30:
        raise argparse.ArgumentTypeError(f"must be in 1..{1 << 30}, not {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, not {value}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 3600:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be 0.1..3600 seconds, not {text}")
    return value


def _megabytes(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"must be 1..1024 (MiB), not {value}")
    return value


def _cors(text: str) -> tuple[str, ...] | None:
    try:
        return parse_cors(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deltachain", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"deltachain {__version__}")
    p.add_argument("-l", "--log-level", default="info", help="debug, info, warning, error")
    sub = p.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run a node")
    node.add_argument(
        "--dev", action="store_true", help="single-validator development chain authored by //alice"
    )
    node.add_argument("--chain", help="chain spec file (genesis.json)")
    node.add_argument("--base-path", help="database directory")
    node.add_argument("--validator", action="store_true", help="author blocks (needs --key)")
    node.add_argument("--key", help="validator key: a key file or a //dev name")
    node.add_argument("--password-file")
    node.add_argument("--name", default="deltachain", help="node name shown to peers and in RPC")
    node.add_argument("--rpc-host", default="127.0.0.1")
    node.add_argument("--rpc-port", type=_port, default=9944)
    node.add_argument(
        "--rpc-methods",
        choices=RPC_METHODS_POLICIES,
        default="auto",
        help="who may call unsafe RPC methods: auto = callers on this machine only (default), "
        "safe = nobody, unsafe = everybody",
    )
    node.add_argument(
        "--rpc-max-connections", type=_positive_int, default=MAX_CONNECTIONS, metavar="N"
    )
    node.add_argument(
        "--rpc-max-subscriptions-per-connection",
        type=_positive_int,
        default=MAX_SUBSCRIPTIONS,
        metavar="N",
    )
    node.add_argument(
        "--rpc-cors",
        type=_cors,
        default=DEFAULT_CORS,
        metavar="ORIGINS",
        help="browser origins allowed to call RPC, comma-separated scheme://host[:port|:*], or "
        "`all` (default: localhost and 127.0.0.1 pages only); unsafe methods always need a "
        "local page or no Origin",
    )
    node.add_argument(
        "--rpc-rate-limit",
        type=_positive_int,
        metavar="CALLS",
        help="calls a minute per connection (default: no limit)",
    )
    node.add_argument(
        "--rpc-rate-limit-per-ip",
        type=_positive_int,
        metavar="CALLS",
        help="calls a minute per client IP over all its connections (default: no limit)",
    )
    node.add_argument(
        "--rpc-max-response-size",
        type=_megabytes,
        default=MAX_RESPONSE >> 20,
        metavar="MIB",
        help="reply budget per request and per batch (default %(default)s)",
    )
    node.add_argument(
        "--rpc-max-sockets",
        type=_positive_int,
        default=MAX_SOCKETS,
        metavar="N",
        help="open RPC sockets, idle included; at most half the fd limit (default %(default)s)",
    )
    node.add_argument(
        "--rpc-max-sockets-per-ip",
        type=_positive_int,
        default=MAX_SOCKETS_PER_IP,
        metavar="N",
        help="open RPC sockets per client IP (default %(default)s)",
    )
    node.add_argument(
        "--rpc-body-timeout",
        type=_seconds,
        default=BODY_TIMEOUT,
        metavar="SECONDS",
        help="a request body must arrive within this (default %(default)s)",
    )
    node.add_argument(
        "--rpc-idle-timeout",
        type=_seconds,
        default=IDLE_TIMEOUT,
        metavar="SECONDS",
        help="close connections without a complete request (headers included) after this "
        "(default %(default)s)",
    )
    node.add_argument(
        "--prometheus-port",
        type=_port,
        default=DEFAULT_PROMETHEUS_PORT,
        help="serve Prometheus metrics on this port at /metrics (default %(default)s)",
    )
    node.add_argument(
        "--prometheus-external",
        action="store_true",
        help="listen for metrics on all interfaces (default: loopback only)",
    )
    node.add_argument("--no-prometheus", action="store_true", help="no metrics endpoint")
    node.add_argument("--archive", action="store_true", help="keep every state (no pruning)")
    pool = PoolLimits()
    node.add_argument(
        "--pool-limit",
        type=_positive_int,
        default=pool.ready_count,
        metavar="COUNT",
        help="most ready transactions in the pool (default %(default)s; 1/16 of it may wait "
        "behind nonce gaps)",
    )
    node.add_argument(
        "--pool-kbytes",
        type=_positive_int,
        default=pool.ready_bytes // 1024,
        metavar="KIB",
        help="most KiB of ready transactions in the pool (default %(default)s)",
    )
    node.add_argument(
        "--pool-sender-limit",
        type=_positive_int,
        default=pool.per_sender,
        metavar="COUNT",
        help="most transactions of one sender in the pool (default %(default)s)",
    )
    node.add_argument(
        "--tx-ban-seconds",
        type=_positive_int,
        default=int(pool.ban_seconds),
        metavar="SECONDS",
        help="how long a transaction found invalid stays refused (default %(default)s)",
    )
    node.add_argument("--port", type=_port, help="p2p port (default 30333; 0 = any free port)")
    node.add_argument("--listen-host", default="127.0.0.1", help="p2p listen address")
    node.add_argument("--bootnodes", nargs="*", help="peer multiaddrs /ip4/…/tcp/…/p2p/<id>")
    node.add_argument(
        "--reserved-only",
        action="store_true",
        help="talk only to the bootnodes (the permissioned validator set)",
    )
    node.add_argument("--node-key", help="p2p identity key file (default BASE/node-key.json)")
    node.add_argument(
        "--signing-state",
        help="the validator's last-vote file, kept apart from the database so a wiped database "
        "never makes it double-vote (default: beside the key file; BASE for a //dev key)",
    )
    node.add_argument(
        "--double-sign-check",
        type=int,
        default=0,
        metavar="SLOTS",
        help="before the first vote, listen SLOTS slots for votes by this key; never vote if "
        "another node turns out to be voting with it (default 0: off)",
    )
    node.set_defaults(func=cmd_node)
    node_sub = node.add_subparsers(dest="node_cmd", metavar="{check-db}")
    check = node_sub.add_parser(
        "check-db", help="check a database (SQLite integrity and chain invariants)"
    )
    check.add_argument("--base-path", required=True, help="the node's database directory")
    check.set_defaults(func=cmd_check_db)

    key = sub.add_parser("key", help="generate and inspect keys").add_subparsers(
        dest="key_cmd", required=True
    )
    gen = key.add_parser("generate", help="new ed25519 account key")
    gen.add_argument("--out", help="write an encrypted key file here")
    gen.add_argument("--plain", action="store_true", help="with --out: unencrypted (dev only)")
    gen.add_argument("--password-file")
    gen.set_defaults(func=cmd_key_generate)
    ins = key.add_parser("inspect", help="show the address of a key file, //name or 0x address")
    ins.add_argument("key")
    ins.add_argument("--password-file")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=cmd_key_inspect)
    nk = key.add_parser("generate-node-key", help="new p2p identity key file")
    nk.add_argument("--out", required=True)
    nk.set_defaults(func=cmd_key_node_key)

    def tx_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        t = sub.add_parser(name, help=help_text)
        t.add_argument("--key", required=True, help="signing key: key file or //name")
        t.add_argument("--password-file")
        t.add_argument("--rpc", default=DEFAULT_RPC)
        t.add_argument("--chain", help="chain spec: refuse to send if the node runs another chain")
        t.add_argument("--wait", choices=("none", "in-block", "finalized"), default="in-block")
        t.add_argument("--timeout", type=float, default=30.0)
        return t

    reg = tx_parser("register-client", "admin: allow a client to submit transactions")
    reg.add_argument("client", help="client address (0x…)")
    reg.set_defaults(func=cmd_register_client)
    rev = tx_parser("revoke-client", "admin: remove a client")
    rev.add_argument("client", help="client address (0x…)")
    rev.set_defaults(func=cmd_revoke_client)
    rem = tx_parser("remark", "record a short note on chain (a test transaction)")
    rem.add_argument("text")
    rem.set_defaults(func=cmd_remark)

    sd = tx_parser("submit-delta", "client: submit a model delta (Top-P% + int8)")
    sd.add_argument("--model", required=True)
    sd.add_argument(
        "--delta",
        required=True,
        help="float .npy (full or global-part length) or .npz with indices/values/exp",
    )
    sd.add_argument("--top-p", type=float, default=0.1, help="fraction of coordinates to send")
    sd.add_argument("--base-version", type=int, help="default: the model's current version")
    sd.add_argument("--samples", type=int, default=0, help="local samples trained on")
    sd.add_argument("--loss-pre", type=float)
    sd.add_argument("--loss-post", type=float)
    sd.set_defaults(func=cmd_submit_delta)

    q = sub.add_parser("query", help="read chain state")
    q.add_argument(
        "what",
        choices=(
            "head",
            "block",
            "tx",
            "account",
            "clients",
            "validators",
            "models",
            "model",
            "weights",
            "provenance",
        ),
    )
    q.add_argument("arg", nargs="?", help="block number, tx hash, address or model id")
    q.add_argument("extra", nargs="?", help="provenance: the model version")
    q.add_argument("--rpc", default=DEFAULT_RPC, help="node to ask (default %(default)s)")
    q.add_argument("--chain", help="chain spec: refuse to answer if the node runs another chain")
    q.add_argument("--base-path", help="read a node's database directly instead of RPC")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.add_argument("--out", help="weights: write a .npy file here")
    q.add_argument("--raw", action="store_true", help="weights: int32 fixed point, not floats")
    q.add_argument("--version", type=int, help="provenance: the model version")
    q.set_defaults(func=cmd_query)
    light = sub.add_parser(
        "light", help="a light client: trusts only finality and proofs"
    ).add_subparsers(dest="light_cmd", required=True)
    ls = light.add_parser(
        "sync",
        help="follow a node's finality from the genesis hash (or --state) and verify proofs",
        description="Starts from the genesis hash (or a saved --state), follows the node's "
        "justifications across authority-set changes and, with --model, downloads and "
        "verifies every weight chunk. Talks JSON-RPC (--rpc) or the light protocol over "
        "libp2p (--peer, the multiaddr a node logs as 'network listening on …').",
    )
    source = ls.add_mutually_exclusive_group(required=True)
    source.add_argument("--peer", help="node multiaddr /ip4/HOST/tcp/PORT/p2p/PEER_ID")
    source.add_argument("--rpc", help="node JSON-RPC URL, e.g. http://127.0.0.1:9944")
    ls.add_argument("--chain", help="chain spec whose genesis hash to trust")
    ls.add_argument("--genesis", help="genesis hash to trust (0x…), instead of --chain")
    ls.add_argument("--state", help="light client state file: resumed from and saved to")
    ls.add_argument("--model", help="also download and verify every chunk of this model")
    ls.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_light_sync)
    vec = sub.add_parser("vectors", help="state-transition vectors").add_subparsers(
        dest="vectors_cmd", required=True
    )
    run = vec.add_parser("run", help="replay vector files; exit 1 if any fails")
    run.add_argument("files", nargs="+")
    run.set_defaults(func=cmd_vectors)
    from deltachain.node.testnet import register as register_testnet

    register_testnet(sub)  # chain-spec new, testnet up|status|down
    from deltachain.client.cli import register as register_client_fleet

    register_client_fleet(sub)  # client run
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname).1s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return int(args.func(args))
    except DeltachainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
