"""The engine's event seam: every state change and step, in order, told inside the change's
transaction and after its commit, never for a change that rolled back, never with a value."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from keyshift.domain.states import RotationState, StepStatus
from keyshift.engine.engine import Engine
from keyshift.engine.events import EngineEvent, Subscriber
from keyshift.service.estate import apply_estate, load_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.helpers import rotations_of, steps, value_of, versions, write_estate


class Recorder(Subscriber):
    def __init__(self) -> None:
        self.during: list[EngineEvent] = []
        self.committed: list[EngineEvent] = []

    def in_transaction(self, s: Session, event: EngineEvent) -> None:
        assert s.in_transaction(), "told inside the change's transaction"
        self.during.append(event)

    def after_commit(self, event: EngineEvent) -> None:
        self.committed.append(event)


class FailsAt(Subscriber):
    """An in-transaction subscriber whose write fails when `step` ends."""

    def __init__(self, step: str) -> None:
        self.step = step

    def in_transaction(self, s: Session, event: EngineEvent) -> None:
        if event.kind == "step.ended" and event.step == self.step:
            raise RuntimeError("the outbox insert failed")


def _run(store: Store, clock: FakeClock, *subscribers: Subscriber) -> tuple[str, RotationState]:
    engine = Engine(store, actor="test", context=clock.context(), subscribers=subscribers)
    rotation_id = engine.request("api-key", requested_by="test", grace=timedelta(0))
    return rotation_id, asyncio.run(engine.run(rotation_id))


def test_a_subscriber_hears_every_state_change_and_step_in_order(
    store: Store, tmp_path: Path
) -> None:
    apply_estate(store, load_estate(write_estate(tmp_path)), actor="test")
    recorder = Recorder()
    rotation_id, state = _run(store, FakeClock(), recorder)

    assert state == RotationState.COMPLETED
    assert recorder.committed == recorder.during
    changes = [e for e in recorder.committed if e.kind == "rotation.state"]
    assert [(e.previous, e.state) for e in changes[:3]] == [
        (None, RotationState.REQUESTED),
        (RotationState.REQUESTED, RotationState.VALIDATED),
        (RotationState.VALIDATED, RotationState.PREFLIGHTED),
    ]
    assert changes[-1].state == RotationState.COMPLETED
    assert [e.state for e in changes] == list(dict.fromkeys(e.state for e in changes))
    ended = [e.step for e in recorder.committed if e.kind == "step.ended"]
    assert ended == [s.name for s in steps(store, rotation_id)]
    started = [e for e in recorder.committed if e.kind == "step.started"]
    assert all(e.status == StepStatus.RUNNING for e in started)
    assert {e.rotation_id for e in recorder.committed} == {rotation_id}
    assert {e.credential for e in recorder.committed} == {"api-key"}
    [version] = versions(store, "api-key")
    assert value_of(store, version) not in repr(recorder.committed), "no event carries a value"


def test_a_change_whose_transaction_rolls_back_is_never_told_after_commit(
    store: Store, tmp_path: Path
) -> None:
    apply_estate(store, load_estate(write_estate(tmp_path)), actor="test")
    recorder = Recorder()
    clock = FakeClock()
    with pytest.raises(RuntimeError, match="outbox"):
        _run(store, clock, recorder, FailsAt("publishing:10:file"))

    told = [(e.kind, e.step) for e in recorder.committed]
    assert ("step.started", "publishing:10:file") in told
    assert ("step.ended", "publishing:10:file") not in told, "its close rolled back"
    [rotation] = rotations_of(store, "api-key")
    [publish] = [s for s in steps(store, rotation.id) if s.name == "publishing:10:file"]
    assert publish.status == StepStatus.RUNNING.value, "the journal does not say it ended"

    clock.advance(timedelta(minutes=10))  # the stopped run's lease runs out
    engine = Engine(store, actor="test", context=clock.context(), subscribers=[recorder])
    assert asyncio.run(engine.run(rotation.id)) == RotationState.COMPLETED
    ended = [(e.step, e.attempt) for e in recorder.committed if e.kind == "step.ended"]
    assert [a for step, a in ended if step == "publishing:10:file"] == [2], "the rerun only"
    attempts = [s for s in steps(store, rotation.id) if s.name == "publishing:10:file"]
    assert [(s.attempt, s.status) for s in attempts] == [(1, "failed"), (2, "succeeded")]
