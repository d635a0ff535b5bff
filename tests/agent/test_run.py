"""`keyshift agent run --config agent.yaml`: the command an operator starts on a host."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from keyshift import __version__
from tests.agent.harness import AGENT_ID, AGENT_KEY, KEY_ENV
from tests.conftest import Cli, run_subprocess
from tests.doubles.tls import TlsFiles
from tests.servers import free_port


def agent_yaml(tmp: Path, tls: TlsFiles, port: int, **extra: object) -> Path:
    path = tmp / "agent.yaml"
    config = {
        "agent_id": AGENT_ID,
        "listen": f"127.0.0.1:{port}",
        "tls_cert": str(tls.cert_path),
        "tls_key": str(tls.key_path),
        "key_from": f"env:{KEY_ENV}",
        "allowed_paths": [str(tmp)],
        **extra,
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_agent_run_serves_https_with_its_certificate(tmp_path: Path, tls: TlsFiles) -> None:
    port = free_port()
    env = {**os.environ, KEY_ENV: AGENT_KEY}
    output = tmp_path / "agent.out"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keyshift.cli",
                "agent",
                "run",
                "--config",
                str(agent_yaml(tmp_path, tls, port)),
            ],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        trust = ssl.create_default_context(cafile=str(tls.ca_path))
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, output.read_text()
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/v1/health", verify=trust)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the agent did not start"
                time.sleep(0.1)
        assert answer.json() == {"agent_id": AGENT_ID, "version": __version__}
        unsigned = httpx.post(f"https://127.0.0.1:{port}/v1/files/write", json={}, verify=trust)
        assert unsigned.status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_agent_run_refuses_a_bad_config_in_one_line_per_field(
    tmp_path: Path, tls: TlsFiles, cli: Cli
) -> None:
    path = agent_yaml(tmp_path, tls, 8443, allowed_paths=["relative"], listen="nowhere")
    result = cli("agent", "run", "--config", str(path))
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: listen: listen must be host:port, e.g. 0.0.0.0:8443",
        "error: allowed_paths: allowed path relative must be absolute",
    ]


def test_agent_run_refuses_a_short_signing_key(tmp_path: Path, tls: TlsFiles) -> None:
    env = {**os.environ, KEY_ENV: "short"}
    result = run_subprocess(
        ["agent", "run", "--config", str(agent_yaml(tmp_path, tls, free_port()))], env
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "key_from: the agent signing key must have at least 32 characters" in result.stderr
    assert json.dumps("short") not in result.stderr
