"""Pacing calls to an issuer under its documented limits, for every rotation at once.

Each issuer connection (an `entra` integration: one app in one tenant) has two budgets,
one for writes and one for reads (sync, paging), each a token bucket with a `rate`
(requests per second) and a `burst`. A call takes a token first and waits while there
is none. The budgets are shared by every rotation a worker runs, whatever its thread:
that is what keeps a fleet under the limit instead of each rotation on its own.

A 429 or 503 answer pauses the bucket for its `Retry-After` (one second without one)
for every caller, and halves the rate it refills at (multiplicative decrease, not below
a twentieth of the limit); each call that then succeeds gives back a fiftieth of the
limit (additive increase), up to the limit again.

Consumers have slots instead (`Slots`): at most `max_parallel` calls to one host agent at
once, whatever rotation or thread makes them, so that a fleet restarts a host's services
a few at a time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

__all__ = ["Bucket", "Budget", "Pacer", "Rate", "Slots", "Snapshot"]

_MIN_FRACTION = 0.05
_INCREASE_FRACTION = 0.02
_DEFAULT_PAUSE = 1.0


@dataclass(frozen=True)
class Rate:
    """A budget: `per_second` requests on average, up to `burst` at once."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate needs per_second > 0 and burst >= 1")


@dataclass(frozen=True)
class Snapshot:
    """A bucket's state, as `worker` output and `/metrics` show it."""

    name: str
    limit: float
    rate: float
    """The rate it refills at now (below `limit` after throttling)."""
    tokens: float
    paused_for: float
    """Seconds until a pause for Retry-After ends (0 when not paused)."""
    waits: int
    """Calls that had to wait for a token so far."""
    throttled: int
    """429 and 503 answers so far."""


class Bucket:
    """One token bucket, safe to share between threads and event loops."""

    def __init__(
        self, name: str, limit: Rate, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self.limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._rate = limit.per_second
        self._tokens = float(limit.burst)
        self._stamp = clock()
        self._paused_until = 0.0
        self._waits = 0
        self._throttled = 0

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.limit.burst), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def try_take(self) -> float:
        """Take a token if one is there (0.0), else how long to wait before trying again."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            if now < self._paused_until:
                return self._paused_until - now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / self._rate

    async def take(self, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> float:
        """Wait for a token and take it; the seconds waited."""
        waited = 0.0
        while (wait := self.try_take()) > 0:
            if waited == 0:
                with self._lock:
                    self._waits += 1
            waited += wait
            await sleep(wait)
        return waited

    def throttled(self, retry_after: float | None) -> None:
        """The issuer answered 429 or 503: pause every caller and halve the rate."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            pause = retry_after if retry_after is not None and retry_after > 0 else _DEFAULT_PAUSE
            self._paused_until = max(self._paused_until, now + pause)
            self._rate = max(self.limit.per_second * _MIN_FRACTION, self._rate / 2)
            self._tokens = min(self._tokens, 0.0)
            self._throttled += 1

    def succeeded(self) -> None:
        """A call went through: creep back towards the limit."""
        with self._lock:
            if self._rate < self.limit.per_second:
                self._refill(self._clock())
                self._rate = min(
                    self.limit.per_second, self._rate + self.limit.per_second * _INCREASE_FRACTION
                )

    def snapshot(self) -> Snapshot:
        with self._lock:
            now = self._clock()
            self._refill(now)
            return Snapshot(
                self.name,
                self.limit.per_second,
                self._rate,
                self._tokens,
                max(0.0, self._paused_until - now),
                self._waits,
                self._throttled,
            )


@dataclass(frozen=True)
class Budget:
    """An issuer connection's two buckets: one for writes, one for reads."""

    writes: Bucket
    reads: Bucket

    def of(self, method: str) -> Bucket:
        """The bucket an HTTP request of `method` takes its token from."""
        return self.reads if method in ("GET", "HEAD") else self.writes


class Slots:
    """At most `limit` calls at once to one consumer host, across threads and event
    loops: a caller waits (without blocking its loop) for a slot to come free."""

    _POLL_S = 0.01

    def __init__(self, name: str, limit: int) -> None:
        if limit < 1:
            raise ValueError("a host needs at least one slot")
        self.name = name
        self.limit = limit
        self._lock = threading.Lock()
        self._taken = 0

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._taken

    def _try_take(self) -> bool:
        with self._lock:
            if self._taken >= self.limit:
                return False
            self._taken += 1
            return True

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """One slot for the duration of the block; given back however it ends."""
        # Polled: an asyncio.Event belongs to one loop, and the callers run on their own.
        while not self._try_take():  # noqa: ASYNC110
            await asyncio.sleep(self._POLL_S)  # real time: the host is busy for real
        try:
            yield
        finally:
            with self._lock:
                self._taken -= 1


class Pacer:
    """The buckets of one worker (or one command), by name, made on first use."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, Bucket] = {}
        self._slots: dict[str, Slots] = {}

    def bucket(self, name: str, limit: Rate) -> Bucket:
        """The bucket `name`, made with `limit` the first time it is asked for (a later
        apply that changes the limit takes effect in the next worker)."""
        with self._lock:
            found = self._buckets.get(name)
            if found is None:
                found = self._buckets[name] = Bucket(name, limit, clock=self._clock)
            return found

    def slots(self, name: str, limit: int) -> Slots:
        """The slots of the consumer host `name`, made with `limit` the first time."""
        with self._lock:
            found = self._slots.get(name)
            if found is None:
                found = self._slots[name] = Slots(name, limit)
            return found

    def budget(self, name: str, writes: Rate, reads: Rate) -> Budget:
        """The write and read buckets of the connection `name`."""
        return Budget(self.bucket(f"{name}:writes", writes), self.bucket(f"{name}:reads", reads))

    def snapshots(self) -> list[Snapshot]:
        with self._lock:
            buckets = list(self._buckets.values())
        return sorted((b.snapshot() for b in buckets), key=lambda s: s.name)

    def paused(self) -> int:
        """How many buckets are paused for a Retry-After right now."""
        return sum(1 for s in self.snapshots() if s.paused_for > 0)
