"""The host agent (`keyshift agent run`): a small HTTPS process on a managed host that
performs file writes and reloads for keyshift, within the host's own allow-list.

The top layer beside `cli` and `api`: it uses the targets' file writer and the signing
rules of `keyshift.targets.agent`; nothing but the CLI imports it.
"""

from __future__ import annotations

import os

from keyshift.agent.app import Agent, Refused, create_agent_app
from keyshift.agent.config import AgentConfig, load_agent_config
from keyshift.sources import read_source
from keyshift.targets.agent import signing_key


def build_agent(config: AgentConfig) -> Agent:
    """The agent of `config`, its signing key read from `key_from` (env: or file:)."""
    key = signing_key(read_source("key_from", config.key_from, os.environ), "key_from")
    return Agent(config, key)


def run_agent(config: AgentConfig, *, log_level: str = "info") -> None:
    """Serve the agent over HTTPS on `listen` until interrupted."""
    import uvicorn  # noqa: PLC0415 (only the running agent needs it)

    app = create_agent_app(build_agent(config))
    uvicorn.run(
        app,
        host=config.host,
        port=config.port,
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        log_level=log_level,
        log_config=None,
    )


__all__ = [
    "Agent",
    "AgentConfig",
    "Refused",
    "build_agent",
    "create_agent_app",
    "load_agent_config",
    "run_agent",
]
