"""What issue 12's RPC attacks do to a dev node now: slow bodies, an idle flood, foreign pages.

Starts ``deltachain node --dev``-like single validator on loopback with the default RPC limits
(``--idle`` sets ``--rpc-idle-timeout``; default 30 s, the node default), then:

* 100 POSTs from 127.0.0.3 that never finish their body: an honest caller's status and
  latency meanwhile, and how long until the node drops them;
* N idle TCP connections from 127.0.0.2 (default 3000): how many are held, refused at once,
  the honest caller meanwhile, and how long until the held ones are closed;
* a cross-origin ``text/plain`` POST of ``system_addLogFilter``, 1,000-deep JSON, a ``NaN``
  id, ``chain_getBlockHash(2^63)``.

Run: ``.venv/bin/python benchmarks/bench_rpc_abuse.py [--idle 30] [--flood 3000]`` (about a minute).
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from deltachain.primitives.chainspec import dev_chain_spec

CLI = [sys.executable, "-m", "deltachain.node.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(
        url, data=body, headers=headers or {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def honest(url: str, n: int = 10) -> tuple[list[int], float]:
    """Statuses and median latency (ms) of n system_name calls."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "system_name", "params": []}).encode()
    statuses, times = [], []
    for _ in range(n):
        start = time.perf_counter()
        statuses.append(post(url, body)[0])
        times.append((time.perf_counter() - start) * 1000)
    return statuses, statuses and statistics.median(times)


def connect(source: str, port: int) -> socket.socket:
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    return s


def readable(socks: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets with data or EOF waiting (epoll: fds past 1024 are fine)."""
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        return [key.fileobj for key, _ in sel.select(timeout)]  # type: ignore[misc]


def wait_closed(socks: list[socket.socket], limit: float) -> float:
    """Seconds until the node closed every socket (EOF or reset), at most ``limit``."""
    start = time.monotonic()
    open_ = set(socks)
    while open_ and time.monotonic() - start < limit:
        for s in readable(list(open_), 0.2):
            try:
                if not s.recv(65536):
                    open_.discard(s)
            except OSError:
                open_.discard(s)
    return time.monotonic() - start if not open_ else float("inf")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--idle", type=float, default=30.0, help="--rpc-idle-timeout for the run")
    parser.add_argument("--flood", type=int, default=3000, help="idle connections to open")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.flood + 512)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="rpc-abuse-"))
    spec = tmp / "spec.json"
    spec.write_text(json.dumps(dev_chain_spec(slot_ms=500).to_json()))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "node.log").open("w")
    node = subprocess.Popen(
        [
            *CLI,
            *("node", "--chain", str(spec), "--key", "//alice", "--validator"),
            *("--base-path", str(tmp / "db"), "--rpc-port", str(port), "--no-prometheus"),
            *("--rpc-idle-timeout", str(args.idle)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 120
        while "authored #1 " not in (tmp / "node.log").read_text():
            if time.monotonic() > deadline or node.poll() is not None:
                print((tmp / "node.log").read_text())
                return 1
            time.sleep(0.2)
        print(f"baseline: honest calls {honest(url)}")

        slow = []
        for _ in range(100):
            s = connect("127.0.0.3", port)
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            slow.append(s)
        statuses, ms = honest(url)
        print(
            f"100 unfinished bodies: honest calls during {sorted(set(statuses))} median {ms:.1f} ms"
        )
        print(f"  dropped by the node after {wait_closed(slow, 30):.1f} s (--rpc-body-timeout 5)")
        for s in slow:
            s.close()

        refused = 0
        started = time.monotonic()
        for _ in range(args.flood):
            try:
                held.append(connect("127.0.0.2", port))
            except OSError:
                refused += 1
        statuses, ms = honest(url)
        time.sleep(0.5)
        refused_now = readable(held, 0)
        print(
            f"{args.flood} idle connections in {time.monotonic() - started:.1f} s: "
            f"{len(held) - len(refused_now)} held, {len(refused_now) + refused} refused at once; "
            f"honest calls during {sorted(set(statuses))} median {ms:.1f} ms"
        )
        still = [s for s in held if s not in set(refused_now)]
        print(
            f"  held ones closed after {wait_closed(still, args.idle + 30):.1f} s "
            f"(--rpc-idle-timeout {args.idle})"
        )
        print(f"after: honest calls {honest(url)}")

        evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
        body = b'{"jsonrpc":"2.0","id":1,"method":"system_addLogFilter","params":["debug"]}'
        print(f"cross-origin text/plain system_addLogFilter: HTTP {post(url, body, evil)[0]}")
        deep = b'{"jsonrpc":"2.0","id":1,"method":"system_name","params":' + b"[" * 1000
        deep += b"]" * 1000 + b"}"
        print(f"1000-deep JSON: {post(url, deep)}")
        nan_id = b'{"jsonrpc":"2.0","id":NaN,"method":"system_name"}'
        print(f"NaN id: {post(url, nan_id)}")
        big = json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "chain_getBlockHash", "params": [2**63]}
        )
        print(f"chain_getBlockHash(2^63): {post(url, big.encode())}")
        tracebacks = (tmp / "node.log").read_text().count("Traceback")
        print(f"tracebacks in the node log: {tracebacks}")
        return 0
    finally:
        for s in held:
            s.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
