"""keyshift's own sign-in to Entra ID by certificate, workload identity and managed
identity, through the real azure-identity credentials against the Graph double: each
is shown by `keyshift integrations test` and by a sync."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.conftest import Cli
from tests.doubles.graph import FEDERATED_AUDIENCE, GraphDouble
from tests.doubles.tls import TlsFiles
from tests.helpers import save_estate


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def graph(tls: TlsFiles) -> Iterator[GraphDouble]:
    with GraphDouble(tls) as double:
        double.add_application("payments-api")
        yield double


def _certificate(path: Path, *, password: bytes | None = None) -> x509.Certificate:
    """A self-signed RSA certificate with its key, in one PEM file as Entra ID expects."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyshift")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    return cert


def _apply(cli: Cli, tmp: Path, graph: GraphDouble, auth: dict[str, Any]) -> None:
    integration = {**graph.integration("UNUSED"), "auth": auth}
    estate = {"integrations": [{"name": "contoso", "type": "entra", **integration}]}
    result = cli("apply", "-f", str(save_estate(tmp, estate)))
    assert result.exit_code == 0, result.output


def _works(cli: Cli) -> None:
    tested = cli("integrations", "test", "contoso")
    assert tested.exit_code == 0, tested.output
    synced = cli("entra", "sync")
    assert synced.exit_code == 0, synced.output


def test_certificate_sign_in(cli: Cli, graph: GraphDouble, tmp_path: Path) -> None:
    pem = tmp_path / "keyshift.pem"
    graph.certificates[graph.client_id] = _certificate(pem)
    _apply(cli, tmp_path, graph, {"method": "certificate", "certificate_from": f"file:{pem}"})

    _works(cli)

    assert graph.tokens_issued >= 1


def test_certificate_with_a_password(
    cli: Cli, ks_env: dict[str, str], graph: GraphDouble, tmp_path: Path
) -> None:
    pem = tmp_path / "keyshift.pem"
    graph.certificates[graph.client_id] = _certificate(pem, password=b"pem-pass")
    ks_env["PEM_PASSWORD"] = "pem-pass"
    auth = {
        "method": "certificate",
        "certificate_from": f"file:{pem}",
        "certificate_password_from": "env:PEM_PASSWORD",
    }
    _apply(cli, tmp_path, graph, auth)

    _works(cli)


def test_a_certificate_entra_does_not_know_is_refused(
    cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    graph.certificates[graph.client_id] = _certificate(tmp_path / "registered.pem")
    other = tmp_path / "other.pem"
    _certificate(other)
    _apply(cli, tmp_path, graph, {"method": "certificate", "certificate_from": f"file:{other}"})

    result = cli("integrations", "test", "contoso")

    assert result.exit_code == 1
    assert "AADSTS700027" in result.output
    assert graph.tokens_issued == 0


def _external_token(issuer: str, subject: str) -> str:
    """A service-account token as a Kubernetes cluster projects it (Entra ID checks it
    against the issuer's keys; the double checks issuer, subject and audience)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": [FEDERATED_AUDIENCE],
        "exp": int(time.time()) + 3600,
    }
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


def test_workload_identity_sign_in(cli: Cli, graph: GraphDouble, tmp_path: Path) -> None:
    issuer, subject = "https://oidc.aks.example/abc/", "system:serviceaccount:ops:keyshift"
    graph.federated[graph.client_id] = (issuer, subject)
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(_external_token(issuer, subject))
    _apply(cli, tmp_path, graph, {"method": "workload_identity", "token_file": str(token_file)})

    _works(cli)


def test_workload_identity_with_the_wrong_subject_is_refused(
    cli: Cli, graph: GraphDouble, tmp_path: Path
) -> None:
    issuer = "https://oidc.aks.example/abc/"
    graph.federated[graph.client_id] = (issuer, "system:serviceaccount:ops:keyshift")
    token_file = tmp_path / "azure-identity-token"
    token_file.write_text(_external_token(issuer, "system:serviceaccount:default:intruder"))
    _apply(cli, tmp_path, graph, {"method": "workload_identity", "token_file": str(token_file)})

    result = cli("integrations", "test", "contoso")

    assert result.exit_code == 1
    assert "AADSTS700027" in result.output


def test_managed_identity_sign_in(
    cli: Cli, ks_env: dict[str, str], graph: GraphDouble, tmp_path: Path
) -> None:
    graph.identity_header = "identity-header-secret"
    ks_env["IDENTITY_ENDPOINT"] = f"{graph.authority}/msi/token"
    ks_env["IDENTITY_HEADER"] = "identity-header-secret"
    _apply(cli, tmp_path, graph, {"method": "managed_identity"})

    _works(cli)

    assert any(r.path == "/msi/token" for r in graph.requests)
