"""The engine's metrics subscriber: rotations finished by state, and step durations by
step kind, counted once each change committed (`keyshift.metrics`)."""

from __future__ import annotations

from keyshift import metrics
from keyshift.engine.events import EngineEvent, Subscriber

__all__ = ["Measure"]


class Measure(Subscriber):
    """Counts committed rotation ends and step ends."""

    def after_commit(self, event: EngineEvent) -> None:
        if event.kind == "rotation.state" and event.state.is_final:
            metrics.ROTATIONS_FINISHED.labels(state=event.state.value).inc()
        elif event.kind == "step.ended" and event.step and event.duration_s is not None:
            outcome = event.status.value if event.status else "unknown"
            metrics.STEP_SECONDS.labels(
                kind=metrics.step_kind(event.step), outcome=outcome
            ).observe(event.duration_s)
