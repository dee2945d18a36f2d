"""``deltachain client run``: a fleet of simulated MCU devices learning on a chain.

Registered into the main parser by :func:`register`; heavy imports happen only when it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deltachain.errors import DeltachainError, KeystoreError

if TYPE_CHECKING:
    from deltachain.light.p2p import P2pTransport

    from .rpc import Caller
    from .verify import TrustRoot, Verifier

DEFAULT_RPC = "http://127.0.0.1:9944"
DEFAULT_CHAIN = "genesis.json"
"""The repository's testnet spec: the chain a fleet trusts unless told another."""


def register(sub: Any) -> None:
    """Add ``client run`` to the top-level subcommands (``sub`` from ``add_subparsers``)."""
    client = sub.add_parser("client", help="the MCU learning fleet").add_subparsers(
        dest="client_cmd", required=True
    )
    run = client.add_parser(
        "run",
        help="run learning devices against a node (or an in-process chain with --local)",
        description="Each round every device downloads and verifies the model, runs Reptile on "
        "its few samples, and submits a signed Top-P%% int8 delta; held-out devices that never "
        "train score the new model.",
    )
    run.add_argument("--rpc", default=DEFAULT_RPC, help="node JSON-RPC URL (default %(default)s)")
    run.add_argument(
        "--peer",
        metavar="MULTIADDR",
        help="node multiaddr /ip4/…/tcp/…/p2p/<id>: verify finality and downloads over the p2p "
        "light protocol (transactions still go over --rpc)",
    )
    run.add_argument(
        "--local", action="store_true", help="use an in-process chain instead of --rpc"
    )
    run.add_argument(
        "--chain",
        default=DEFAULT_CHAIN,
        help="chain spec the devices trust (their genesis and first authority set); `dev` is "
        "the built-in spec of `deltachain node --dev`; a node of another chain is refused "
        "(default %(default)s)",
    )
    run.add_argument("--genesis", help="genesis hash (0x…) the devices trust, instead of --chain's")
    run.add_argument("--task", choices=("sine", "digits"), default="sine")
    run.add_argument("--model", help="model id (default: sine-mlp or digits-mlp)")
    run.add_argument("--devices", type=int, default=20, help="training devices")
    run.add_argument("--rounds", type=int, default=30)
    run.add_argument("--top-p", type=float, default=0.1, help="fraction of global coordinates")
    run.add_argument("--inner-steps", type=int, help="SGD steps per round (default per task)")
    run.add_argument("--inner-lr", type=float, help="inner learning rate (default per task)")
    run.add_argument("--shots", type=int, help="K samples per round (default per task)")
    run.add_argument("--attack", choices=("signflip", "scale", "gaussian", "alie"))
    run.add_argument("--malicious", type=float, default=0.2, help="fraction with --attack")
    run.add_argument("--heldout", type=int, default=5, help="held-out devices (never train)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--csv", help="write one row per round here")
    run.add_argument("--plot", help="write a PNG of quality vs round here")
    run.add_argument(
        "--admin-key",
        help="registers device keys if needed (default //alice on a Development/Local chain; "
        "well-known //dev keys are refused on a Live chain)",
    )
    run.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per round")
    run.add_argument("--semantics", choices=("zero-fill", "present-quorum"), default="zero-fill")
    run.add_argument(
        "--trust-node",
        action="store_true",
        help="INSECURE: believe whatever finalized head the node claims instead of following "
        "justifications (a lying node can feed the devices any model)",
    )
    run.add_argument("--eta", default="4/1", help="--local: the model's step size num/den")
    run.add_argument("--trim-beta", default="1/5", help="--local: the model's trimBeta")
    run.set_defaults(func=cmd_client_run)


def _admin_key(spec: str) -> Any:
    from deltachain.crypto.keys import Keypair
    from deltachain.crypto.keystore import read_key_file

    if spec.startswith("//"):
        return Keypair.dev(spec[2:])
    path = Path(spec)
    if not path.exists():
        raise KeystoreError(f"admin key {spec!r} is neither a //dev name nor a key file")
    content = path.read_text()
    password = None if "plain_seed" in content else os.environ.get("DELTACHAIN_PASSWORD")
    return read_key_file(path, password)


