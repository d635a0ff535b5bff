"""The host agent itself: signed requests only, and nothing outside its allow-list."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyshift import __version__
from keyshift.agent import Agent, Refused, load_agent_config
from keyshift.agent.app import MAX_BODY, PoolRequest
from keyshift.errors import EstateInvalid
from keyshift.targets.agent import signed_headers
from tests.agent.harness import AGENT_ID, AGENT_KEY, APP_POOL, UNIT, RunningAgent, running_agent
from tests.doubles.tls import TlsFiles


@pytest.fixture
def agent(tmp_path: Path, tls: TlsFiles) -> Iterator[RunningAgent]:
    with running_agent(tmp_path, tls) as running:
        yield running


def post(
    agent: RunningAgent,
    path: str,
    body: dict[str, Any],
    *,
    key: str = AGENT_KEY,
    at: float | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A signed POST (or one with the given headers, to replay them)."""
    content = json.dumps(body).encode()
    from datetime import UTC, datetime  # noqa: PLC0415

    moment = datetime.fromtimestamp(at if at is not None else time.time(), UTC)
    sent = headers or signed_headers(key.encode(), "POST", path, content, moment)
    return httpx.post(
        agent.url + path,
        content=content,
        headers={"Content-Type": "application/json", **sent},
        verify=agent.tls_context(),
    )


def write_body(path: Path, value: str | None, key: str = "Entra:ClientSecret") -> dict[str, Any]:
    return {"path": str(path), "format": "json", "values": {key: value}}


def test_health_answers_without_a_signature_and_says_only_id_and_version(
    agent: RunningAgent,
) -> None:
    answer = httpx.get(agent.url + "/v1/health", verify=agent.tls_context())
    assert answer.status_code == 200
    assert answer.json() == {"agent_id": AGENT_ID, "version": __version__}


def test_a_signed_write_sets_a_nested_key_and_answers_no_value(
    agent: RunningAgent, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    value = "S3CRET-" + secrets.token_hex(8)
    target = agent.allowed / "appsettings.json"
    target.write_text(json.dumps({"Logging": {"Level": "Info"}}))
    answer = post(agent, "/v1/files/write", write_body(target, value))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "path": str(target),
        "keys": ["Entra:ClientSecret"],
        "changed": True,
        "created": False,
    }
    assert json.loads(target.read_text()) == {
        "Logging": {"Level": "Info"},
        "Entra": {"ClientSecret": value},
    }
    assert value not in answer.text
    assert value not in caplog.text
    captured = capsys.readouterr()
    assert value not in captured.out + captured.err


def test_restore_removes_the_keys_a_write_added(agent: RunningAgent) -> None:
    target = agent.allowed / "new.json"
    assert post(agent, "/v1/files/write", write_body(target, "v-one-value")).json()["created"]
    answer = post(agent, "/v1/files/restore", write_body(target, None))
    assert answer.status_code == 200
    assert answer.json()["removed"] == ["Entra:ClientSecret"]
    assert json.loads(target.read_text()) == {}


def test_a_write_may_not_remove_keys(agent: RunningAgent) -> None:
    target = agent.allowed / "a.json"
    target.write_text('{"Entra": {"ClientSecret": "old-value-kept"}}')
    answer = post(agent, "/v1/files/write", write_body(target, None))
    assert answer.status_code == 400
    assert "old-value-kept" in target.read_text()


@pytest.mark.parametrize(
    ("case", "key", "skew"),
    [
        ("a wrong key", "another-key-" + "f" * 32, 0.0),
        ("a timestamp six minutes old", AGENT_KEY, -360.0),
        ("a timestamp six minutes ahead", AGENT_KEY, 360.0),
    ],
)
def test_a_request_that_does_not_authenticate_gets_401_and_changes_nothing(
    agent: RunningAgent, case: str, key: str, skew: float
) -> None:
    target = agent.allowed / "appsettings.json"
    target.write_text('{"Entra": {"ClientSecret": "before"}}')
    answer = post(
        agent, "/v1/files/write", write_body(target, "after"), key=key, at=time.time() + skew
    )
    assert answer.status_code == 401, case
    assert json.loads(target.read_text())["Entra"]["ClientSecret"] == "before"
    assert (
        post(
            agent, "/v1/iis/recycle", {"app_pool": APP_POOL}, key=key, at=time.time() + skew
        ).status_code
        == 401
    )
    assert agent.calls() == []


