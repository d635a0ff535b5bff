"""The engine: the rotation state machine runner, its plans, leases and fault points.

The names below are imported when first named, so that importing one small module of
the engine (`keyshift.engine.freezes`, which `keyshift status` reads) does not load the
whole runner with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keyshift.registry import lazy_exports

if TYPE_CHECKING:
    from keyshift.engine.engine import Engine
    from keyshift.engine.journal import StepEvent
    from keyshift.engine.plan import Plan, PlannedAction, build_plan

__getattr__ = lazy_exports(
    __name__,
    {
        "Engine": "keyshift.engine.engine:Engine",
        "Plan": "keyshift.engine.plan:Plan",
        "PlannedAction": "keyshift.engine.plan:PlannedAction",
        "StepEvent": "keyshift.engine.journal:StepEvent",
        "build_plan": "keyshift.engine.plan:build_plan",
    },
)

__all__ = ["Engine", "Plan", "PlannedAction", "StepEvent", "build_plan"]
