"""The long-running processes: `serve` (the dashboard and REST API) and `agent run` (the
host agent)."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Annotated

import typer

from keyshift.cli._common import embedded_only, exit_on_error
from keyshift.errors import ConfigError


@exit_on_error
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    tls_cert: Annotated[
        Path | None, typer.Option(help="PEM certificate (chain) to serve HTTPS with.")
    ] = None,
    tls_key: Annotated[Path | None, typer.Option(help="PEM private key of --tls-cert.")] = None,
    forwarded_allow_ips: Annotated[
        str,
        typer.Option(
            help="Proxies whose X-Forwarded-Proto/For headers are trusted (comma-separated "
            "addresses, or *), so a dashboard behind a TLS proxy marks its cookie Secure."
        ),
    ] = "127.0.0.1",
) -> None:
    """Serve the web dashboard at / and the REST API at /v1 (OpenAPI at /openapi.json)
    over the store. Sign in to the dashboard, and call /v1, with an API token; create the
    first with `keyshift init`."""
    embedded_only()
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("--tls-key" if tls_key is None else "--tls-cert", "give both or neither")
    import uvicorn

    from keyshift.api import create_app

    app = create_app(env=dict(os.environ))
    # What is loaded by now (the SDKs, the ORM, the templates) lives as long as the
    # process: moved out of the collector's reach, a large page's many short-lived rows
    # no longer make each full collection walk all of it again (CPython's gc.freeze).
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_config=None,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        proxy_headers=True,
        forwarded_allow_ips=forwarded_allow_ips,
    )


agent_app = typer.Typer(
    help="The host agent: file writes and reloads on a managed host.", no_args_is_help=True
)


@agent_app.command("run")
@exit_on_error
def agent_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="The agent's agent.yaml.")],
) -> None:
    """Run the agent: HTTPS on `listen`, signed requests only, within its allow-list."""
    from keyshift import agent, logs

    logs.configure(os.environ.get("KEYSHIFT_LOG_LEVEL") or "INFO")
    agent.run_agent(agent.load_agent_config(config))
