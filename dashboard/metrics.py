"""``/metrics``: the Prometheus text format through prometheus_client.

Gauges are read from the store (read-only) and the monitor's heartbeat.json at scrape time, so a
scrape costs a few indexed queries and nothing runs between scrapes. The bar→ack latency histogram
is fed from the ``order.placed`` frames of the stream (the OMS logs ``bar_to_ack_ms`` per order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from steadyhand.dashboard.book import read_book
from steadyhand.dashboard.views import Facts, actors_view, feed_view

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class StoreCollector(Collector):
    """The bot's counts and P&L, computed per scrape from a read-only connection."""

    def __init__(self, open_db: Callable[[], Any], facts: Callable[[], Facts]) -> None:
        self.open_db, self.facts = open_db, facts

    def collect(self) -> Iterator[Any]:
        db = self.open_db()
        if db is None:
            return
        facts = self.facts()
        tables = set(db.table_names())
        orders = GaugeMetricFamily("steadyhand_orders", "Orders in the journal, by status", labels=["status"])
        if "orders" in tables:
            for status, n in db.execute("SELECT status, count(*) FROM orders GROUP BY status"):
                orders.add_metric([status], n)
        yield orders
        fills = db.execute("SELECT count(*) FROM fills").fetchone()[0] if "fills" in tables else 0
        yield CounterMetricFamily("steadyhand_fills", "Fills journaled", value=fills)
        rejected = CounterMetricFamily("steadyhand_rejections", "Orders refused, by who refused them",
                                       labels=["by"])
        if "orders" in tables:
            rejected.add_metric(["broker"], db.execute("SELECT count(*) FROM orders WHERE status = 'rejected'")
                                .fetchone()[0])
        if "risk_decisions" in tables:  # pruned by retention: the days it keeps
            rejected.add_metric(["risk"], db.execute("SELECT count(*) FROM risk_decisions WHERE approved = 0")
                                .fetchone()[0])
        yield rejected
        book = read_book(db)
        for key, text in (("equity", "Equity (cash + positions at their last price)"), ("cash", "Cash"),
                          ("realized_pnl", "Realized P&L"), ("unrealized_pnl", "Unrealized P&L"),
                          ("day_pnl", "P&L since the session's first equity"),
                          ("gross_exposure", "Gross exposure")):
            if book[key] is not None:
                yield GaugeMetricFamily(f"steadyhand_{key}", text, value=book[key])
        restarts = CounterMetricFamily("steadyhand_actor_restarts", "Restarts per actor", labels=["actor"])
        up = GaugeMetricFamily("steadyhand_actor_up", "1 while the actor is alive", labels=["actor"])
        age = GaugeMetricFamily("steadyhand_heartbeat_age_seconds", "Wall seconds since the actor last answered "
                                "the heartbeat monitor", labels=["actor"])
        for name, actor in (actors_view(db, facts) if "actors" in tables else {}).items():
            restarts.add_metric([name], actor["restarts"])
            up.add_metric([name], 1 if actor["alive"] else 0)
            if actor["heartbeat_age_s"] is not None:
                age.add_metric([name], actor["heartbeat_age_s"])
        yield from (restarts, up, age)
        feed = feed_view(facts)
        if feed["age_s"] is not None:
            yield GaugeMetricFamily("steadyhand_feed_age_seconds", "Run-clock seconds since the last bar",
                                    value=feed["age_s"])
        yield GaugeMetricFamily("steadyhand_broker_circuit_open", "1 while the OMS's broker circuit is open",
                                value=1 if facts.circuit.get("open") else 0)
        state = _trading_state(db) if "control" in tables else "active"
        trading = GaugeMetricFamily("steadyhand_trading_state", "1 for the current trading state", labels=["state"])
        for name in ("active", "reducing", "halted"):
            trading.add_metric([name], 1 if state == name else 0)
        yield trading


def _trading_state(db: Any) -> str:
    row = db.execute("SELECT value FROM control WHERE key = 'trading_state'").fetchone()
    return row[0] if row else "active"


class Metrics:
    """The registry: the store collector plus the latency histogram the stream feeds."""

    def __init__(self, open_db: Callable[[], Any], facts: Callable[[], Facts]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(open_db, facts))
        self.bar_to_ack = Histogram("steadyhand_bar_to_ack_seconds", "From the bar's arrival to the broker's "
                                    "acknowledgement of the order it prompted", buckets=LATENCY_BUCKETS,
                                    registry=self.registry)

    def observe(self, frame: dict[str, Any]) -> None:
        if frame.get("stage") == "order.placed" and isinstance(frame.get("bar_to_ack_ms"), (int, float)):
            self.bar_to_ack.observe(frame["bar_to_ack_ms"] / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
