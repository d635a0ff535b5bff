"""Use cases: apply and plan the estate, rotate, resume, schedule, rotate the master key."""

from __future__ import annotations

__all__: list[str] = []
