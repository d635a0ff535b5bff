"""A real host agent for tests: `create_agent_app` served by uvicorn over TLS on a free
port, with a temp allowed directory and fake `appcmd` / `systemctl` programs that append
their argv to a log file (so a test reads what was invoked)."""

from __future__ import annotations

import ssl
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from keyshift.agent import Agent, AgentConfig, create_agent_app
from tests.doubles.tls import TlsFiles
from tests.servers import free_port, in_thread

AGENT_KEY = "agent-signing-key-" + "0123456789abcdef" * 2
"""The signing key the test agent and keyshift share."""
KEY_ENV = "BILLING_AGENT_KEY"
AGENT_ID = "11111111-1111-1111-1111-111111111111"
APP_POOL = "BillingAppPool"
UNIT = "billing.service"

FAKE_PROGRAM = """#!/bin/sh
# Appends its name and arguments to the log; fails when the fail flag exists. While the
# slow flag exists, it takes the seconds the flag holds, between two timed lines.
if [ -f '{slow}' ]; then
  echo "begin $(date +%s.%N)" >> '{log}'
  sleep "$(cat '{slow}')"
  echo "end $(date +%s.%N)" >> '{log}'
fi
echo "$(basename "$0") $*" >> '{log}'
if [ -f '{fail}' ]; then
  echo "first line" >&2
  echo "  ERROR ( message:Cannot find APPPOOL object )  " >&2
  exit 5
fi
"""


@dataclass
class RunningAgent:
    url: str
    config: AgentConfig
    allowed: Path
    """The directory the agent may write under."""
    calls_log: Path
    """Where the fake appcmd and systemctl append `name argv...` lines."""
    fail_flag: Path
    """While this file exists, the fake programs exit 5 with a message on stderr."""
    slow_flag: Path
    """While this file exists, the fake programs take the seconds it holds, logging
    `begin <unix time>` and `end <unix time>` around them."""
    ca_bundle: Path
    agent: Agent

    def tls_context(self) -> ssl.SSLContext:
        """A client context that trusts the agent's certificate."""
        return ssl.create_default_context(cafile=str(self.ca_bundle))

    def calls(self) -> list[str]:
        if not self.calls_log.exists():
            return []
        return self.calls_log.read_text(encoding="utf-8").splitlines()

    def integration(self, name: str = "billing-host", **extra: Any) -> dict[str, Any]:
        """The estate's `agent` integration for this agent."""
        return {
            "name": name,
            "type": "agent",
            "agent_id": self.config.agent_id,
            "url": self.url,
            "key_from": f"env:{KEY_ENV}",
            "ca_bundle": str(self.ca_bundle),
            **extra,
        }


def fake_program(path: Path, log: Path, fail: Path) -> Path:
    slow = fail.with_name("slow")
    path.write_text(FAKE_PROGRAM.format(log=log, fail=fail, slow=slow), encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@contextmanager
def running_agent(
    tmp: Path, tls: TlsFiles, *, now: Callable[[], float] = time.time
) -> Iterator[RunningAgent]:
    """Start the agent (its clock `now`, in Unix seconds) and stop it afterwards."""
    root = tmp / "agent"
    allowed = root / "allowed"
    allowed.mkdir(parents=True)
    calls_log = root / "calls.log"
    fail_flag = root / "fail"
    port = free_port()
    config = AgentConfig.model_validate(
        {
            "agent_id": AGENT_ID,
            "listen": f"127.0.0.1:{port}",
            "tls_cert": str(tls.cert_path),
            "tls_key": str(tls.key_path),
            "key_from": f"env:{KEY_ENV}",
            "allowed_paths": [str(allowed)],
            "iis": {
                "appcmd": str(fake_program(root / "appcmd", calls_log, fail_flag)),
                "app_pools": [APP_POOL],
            },
            "systemd": {
                "systemctl": str(fake_program(root / "systemctl", calls_log, fail_flag)),
                "units": [UNIT],
            },
        }
    )
    agent = Agent(config, AGENT_KEY.encode(), now=now)
    server = uvicorn.Server(
        uvicorn.Config(
            create_agent_app(agent),
            host="127.0.0.1",
            port=port,
            ssl_certfile=str(tls.cert_path),
            ssl_keyfile=str(tls.key_path),
            log_config=None,
            lifespan="off",
        )
    )
    with in_thread(server, f"agent-{uuid.uuid4().hex[:6]}", stop_within=20):
        yield RunningAgent(
            url=f"https://127.0.0.1:{port}",
            config=config,
            allowed=allowed,
            calls_log=calls_log,
            fail_flag=fail_flag,
            slow_flag=fail_flag.with_name("slow"),
            ca_bundle=tls.ca_path,
            agent=agent,
        )
