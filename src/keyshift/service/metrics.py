"""`/metrics`: keyshift's Prometheus exposition, for `keyshift serve` and
`keyshift worker --metrics-port`.

Two kinds of series:

- counted as things happen (`keyshift.metrics`): rotations finished by state, step
  durations by step kind, issuers' 429 answers;
- read from the store at each scrape (`StoreCollector`): credentials by lifecycle, the
  fewest days any current version has left, the notification outbox's depth and its
  dead letters.

No label carries a value or a secret's name beyond the credential counts' lifecycle.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from keyshift import metrics
from keyshift.domain.clock import utcnow
from keyshift.domain.states import Lifecycle
from keyshift.pacing import Pacer
from keyshift.service import rotations
from keyshift.store.models import NotificationDeliveryRow, NotificationRow
from keyshift.store.store import Store

__all__ = ["CONTENT_TYPE", "StoreCollector", "exposition", "registry_for"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    """Gauges read from the store when Prometheus scrapes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        rows = rotations.status_rows(self.store, now=utcnow())
        by_state = Tally(row.lifecycle.value for row in rows)
        credentials = GaugeMetricFamily(
            "keyshift_credentials", "Managed credentials by lifecycle state.", labels=["lifecycle"]
        )
        for state in Lifecycle:
            credentials.add_metric([state.value], by_state.get(state.value, 0))
        yield credentials
        left = [row.days_left for row in rows if row.days_left is not None]
        yield GaugeMetricFamily(
            "keyshift_credential_expiry_days_min",
            "The fewest days any managed credential's current version has left (NaN: none "
            "expires).",
            value=min(left) if left else float("nan"),
        )
        with self.store.transaction() as s:
            counts = dict(
                s.execute(
                    select(NotificationDeliveryRow.status, func.count()).group_by(
                        NotificationDeliveryRow.status
                    )
                ).all()
            )
            unrouted = s.execute(
                select(func.count()).where(NotificationRow.routed.is_(False))
            ).scalar_one()
        yield GaugeMetricFamily(
            "keyshift_notifications_pending",
            "Notification deliveries not yet delivered (and events not yet routed).",
            value=counts.get("pending", 0) + unrouted,
        )
        yield GaugeMetricFamily(
            "keyshift_notifications_dead",
            "Notification deliveries dead-lettered after their last try.",
            value=counts.get("dead", 0),
        )


class _Counted(Collector):
    """The series counted as things happen, from their own registry."""

    def collect(self) -> Iterator[Metric]:
        yield from metrics.EVENTS.collect()


class PacingCollector(Collector):
    """The issuers' budgets of one worker (`keyshift.pacing`), read at each scrape."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["bucket"])

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["bucket"])

        limit = gauge(
            "keyshift_pacing_limit_per_second", "The configured request rate of an issuer budget."
        )
        rate = gauge(
            "keyshift_pacing_rate_per_second",
            "The rate an issuer budget refills at now (below its limit after a 429).",
        )
        paused = gauge(
            "keyshift_pacing_paused_seconds",
            "Seconds until an issuer budget's pause for Retry-After ends.",
        )
        waits = counter("keyshift_pacing_waits", "Requests that waited for their issuer budget.")
        throttled = counter(
            "keyshift_pacing_throttled", "429 and 503 answers that paused an issuer budget."
        )
        for b in self.pacer.snapshots():
            limit.add_metric([b.name], b.limit)
            rate.add_metric([b.name], b.rate)
            paused.add_metric([b.name], b.paused_for)
            waits.add_metric([b.name], b.waits)
            throttled.add_metric([b.name], b.throttled)
        families: list[Metric] = [limit, rate, paused, waits, throttled]
        yield from families


def registry_for(store: Store, *, pacer: Pacer | None = None) -> CollectorRegistry:
    """A registry of every keyshift series, the store's gauges read from `store`, and
    with `pacer` (the worker's) its issuer budgets."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Counted())
    registry.register(StoreCollector(store))
    if pacer is not None:
        registry.register(PacingCollector(pacer))
    return registry


def exposition(store: Store) -> bytes:
    """The text format Prometheus scrapes."""
    return generate_latest(registry_for(store))