def trust_root(chain: str, genesis: str | None) -> TrustRoot:
    """The devices' trust root: ``--genesis`` if given, else the chain spec ``chain``."""
    from deltachain.crypto.hashing import Hash32
    from deltachain.primitives.chainspec import dev_chain_spec, load_chain_spec

    from .verify import TrustRoot

    if genesis is not None:
        try:
            raw = bytes.fromhex(genesis[2:]) if genesis.startswith("0x") else b""
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise DeltachainError(f"--genesis {genesis!r} is not a hash (0x and 64 hex digits)")
        return TrustRoot(Hash32(raw), f"--genesis {genesis[:18]}…")
    if chain == "dev":
        return TrustRoot.from_spec(dev_chain_spec(), "the dev chain spec (--chain dev)")
    if not Path(chain).exists():
        raise DeltachainError(
            f"no chain spec {chain!r}: pass --chain SPEC (the genesis.json your network runs; "
            "`--chain dev` for `node --dev`) or --genesis 0x<hash>"
        )
    return TrustRoot.from_spec(load_chain_spec(Path(chain)), chain)


def _verifier(
    args: argparse.Namespace, root: TrustRoot, peer: P2pTransport | None
) -> Callable[[Caller], Verifier]:
    """How each device trusts what it downloads (see ``client/verify.py``)."""
    from .verify import LightVerifier, TrustNodeVerifier

    if args.trust_node:
        return TrustNodeVerifier
    return lambda node: LightVerifier(node, root, transport=peer)


def cmd_client_run(args: argparse.Namespace) -> int:
    from deltachain.crypto.keys import DEV_CHAIN_TYPES, refuse_well_known_key

    from .fleet import Fleet, FleetConfig, local_fleet, write_csv, write_plot
    from .rpc import JsonRpc

    try:
        config = FleetConfig(
            task=args.task,
            devices=args.devices,
            rounds=args.rounds,
            top_p=args.top_p,
            inner_steps=args.inner_steps,
            inner_lr=args.inner_lr,
            shots=args.shots,
            attack=args.attack,
            malicious=args.malicious if args.attack else 0.0,
            seed=args.seed,
            heldout=args.heldout,
            model=args.model,
            timeout=args.timeout,
        )
        config.hyper()
    except ValueError as exc:
        raise DeltachainError(str(exc)) from None
    if args.peer and (args.local or args.trust_node):
        raise DeltachainError(
            "--peer runs the light client over p2p; drop --local / --trust-node to use it"
        )
    peer: P2pTransport | None = None
    try:
        if args.local:
            fleet = local_fleet(
                config,
                semantics=args.semantics,
                eta=args.eta,
                trim_beta=args.trim_beta,
                out=sys.stdout,
                progress=sys.stderr,
            )
        else:
            root = trust_root(args.chain, args.genesis)
            node = JsonRpc(args.rpc)
            root.check_node(node, args.rpc)  # ForeignChain: one line, before any device starts
            if args.trust_node:
                print(
                    "warning: --trust-node: devices believe the finalized head the node claims "
                    "(a lying node can feed them any model); drop it to verify finality",
                    file=sys.stderr,
                )
            downloads: Caller | None = None
            if args.peer:
                from .peer import PeerCaller, connect_peer

                peer = connect_peer(args.peer, root.genesis_hash)
                downloads = PeerCaller(peer)
            chain_type = str(node.call("system_chainType"))
            admin_spec = args.admin_key or ("//alice" if chain_type in DEV_CHAIN_TYPES else None)
            admin = None if admin_spec is None else _admin_key(admin_spec)
            if admin is not None and admin_spec is not None:
                refuse_well_known_key(admin, admin_spec, chain_type, "admin")
            fleet = Fleet(
                node,
                config,
                admin=admin,
                verifier=_verifier(args, root, peer),
                downloads=downloads,
            )
        result = fleet.run()
    finally:
        if peer is not None:
            peer.close()  # also on errors and Ctrl-C: ends the libp2p thread
    verified = sum(d.verified_downloads for d in fleet.devices + fleet.heldout)
    first, last = result.initial, result.final
    anchor = (
        "the node-claimed head (--trust-node: NOT checked against finality)"
        if args.trust_node
        else "the in-process chain's head"
        if args.local
        else "a finalized state root the light client proved by justifications"
        + (f" over p2p from {args.peer}" if args.peer else "")
    )
    print(
        f"held-out {result.metric}: {first:.4f} → {last:.4f} over {config.rounds} rounds; "
        f"{verified} downloads, every one verified (chunk Merkle proofs + record trie proof "
        f"to {anchor})"
    )
    if args.csv:
        write_csv(result, Path(args.csv))
        print(f"wrote {args.csv}")
    if args.plot:
        write_plot([(f"top-{config.top_p:.0%}", result)], Path(args.plot))
        print(f"wrote {args.plot}")
    return 0
