"""Pacing: token buckets shared by every rotation of a worker, paused by 429s, and a
fleet of Entra rotations kept under Graph's write limit (the Graph double enforces one)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.states import RotationState
from keyshift.pacing import Bucket, Pacer, Rate
from keyshift.service import fleet, metrics, scheduler
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import ADMIN_ENV, ADMIN_SECRET
from tests.doubles.graph import GraphDouble
from tests.helpers import rotations_of


class Ticks:
    """A clock that moves only when a waiter sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_bucket_lets_a_burst_through_then_paces_at_its_rate() -> None:
    ticks = Ticks()
    bucket = Bucket("b", Rate(per_second=4, burst=2), clock=ticks)

    waited = [asyncio.run(bucket.take(ticks.sleep)) for _ in range(4)]

    assert waited == [0.0, 0.0, 0.25, 0.25]
    assert bucket.snapshot().waits == 2


def test_a_429_pauses_every_caller_for_its_retry_after_and_halves_the_rate() -> None:
    ticks = Ticks()
    bucket = Bucket("b", Rate(per_second=10, burst=10), clock=ticks)
    bucket.throttled(retry_after=3)

    snap = bucket.snapshot()
    assert (snap.paused_for, snap.rate, snap.throttled) == (3.0, 5.0, 1)
    assert bucket.try_take() == 3.0  # nobody goes before the pause ends
    asyncio.run(bucket.take(ticks.sleep))
    assert ticks.now >= 1003.0

    for _ in range(100):
        bucket.succeeded()
    assert bucket.snapshot().rate == 10.0, "back to the limit, never above it"


def test_the_rate_never_falls_below_a_twentieth_of_the_limit() -> None:
    bucket = Bucket("b", Rate(per_second=20, burst=1), clock=Ticks())
    for _ in range(20):
        bucket.throttled(retry_after=None)
    assert bucket.snapshot().rate == 1.0


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="per_second"):
        Rate(per_second=0, burst=1)


def test_one_app_has_one_budget_whatever_integration_or_context_asks() -> None:
    pacer = Pacer()
    context = PluginContext(pacer=pacer)
    settings: dict[str, Any] = {
        "tenant_id": "t",
        "client_id": "c",
        "auth": {"method": "client_secret", "secret_from": "env:X"},
    }
    one = EntraIntegration.model_validate(settings).budget(context)
    other = EntraIntegration.model_validate({**settings, "rate_limit": 5}).budget(context)
    assert one.writes is other.writes
    assert one.writes.limit == Rate(20, 20), "Graph's documented 3,000 writes per 150 s"
    assert one.of("GET") is one.reads
    assert one.of("POST") is one.writes


def test_a_context_made_on_a_fake_clock_paces_in_fake_time() -> None:
    clock = FakeClock()
    context = clock.context()
    bucket = context.pacing.bucket("b", Rate(per_second=1, burst=1))
    asyncio.run(bucket.take(context.sleep))
    asyncio.run(bucket.take(context.sleep))  # would spin, or wait a real second, otherwise
    assert clock.now() > FakeClock().now()


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_a_fleet_of_entra_rotations_stays_under_graphs_write_limit(
    graph: GraphDouble, ks_env: dict[str, str], store: Store, tmp_path: Path
) -> None:
    """Twelve rotations at once, each two Graph writes, through a double that answers
    writes beyond 10/s with 429; keyshift's budget of 5/s never meets the limit."""
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    graph.latency = 0.05
    graph.limit_writes(per_second=10, burst=10)
    apps = [graph.add_application(f"app-{i:02d}") for i in range(12)]
    estate = {
        "integrations": [
            {
                "name": "contoso",
                "type": "entra",
                **graph.integration(ADMIN_ENV),
                "rate_limit": 5,
                # No burst: two writes within 0.2 s must wait, however slowly a loaded
                # machine starts the twelve rotations.
                "burst": 1,
            }
        ],
        "credentials": [
            {
                "name": f"entra-{i:02d}",
                "owner": "team-fleet",
                "auto_rotate": True,
                "policy": {"grace_period": "0s"},
                "provider": {
                    "type": "entra_client_secret",
                    "integration": "contoso",
                    "app_id": app.app_id,
                },
                "actions": [],
            }
            for i, app in enumerate(apps)
        ],
    }
    apply_estate(store, parse_estate(estate), actor="test")
    tally = fleet.Tally()
    context = PluginContext(env=ks_env)

    asyncio.run(
        scheduler.worker_pass(store, actor="worker", context=context, concurrency=12, tally=tally)
    )

    assert (tally.done, tally.failed) == (12, 0), tally.outcomes
    for i in range(12):
        [rotation] = rotations_of(store, f"entra-{i:02d}")
        assert rotation.state == RotationState.COMPLETED.value
    assert graph.throttled_writes == 0
    writes = graph.accepted_writes
    assert writes >= 12, "at least each rotation's addPassword"
    [snapshot] = [s for s in context.pacing.snapshots() if s.name.endswith(":writes")]
    assert snapshot.waits > 0, "the budget held writes back"
    exposition = generate_latest(metrics.registry_for(store, pacer=context.pacing)).decode()
    assert f'keyshift_pacing_limit_per_second{{bucket="{snapshot.name}"}} 5.0' in exposition
    assert f'keyshift_pacing_waits_total{{bucket="{snapshot.name}"}}' in exposition


def test_slots_bound_the_calls_to_one_host_across_threads_and_loops() -> None:
    """`max_parallel`: rotations on threads of their own (as the fleet runs them), each
    with its own event loop, never hold more than the bound of one host's slots at once,
    and every one of them gets its turn."""
    pacer = Pacer()
    inside = peak = 0
    lock = threading.Lock()

    async def call() -> None:
        nonlocal inside, peak
        async with pacer.slots("agent:web-1", 2).hold():
            with lock:
                inside += 1
                peak = max(peak, inside)
            await asyncio.sleep(0.02)
            with lock:
                inside -= 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda _: asyncio.run(call()), range(16)))
    assert peak == 2
    assert inside == 0
    assert pacer.slots("agent:web-1", 2).in_use == 0


def test_slots_given_back_when_the_call_fails_or_is_cancelled() -> None:
    pacer = Pacer()
    slots = pacer.slots("agent:web-1", 1)

    async def failing() -> None:
        async with slots.hold():
            raise RuntimeError("agent refused")

    with pytest.raises(RuntimeError):
        asyncio.run(failing())

    async def cancelled() -> None:
        async with slots.hold():
            waiting = asyncio.ensure_future(slots.hold().__aenter__())
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting

    asyncio.run(cancelled())
    assert slots.in_use == 0
