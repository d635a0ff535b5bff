"""The wall clock, in UTC: the default `now` of the engine, the store and plugins."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
