"""The engine: the rotation state machine runner, its plans, leases and fault points."""

from __future__ import annotations

from keyshift.engine.engine import Engine
from keyshift.engine.journal import StepEvent
from keyshift.engine.plan import Plan, PlannedAction, build_plan

__all__ = ["Engine", "Plan", "PlannedAction", "StepEvent", "build_plan"]
