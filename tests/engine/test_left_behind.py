"""Two safety rules of the engine: an old version is not revoked while a consumer that
failed to switch (`on_failure: continue`) still holds it, and a server asking to wait
longer than a step may wait fails the attempt instead of holding the run for hours."""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from keyshift.domain.states import RotationState
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.doubles.receiver import Answer, Receiver
from tests.helpers import json_value, rotations_of, versions, write_estate


def _apply(store: Store, path: Path) -> None:
    apply_estate(store, load_estate(path), actor="test")


def _rotate(store: Store, clock: FakeClock) -> RotationState:
    return asyncio.run(rotations.rotate(store, "api-key", actor="test", context=clock.context()))


def _file(tmp: Path, order: int, path: Path, on_failure: str = "abort") -> dict[str, Any]:
    return {
        "type": "file",
        "order": order,
        "on_failure": on_failure,
        "config": {"path": str(path), "key": "Api:Key", "file_format": "json"},
    }


def test_the_old_version_stays_valid_while_a_consumer_never_switched(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    app = tmp_path / "app.json"
    reload_fails = {
        "type": "command",
        "order": 30,
        "on_failure": "continue",
        "config": {"argv": [sys.executable, "-c", "raise SystemExit(1)"]},
    }
    _apply(store, write_estate(tmp_path, actions=[_file(tmp_path, 10, app), reload_fails]))
    assert _rotate(store, clock)[1] == RotationState.NEEDS_ATTENTION  # a first version
    first = json_value(app)

    _, state = _rotate(store, clock)
    assert state == RotationState.GRACE
    clock.advance(timedelta(hours=2))
    [(_, _, after)] = asyncio.run(rotations.resume(store, actor="worker", context=clock.context()))

    assert after == RotationState.NEEDS_ATTENTION
    old, new = versions(store, "api-key")
    assert (old.status, new.status) == ("previous", "current"), "the old one is not revoked"
    assert old.revoked_at is None
    latest = rotations_of(store, "api-key")[-1]
    assert latest.error is not None
    assert "reloading:30:command did not take the new version" in latest.error
    assert json_value(app) != first, "the file consumer switched"


def test_a_retry_after_longer_than_a_step_may_wait_fails_the_attempt(
    store: Store, tmp_path: Path, receiver: Receiver
) -> None:
    clock = FakeClock()
    receiver.script = [Answer(429, {"Retry-After": "3600"})]
    hook = {
        "type": "webhook",
        "order": 50,
        "on_failure": "continue",
        "config": {"url": receiver.url, "retries": 0},
    }
    _apply(store, write_estate(tmp_path, actions=[_file(tmp_path, 10, tmp_path / "a.json"), hook]))

    _, state = _rotate(store, clock)

    assert state == RotationState.NEEDS_ATTENTION
    assert len(receiver.requests) == 1, "one attempt: no hour-long wait and no second try"
    assert all(wait < 3600 for wait in clock.sleeps)
