"""No secret value reaches logs, CLI output, the audit trail or error text (design.md).

The end-to-end test runs the CLI as separate processes, the way an operator does,
with debug logging on, then looks for every value keyshift ever issued in
everything those processes wrote and in every free-text column of the journal.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from sqlalchemy import select

from keyshift.api import create_app
from keyshift.domain.secret import Secret
from keyshift.domain.states import RotationState
from keyshift.errors import REDACTED
from keyshift.logs import configure, redact_secrets
from keyshift.store.models import RotationRow, StepRow, VersionRow
from keyshift.store.store import Store
from tests.certs import Ca, issue, leaf_provider, make_ca, pem_files
from tests.conftest import run_subprocess
from tests.helpers import json_value, rotations_of, save_estate, write_estate

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

CREDENTIAL = "api-key"
CERTIFICATE = "web-tls"
SIGNING_KEY = "id-token-signing"
FRAGMENT = 16
"""A leak of this many consecutive characters of a value counts as a leak of the value."""

LEAKING_CONSUMER = """\
import sys
sys.stderr.write("consumer received " + sys.stdin.read() + "\\n")
sys.exit(1)
"""


def _file_action(path: Path) -> dict[str, Any]:
    return {
        "type": "file",
        "order": 10,
        "on_failure": "abort",
        "config": {"path": str(path), "key": "Api:Key", "file_format": "json"},
    }


def _leaking_command(script: Path) -> dict[str, Any]:
    return {
        "type": "command",
        "order": 20,
        "on_failure": "abort",
        "config": {"argv": [sys.executable, str(script)], "value_via": "stdin"},
    }


def _with_certificate(estate: Path, tmp_path: Path) -> Path:
    """`estate` with a second credential, `CERTIFICATE`: a leaf from an internal CA whose
    private key (the version's value) goes to a PEM key file beside its certificate."""
    ca = make_ca(tmp_path / "ca", at=datetime.now(UTC))
    document = json.loads(estate.read_text(encoding="utf-8"))
    document["credentials"].append(
        {
            "name": CERTIFICATE,
            "owner": "team-web",
            "policy": {"grace_period": "1h"},
            "provider": leaf_provider(ca),
            "actions": [pem_files(tmp_path)],
        }
    )
    return save_estate(tmp_path, document)


def _with_signing_key(estate: Path, tmp_path: Path) -> Path:
    """`estate` with a third credential, `SIGNING_KEY`: a JWKS signing key whose private key
    goes to a signer's JSON file and whose public keys go to a JWKS file and to the JWKS
    keyshift serve serves."""
    document = json.loads(estate.read_text(encoding="utf-8"))
    document["credentials"].append(
        {
            "name": SIGNING_KEY,
            "owner": "team-identity",
            "environment": "dev",
            "policy": {"grace_period": "0s"},
            "provider": {
                "type": "jwks_signing_key",
                "key_type": "rsa-2048",
                "cache_ttl": "1s",
                "max_token_lifetime": "1s",
            },
            "actions": [
                {
                    "type": "file",
                    "order": 10,
                    "config": {"path": str(tmp_path / "jwks.json"), "file_format": "jwks"},
                },
                # keyshift serve's JWKS: its steps record the kids served.
                {"type": "jwks_serve", "order": 11},
                {
                    "type": "file",
                    "order": 20,
                    "config": {
                        "path": str(tmp_path / "signer.json"),
                        "file_format": "json",
                        "keys": {"key": "private_key", "kid": "kid"},
                    },
                },
            ],
        }
    )
    return save_estate(tmp_path, document)


def _signer_key(tmp_path: Path) -> str:
    held = json.loads((tmp_path / "signer.json").read_text(encoding="utf-8"))
    return _key_body(str(held["key"]))


def _key_body(pem: str) -> str:
    """A PEM key without its armour lines, which every key shares (`-----BEGIN...`)."""
    return "".join(line for line in pem.splitlines() if not line.startswith("-----"))


def _fragments(value: str) -> set[str]:
    return {value[i : i + FRAGMENT] for i in range(len(value) - FRAGMENT + 1)}


def _leaked_into(sources: dict[str, str], values: set[str]) -> list[str]:
    """Names of the sources that hold any value, or any FRAGMENT-long piece of one."""
    pieces = set().union(*(_fragments(v) for v in values))
    return [name for name, text in sources.items() if any(p in text for p in pieces)]


def test_no_secret_value_reaches_logs_cli_output_audit_export_or_journal_errors(
    store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**ks_env, "KEYSHIFT_LOG_LEVEL": "DEBUG"}
    target = tmp_path / "app.json"
    runs: list[tuple[str, subprocess.CompletedProcess[str]]] = []
    delivered: set[str] = set()

    def run(*args: str, exit_code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = run_subprocess(list(args), env)
        runs.append((" ".join(args), proc))
        assert proc.returncode == exit_code, (args, proc.stdout, proc.stderr)
        return proc

    def read_target() -> None:
        value = json_value(target)
        assert value is not None
        delivered.add(value)

    estate = _with_certificate(write_estate(tmp_path, actions=[_file_action(target)]), tmp_path)
    run("apply", "-f", str(_with_signing_key(estate, tmp_path)))
    keys: set[str] = set()
    for _ in range(2):  # the first key is revoked (erased) by the second rotation
        run("rotate", CERTIFICATE, "--grace", "0s")
        keys.add(_key_body((tmp_path / "site.key").read_text(encoding="utf-8")))
    run("versions", CERTIFICATE)
    run("versions", CERTIFICATE, "-o", "json")
    # A signing key: the rollover rests until cache_ttl (1s), then until max_token_lifetime.
    run("rotate", SIGNING_KEY)
    keys.add(_signer_key(tmp_path))
    run("rotate", SIGNING_KEY)
    for _ in range(2):
        time.sleep(1.2)
        run("resume")
    keys.add(_signer_key(tmp_path))
    assert rotations_of(store, SIGNING_KEY)[-1].state == RotationState.COMPLETED.value
    run("versions", SIGNING_KEY, "-o", "json")
    # The value the credential had before keyshift, imported from a file.
    imported = "imported-before-keyshift-" + "q7" * 12
    source = tmp_path / "imported.txt"
    source.write_text(imported, encoding="utf-8")
    run("import", CREDENTIAL, "--from", f"file:{source}")
    run("rotate", CREDENTIAL, "--grace", "0s")  # the imported version is revoked at once
    read_target()
    run("rotate", CREDENTIAL, "--grace", "0s")
    read_target()
    run("status")
    run("history", CREDENTIAL)

    script = tmp_path / "leaking_consumer.py"
    script.write_text(LEAKING_CONSUMER, encoding="utf-8")
    failing = _with_signing_key(
        _with_certificate(
            write_estate(tmp_path, actions=[_file_action(target), _leaking_command(script)]),
            tmp_path,
        ),
        tmp_path,
    )
    run("apply", "-f", str(failing))
    run("rotate", CREDENTIAL, "--grace", "0s", exit_code=1)
    read_target()  # the rollback put the previous value back
    run("status")
    run("history", CREDENTIAL)
    rotations = rotations_of(store, CREDENTIAL)
    for rotation in rotations:
        run("show", rotation.id)
        run("show", rotation.id, "-o", "json")
    for output in ("json", "yaml"):
        run("status", "-o", output)
        run("history", CREDENTIAL, "-o", output)
    run("versions", CREDENTIAL, "-o", "json")
    run("impact", CREDENTIAL, "-o", "json")
    run("preflight", CREDENTIAL, "-o", "json")
    export = run("audit", "export", "--format", "jsonl")
    run("audit", "verify")

    # The scenario did what it is meant to: three rotations, the last one rolled
    # back after the consumer echoed the value to its stderr, debug logs emitted.
    assert [r.state for r in rotations] == [
        RotationState.COMPLETED.value,
        RotationState.COMPLETED.value,
        RotationState.ROLLED_BACK.value,
    ]
    assert rotations[-1].error is not None
    assert REDACTED in rotations[-1].error
    log_levels = {
        json.loads(line).get("level")
        for _, proc in runs
        for line in proc.stderr.splitlines()
        if line.startswith("{")
    }
    assert "debug" in log_levels
    assert len(export.stdout.splitlines()) > 20

    with store.transaction() as s:
        stored = {
            _key_body(value) if "PRIVATE KEY" in value else value
            for row in s.execute(
                select(VersionRow).where(VersionRow.ciphertext.is_not(None))
            ).scalars()
            if (value := store.reveal(row).reveal())
        }
        journal = s.execute(select(StepRow)).scalars().all()
        runs_rows = s.execute(select(RotationRow)).scalars().all()
        columns = {
            **{f"steps[{st.id}].error": st.error or "" for st in journal},
            **{f"steps[{st.id}].detail": json.dumps(st.detail) for st in journal},
            **{f"rotations[{r.id}].error": r.error or "" for r in runs_rows},
            **{f"rotations[{r.id}].attention": r.attention or "" for r in runs_rows},
        }
    assert len(keys) == 4
    assert keys & stored, "the current certificate's key is the one stored"
    values = stored | delivered | {imported} | keys
    # api-key: v1 (imported, revoked, erased), v2 (revoked, erased, seen in the file), v3
    # (current) and v4 (kept disabled); web-tls and id-token-signing: two private keys
    # each, the first revoked.
    assert len(values) == 8
    assert all(len(v) >= FRAGMENT for v in values)

    with TestClient(create_app(store)) as client:
        served = client.get(f"/.well-known/jwks/{SIGNING_KEY}.json")
    assert served.status_code == 200
    assert len(json.loads(served.text)["keys"]) == 1
    sources = {
        "the JWKS keyshift serve serves": served.text,
        **{f"stdout of `{cmd}`": proc.stdout for cmd, proc in runs},
        **{f"stderr of `{cmd}`": proc.stderr for cmd, proc in runs},
        "audit export": export.stdout,
        **columns,
    }
    assert _leaked_into(sources, values) == []


def test_an_imported_signing_key_and_certificate_key_reach_no_output_log_or_audit(
    store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    """`keyshift import` of a signing key (with --kid) and of a certificate with its key,
    refused first (a key with another key's certificate, a kid for a certificate), then
    rotated out: no piece of either private key, nor of the refused one, is in any
    output, debug log, step or the audit export. Ed25519 keys, whose PEM holds no public
    part that a JWK or a certificate could show legitimately."""
    env = {**ks_env, "KEYSHIFT_LOG_LEVEL": "DEBUG"}
    runs: list[tuple[str, subprocess.CompletedProcess[str]]] = []

    def run(*args: str, exit_code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = run_subprocess(list(args), env)
        runs.append((" ".join(args), proc))
        assert proc.returncode == exit_code, (args, proc.stdout, proc.stderr)
        return proc

    estate = _with_certificate(write_estate(tmp_path), tmp_path)
    run("apply", "-f", str(_with_signing_key(estate, tmp_path)))
    signing = ed25519.Ed25519PrivateKey.generate()
    signing_pem = tmp_path / "signing.key"
    signing_pem.write_text(_pkcs8(signing), encoding="utf-8")
    ca_pem = tmp_path / "ca" / "ca.pem"  # the CA _with_certificate made
    ca = Ca(tmp_path / "ca" / "ca.key", ca_pem, x509.load_pem_x509_certificate(ca_pem.read_bytes()))
    mine, other = (issue(ca, at=datetime.now(UTC), key_type="ed25519") for _ in range(2))
    chain = ca.cert_path.read_text(encoding="utf-8")
    wrong = tmp_path / "wrong.pem"
    wrong.write_text(other.value.reveal() + mine.attributes["certificate"], encoding="utf-8")
    right = tmp_path / "web.pem"
    right.write_text(mine.value.reveal() + mine.attributes["certificate"] + chain, "utf-8")

    run("import", CERTIFICATE, "--from", f"file:{wrong}", exit_code=1)
    run("import", CERTIFICATE, "--from", f"file:{right}", "--kid", "k1", exit_code=1)
    run("import", CERTIFICATE, "--from", f"file:{right}")
    run("import", SIGNING_KEY, "--from", f"file:{signing_pem}", "--kid", "legacy-1")
    run("versions", CERTIFICATE, "-o", "json")
    run("versions", SIGNING_KEY, "-o", "json")
    run("status", "-o", "json")
    run("rotate", CERTIFICATE, "--grace", "0s")
    run("rotate", SIGNING_KEY)
    for _ in range(2):
        time.sleep(1.2)
        run("resume")
    assert rotations_of(store, SIGNING_KEY)[-1].state == RotationState.COMPLETED.value
    assert rotations_of(store, CERTIFICATE)[-1].state == RotationState.COMPLETED.value
    for name in (CERTIFICATE, SIGNING_KEY):
        run("history", name, "-o", "json")
        for rotation in rotations_of(store, name):
            run("show", rotation.id, "-o", "json")
    export = run("audit", "export", "--format", "jsonl")
    assert '"version.imported"' in export.stdout
    assert any("belongs to the private key" in p.stderr + p.stdout for _, p in runs)

    with store.transaction() as s:
        journal = s.execute(select(StepRow)).scalars().all()
        columns = {
            **{f"steps[{st.id}].error": st.error or "" for st in journal},
            **{f"steps[{st.id}].detail": json.dumps(st.detail) for st in journal},
        }
    keys = {_key_body(_pkcs8(signing)), _key_body(mine.value.reveal())}
    keys |= {_key_body(other.value.reveal())}
    assert len(keys) == 3
    sources = {
        **{f"stdout of `{cmd}`": proc.stdout for cmd, proc in runs},
        **{f"stderr of `{cmd}`": proc.stderr for cmd, proc in runs},
        "audit export": export.stdout,
        **columns,
    }
    assert _leaked_into(sources, keys) == []


def _pkcs8(key: ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


# --- unit level --------------------------------------------------------------------------

VALUE = "correct-horse-battery-staple-9f2c"


def test_secret_never_shows_its_value_in_repr_str_or_formatting() -> None:
    secret = Secret(VALUE)
    renderings = [
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        f"{secret!s}",
        f"{secret:>60}",
        "%s" % secret,  # noqa: UP031
        "%r" % secret,  # noqa: UP031
        "{}".format(secret),  # noqa: UP032
        str([secret]),
        str({"password": secret}),
        str(ValueError(f"cannot deliver {secret}")),
    ]

    for text in renderings:
        assert VALUE not in text
        assert "**********" in text
    assert secret.reveal() == VALUE


def test_redact_secrets_replaces_a_secret_log_field_and_keeps_the_others() -> None:
    event = {"event": "delivering", "value": Secret(VALUE), "version_id": "v-1"}

    redacted = redact_secrets(None, "info", event)

    assert redacted == {"event": "delivering", "value": REDACTED, "version_id": "v-1"}


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_configured_logger_writes_a_secret_field_as_redacted(
    capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    configure("DEBUG", json=as_json)

    structlog.get_logger("keyshift.test").debug(
        "delivering", value=Secret(VALUE), nested={"inner": Secret(VALUE)}
    )

    written = capsys.readouterr().err
    assert "delivering" in written
    assert REDACTED in written
    assert VALUE not in written
