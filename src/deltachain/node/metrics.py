"""Prometheus metrics in the text exposition format (0.0.4), written by hand, served by aiohttp.

Counters and histograms are updated where things happen (block import, RPC submission, gossip);
gauges that mirror chain state (heights, pool size, peers) are refreshed at scrape time by a
callback, so a scrape always sees the current value. Every metric is thread-safe: RPC handlers
update counters on the chain thread, the service on the event loop thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from deltachain import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DEFAULT_PORT = 9615

LabelValues = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: Sequence[str]) -> LabelValues:
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {tuple(labels)}")
        return tuple(str(v) for v in labels)

    def samples(self) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class _Scalar(Metric):
    """One number per label set (counters and gauges)."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelValues, float] = {} if labels else {(): 0.0}

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Counter(_Scalar):
    """Only goes up. ``inc(1, "StaleNonce")`` for a labelled counter."""

    kind = "counter"

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter cannot go down")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount


class Gauge(_Scalar):
    kind = "gauge"

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(Metric):
    """Cumulative buckets (``le``), ``_sum`` and ``_count`` per label set."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        buckets: Sequence[float],
        labels: Sequence[str] = (),
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[LabelValues, list[float]] = {}
        if not labels:
            self._series[()] = [0.0] * (len(self.buckets) + 2)

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            series = self._series.setdefault(key, [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[i] += 1
            series[-2] += value  # sum
            series[-1] += 1  # count

    def count(self, *labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return 0 if series is None else int(series[-1])

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        lines = []
        for key, series in items:
            for bound, count in zip(self.buckets, series, strict=False):
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {count:.0f}")
            inf = 'le="+Inf"'
            lines.append(
                f"{self.name}_bucket{_labels(self.label_names, key, inf)} {series[-1]:.0f}"
            )
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_number(series[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {series[-1]:.0f}")
        return lines


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def add(self, metric: Metric) -> Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help_text, labels)
        self.add(metric)
        return metric

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help_text, labels)
        self.add(metric)
        return metric

    def histogram(
        self, name: str, help_text: str, buckets: Sequence[float], labels: Sequence[str] = ()
    ) -> Histogram:
        metric = Histogram(name, help_text, buckets, labels)
        self.add(metric)
        return metric

    def render(self) -> str:
        return "".join(m.render() for m in self._metrics.values())


TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class NodeMetrics:
    """The node's metrics (names are documented in docs/rpc.md; dashboards depend on them)."""

    def __init__(self, chain_id: str = "") -> None:
        r = self.registry = Registry()
        self.build_info = r.gauge(
            "deltachain_build_info", "Node version and chain (always 1)", ("version", "chain")
        )
        self.build_info.set(1, __version__, chain_id)
        self.block_height = r.gauge(
            "deltachain_block_height", "Block height of the best and finalized block", ("status",)
        )
        self.peers = r.gauge("deltachain_peers_count", "Connected peers")
        self.ready_txs = r.gauge(
            "deltachain_ready_transactions_number", "Transactions in the ready queue of the pool"
        )
        self.future_txs = r.gauge(
            "deltachain_future_transactions_number",
            "Transactions in the future queue of the pool (waiting for a nonce gap to fill)",
        )
        self.blocks_authored = r.counter(
            "deltachain_blocks_authored_total", "Blocks this node authored"
        )
        self.blocks_imported = r.counter(
            "deltachain_blocks_imported_total", "Blocks imported from peers (gossip and sync)"
        )
        self.import_seconds = r.histogram(
            "deltachain_block_import_seconds",
            "Time to verify, execute and persist a block (origin: own = authored, network)",
            TIME_BUCKETS,
            ("origin",),
        )
        self.aggregation_seconds = r.histogram(
            "deltachain_aggregation_seconds",
            "Time to aggregate a round's deltas and apply the update (one sample per round)",
            TIME_BUCKETS,
        )
        self.rounds_closed = r.counter(
            "deltachain_rounds_closed_total", "Training rounds closed", ("model",)
        )
        self.rejected_txs = r.counter(
            "deltachain_rejected_transactions_total",
            "Transactions refused at submission (RPC or gossip), by exception class",
            ("reason",),
        )
        self.rpc_calls = r.counter(
            "deltachain_rpc_calls_total",
            "JSON-RPC calls by method (known methods only)",
            ("method",),
        )
        self.rpc_connections = r.gauge(
            "deltachain_rpc_connections",
            "Open RPC connections (WebSocket sessions and in-flight HTTP requests)",
        )
        self.rpc_subscriptions = r.gauge(
            "deltachain_rpc_subscriptions", "Active RPC subscriptions over all connections"
        )

    def render(self) -> str:
        return self.registry.render()


Refresh = Callable[[], Awaitable[None]]


class MetricsServer:
    """``GET /metrics``: refresh the state gauges, then render."""

    def __init__(self, metrics: NodeMetrics, refresh: Refresh | None = None) -> None:
        self.metrics = metrics
        self.refresh = refresh

    async def handle(self, request: web.Request) -> web.Response:
        if self.refresh is not None:
            await self.refresh()
        return web.Response(
            body=self.metrics.render().encode(), headers={"Content-Type": CONTENT_TYPE}
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.handle)
        return app
