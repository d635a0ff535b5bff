"""`x509_ca` rotations end to end, through the CLI and the engine, on both store backends:
a leaf from an internal CA written as PEM files for an nginx-style consumer, checked with
`openssl verify`, kept through grace, revoked; a failed check puts the old files back
byte for byte; a worker killed while creating never leaves two certificates."""

from __future__ import annotations

import json
import shutil
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from keyshift.store.store import Store
from tests.certs import (
    Ca,
    assert_killed_while_creating_resumes,
    assert_renewal_due,
    assert_renewed,
    certificate_credential,
    leaf_provider,
    make_ca,
    pem_thumbprint,
    written,
)
from tests.conftest import Cli
from tests.helpers import rotations_of, save_estate, value_of, versions

CREDENTIAL = "web-tls"
OPENSSL = shutil.which("openssl")

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path / "ca", at=datetime.now(UTC))


def estate(
    tmp_path: Path,
    ca: Ca,
    *,
    check_against: Path | None = None,
    provider: dict[str, Any] | None = None,
) -> Path:
    """One certificate for nginx: key, certificate and chain files, then `openssl verify`
    of the certificate against `check_against` (the CA, unless told otherwise)."""
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    check = [str(OPENSSL), "verify", "-CAfile", str(check_against or ca.cert_path)]
    provider_config = leaf_provider(
        ca,
        **{
            "sans": ["web.internal", "127.0.0.1"],
            "validity": "90d",
            "renew_before": "20d",
            **(provider or {}),
        },
    )
    credential = certificate_credential(provider_config, tls, check)
    return save_estate(tmp_path, {"credentials": [credential]})


def test_a_certificate_rotation_issues_publishes_verifies_and_revokes_after_grace(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, ca))).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    [first] = versions(store, CREDENTIAL)
    tls = tmp_path / "tls"
    assert (tls / "site.key").read_text() == value_of(store, first)
    assert stat.S_IMODE((tls / "site.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tls / "site.crt").stat().st_mode) == 0o644
    assert (tls / "chain.pem").read_bytes() == ca.cert_path.read_bytes()
    # The fingerprint is the thumbprint of the certificate on disk, not an HMAC.
    assert first.fingerprint == "sha256:" + pem_thumbprint((tls / "site.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((tls / "site.crt").read_bytes())
    assert first.expires_at is not None
    assert first.expires_at.replace(tzinfo=UTC) == cert.not_valid_after_utc

    assert cli("rotate", CREDENTIAL, "--grace", "0s").exit_code == 0
    old, _, journal = assert_renewed(store, tls)
    assert journal["verifying:provider"].detail["detail"].startswith("signed by CN=")
    revoked = journal["revoking"].detail
    assert revoked["serial_number"] == old.attributes["serial_number"]
    assert "stays valid" in revoked["revocation"]


def test_renewal_is_due_renew_before_the_not_after_and_status_shows_the_thumbprint(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, ca))).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    status = cli("status", "-o", "json").stdout
    assert_renewal_due(store, status, timedelta(days=20))


def test_a_certificate_expiring_within_the_threshold_is_expiring_soon(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    short = {"validity": "10d", "renew_before": "2d"}
    assert cli("apply", "-f", str(estate(tmp_path, ca, provider=short))).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    [row] = json.loads(cli("status", "-o", "json").stdout)
    assert row["lifecycle"] == "Expiring Soon"
    assert row["days_left"] in (9, 10)


def test_versions_shows_subject_sans_not_after_and_thumbprint_but_never_the_key(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, ca))).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    [version] = versions(store, CREDENTIAL)
    [line] = json.loads(cli("versions", CREDENTIAL, "-o", "json").stdout)
    certificate = line["certificate"]
    assert certificate["subject"] == "CN=web.internal"
    assert certificate["sans"] == ["web.internal", "127.0.0.1"]
    assert certificate["thumbprint"] == version.attributes["thumbprint"]
    assert certificate["not_after"].startswith(version.attributes["not_after"][:19])
    table = cli("versions", CREDENTIAL)
    assert table.exit_code == 0
    assert "CN=web.internal" in table.stdout
    key = value_of(store, version)
    for output in (table.stdout, json.dumps(line)):
        assert "PRIVATE KEY" not in output
        assert key.splitlines()[1] not in output


def test_a_failed_check_rolls_back_to_the_previous_certificate_files_exactly(
    cli: Cli, store: Store, tmp_path: Path, ca: Ca
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, ca))).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 0
    before = written(tmp_path / "tls")
    stranger = make_ca(tmp_path / "stranger", at=datetime.now(UTC), name="not our CA")
    failing = estate(tmp_path, ca, check_against=stranger.cert_path)
    assert cli("apply", "-f", str(failing)).exit_code == 0
    assert cli("rotate", CREDENTIAL).exit_code == 1
    _, rotation = rotations_of(store, CREDENTIAL)
    assert rotation.state == "rolled_back"
    assert written(tmp_path / "tls") == before
    old, new = versions(store, CREDENTIAL)
    assert (old.status, new.status) == ("current", "disabled")


@pytest.mark.slow
@pytest.mark.parametrize(
    "boundary",
    ["creating:issuer", "creating"],
    ids=["killed after signing, before storing", "killed after storing, before the journal"],
)
def test_a_worker_killed_while_creating_never_leaves_two_certificates(
    boundary: str, cli: Cli, store: Store, ks_env: dict[str, str], tmp_path: Path, ca: Ca
) -> None:
    assert cli("apply", "-f", str(estate(tmp_path, ca))).exit_code == 0
    assert_killed_while_creating_resumes(boundary, store, ks_env, tmp_path / "tls")
