"""`acme` rotations end to end, through the CLI and the engine, against a real ACME server
(pebble) validating http-01 from a served webroot: the certificate written as PEM files
and checked with `openssl verify` against pebble's root, renewal due `renew_before` the
`not_after`, the old certificate revoked at the CA after grace; a dns-01 wildcard
through a hook; a challenge nobody
serves fails the rotation with nothing published; no private key reaches the CLI's
output, its debug logs or the audit export; a worker killed while creating never leaves
two certificates."""

from __future__ import annotations

import json
import shutil
import stat
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from keyshift.store.store import Store
from tests.certs import (
    assert_killed_while_creating_resumes,
    assert_renewal_due,
    assert_renewed,
    certificate_credential,
    pem_thumbprint,
    written,
)
from tests.conftest import Cli, run_subprocess
from tests.helpers import rotations_of, save_estate, value_of, versions
from tests.servers import Pebble, dns_hook, pebble_installed, webroot_server

CREDENTIAL = "web-tls"
DOMAIN = "web.example.test"
OPENSSL = shutil.which("openssl")

pytestmark = [
    pytest.mark.skipif(not pebble_installed(), reason="pebble is not installed"),
    pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed"),
]


def estate(tmp_path: Path, pebble: Pebble, webroot: Path, **provider: Any) -> Path:
    """One certificate for nginx: key, certificate and chain files, then `openssl verify`
    of the certificate against pebble's root through the chain file."""
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    root = tmp_path / "pebble-root.pem"
    root.write_text(pebble.issuer_pem("roots"), encoding="ascii")
    check = [str(OPENSSL), "verify", "-CAfile", str(root), "-untrusted", str(tls / "chain.pem")]
    provider_config = {
        "type": "acme",
        "directory_url": pebble.directory_url,
        "ca_bundle": str(pebble.ca_bundle),
        "agree_to_terms": True,
        "contact": ["ops@example.test"],
        "domains": [DOMAIN],
        "challenge": {"type": "http-01", "webroot": str(webroot)},
        "renew_before": "10d",
        "revoke_on_retire": True,
        **provider,
    }
    credential = certificate_credential(provider_config, tls, check)
    return save_estate(tmp_path, {"credentials": [credential]})


def cert_status(pebble: Pebble, serial: str) -> str:
    return str(json.loads(pebble.get(f"/cert-status-by-serial/{serial}"))["Status"])


