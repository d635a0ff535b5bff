"""Rotations started through the API run in the background, one worker thread each.

Each runs in its own thread with its own event loop, so a slow step (a reload command,
a grace check) never stalls the API's request handling. When a run ends, what it
reported is delivered to the notification channels. The rotation is journaled and
leased like any other: if the process stops, `keyshift resume` or a worker continues it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import replace

import structlog

from keyshift.context import PluginContext
from keyshift.domain.states import RotationState
from keyshift.errors import KeyshiftError, LeaseHeld
from keyshift.service import notifications, rotations
from keyshift.service.estate import current_estate
from keyshift.store.store import Store

log = structlog.get_logger("keyshift.api")


class BackgroundRotations:
    """Runs rotations in the background and remembers which are still running."""

    def __init__(self, store: Store, context: PluginContext | None = None) -> None:
        self.store = store
        self.context = context
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: dict[str, str] = {}
        """Rotations to run once more when their current run ends, with who asked."""

    @property
    def running(self) -> list[str]:
        return sorted(self._tasks)

    @property
    def env(self) -> Mapping[str, str]:
        """Where `env:` references are read from: the injected context's environment, else
        the process's (a trigger's `secret_from`)."""
        return self.context.env if self.context is not None else os.environ

    def timeline(self, rotation_id: str) -> rotations.Timeline:
        """The rotation (by id or a unique prefix) with its steps; `running` also while
        this server has it queued or running."""
        # Queued here is read before the store: a run that ends between the two reads
        # then shows its end state, never a stale one.
        queued = set(self._tasks)
        found = rotations.rotation_timeline(self.store, rotation_id)
        if found.rotation.id in queued and not found.running:
            return replace(found, running=True)
        return found

    def start(self, rotation_id: str, *, actor: str) -> None:
        """Run the rotation as far as it goes now; returns at once. Call from the event loop.

        If it is running here already, it runs once more when that run ends: a run that
        read the approvals before a new decision was stored would otherwise stop at
        `awaiting_approval` with the rule met and nothing left to move it on."""
        if rotation_id in self._tasks:
            # A second run now would only wait on the first one's lease.
            self._again[rotation_id] = actor
            return
        task = asyncio.get_running_loop().create_task(self._run_until_settled(rotation_id, actor))
        self._tasks[rotation_id] = task

    async def _run_until_settled(self, rotation_id: str, actor: str) -> None:
        try:
            await self._run(rotation_id, actor)
            while rotation_id in self._again:
                await self._run(rotation_id, self._again.pop(rotation_id))
        finally:
            # Forgotten in the same step as the last look at `_again` (no await between):
            # a decision arriving after it starts a new run. A done-callback would run
            # later, leaving a window in which `start` saw a finished run as running and
            # the decision waited for the next worker scan.
            self._tasks.pop(rotation_id, None)

    async def _run(self, rotation_id: str, actor: str) -> None:
        def in_thread() -> RotationState:
            return asyncio.run(
                rotations.run(self.store, rotation_id, actor=actor, context=self.context)
            )

        try:
            state = await asyncio.to_thread(in_thread)
            log.info("rotation ran", rotation_id=rotation_id, state=state.value)
            await asyncio.to_thread(self._tell)
        except LeaseHeld:
            log.info("rotation held by another worker", rotation_id=rotation_id)
        except KeyshiftError as exc:
            log.warning("rotation stopped", rotation_id=rotation_id, error=str(exc))
        except Exception as exc:
            # The journal keeps the rotation resumable; the class alone is logged because a
            # library message could quote a value.
            log.error("rotation crashed", rotation_id=rotation_id, error=type(exc).__name__)

    def _tell(self) -> None:
        """Deliver what the run reported (the outbox), as the worker's scan would; a
        channel that is down is retried there, and never fails the rotation."""
        context = self.context or PluginContext()
        try:
            asyncio.run(
                notifications.dispatch(self.store, current_estate(self.store), context=context)
            )
        except KeyshiftError as exc:
            log.warning("notifications not dispatched", error=str(exc))

    async def drain(self, seconds: float) -> None:
        """Wait up to `seconds` for running rotations (at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks.values()), timeout=seconds)