def test_an_unsigned_request_gets_401(agent: RunningAgent) -> None:
    answer = httpx.post(
        agent.url + "/v1/iis/recycle", json={"app_pool": APP_POOL}, verify=agent.tls_context()
    )
    assert answer.status_code == 401
    assert agent.calls() == []


def test_an_oversized_body_is_refused_before_it_is_read_whole(agent: RunningAgent) -> None:
    answer = httpx.post(
        agent.url + "/v1/files/write",
        content=b"x" * (MAX_BODY + 1),
        verify=agent.tls_context(),
    )
    assert answer.status_code == 413
    half = b"x" * (MAX_BODY // 2 + 1)
    chunked = httpx.post(
        agent.url + "/v1/files/write", content=iter([half, half]), verify=agent.tls_context()
    )
    assert chunked.status_code == 413


def test_a_replayed_request_gets_401_and_changes_nothing(agent: RunningAgent) -> None:
    target = agent.allowed / "appsettings.json"
    first = write_body(target, "first-value")
    content = json.dumps(first).encode()
    from datetime import UTC, datetime  # noqa: PLC0415

    headers = signed_headers(
        AGENT_KEY.encode(), "POST", "/v1/files/write", content, datetime.now(UTC)
    )
    assert post(agent, "/v1/files/write", first, headers=headers).status_code == 200
    assert post(agent, "/v1/files/write", write_body(target, "second-value")).status_code == 200

    replayed = post(agent, "/v1/files/write", first, headers=headers)
    assert replayed.status_code == 401
    assert "nonce" in replayed.json()["error"]
    assert json.loads(target.read_text())["Entra"]["ClientSecret"] == "second-value"


def test_a_body_changed_after_signing_gets_401(agent: RunningAgent) -> None:
    target = agent.allowed / "appsettings.json"
    content = json.dumps(write_body(target, "signed-value")).encode()
    from datetime import UTC, datetime  # noqa: PLC0415

    headers = signed_headers(
        AGENT_KEY.encode(), "POST", "/v1/files/write", content, datetime.now(UTC)
    )
    answer = post(agent, "/v1/files/write", write_body(target, "other-value"), headers=headers)
    assert answer.status_code == 401
    assert not target.exists()


def test_a_path_outside_allowed_paths_is_refused_and_left_untouched(
    agent: RunningAgent, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.json"
    outside.write_text('{"Entra": {"ClientSecret": "untouched"}}')
    answer = post(agent, "/v1/files/write", write_body(outside, "planted"))
    assert answer.status_code == 403
    assert "outside the agent's allowed_paths" in answer.json()["error"]
    assert "untouched" in outside.read_text()

    dotdot = agent.allowed / ".." / "escape.json"
    assert post(agent, "/v1/files/write", write_body(dotdot, "planted")).status_code == 403
    assert not (agent.allowed.parent / "escape.json").exists()

    relative = post(agent, "/v1/files/write", {**write_body(outside, "x"), "path": "rel.json"})
    assert relative.status_code == 403


def test_a_symlink_escaping_allowed_paths_is_refused_and_its_target_untouched(
    agent: RunningAgent, tmp_path: Path
) -> None:
    outside = tmp_path / "shadow.json"
    outside.write_text('{"Entra": {"ClientSecret": "untouched"}}')
    link = agent.allowed / "appsettings.json"
    link.symlink_to(outside)
    answer = post(agent, "/v1/files/write", write_body(link, "planted"))
    assert answer.status_code == 403
    assert "untouched" in outside.read_text()
    assert link.is_symlink()

    (agent.allowed / "sub").symlink_to(tmp_path, target_is_directory=True)
    via_dir = agent.allowed / "sub" / "shadow.json"
    assert post(agent, "/v1/files/write", write_body(via_dir, "planted")).status_code == 403
    assert "untouched" in outside.read_text()


def test_recycle_runs_appcmd_for_an_allowed_pool_only(agent: RunningAgent) -> None:
    refused = post(agent, "/v1/iis/recycle", {"app_pool": "DefaultAppPool"})
    assert refused.status_code == 403
    assert agent.calls() == []
    answer = post(agent, "/v1/iis/recycle", {"app_pool": APP_POOL})
    assert answer.status_code == 200, answer.text
    assert answer.json()["exit_code"] == 0
    assert agent.calls() == [f"appcmd recycle apppool /apppool.name:{APP_POOL}"]


def test_systemd_reload_and_restart_run_systemctl_for_an_allowed_unit_only(
    agent: RunningAgent,
) -> None:
    assert post(agent, "/v1/systemd/reload", {"unit": "sshd.service"}).status_code == 403
    assert post(agent, "/v1/systemd/reload", {"unit": UNIT}).status_code == 200
    assert post(agent, "/v1/systemd/reload", {"unit": UNIT, "mode": "restart"}).status_code == 200
    assert agent.calls() == [f"systemctl reload {UNIT}", f"systemctl restart {UNIT}"]


def test_a_failing_command_answers_its_exit_code_and_last_stderr_line(agent: RunningAgent) -> None:
    agent.fail_flag.touch()
    answer = post(agent, "/v1/iis/recycle", {"app_pool": APP_POOL})
    assert answer.status_code == 422
    assert answer.json()["error"] == (
        f"recycle of app pool {APP_POOL} failed with exit code 5: "
        "ERROR ( message:Cannot find APPPOOL object )"
    )


def test_preflight_reports_what_would_be_refused_without_changing_anything(
    agent: RunningAgent, tmp_path: Path
) -> None:
    good = agent.allowed / "appsettings.json"
    broken = agent.allowed / "broken.json"
    broken.write_text("{not json")

    def check(**body: Any) -> dict[str, Any]:
        answer = post(agent, "/v1/preflight", body)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    file = {"kind": "file", "format": "json", "keys": ["Entra:ClientSecret"]}
    assert check(**file, path=str(good)) == {"ready": True}
    assert not good.exists()
    outside = check(**file, path=str(tmp_path / "x.json"))
    assert outside["ready"] is False
    assert "allowed_paths" in outside["reason"]
    unparsable = check(**file, path=str(broken))
    assert unparsable == {
        "ready": False,
        "reason": f"{broken} (json, key Entra:ClientSecret) does not parse as json at line 1",
    }
    assert check(kind="iis", app_pool=APP_POOL) == {"ready": True}
    assert check(kind="iis", app_pool="Other")["ready"] is False
    assert check(kind="systemd", unit=UNIT) == {"ready": True}
    os.unlink(agent.config.systemd.systemctl)
    missing = check(kind="systemd", unit=UNIT)
    assert missing["ready"] is False
    assert "not an executable program" in missing["reason"]
    assert agent.calls() == []


def test_agent_yaml_errors_name_their_fields(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(
        "agent_id: not-a-uuid\nlisten: nowhere\ntls_cert: c.pem\ntls_key: k.pem\n"
        "key_from: plain-text-key\nallowed_paths: [relative/dir]\n"
    )
    with pytest.raises(EstateInvalid) as caught:
        load_agent_config(path)
    paths = sorted(p.path for p in caught.value.problems)
    assert paths == ["agent_id", "allowed_paths", "key_from", "listen"]


def test_a_command_past_its_time_limit_is_killed_and_answered_503(
    agent: RunningAgent, tmp_path: Path
) -> None:
    hang = tmp_path / "appcmd-hangs"
    hang.write_text("#!/bin/sh\nexec sleep 60\n")
    hang.chmod(0o755)
    config = agent.config.model_copy(
        update={
            "iis": agent.config.iis.model_copy(update={"appcmd": str(hang)}),
            "command_timeout": timedelta(seconds=1),
        }
    )
    slow = Agent(config, AGENT_KEY.encode())
    with pytest.raises(Refused) as caught:
        asyncio.run(slow.recycle(PoolRequest(app_pool=APP_POOL)))
    assert caught.value.status == 503, "a timeout may pass: the server retries it"
    assert caught.value.message.startswith(f"recycle of app pool {APP_POOL}: ")
    assert "did not finish within 1s" in caught.value.message
