"""The long-running processes: `serve` (the REST API) and `agent run` (the host agent)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from keyshift import logs
from keyshift.cli._common import embedded_only, exit_on_error


@exit_on_error
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve the REST API (OpenAPI at /openapi.json) over the store. Every /v1 route needs
    a bearer token; create the first with `keyshift init`."""
    embedded_only()
    import uvicorn  # noqa: PLC0415 (only the server needs it)

    from keyshift.api import create_app  # noqa: PLC0415 (FastAPI loads only for serve)

    uvicorn.run(create_app(env=dict(os.environ)), host=host, port=port, log_config=None)


agent_app = typer.Typer(
    help="The host agent: file writes and reloads on a managed host.", no_args_is_help=True
)


@agent_app.command("run")
@exit_on_error
def agent_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="The agent's agent.yaml.")],
) -> None:
    """Run the agent: HTTPS on `listen`, signed requests only, within its allow-list."""
    from keyshift import agent  # noqa: PLC0415 (only a host running the agent needs it)

    logs.configure(os.environ.get("KEYSHIFT_LOG_LEVEL") or "INFO")
    agent.run_agent(agent.load_agent_config(config))
