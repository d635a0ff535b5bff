"""Prometheus metrics that code anywhere in keyshift counts as things happen.

They live in their own registry (`EVENTS`), not the process-wide default, so that a
`/metrics` answer holds keyshift's own series and the store-derived gauges of
`service.metrics` beside them. Labels are kinds and states, never names of secrets or
values.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["EVENTS", "ROTATIONS_FINISHED", "STEP_SECONDS", "THROTTLED", "throttled"]

EVENTS: Final = CollectorRegistry(auto_describe=True)

ROTATIONS_FINISHED: Final = Counter(
    "keyshift_rotations_finished",
    "Rotations that reached a final state, by state.",
    ["state"],
    registry=EVENTS,
)
STEP_SECONDS: Final = Histogram(
    "keyshift_step_duration_seconds",
    "How long journaled steps took, by step kind (e.g. publishing:file) and outcome.",
    ["kind", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
    registry=EVENTS,
)
THROTTLED: Final = Counter(
    "keyshift_throttled_responses",
    "Answers asking keyshift to slow down (HTTP 429), by the system that sent them.",
    ["system"],
    registry=EVENTS,
)


def throttled(system: str) -> None:
    """Count one 429 from `system` (e.g. `graph`, `webhook`)."""
    THROTTLED.labels(system=system).inc()


def step_kind(step: str) -> str:
    """A journal step name without its order: `publishing:10:file` -> `publishing:file`,
    `rollback:publishing:10:file` -> `rollback:publishing:file`."""
    return ":".join(part for part in step.split(":") if not part.isdigit())
