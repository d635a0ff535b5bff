"""The agent targets through the engine: keyshift pushes file writes and reloads to a real
agent over TLS, the agent's allow-list bounds them, and legacy `agent_url` actions are
never sent a value."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyshift.context import PluginContext
from keyshift.domain.preflight import Readiness
from keyshift.domain.secret import Secret
from keyshift.domain.states import RotationState, StepStatus, VersionStatus
from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.engine.plugins import build_target
from keyshift.errors import EstateInvalid, PermanentError, TransientError
from keyshift.service import rotations
from keyshift.service.estate import EstateWarning, apply_estate, load_estate, parse_estate
from keyshift.service.impact import impact
from keyshift.store.store import Store
from keyshift.targets.agent import AgentIntegration
from keyshift.targets.base import Delivery, PublishRequest
from keyshift.testing import FakeClock
from tests.agent.harness import (
    AGENT_ID,
    AGENT_KEY,
    APP_POOL,
    KEY_ENV,
    UNIT,
    RunningAgent,
    running_agent,
)
from tests.conftest import run_subprocess
from tests.doubles.tls import TlsFiles, TlsServer
from tests.helpers import rotations_of, save_estate, steps, table_rows, value_of, versions

SHARED_EXAMPLE = Path("/work/shared/examples/estate.example.yaml")
ENV = {KEY_ENV: AGENT_KEY}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def agent(tmp_path: Path, tls: TlsFiles, clock: FakeClock) -> Iterator[RunningAgent]:
    # The agent shares the engine's clock, so signed timestamps agree.
    with running_agent(tmp_path, tls, now=lambda: clock.now().timestamp()) as running:
        yield running


def sync(path: str, order: int = 20, on_failure: str = "abort", **extra: Any) -> dict[str, Any]:
    return {
        "type": "agent_secret_sync",
        "order": order,
        "on_failure": on_failure,
        "agent_id": AGENT_ID,
        "config": {"target_path": path, "secret_key": "Entra:ClientSecret", "file_format": "json"},
        **extra,
    }


def recycle(order: int = 30, on_failure: str = "abort", **extra: Any) -> dict[str, Any]:
    return {
        "type": "iis_recycle",
        "order": order,
        "on_failure": on_failure,
        "agent_id": AGENT_ID,
        "config": {"app_pool": APP_POOL},
        **extra,
    }


def estate(
    actions: list[dict[str, Any]], integrations: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "integrations": integrations or [],
        "credentials": [
            {
                "name": "billing-secret",
                "owner": "team-billing",
                "policy": {"grace_period": "1h", "max_lifetime": "90d"},
                "provider": {"type": "random", "length": 32},
                "actions": actions,
            }
        ],
    }


def apply(store: Store, tmp: Path, doc: dict[str, Any]) -> list[EstateWarning]:
    warnings: list[EstateWarning] = []
    apply_estate(store, load_estate(save_estate(tmp, doc), warnings), actor="test")
    return warnings


def rotate(store: Store, clock: FakeClock) -> RotationState:
    _, state = asyncio.run(
        rotations.rotate(store, "billing-secret", actor="test", context=clock.context(ENV))
    )
    return state


def secret_in(path: Path) -> str | None:
    found: str | None = json.loads(path.read_text()).get("Entra", {}).get("ClientSecret")
    return found


def test_a_rotation_writes_the_file_through_the_agent_then_recycles_the_pool(
    store: Store, tmp_path: Path, agent: RunningAgent, clock: FakeClock
) -> None:
    settings = agent.allowed / "appsettings.json"
    settings.write_text(json.dumps({"Logging": {"LogLevel": "Warning"}}))
    apply(store, tmp_path, estate([sync(str(settings)), recycle()], [agent.integration()]))

    assert rotate(store, clock) == RotationState.COMPLETED
    [version] = versions(store, "billing-secret")
    value = value_of(store, version)
    assert secret_in(settings) == value
    assert json.loads(settings.read_text())["Logging"] == {"LogLevel": "Warning"}
    assert agent.calls() == [f"appcmd recycle apppool /apppool.name:{APP_POOL}"]
    [rotation] = rotations_of(store, "billing-secret")
    ran = [
        (s.name, s.status)
        for s in steps(store, rotation.id)
        if s.name.startswith(("publishing:", "reloading:"))
    ]
    assert ran == [
        ("publishing:20:agent_secret_sync", StepStatus.SUCCEEDED.value),
        ("reloading:30:iis_recycle", StepStatus.SUCCEEDED.value),
    ]
    publish = next(s for s in steps(store, rotation.id) if s.name.endswith("agent_secret_sync"))
    assert value not in json.dumps(publish.detail)
    assert publish.detail["agent"] == "billing-host"


def test_max_parallel_keeps_a_hosts_steps_to_its_bound_across_concurrent_rotations(
    store: Store, tmp_path: Path, agent: RunningAgent, clock: FakeClock
) -> None:
    """Four rotations at once (as a worker with concurrency 4 runs them, sharing one
    context) through one agent with `max_parallel: 1`: its recycles never overlap."""
    names = [f"billing-{i}" for i in range(4)]
    doc = estate([], [agent.integration(max_parallel=1)])
    doc["credentials"] = [
        {
            **doc["credentials"][0],
            "name": name,
            "actions": [sync(str(agent.allowed / f"{name}.json")), recycle()],
        }
        for name in names
    ]
    apply(store, tmp_path, doc)
    agent.slow_flag.write_text("0.3")
    shared = clock.context(ENV)

    def one(name: str) -> RotationState:
        _, state = asyncio.run(rotations.rotate(store, name, actor="test", context=shared))
        return state

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(one, names)) == [RotationState.COMPLETED] * 4
    timed = [line.split() for line in agent.calls() if line.startswith(("begin", "end"))]
    spans = [
        (float(begin[1]), float(end[1]))
        for begin, end in zip(timed[::2], timed[1::2], strict=True)
        if (begin[0], end[0]) == ("begin", "end")
    ]
    assert len(spans) == 4  # one recycle per rotation, each whole before the next began
    assert all(earlier[1] <= later[0] for earlier, later in pairwise(sorted(spans)))


def test_systemd_reload_runs_after_the_write(
    store: Store, tmp_path: Path, agent: RunningAgent, clock: FakeClock
) -> None:
    settings = agent.allowed / "billing.json"
    reload = {
        "type": "systemd_reload",
        "order": 30,
        "agent_id": "billing-host",  # an agent may be named by its integration's name too
        "config": {"unit": UNIT, "mode": "restart"},
    }
    apply(store, tmp_path, estate([sync(str(settings)), reload], [agent.integration()]))
    assert rotate(store, clock) == RotationState.COMPLETED
    assert secret_in(settings) == value_of(store, versions(store, "billing-secret")[0])
    assert agent.calls() == [f"systemctl restart {UNIT}"]


def test_an_abort_in_a_later_step_restores_the_file_through_the_agent(
    store: Store, tmp_path: Path, agent: RunningAgent, clock: FakeClock
) -> None:
    settings = agent.allowed / "appsettings.json"
    apply(store, tmp_path, estate([sync(str(settings)), recycle()], [agent.integration()]))
    assert rotate(store, clock) == RotationState.COMPLETED
    first = secret_in(settings)

    agent.fail_flag.touch()
    assert rotate(store, clock) == RotationState.ROLLED_BACK
    assert secret_in(settings) == first, "the agent wrote the previous value back"
    latest = rotations_of(store, "billing-secret")[-1]
    assert latest.error is not None
    assert "exit code 5" in latest.error
    assert "Cannot find APPPOOL object" in latest.error
    old, new = versions(store, "billing-secret")
    assert (old.status, new.status) == (VersionStatus.CURRENT.value, VersionStatus.DISABLED.value)


def test_a_path_outside_the_allow_list_fails_the_step_and_leaves_the_file(
    store: Store, tmp_path: Path, agent: RunningAgent, clock: FakeClock
) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text('{"Entra": {"ClientSecret": "untouched"}}')
    apply(store, tmp_path, estate([sync(str(outside))], [agent.integration()]))

    _, results = asyncio.run(
        rotations.preflight(store, "billing-secret", actor="test", context=clock.context(ENV))
    )
    row = dict(results)["publishing:20:agent_secret_sync"]
    assert row.readiness == Readiness.BLOCKED
    assert "outside the agent's allowed_paths" in row.reason

    assert rotate(store, clock) == RotationState.FAILED  # preflight blocks it
    assert secret_in(outside) == "untouched"


def test_preflight_is_blocked_when_the_agent_is_down(
    store: Store, tmp_path: Path, tls: TlsFiles, clock: FakeClock
) -> None:
    with running_agent(tmp_path, tls) as stopped:
        integration = stopped.integration()
        settings = stopped.allowed / "appsettings.json"
    apply(store, tmp_path, estate([sync(str(settings)), recycle()], [integration]))
    _, results = asyncio.run(
        rotations.preflight(store, "billing-secret", actor="test", context=clock.context(ENV))
    )
    rows = dict(results)
    for step in ("publishing:20:agent_secret_sync", "reloading:30:iis_recycle"):
        assert rows[step].readiness == Readiness.BLOCKED
        assert rows[step].transient
        assert "agent billing-host (https://127.0.0.1:" in rows[step].reason
        assert "unreachable" in rows[step].reason


def test_a_wrong_signing_key_blocks_preflight_and_writes_nothing(
    store: Store, tmp_path: Path, agent: RunningAgent, clock: FakeClock
) -> None:
    settings = agent.allowed / "appsettings.json"
    apply(store, tmp_path, estate([sync(str(settings))], [agent.integration()]))
    wrong = {KEY_ENV: "a-different-key-" + "9" * 32}
    _, results = asyncio.run(
        rotations.preflight(store, "billing-secret", actor="test", context=clock.context(wrong))
    )
    row = dict(results)["publishing:20:agent_secret_sync"]
    assert row.readiness == Readiness.BLOCKED
    assert "refused keyshift's signature (HTTP 401)" in row.reason
    assert not settings.exists()


def test_no_value_reaches_the_agents_answers_or_logs(
    store: Store,
    tmp_path: Path,
    agent: RunningAgent,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = agent.allowed / "appsettings.json"
    apply(store, tmp_path, estate([sync(str(settings)), recycle()], [agent.integration()]))
    assert rotate(store, clock) == RotationState.COMPLETED
    agent.fail_flag.touch()
    assert rotate(store, clock) == RotationState.ROLLED_BACK
    values = [value_of(store, v) for v in versions(store, "billing-secret")]
    captured = capsys.readouterr()
    logged = caplog.text + captured.out + captured.err
    for rotation in rotations_of(store, "billing-secret"):
        logged += str(rotation.error) + json.dumps([s.detail for s in steps(store, rotation.id)])
    for value in values:
        assert value not in logged


def test_impact_names_the_agent_and_where_it_acts(
    store: Store, tmp_path: Path, agent: RunningAgent
) -> None:
    settings = agent.allowed / "appsettings.json"
    apply(store, tmp_path, estate([sync(str(settings)), recycle()], [agent.integration()]))
    rows = impact(store, "billing-secret")
    sync_row, recycle_row = rows[1], rows[2]
    assert sync_row.runs_on == f"agent billing-host ({agent.url})"
    assert sync_row.where == {
        "path": str(settings),
        "format": "json",
        "keys": "Entra:ClientSecret",
    }
    assert recycle_row.where == {"app_pool": APP_POOL}


# --- validation ---------------------------------------------------------------------------


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(EstateInvalid) as caught:
        parse_estate(doc)
    return [str(p) for p in caught.value.problems]


INTEGRATION = {
    "name": "billing-host",
    "type": "agent",
    "agent_id": AGENT_ID,
    "url": "https://billing-host:8443",
    "key_from": "env:BILLING_AGENT_KEY",
}


def test_an_agent_id_without_a_declared_agent_is_accepted_as_manual_review(
    store: Store, tmp_path: Path, clock: FakeClock
) -> None:
    # As other tools write it: the estate names an agent keyshift has not enrolled. It is
    # accepted, and nothing is ever sent to an agent keyshift cannot authenticate.
    other = "22222222-2222-2222-2222-222222222222"
    app = tmp_path / "app.json"
    local = {
        "type": "file",
        "order": 10,
        "config": {"path": str(app), "key": "Entra:ClientSecret", "file_format": "json"},
    }
    warnings = apply(store, tmp_path, estate([local, sync("/srv/a.json", agent_id=other)]))
    assert [w.path for w in warnings] == ["credentials[0].actions[1].agent_id"]
    assert f"no agent integration with agent_id {other}" in warnings[0].message
    assert "manual review required" in warnings[0].message

    _, results = asyncio.run(
        rotations.preflight(store, "billing-secret", actor="test", context=clock.context(ENV))
    )
    row = dict(results)["publishing:20:agent_secret_sync"]
    assert row.readiness == Readiness.MANUAL_REVIEW
    assert f"agent_id {other} is not an enrolled agent" in row.reason
    assert impact(store, "billing-secret")[2].runs_on == (
        f"agent {other}: not enrolled (manual review)"
    )
    assert rotate(store, clock) == RotationState.NEEDS_ATTENTION
    latest = rotations_of(store, "billing-secret")[-1]
    step = next(s for s in steps(store, latest.id) if s.name.endswith("agent_secret_sync"))
    assert step.error is not None
    assert step.error.startswith(f"not delivered: agent_secret_sync names agent_id {other}")


def test_an_agent_id_on_a_type_that_runs_locally_is_refused() -> None:
    local = {
        "type": "file",
        "order": 10,
        "agent_id": AGENT_ID,
        "config": {"path": "/srv/a.json", "key": "A", "file_format": "json"},
    }
    [problem] = problems(estate([local], [INTEGRATION]))
    assert problem.startswith(
        "credentials[0].actions[0].agent_id: file runs where keyshift runs and takes no agent_id"
    )
    assert "agent_secret_sync, iis_recycle, systemd_reload" in problem


def test_an_agent_type_without_agent_id_is_refused() -> None:
    assert problems(estate([recycle(agent_id=None)], [INTEGRATION])) == [
        "credentials[0].actions[0].agent_id: is required: iis_recycle runs through a host "
        "agent; name an agent integration by its agent_id or name"
    ]


def test_an_agent_integration_needs_https_and_a_uuid() -> None:
    bad = {**INTEGRATION, "agent_id": "host-1", "url": "http://billing-host:8443"}
    found = problems(estate([], [bad]))
    assert any(p.startswith("integrations[0].agent_id: agent_id must be a UUID") for p in found)
    assert any(p.startswith("integrations[0].url: url must be https://") for p in found)
    with_path = {**INTEGRATION, "url": "https://billing-host:8443/agent"}
    assert problems(estate([], [with_path])) == [
        "integrations[0].url: url must be https://host:port, without a path or query"
    ]


def test_the_shared_examples_agent_actions_validate() -> None:
    shared = yaml.safe_load(SHARED_EXAMPLE.read_text(encoding="utf-8"))
    agent_actions = [
        action
        for cred in shared["credentials"]
        for action in cred.get("actions", [])
        if action.get("agent_id") is not None
    ]
    assert [a["type"] for a in agent_actions] == ["agent_secret_sync", "iis_recycle"]
    parsed = parse_estate(estate(agent_actions, [INTEGRATION]))
    sync_action, recycle_action = parsed.credentials[0].actions
    assert sync_action.config["target_path"] == r"C:\inetpub\billing\appsettings.json"
    assert recycle_action.config == {"app_pool": "BillingAppPool"}
    assert parsed.integration_names(parsed.credentials[0]) == ["billing-host"]


# --- legacy forms -------------------------------------------------------------------------


def test_a_legacy_site_name_is_renamed_to_app_pool_with_a_warning() -> None:
    legacy = recycle()
    legacy["config"] = {"site_name": APP_POOL}
    warnings: list[EstateWarning] = []
    parsed = parse_estate(estate([sync("/srv/a.json"), legacy], [INTEGRATION]), warnings)
    assert parsed.credentials[0].actions[1].config == {"app_pool": APP_POOL}
    assert [str(w) for w in warnings] == [
        "credentials[0].actions[1].config.site_name: renamed to app_pool"
    ]


def test_site_name_beside_app_pool_is_refused() -> None:
    both = recycle()
    both["config"] = {"site_name": "Old", "app_pool": APP_POOL}
    assert problems(estate([both], [INTEGRATION])) == [
        "credentials[0].actions[0].config.site_name: give app_pool only (site_name is its "
        "legacy name)"
    ]


def test_plan_and_apply_print_the_warnings(cli: Any, tmp_path: Path) -> None:
    legacy = recycle()
    legacy["config"] = {"site_name": APP_POOL}
    path = save_estate(tmp_path, estate([sync("/srv/a.json"), legacy], [INTEGRATION]))
    for command in ("plan", "apply"):
        result = cli(command, "-f", str(path))
        assert result.exit_code == 0, result.output
        assert "warning: credentials[0].actions[1].config.site_name: renamed to app_pool" in (
            result.output
        )


def test_an_agent_url_action_is_manual_review_and_never_sent_the_value(
    store: Store, tmp_path: Path, clock: FakeClock
) -> None:
    app = tmp_path / "app.json"
    local = {
        "type": "file",
        "order": 10,
        "config": {"path": str(app), "key": "Entra:ClientSecret", "file_format": "json"},
    }
    # A listener that would record anything sent to it: nothing may arrive.
    legacy = sync("/srv/billing/appsettings.json", agent_id=None)
    legacy["config"]["agent_url"] = "http://127.0.0.1:9/agent"
    warnings = apply(store, tmp_path, estate([local, legacy]))
    assert [w.path for w in warnings] == ["credentials[0].actions[1].config.agent_url"]
    assert "manual review required" in warnings[0].message

    _, results = asyncio.run(
        rotations.preflight(store, "billing-secret", actor="test", context=clock.context(ENV))
    )
    row = dict(results)["publishing:20:agent_secret_sync"]
    assert row.readiness == Readiness.MANUAL_REVIEW
    assert "http://127.0.0.1:9 is not an enrolled agent" in row.reason
    legacy_row = impact(store, "billing-secret")[2]
    assert legacy_row.runs_on == "no enrolled agent (manual review)"
    assert legacy_row.where["agent_url"] == "http://127.0.0.1:9"

    assert rotate(store, clock) == RotationState.NEEDS_ATTENTION  # first version
    assert rotate(store, clock) == RotationState.GRACE
    clock.advance(timedelta(hours=2))
    [(_, _, final)] = asyncio.run(
        rotations.resume(store, actor="worker", context=clock.context(ENV))
    )
    assert final == RotationState.NEEDS_ATTENTION
    old, new = versions(store, "billing-secret")
    assert (old.status, new.status) == ("previous", "current"), "the old version is kept"
    assert old.revoked_at is None
    assert secret_in(app) == value_of(store, new), "the enrolled consumers still switched"
    latest = rotations_of(store, "billing-secret")[-1]
    step = next(s for s in steps(store, latest.id) if s.name.endswith("agent_secret_sync"))
    assert step.status == StepStatus.FAILED.value
    assert step.error is not None
    assert step.error.startswith("not delivered: agent_secret_sync names agent_url")
    assert latest.error is not None
    assert "publishing:20:agent_secret_sync did not take the new version" in latest.error


# --- how agent answers map to step errors -------------------------------------------------


def _target_against(tls: TlsFiles, port: int) -> Any:
    integration = AgentIntegration.model_validate(
        {
            "agent_id": AGENT_ID,
            "url": f"https://127.0.0.1:{port}",
            "key_from": f"env:{KEY_ENV}",
            "ca_bundle": str(tls.ca_path),
        }
    )
    context = PluginContext(env=ENV, integrations={"billing-host": integration})
    return build_target("iis_recycle", {"app_pool": APP_POOL}, context, AGENT_ID)


def _delivery() -> PublishRequest:
    return PublishRequest(Delivery("c", "r", "v", "fp", Secret("never-sent-here")), None)


@pytest.mark.parametrize(
    ("case", "answer", "error", "message", "retry_after"),
    [
        ("a 503", (503, {}, b""), TransientError, "answered the iis_recycle", None),
        ("a 429 with Retry-After", (429, {"Retry-After": "7"}, b""), TransientError, "429", 7.0),
        ("a dropped connection", None, TransientError, "is unreachable", None),
        (
            "a 403 from the allow-list",
            (403, {}, b'{"error": "app pool BillingAppPool is not in the agent\'s iis.app_pools"}'),
            PermanentError,
            "(HTTP 403): app pool BillingAppPool is not in the agent's iis.app_pools",
            None,
        ),
        ("a 401", (401, {}, b""), PermanentError, "refused keyshift's signature", None),
    ],
)
def test_agent_answers_map_to_transient_and_permanent_errors(
    tls: TlsFiles,
    case: str,
    answer: tuple[int, dict[str, str], bytes] | None,
    error: type[Exception],
    message: str,
    retry_after: float | None,
) -> None:
    server = TlsServer(tls, "agent")
    server.start(lambda method, path, headers, body: answer)
    try:
        target = _target_against(tls, server.port)
        with pytest.raises(error) as caught:
            asyncio.run(target.publish(_delivery()))
    finally:
        server.stop()
    assert message in str(caught.value), case
    assert isinstance(caught.value, TransientError) == (error is TransientError)
    if retry_after is not None:
        assert isinstance(caught.value, TransientError)
        assert caught.value.retry_after == retry_after


def test_reload_configs_refuse_option_like_and_unprintable_names() -> None:
    unit = {"type": "systemd_reload", "order": 30, "agent_id": AGENT_ID}
    pool = {"type": "iis_recycle", "order": 40, "agent_id": AGENT_ID}
    found = problems(
        estate(
            [
                {**unit, "config": {"unit": "--force"}},
                {**pool, "config": {"app_pool": "Pool\n"}},
            ],
            [INTEGRATION],
        )
    )
    assert [p.split(":")[0] for p in found] == [
        "credentials[0].actions[0].config.unit",
        "credentials[0].actions[1].config.app_pool",
    ]


# --- keyshift integrations test -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_integrations_test_reaches_the_agent_and_proves_the_key(
    backend: str, cli: Any, ks_env: dict[str, str], tmp_path: Path, tls: TlsFiles
) -> None:
    with running_agent(tmp_path, tls) as running:  # on the real clock, as the CLI is
        result = cli(
            "apply", "-f", str(save_estate(tmp_path, {"integrations": [running.integration()]}))
        )
        assert result.exit_code == 0, result.output

        ks_env[KEY_ENV] = AGENT_KEY
        good = cli("integrations", "test", "billing-host")
        assert good.exit_code == 0, good.output
        assert [row[:2] for row in table_rows(good.output)] == [
            ["reach", "ok"],
            ["identity", "ok"],
            ["signature", "ok"],
        ]

        ks_env[KEY_ENV] = "not-the-agents-key-" + "0" * 32
        wrong = cli("integrations", "test", "billing-host")
        assert wrong.exit_code == 1
        rows = table_rows(wrong.output)
        assert rows[2][:2] == ["signature", "failed"]
        assert "refused keyshift's signature (HTTP 401)" in rows[2][2]
    down = cli("integrations", "test", "billing-host")
    assert down.exit_code == 1
    assert table_rows(down.output)[0][:2] == ["reach", "failed"]


# --- crash and resume ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    "boundary",
    ["publishing:20:agent_secret_sync", "reloading:30:iis_recycle"],
    ids=lambda boundary: f"killed after {boundary}",
)
def test_a_worker_killed_after_an_agent_step_resumes_to_one_new_version(
    backend: str,
    boundary: str,
    cli: Any,
    store: Store,
    ks_env: dict[str, str],
    tmp_path: Path,
    tls: TlsFiles,
) -> None:
    ks_env[KEY_ENV] = AGENT_KEY
    with running_agent(tmp_path, tls) as running:  # the real clock, as the CLI's
        settings = running.allowed / "appsettings.json"
        doc = estate([sync(str(settings)), recycle()], [running.integration()])
        assert cli("apply", "-f", str(save_estate(tmp_path, doc))).exit_code == 0
        assert cli("rotate", "billing-secret").exit_code == 0
        crashed = run_subprocess(
            ["rotate", "billing-secret", "--grace", "0s"], {**ks_env, CRASH_AT: boundary}
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr
        resumed = run_subprocess(["resume"], ks_env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr

        first, second = versions(store, "billing-secret")
        assert (first.status, second.status) == ("revoked", "current")
        assert secret_in(settings) == value_of(store, second)
        recycled = f"appcmd recycle apppool /apppool.name:{APP_POOL}"
        # One recycle for the first rotation; the second's ran once, or again on resume.
        expected = 3 if boundary.startswith("reloading") else 2
        assert running.calls() == [recycled] * expected
