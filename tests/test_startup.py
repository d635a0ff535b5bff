"""Start-up loads only what a command needs: `--version`, `--help` and the host agent
import no cloud SDK, no web framework and no store. Not timed (`bench/startup.py` measures
the figures); these fail when someone adds an eager import back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from keyshift import __version__
from keyshift.cli import app
from keyshift.registry import Registry, resolve
from keyshift.service import due, entra

# Runs the CLI in this process as `keyshift ARGS...` would, then writes every module it
# loaded to the file OUT. For `agent run`, uvicorn.run only records: nothing is served.
WRAPPER = """
import json, sys
args, out = json.loads(sys.argv[1]), sys.argv[2]
modules = []
if args[:2] == ["agent", "run"]:
    import uvicorn
    uvicorn.run = lambda app, **options: modules.extend(sys.modules)
sys.argv = ["keyshift", *args]
from keyshift.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(modules or sys.modules)}, f)
"""

SDKS = (
    "acme",
    "azure",
    "boto3",
    "botocore",
    "fastapi",
    "jinja2",
    "josepy",
    "kubernetes",
    "msal",
    "psycopg",
    "redis",
    "s3transfer",
)
"""Cloud SDKs, drivers and the dashboard's framework: only a provider, target or the
server that needs one loads it."""

START_UP_FREE = (
    *SDKS,
    "alembic",
    "cryptography",
    "httpx",
    "prometheus_client",
    "sqlalchemy",
    "starlette",
    "structlog",
    "uvicorn",
    "keyshift.api",
    "keyshift.client",
    "keyshift.engine",
    "keyshift.providers",
    "keyshift.service",
    "keyshift.store",
    "keyshift.targets",
    "keyshift.web",
)
"""What `--version` and `--help` need none of."""

STATUS_FREE = (
    *SDKS,
    "httpx",
    "prometheus_client",
    "yaml",
    "keyshift.api",
    "keyshift.client",
    "keyshift.domain.estate",
    "keyshift.domain.notifications",
    "keyshift.engine.engine",
    "keyshift.engine.plan",
    "keyshift.engine.plugins",
    "keyshift.notify.base",
    "keyshift.providers.base",
    "keyshift.service.entra",
    "keyshift.service.impact",
    "keyshift.targets",
    "keyshift.web",
)
"""What `status` on an empty home needs none of: it reads the store; the engine, the
plugins and the channels that run rotations and deliver notifications stay unloaded, and
so do the estate's models (a credential's policy loads them when there is one)."""

AGENT_FREE = (
    *SDKS,
    "alembic",
    "httpx",
    "prometheus_client",
    "sqlalchemy",
    "keyshift.api",
    "keyshift.client",
    "keyshift.domain.estate",
    "keyshift.engine",
    "keyshift.providers",
    "keyshift.service",
    "keyshift.store",
    "keyshift.web",
)
"""What the host agent, on every managed host, needs none of: it writes files and reloads."""


def _loaded(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> set[str]:
    """The modules `keyshift ARGS...` loaded (it must succeed)."""
    out = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, json.dumps(args), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(out.read_text(encoding="utf-8"))
    assert answer["code"] in (0, None), result.stdout + result.stderr
    return set(answer["modules"])


def _offending(loaded: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        name for name in loaded if any(name == f or name.startswith(f + ".") for f in forbidden)
    )


@pytest.mark.parametrize("args", [["--version"], ["--help"]])
def test_version_and_help_load_no_sdk_store_or_service(args: list[str], tmp_path: Path) -> None:
    assert _offending(_loaded(args, tmp_path), START_UP_FREE) == []


def test_version_answers_the_same_line_before_typer_and_through_it() -> None:
    """`keyshift --version` alone is answered before the command tree is built (it loads
    no pydantic then); with another option Typer answers it: the same bytes either way."""
    fast = subprocess.run(
        [sys.executable, "-m", "keyshift.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    typer_answer = CliRunner().invoke(app, ["--log-level", "WARNING", "--version"])
    assert typer_answer.exit_code == 0
    assert fast.stdout == typer_answer.stdout == f"keyshift {__version__}\n"


def test_version_alone_loads_no_pydantic(tmp_path: Path) -> None:
    assert _offending(_loaded(["--version"], tmp_path), ("pydantic", "pydantic_core")) == []


def test_status_on_an_empty_home_loads_no_engine_plugin_or_channel(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSHIFT_")}
    env["KEYSHIFT_HOME"] = str(tmp_path / "home")
    loaded = _loaded(["status"], tmp_path, env)
    assert "keyshift.service.rotations" in loaded, "status did not read the store"
    assert _offending(loaded, STATUS_FREE) == []


def test_status_reads_the_kind_of_entra_secret_that_entra_sync_writes() -> None:
    """`service.due` spells the kind itself rather than load `service.entra` for it."""
    assert due._CLIENT_SECRET == entra.CLIENT_SECRET


def test_the_host_agent_loads_no_sdk_store_or_http_client(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agent_id": "11111111-1111-1111-1111-111111111111",
                "listen": "127.0.0.1:8443",
                "tls_cert": str(tmp_path / "agent.pem"),
                "tls_key": str(tmp_path / "agent.key"),
                "key_from": "env:STARTUP_AGENT_KEY",
                "allowed_paths": [str(tmp_path)],
            }
        ),
        encoding="utf-8",
    )
    env = {**os.environ, "STARTUP_AGENT_KEY": "startup-agent-key-" + "0123456789abcdef" * 2}
    loaded = _loaded(["agent", "run", "--config", str(config)], tmp_path, env)
    assert "keyshift.agent.app" in loaded, "the agent's app was not built"
    assert _offending(loaded, AGENT_FREE) == []


def test_a_registry_imports_a_type_only_when_it_is_looked_up() -> None:
    registry: Registry[object] = Registry({"queue": "queue:Queue", "nowhere": "no_such:Thing"})
    assert list(registry) == ["queue", "nowhere"]
    assert "queue" in registry
    assert ["a"] not in registry  # a YAML `type` may be a list: unknown, not an error
    assert registry.where("nowhere") == "no_such:Thing"
    assert registry["queue"] is resolve("queue:Queue")
    with pytest.raises(ModuleNotFoundError):
        registry["nowhere"]
