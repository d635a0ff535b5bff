"""A signed request is acted on once, also across an agent restart when the agent keeps
its nonces in a `nonce_file`."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keyshift.agent.app import Agent, Refused
from keyshift.agent.config import AgentConfig
from keyshift.targets.agent import (
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    signed_headers,
)

KEY = b"k" * 40
START = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
BODY = b'{"kind": "file"}'
PATH = "/v1/preflight"


def _agent(tmp_path: Path, nonce_file: Path | None, now: float) -> Agent:
    config = AgentConfig.model_validate(
        {
            "agent_id": "11111111-1111-1111-1111-111111111111",
            "tls_cert": str(tmp_path / "cert.pem"),
            "tls_key": str(tmp_path / "key.pem"),
            "key_from": "env:AGENT_KEY",
            "nonce_file": str(nonce_file) if nonce_file is not None else None,
        }
    )
    return Agent(config, KEY, now=lambda: now, env={})


def _replay_after_restart(tmp_path: Path, nonce_file: Path | None) -> None:
    """Accept a request, restart the agent one minute later, and send the same again."""
    headers = signed_headers(KEY, "POST", PATH, BODY, START)
    _agent(tmp_path, nonce_file, START.timestamp()).authenticate("POST", PATH, headers, BODY)
    restarted = _agent(tmp_path, nonce_file, START.timestamp() + 60)
    restarted.authenticate("POST", PATH, headers, BODY)


def test_with_a_nonce_file_a_request_replayed_after_a_restart_is_refused(tmp_path: Path) -> None:
    nonce_file = tmp_path / "nonces"

    with pytest.raises(Refused, match="nonce was used before"):
        _replay_after_restart(tmp_path, nonce_file)

    assert stat.S_IMODE(nonce_file.stat().st_mode) == 0o600


def test_without_a_nonce_file_the_nonces_live_in_memory_only(tmp_path: Path) -> None:
    # The documented limit of an agent without nonce_file: no error after a restart.
    _replay_after_restart(tmp_path, None)


def test_at_start_expired_and_torn_lines_are_dropped_from_the_file(tmp_path: Path) -> None:
    nonce_file = tmp_path / "nonces"
    now = START.timestamp()
    live, expired = "a" * 32, "b" * 32
    nonce_file.write_text(f"{now + 100} {live}\n{now - 1} {expired}\n17169", encoding="ascii")

    _agent(tmp_path, nonce_file, now)

    assert nonce_file.read_text(encoding="ascii") == f"{now + 100} {live}\n"


def test_a_malformed_nonce_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    nonce_file = tmp_path / "nonces"
    agent = _agent(tmp_path, nonce_file, START.timestamp())
    headers = signed_headers(KEY, "POST", PATH, BODY, START)
    nonce = "has spaces and\tcontrol characters 1234"
    headers[NONCE_HEADER] = nonce
    headers[SIGNATURE_HEADER] = signature(
        KEY, "POST", PATH, timestamp=headers[TIMESTAMP_HEADER], nonce=nonce, body=BODY
    )

    with pytest.raises(Refused, match="nonce is malformed"):
        agent.authenticate("POST", PATH, headers, BODY)

    assert nonce_file.read_text(encoding="ascii") == ""