def test_an_acme_rotation_orders_publishes_verifies_and_revokes_at_the_ca_after_grace(
    cli: Cli, store: Store, tmp_path: Path, pebble: Pebble, webroot: Path, served: list[str]
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, pebble, webroot))).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    [first] = versions(store, CREDENTIAL)
    tls = tmp_path / "tls"
    assert (tls / "site.key").read_text() == value_of(store, first)
    assert stat.S_IMODE((tls / "site.key").stat().st_mode) == 0o600
    assert (tls / "chain.pem").read_text() == pebble.issuer_pem("intermediates")
    assert first.fingerprint == "sha256:" + pem_thumbprint((tls / "site.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tls / "site.crt").read_bytes())
    assert first.expires_at is not None
    assert first.expires_at.replace(tzinfo=UTC) == cert.not_valid_after_utc
    assert any("/.well-known/acme-challenge/" in line for line in served)

    assert cli("rotate", CREDENTIAL, "--grace", "0s").exit_code == 0
    old, new, journal = assert_renewed(store, tls)
    assert journal["verifying:provider"].detail["detail"].startswith("signed by CN=Pebble")
    assert journal["revoking"].detail["revocation"] == "revoked at the CA (reason superseded)"
    assert cert_status(pebble, old.attributes["serial_number"]) == "Revoked"
    assert cert_status(pebble, new.attributes["serial_number"]) == "Valid"


def test_a_dns01_wildcard_rotation_presents_and_cleans_up_through_the_hook(
    cli: Cli, store: Store, tmp_path: Path, pebble: Pebble, webroot: Path
) -> None:
    challenge, log = dns_hook(pebble, tmp_path)
    domains = ["*.apps.example.test", "apps.example.test"]
    path = estate(tmp_path, pebble, webroot, domains=domains, challenge=challenge)
    assert cli("apply", "-f", str(path)).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0  # includes `openssl verify`
    [version] = versions(store, CREDENTIAL)
    assert version.attributes["subject"] == "CN=*.apps.example.test"
    cert = x509.load_pem_x509_certificate((tmp_path / "tls" / "site.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(sans.get_values_for_type(x509.DNSName)) == sorted(domains)
    record = "_acme-challenge.apps.example.test"
    assert sorted(log.read_text().splitlines()) == sorted(
        [f"present {record}"] * 2 + [f"cleanup {record}"] * 2
    )


def test_renewal_is_due_renew_before_the_not_after_and_status_shows_the_thumbprint(
    cli: Cli, store: Store, tmp_path: Path, pebble: Pebble, webroot: Path, served: list[str]
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, pebble, webroot))).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    status = cli("status", "-o", "json").stdout
    version = assert_renewal_due(store, status, timedelta(days=10))
    [line] = json.loads(cli("versions", CREDENTIAL, "-o", "json").stdout)
    assert line["certificate"]["subject"] == f"CN={DOMAIN}"
    assert line["certificate"]["thumbprint"] == version.attributes["thumbprint"]


def test_a_challenge_nobody_serves_fails_the_rotation_and_publishes_nothing(
    cli: Cli, store: Store, tmp_path: Path, pebble: Pebble, webroot: Path
) -> None:
    """No web server serves the webroot: pebble cannot fetch the answer."""
    assert cli("apply", "-f", str(estate(tmp_path, pebble, webroot))).exit_code == 0
    result = cli("rotate", CREDENTIAL)
    assert result.exit_code == 1
    output = result.stdout + (result.stderr or "")
    assert f"could not validate {DOMAIN} (http-01)" in output
    assert "PRIVATE KEY" not in output
    [rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "failed"
    assert versions(store, CREDENTIAL) == []
    assert written(tmp_path / "tls") == {}, "nothing was published"
    assert [p for p in webroot.rglob("*") if p.is_file()] == [], "the answer is removed"


def test_a_failed_renewal_leaves_the_current_certificate_files_exactly(
    cli: Cli, store: Store, tmp_path: Path, pebble: Pebble, webroot: Path
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, pebble, webroot))).exit_code == 0
    with webroot_server(webroot, pebble.http_port):
        assert cli("rotate", CREDENTIAL).exit_code == 0
    before = written(tmp_path / "tls")
    assert cli("rotate", CREDENTIAL).exit_code == 1  # the webroot is not served any more
    assert written(tmp_path / "tls") == before
    [version] = versions(store, CREDENTIAL)
    assert version.status == "current"


def _key_lines(pem: str) -> list[str]:
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_no_private_key_reaches_cli_output_debug_logs_or_the_audit_export(
    store: Store,
    ks_env: dict[str, str],
    tmp_path: Path,
    pebble: Pebble,
    webroot: Path,
    served: list[str],
) -> None:
    env = {**ks_env, "KEYSHIFT_LOG_LEVEL": "DEBUG"}
    outputs: list[str] = []

    def run(*args: str, exit_code: int = 0) -> str:
        proc = run_subprocess(list(args), env)
        assert proc.returncode == exit_code, (args, proc.stdout, proc.stderr)
        outputs.extend([proc.stdout, proc.stderr])
        return proc.stdout

    run("apply", "-f", str(estate(tmp_path, pebble, webroot)))
    keys: list[str] = []
    for _ in range(2):  # the first key is erased when the second rotation revokes it
        run("rotate", CREDENTIAL, "--grace", "0s")
        keys.append((tmp_path / "tls" / "site.key").read_text())
    for args in (
        ("versions", CREDENTIAL),
        ("versions", CREDENTIAL, "-o", "json"),
        ("status", "-o", "json"),
        ("history", CREDENTIAL, "-o", "json"),
        ("preflight", CREDENTIAL, "-o", "json"),
    ):
        run(*args)
    for rotation in rotations_of(store, CREDENTIAL):
        run("show", rotation.id, "-o", "json")
    export = run("audit", "export", "--format", "jsonl")
    assert len(export.splitlines()) > 10
    assert any('"level": "debug"' in o or '"level":"debug"' in o for o in outputs)
    assert keys[0] != keys[1]
    text = "\n".join([*outputs, export])
    assert "PRIVATE KEY" not in text
    leaked = [line for key in keys for line in _key_lines(key) if line in text]
    assert leaked == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "boundary",
    ["creating:issuer", "creating"],
    ids=["killed after ordering, before storing", "killed after storing, before the journal"],
)
def test_a_worker_killed_while_creating_never_leaves_two_certificates(
    boundary: str,
    cli: Cli,
    store: Store,
    ks_env: dict[str, str],
    tmp_path: Path,
    pebble: Pebble,
    webroot: Path,
    served: list[str],
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, pebble, webroot))).exit_code == 0
    assert_killed_while_creating_resumes(boundary, store, ks_env, tmp_path / "tls")
