"""`/metrics` on `keyshift serve` and `keyshift worker --metrics-port`: the Prometheus
text format, parsed the way Prometheus parses it, and counters that move by what one
rotation did."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import Api
from tests.api.test_api import _final
from tests.helpers import write_estate
from tests.servers import free_port

pytestmark = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _parse(text: str) -> Samples:
    """Every sample by (name, sorted labels), as Prometheus's own parser reads them."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape(api: Api, role: str | None = "viewer") -> Samples:
    response = api.call("GET", "/metrics", role=role)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return _parse(response.text)


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_by_what_one_rotation_did(api: Api, tmp_path: Path) -> None:
    api.call("POST", "/v1/estate/apply", json=json.loads(write_estate(tmp_path).read_text()))
    before = _scrape(api)
    assert _value(before, "keyshift_credentials", lifecycle="Never Rotated") == 1

    started = api.call("POST", "/v1/credentials/api-key/rotations", role="rotator", json={})
    assert api.wait_for(started.json()["rotation_id"], _final)["state"] == "completed"
    # The server hands the outbox over once the run has ended: a moment after `completed`.
    deadline = time.monotonic() + 30
    after = _scrape(api)
    while _value(after, "keyshift_notifications_pending") and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _scrape(api)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("keyshift_rotations_finished_total", state="completed") == 1
    assert moved("keyshift_rotations_finished_total", state="failed") == 0
    # Two file actions, one reload command: each step observed once, by kind.
    steps = "keyshift_step_duration_seconds_count"
    assert moved(steps, kind="publishing:file", outcome="succeeded") == 2
    assert moved(steps, kind="reloading:command", outcome="succeeded") == 1
    assert moved(steps, kind="creating", outcome="succeeded") == 1
    assert _value(after, "keyshift_credentials", lifecycle="Active") == 1
    assert _value(after, "keyshift_credentials", lifecycle="Never Rotated") == 0
    assert _value(after, "keyshift_credential_expiry_days_min") in (89, 90)  # max_lifetime 90d
    assert _value(after, "keyshift_notifications_pending") == 0, "no route: sent nowhere"
    assert _value(after, "keyshift_notifications_dead") == 0


def test_metrics_need_a_token(api: Api) -> None:
    assert api.call("GET", "/metrics", role=None).status_code == 401


def test_the_worker_serves_metrics_on_its_port(ks_env: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    argv = ["worker", "--interval", "1h", "--metrics-port", str(port)]
    log = tmp_path / "worker.log"
    with log.open("w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "keyshift.cli", *argv],
            env={**os.environ, **ks_env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                    break
                except httpx.TransportError:
                    assert worker.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, "the worker never served /metrics"
                    time.sleep(0.2)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    samples = _parse(answer.text)
    assert ("keyshift_notifications_dead", ()) in samples
    assert any(name == "keyshift_credentials" for name, _ in samples)
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log.read_text()
