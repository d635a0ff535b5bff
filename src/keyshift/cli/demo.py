"""`demo`: a throw-away estate, rotated twice, to see keyshift work."""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer

from keyshift.cli import runs
from keyshift.cli._common import embedded_only, exit_on_error, open_store
from keyshift.cli.estate import print_changes, status_table
from keyshift.cli.output import out
from keyshift.cli.rotations import timeline_table
from keyshift.domain.clock import utcnow
from keyshift.domain.states import RotationState

DEMO_CONSUMER = textwrap.dedent(
    """
    import json, os, sys
    env = dict(l.split("=", 1) for l in open(sys.argv[1]).read().split() if "=" in l)
    cfg = json.load(open(sys.argv[2]))
    assert env["API_KEY"] == cfg["Demo"]["ApiKey"], "consumers disagree"
    print("reloaded with version", os.environ["KEYSHIFT_VERSION_ID"][:8])
    """
)


@exit_on_error
def demo(
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to build it.")] = None,
) -> None:
    """Build a throw-away estate, rotate it twice, and show status, timeline and audit."""
    import asyncio

    from keyshift.service import estate as estate_service
    from keyshift.service import rotations
    from keyshift.store import audit

    embedded_only()
    root = Path(directory or tempfile.mkdtemp(prefix="keyshift-demo-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    consumer = root / "consumer.py"
    consumer.write_text(DEMO_CONSUMER, encoding="utf-8")
    json_file, env_file = root / "appsettings.json", root / "app.env"
    json_file.write_text('{\n  "Logging": {"Level": "Information"}\n}\n', encoding="utf-8")
    env_file.write_text("# demo service settings\nPORT=8080\n", encoding="utf-8")
    estate_file = root / "estate.yaml"
    estate_file.write_text(
        textwrap.dedent(
            f"""\
            credentials:
              - name: demo-api-key
                owner: team-demo
                environment: dev
                policy: {{ grace_period: 1h, max_lifetime: 90d }}
                provider: {{ type: random, length: 40 }}
                actions:
                  - type: file
                    order: 10
                    on_failure: abort
                    agent_id: null
                    config: {{ path: {json_file}, key: "Demo:ApiKey", file_format: json }}
                  - type: file
                    order: 20
                    on_failure: abort
                    config: {{ path: {env_file}, key: API_KEY, file_format: env }}
                  - type: command
                    order: 30
                    on_failure: abort
                    config:
                      argv: [{sys.executable}, {consumer}, {env_file}, {json_file}]
                      timeout: 10s
            """
        ),
        encoding="utf-8",
    )
    env = {**os.environ, "KEYSHIFT_HOME": str(root / "home")}
    env.pop("KEYSHIFT_DATABASE_URL", None)
    env.pop("KEYSHIFT_MASTER_KEY", None)
    out.print(f"[bold]keyshift demo[/] in {root}\n")
    estate = estate_service.load_estate(estate_file)
    with open_store(env) as store:
        out.print(f"$ keyshift apply -f {estate_file}")
        print_changes(estate_service.apply_estate(store, estate, actor="demo"), applied=True)
        out.print("\n$ keyshift rotate demo-api-key            # first issuance")
        asyncio.run(rotations.rotate(store, "demo-api-key", actor="demo", on_event=runs.progress))
        out.print("\n$ keyshift rotate demo-api-key --grace 0s # rotate, revoke the old at once")
        rotation_id, state = asyncio.run(
            rotations.rotate(
                store, "demo-api-key", actor="demo", grace=timedelta(0), on_event=runs.progress
            )
        )
        runs.print_stored_rotation_end(store, rotation_id)
        out.print("\n$ keyshift status")
        out.print(status_table(rotations.status_rows(store, now=utcnow())))
        out.print(f"\n$ keyshift show {rotation_id}")
        out.print(timeline_table(rotations.rotation_timeline(store, rotation_id)))
        with store.transaction() as s:
            count = audit.verify(s)
        out.print(f"\n$ keyshift audit verify\naudit chain OK: {count} entries verified")
    out.print(
        f"\nConsumers written: {json_file}, {env_file} "
        f"(values are never printed; compare fingerprints instead)."
    )
    out.print(f"Explore further with KEYSHIFT_HOME={root / 'home'} keyshift history demo-api-key")
    if state != RotationState.COMPLETED:
        raise typer.Exit(1)
