"""Running many rotations at once: the worker's due credentials and unfinished rotations.

Each rotation runs on a thread of its own, with an event loop of its own, at most
`concurrency` at a time, in the order given (the scheduler gives the most urgent first).
The store is synchronous (SQLAlchemy sessions over SQLite or psycopg), so a rotation's
transaction blocks the thread that runs it; on its own thread that stalls only that
rotation, while the others go on awaiting their issuers and consumers. The connection
pool gives each thread its own connection; SQLite's writers queue on its busy timeout
(`BEGIN IMMEDIATE`), PostgreSQL's lock rows.

The other way, every rotation a task on one event loop, lets one rotation's store work
(a few milliseconds per transaction, some 40 per rotation) stall every other rotation's
awaits. `bench/fleet.py --tasks` measures that way beside this one; the README's
"Running a fleet" gives the figures.

Nothing here decides what runs: the caller hands over jobs and gets one `Outcome` per
job, told as each ends (`on_outcome`), in the order they end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import structlog

from keyshift.domain.states import RotationState
from keyshift.errors import KeyshiftError, LeaseHeld, NotClaimed, PolicyRefused

__all__ = ["Job", "Outcome", "Tally", "run_all"]

log = structlog.get_logger("keyshift.fleet")


@dataclass(frozen=True)
class Outcome:
    """How one job ended. Exactly one of `state`, `refused`, `skipped` and `error` tells
    it, besides `rotation_id` when a rotation was started."""

    credential: str
    rotation_id: str | None = None
    state: RotationState | None = None
    """The state the rotation reached (a final one, or one it rests in)."""
    refused: tuple[str, ...] = ()
    """Governance refused to start it: the reasons."""
    skipped: str | None = None
    """Not this worker's: another worker claimed it or holds its lease, or it is no
    longer due. Not a failure."""
    error: str | None = None
    """It could not be run (a bug, an unreachable store): the message."""

    @property
    def failed(self) -> bool:
        return self.error is not None or self.state in (
            RotationState.FAILED,
            RotationState.ROLLED_BACK,
            RotationState.NEEDS_ATTENTION,
        )


@dataclass(frozen=True)
class Job:
    """One rotation to run: `call` starts or continues it and answers (rotation id, state)."""

    credential: str
    call: Callable[[], Coroutine[Any, Any, tuple[str, RotationState]]]
    rotation_id: str | None = None
    """The rotation it continues, if it continues one."""


@dataclass
class Tally:
    """What one scan of the worker started and how each ended, counted as it goes.
    `changed` is called after every change (the CLI's progress line redraws there)."""

    due: int = 0
    waiting: int = 0
    """Due but outside their rotation window: they wait for it, holding up no other."""
    running: int = 0
    done: int = 0
    failed: int = 0
    refused: int = 0
    skipped: int = 0
    outcomes: list[Outcome] = field(default_factory=list)

    def begin(self) -> None:
        """A new scan: counts start again."""
        self.due = self.waiting = self.running = 0
        self.done = self.failed = self.refused = self.skipped = 0
        self.outcomes = []
        self.changed()

    def scheduled(self, due: int, waiting: int) -> None:
        self.due, self.waiting = due, waiting
        self.changed()

    def started(self, _job: Job) -> None:
        self.running += 1
        self.changed()

    def ended(self, outcome: Outcome) -> None:
        self.running = max(0, self.running - 1)
        self.outcomes.append(outcome)
        if outcome.failed:
            self.failed += 1
        elif outcome.refused:
            self.refused += 1
        elif outcome.skipped is not None:
            self.skipped += 1
        else:
            self.done += 1
        self.changed()

    def changed(self) -> None:
        """Called after each change; does nothing here."""


def _outcome(job: Job) -> Outcome:
    """Run the job on this thread's own event loop; how it ended."""
    try:
        rotation_id, state = asyncio.run(job.call())
    except PolicyRefused as exc:
        return Outcome(job.credential, job.rotation_id, refused=tuple(exc.reasons))
    except (NotClaimed, LeaseHeld) as exc:
        return Outcome(job.credential, job.rotation_id, skipped=str(exc))
    except KeyshiftError as exc:  # its messages name ids, never values
        log.error("rotation could not run", credential=job.credential, error=str(exc))
        return Outcome(job.credential, job.rotation_id, error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:  # one credential's failure must not stop the others
        # The class alone: a library's message could quote a value (as api/runner does).
        log.error("rotation crashed", credential=job.credential, error=type(exc).__name__)
        return Outcome(job.credential, job.rotation_id, error=type(exc).__name__)
    return Outcome(job.credential, rotation_id=rotation_id, state=state)


async def run_all(
    jobs: Sequence[Job],
    *,
    concurrency: int,
    on_start: Callable[[Job], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run the jobs, at most `concurrency` at once, starting them in the order given;
    their outcomes in the order they ended. `on_start` and `on_outcome` are called on
    the caller's event loop thread, never at once."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if not jobs:
        return []
    loop = asyncio.get_running_loop()

    def run(job: Job) -> Outcome:
        if on_start is not None:
            loop.call_soon_threadsafe(on_start, job)
        return _outcome(job)

    outcomes: list[Outcome] = []
    workers = min(concurrency, len(jobs))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keyshift-rotation") as pool:
        pending = [loop.run_in_executor(pool, run, job) for job in jobs]
        for finished in asyncio.as_completed(pending):
            outcome = await finished
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    return outcomes
