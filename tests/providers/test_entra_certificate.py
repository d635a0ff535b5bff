"""`entra_certificate` rotations against the local Graph double, through the real
azure-identity CertificateCredential and httpx over TLS: the first certificate by an
update of `keyCredentials`, later ones by addKey with a proof signed by the current key,
the old one removed by removeKey after grace, while the double replicates slowly and
throttles; rollback, a crash after addKey, and no private key or proof in any output."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.core.pipeline.transport import AsyncioRequestsTransport
from azure.identity.aio import CertificateCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.estate import Policy, ResidualUse
from keyshift.domain.secret import Secret
from keyshift.domain.states import Lifecycle, RotationState
from keyshift.providers import PROVIDERS, ProviderKind
from keyshift.providers.base import (
    Capability,
    IssuedVersion,
    PreflightRequest,
    PreflightResult,
    Readiness,
    UsageReport,
    UsageRequest,
)
from keyshift.providers.entra import (
    EntraCertificateConfig,
    EntraCertificateProvider,
    proof_of_possession,
)
from keyshift.providers.entra.certificate import _lists
from keyshift.providers.graph import KeyCredential, TokenRefused, azure_identity_token_source
from keyshift.service import entra, rotations
from keyshift.store.store import Store
from keyshift.testing import FakeClock, assert_provider_contract
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli, run_subprocess
from tests.doubles.graph import GraphDouble, StoredApplication
from tests.doubles.tls import TlsFiles
from tests.helpers import rotations_of, save_estate, steps, versions
from tests.test_no_secret_leaks import _key_body, _leaked_into

NAME = "payments-entra-cert"


@pytest.fixture
def backend() -> str:
    """keyshift's own store: SQLite is enough here; the store suite covers PostgreSQL."""
    return "sqlite"


@pytest.fixture
def app(graph: GraphDouble) -> StoredApplication:
    return graph.add_application("payments-api")


@pytest.fixture
def env(ks_env: dict[str, str]) -> dict[str, str]:
    ks_env[ADMIN_ENV] = ADMIN_SECRET
    return ks_env


def _estate(
    tmp: Path,
    graph: GraphDouble,
    app: StoredApplication,
    *,
    method: str = "add_key",
    actions: list[dict[str, Any]] | None = None,
    policy: dict[str, Any] | None = None,
) -> Path:
    """One `entra_certificate` credential of `app`, its key and certificate written as PEM
    files (`tls/app.key`, `tls/app.crt`) for the consumer, then `actions`."""
    tls = tmp / "tls"
    tls.mkdir(exist_ok=True)
    delivered = {
        "type": "file",
        "order": 10,
        "on_failure": "abort",
        "config": {
            "file_format": "pem",
            "path": str(tls / "app.crt"),
            "key_path": str(tls / "app.key"),
        },
    }
    return save_estate(
        tmp,
        {
            "integrations": [{"name": "contoso", "type": "entra", **graph.integration(ADMIN_ENV)}],
            "credentials": [
                {
                    "name": NAME,
                    "owner": "team-payments",
                    "policy": policy or {"grace_period": "1h"},
                    "provider": {
                        "type": "entra_certificate",
                        "integration": "contoso",
                        "app_id": app.app_id,
                        "method": method,
                        "validity": "90d",
                        "renew_before": "20d",
                    },
                    "actions": [delivered, *(actions or [])],
                }
            ],
        },
    )


def _published(tmp: Path) -> tuple[str, str]:
    """The key and certificate PEM the consumer holds."""
    tls = tmp / "tls"
    return (tls / "app.key").read_text(), (tls / "app.crt").read_text()


def _signs_in(graph: GraphDouble, tls: TlsFiles, app_id: str, held: tuple[str, str]) -> bool:
    """Whether `app_id` gets a token with a client assertion signed by the held key."""

    async def attempt() -> bool:
        async with CertificateCredential(
            graph.tenant_id,
            app_id,
            certificate_data=(held[0] + held[1]).encode(),
            authority=graph.authority,
            disable_instance_discovery=True,
            transport=AsyncioRequestsTransport(connection_verify=str(tls.ca_path)),
        ) as credential:
            try:
                await azure_identity_token_source(credential)()
            except TokenRefused:
                return False
            return True

    return asyncio.run(attempt())


def _on_fake_time(graph: GraphDouble, clock: FakeClock) -> None:
    """The double judges certificates, proofs and replication delays on `clock`."""
    graph.now = clock.now
    graph.monotonic = lambda: clock.now().timestamp()


def _self_signed(at: datetime) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "by hand")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(at - timedelta(minutes=5))
        .not_valid_after(at + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, cert


# --- registration and config ------------------------------------------------------------


def test_entra_certificate_is_registered() -> None:
    assert PROVIDERS[ProviderKind.ENTRA_CERTIFICATE] is EntraCertificateProvider


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"key_type": "ec-p256"}, "key_type"),
        ({"method": "put"}, "method"),
        ({"validity": "30d", "renew_before": "30d"}, "renew_before"),
        ({"validity": "0s"}, "validity"),
    ],
)
def test_bad_config_names_the_field(config: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EntraCertificateConfig.model_validate({"integration": "c", "app_id": "a", **config})


# --- the Graph double's keyCredentials ----------------------------------------------------


def _graph_call(
    graph: GraphDouble, tls: TlsFiles, method: str, path: str, body: dict[str, Any] | None = None
) -> httpx.Response:
    """A raw Graph request with keyshift's token (to probe the double's refusals)."""
    trust = ssl.create_default_context(cafile=str(tls.ca_path))
    token = httpx.post(
        f"{graph.authority}/{graph.tenant_id}/oauth2/v2.0/token",
        data={
            "client_id": graph.client_id,
            "client_secret": ADMIN_SECRET,
            "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default",
        },
        verify=trust,
    ).json()["access_token"]
    return httpx.request(
        method,
        f"{graph.graph_url}/{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        verify=trust,
    )


def _add_key_body(cert: x509.Certificate, proof: str) -> dict[str, Any]:
    return {
        "keyCredential": {
            "type": "AsymmetricX509Cert",
            "usage": "Verify",
            "key": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(),
            "displayName": "probe",
        },
        "passwordCredential": None,
        "proof": proof,
    }


def test_the_double_refuses_addkey_proofs_that_graph_refuses_and_accepts_a_good_one(
    graph: GraphDouble, tls: TlsFiles, app: StoredApplication
) -> None:
    now = datetime.now(UTC)
    key, cert = _self_signed(now)
    stranger, stranger_cert = _self_signed(now)
    graph.seed_certificate(app, "by hand", certificate=cert)
    _, new = _self_signed(now)
    path = f"applications/{app.id}/addKey"
    bad = {
        "signed by a key the app does not hold": proof_of_possession(
            stranger, stranger_cert, app.id, now
        ),
        "issued for another application": proof_of_possession(key, cert, "not-the-object-id", now),
        "expired": proof_of_possession(key, cert, app.id, now - timedelta(minutes=11)),
        "not a JWT": Secret("not.a-jwt"),
    }
    for reason, proof in bad.items():
        answer = _graph_call(graph, tls, "POST", path, _add_key_body(new, proof.reveal()))
        assert answer.status_code == 401, reason
        assert answer.json()["error"]["code"] == "Authentication_MissingOrMalformed"
    assert graph.invalid_proofs == len(bad)
    assert len(app.certificates) == 1, "no refused addKey added anything"

    good = _graph_call(
        graph,
        tls,
        "POST",
        path,
        _add_key_body(new, proof_of_possession(key, cert, app.id, now).reveal()),
    )
    assert good.status_code == 200
    added = good.json()
    sha1 = new.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 (Graph's thumbprint)
    assert added["customKeyIdentifier"] == sha1
    assert added["key"] is None
    assert [c.thumbprint for c in app.certificates][-1] == sha1


def test_the_double_answers_removekey_of_an_unknown_keyid_with_404_and_patch_needs_keys(
    graph: GraphDouble, tls: TlsFiles, app: StoredApplication
) -> None:
    now = datetime.now(UTC)
    key, cert = _self_signed(now)
    held = graph.seed_certificate(app, "by hand", certificate=cert)
    proof = proof_of_possession(key, cert, app.id, now).reveal()
    gone = _graph_call(
        graph,
        tls,
        "POST",
        f"applications/{app.id}/removeKey",
        {"keyId": "00000000-0000-4000-8000-000000000000", "proof": proof},
    )
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "Request_ResourceNotFound"

    listed = _graph_call(graph, tls, "GET", f"applications/{app.id}?$select=keyCredentials")
    [read] = listed.json()["keyCredentials"]
    assert base64.b64decode(read["key"]) == cert.public_bytes(serialization.Encoding.DER)
    plain = _graph_call(graph, tls, "GET", f"applications/{app.id}")
    assert plain.json()["keyCredentials"][0]["key"] is None, "the key only with $select"

    keyless = {**read, "key": None}
    refused = _graph_call(
        graph, tls, "PATCH", f"applications/{app.id}", {"keyCredentials": [keyless]}
    )
    assert refused.status_code == 400
    assert [c.key_id for c in app.certificates] == [held.key_id]
    emptied = _graph_call(graph, tls, "PATCH", f"applications/{app.id}", {"keyCredentials": []})
    assert emptied.status_code == 204
    assert app.certificates == [], "an update replaces the whole collection"


# --- rotations ----------------------------------------------------------------------------


def test_first_certificate_by_patch_then_addkey_then_removekey_after_grace_under_lag_and_throttling(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    """A certificate signs in only 5 s after it was added and a removed one for 3 s
    after; Graph throttles writes. The first certificate goes in by an update (no key
    to prove with), the second by addKey proven with the first's key; after grace the
    first is removed by removeKey, proven refused, and the others were never touched."""
    by_hand = graph.seed_password(
        app, "kept", start=datetime.now(UTC), end=datetime.now(UTC) + timedelta(days=9)
    )
    clock = FakeClock(datetime.now(UTC))
    _on_fake_time(graph, clock)
    graph.sign_in_delay, graph.removal_delay = 5, 3

    def rotate() -> RotationState:
        _, state = asyncio.run(
            rotations.rotate(store, NAME, actor="test", context=clock.context(env))
        )
        return state

    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, method="patch"))).exit_code == 0
    assert rotate() == RotationState.COMPLETED
    first = _published(tmp_path)
    [first_cert] = app.certificates
    assert graph.patches == 1
    assert graph.proofs == []

    assert cli("apply", "-f", str(_estate(tmp_path, graph, app))).exit_code == 0
    graph.throttle(2, retry_after=2)
    assert rotate() == RotationState.GRACE
    second = _published(tmp_path)
    assert second != first
    assert len(app.certificates) == 2, "old and new certificate are both valid during grace"
    assert graph.patches == 1, "addKey, not an update"
    assert len(graph.proofs) == 1
    assert graph.invalid_proofs == 0
    assert clock.sleeps.count(2.0) >= 2, "Retry-After was waited out on the context clock"
    assert _signs_in(graph, tls, app.app_id, first)
    assert _signs_in(graph, tls, app.app_id, second)

    clock.advance(timedelta(hours=1))
    [(_, _, final)] = asyncio.run(rotations.resume(store, actor="test", context=clock.context(env)))
    assert final == RotationState.COMPLETED
    [kept] = app.certificates
    assert kept.key_id != first_cert.key_id
    assert graph.removed_key_ids == [first_cert.key_id]
    assert len(graph.proofs) == 2
    assert graph.invalid_proofs == 0
    assert [p.key_id for p in app.passwords] == [by_hand.key_id], "client secrets untouched"
    assert _signs_in(graph, tls, app.app_id, second)
    assert not _signs_in(graph, tls, app.app_id, first)

    rows = versions(store, NAME)
    assert [r.status for r in rows] == ["revoked", "current"]
    assert [r.attributes["key_id"] for r in rows] == [first_cert.key_id, kept.key_id]
    cert = x509.load_pem_x509_certificate(second[1].encode())
    assert rows[1].fingerprint == "sha256:" + cert.fingerprint(hashes.SHA256()).hex()
    assert rows[1].expires_at is not None
    assert rows[1].expires_at.replace(tzinfo=UTC) == cert.not_valid_after_utc
    assert rows[1].attributes["sha1_thumbprint"] == kept.thumbprint
    for rotation in rotations_of(store, NAME):
        [proving] = [s for s in steps(store, rotation.id) if s.name == "proving"]
        assert proving.detail["attempts"] > 1, "the first sign-ins were refused as not yet"
        assert proving.detail["waited_s"] >= 5
    [revoking] = [s for s in steps(store, rotations_of(store, NAME)[-1].id) if s.name == "revoking"]
    assert revoking.detail["key_id"] == first_cert.key_id
    assert revoking.detail["revocation_proof"].startswith("refused")
    assert "90 minutes" in revoking.detail["tokens"]


def test_addkey_without_a_held_current_certificate_fails_before_changing_the_app_naming_patch(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    _, cert = _self_signed(datetime.now(UTC))
    graph.seed_certificate(app, "by hand", certificate=cert)
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app))).exit_code == 0

    rotated = cli("rotate", NAME)

    assert rotated.exit_code != 0
    assert "method: patch" in rotated.output
    assert len(app.certificates) == 1
    assert graph.proofs == []
    assert rotations_of(store, NAME)[-1].state == RotationState.FAILED.value


def test_a_failed_check_rolls_back_and_the_new_certificate_is_removed_when_its_retention_ends(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, method="patch"))).exit_code == 0
    assert cli("rotate", NAME).exit_code == 0
    first = _published(tmp_path)
    [first_cert] = app.certificates
    failing = {
        "type": "command_check",
        "order": 20,
        "on_failure": "abort",
        "config": {"argv": ["false"]},
    }
    estate = _estate(tmp_path, graph, app, actions=[failing])
    assert cli("apply", "-f", str(estate)).exit_code == 0

    rotated = cli("rotate", NAME)

    assert rotated.exit_code != 0
    rotation = rotations_of(store, NAME)[-1]
    assert rotation.state == RotationState.ROLLED_BACK.value
    assert _published(tmp_path) == first, "the consumer holds the old key again"
    assert len(app.certificates) == 2, "the new certificate is kept disabled for analysis"
    new_key_id = versions(store, NAME)[-1].attributes["key_id"]

    clock = FakeClock(datetime.now(UTC) + timedelta(days=8))
    graph.now = clock.now
    asyncio.run(rotations.retire_disabled(store, actor="test", context=clock.context(env)))
    assert [c.key_id for c in app.certificates] == [first_cert.key_id]
    assert graph.removed_key_ids == [new_key_id], "removeKey, proven with the new key itself"
    assert graph.invalid_proofs == 0
    assert _signs_in(graph, tls, app.app_id, first)


def test_crash_after_addkey_leaves_exactly_one_certificate_of_the_rotation_after_resume(
    graph: GraphDouble,
    tls: TlsFiles,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, method="patch"))).exit_code == 0
    assert cli("rotate", NAME).exit_code == 0
    [first_cert] = app.certificates
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app))).exit_code == 0
    graph.sign_in_delay, graph.removal_delay = 2, 1

    crashed = run_subprocess(
        ["rotate", NAME, "--grace", "0s"], {**env, "KEYSHIFT_TEST_CRASH_AT": "creating:issuer"}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    [orphan] = [c for c in app.certificates if c.key_id != first_cert.key_id]
    assert orphan.display_name
    assert orphan.display_name.startswith("keyshift ")

    resumed = run_subprocess(["resume"], env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert rotations_of(store, NAME)[-1].state == RotationState.COMPLETED.value
    [kept] = app.certificates
    assert kept.display_name == orphan.display_name, "one certificate of that rotation"
    assert kept.key_id not in (first_cert.key_id, orphan.key_id)
    assert graph.removed_key_ids == [orphan.key_id, first_cert.key_id]
    assert graph.invalid_proofs == 0
    assert versions(store, NAME)[-1].attributes["key_id"] == kept.key_id
    assert _signs_in(graph, tls, app.app_id, _published(tmp_path))


def test_no_private_key_or_proof_reaches_logs_cli_output_audit_export_or_the_journal(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    debug = {**env, "KEYSHIFT_LOG_LEVEL": "DEBUG"}
    outputs: dict[str, str] = {}
    keys: set[str] = set()

    def run(*args: str) -> None:
        proc = run_subprocess(list(args), debug)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        outputs[f"stdout of `{' '.join(args)}`"] = proc.stdout
        outputs[f"stderr of `{' '.join(args)}`"] = proc.stderr

    run("apply", "-f", str(_estate(tmp_path, graph, app, method="patch")))
    run("rotate", NAME)
    keys.add(_key_body(_published(tmp_path)[0]))
    run("apply", "-f", str(_estate(tmp_path, graph, app)))
    for _ in range(2):  # addKey, then removeKey of the first certificate at once
        run("rotate", NAME, "--grace", "0s")
        keys.add(_key_body(_published(tmp_path)[0]))
    for command in (
        ("status", "-o", "json"),
        ("versions", NAME, "-o", "json"),
        ("history", NAME),
        ("show", rotations_of(store, NAME)[-1].id, "-o", "json"),
        ("audit", "export", "--format", "jsonl"),
    ):
        run(*command)
    assert len(keys) == 3
    assert len(graph.proofs) == 4, "two addKey and two removeKey proofs"
    journal = {
        f"steps[{s.id}]": json.dumps(s.detail) + (s.error or "")
        for r in rotations_of(store, NAME)
        for s in steps(store, r.id)
    }
    proofs = {p.rsplit(".", 1)[-1] for p in graph.proofs}  # each proof's own signature
    shown = outputs[f"stdout of `versions {NAME} -o json`"]
    assert versions(store, NAME)[-1].attributes["thumbprint"] in shown, "public facts are shown"
    assert "self-signed by keyshift" in shown
    assert _leaked_into({**outputs, **journal}, keys | proofs) == []


def test_entra_sync_marks_the_certificates_keyshift_manages_and_not_the_apps_secrets(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    now = datetime.now(UTC)
    secret = graph.seed_password(app, "by hand", start=now, end=now + timedelta(days=60))
    _, cert = _self_signed(now)
    portal = graph.seed_certificate(app, "by hand", certificate=cert)
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, method="patch"))).exit_code == 0
    assert cli("rotate", NAME).exit_code == 0
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app))).exit_code == 0
    assert cli("rotate", NAME).exit_code == 0
    synced = cli("entra", "sync")
    assert synced.exit_code == 0, synced.output

    creds = {c.key_id: c for c in entra.inventory(store, now=now)}
    old, new = (v.attributes["key_id"] for v in versions(store, NAME))
    assert {k for k, c in creds.items() if c.by_keyshift} == {old, new}
    assert creds[old].state == Lifecycle.GRACE_PERIOD
    assert creds[new].state == Lifecycle.ACTIVE
    assert {creds[k].managed_by for k in (old, new, portal.key_id)} == {NAME}
    assert not creds[portal.key_id].by_keyshift, "the portal's certificate is not keyshift's"
    assert creds[secret.key_id].managed_by is None, "no credential rotates the app's secrets"

    # A certificate added in the portal after keyshift took the application's over.
    _, later = _self_signed(datetime.now(UTC) + timedelta(minutes=10))
    added = graph.seed_certificate(app, "added in portal", certificate=later)
    assert cli("entra", "sync").exit_code == 0
    findings = {(f.kind, f.credential.key_id) for f in entra.findings(store, now=now)}
    assert findings == {("outside_keyshift", added.key_id)}


def test_provider_keeps_the_contract_against_the_graph_double_with_patch(
    graph: GraphDouble, app: StoredApplication
) -> None:
    context = PluginContext(
        env={ADMIN_ENV: ADMIN_SECRET},
        integrations={"contoso": EntraIntegration.model_validate(graph.integration(ADMIN_ENV))},
    )
    provider = EntraCertificateProvider(
        EntraCertificateConfig(integration="contoso", app_id=app.app_id, method="patch"), context
    )
    asyncio.run(assert_provider_contract(provider))
    assert app.certificates == [], "the contract revokes what it created"


def test_a_certificate_entra_never_accepts_is_removed_and_nothing_is_published(
    graph: GraphDouble,
    app: StoredApplication,
    env: dict[str, str],
    store: Store,
    tmp_path: Path,
) -> None:
    cli = Cli(env)
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, method="patch"))).exit_code == 0
    assert cli("rotate", NAME).exit_code == 0
    first = _published(tmp_path)
    [first_cert] = app.certificates
    policy = {"grace_period": "1h", "propagation_timeout": "30s"}
    assert cli("apply", "-f", str(_estate(tmp_path, graph, app, policy=policy))).exit_code == 0
    clock = FakeClock(datetime.now(UTC))
    _on_fake_time(graph, clock)
    graph.sign_in_delay = 10**6

    _, state = asyncio.run(rotations.rotate(store, NAME, actor="test", context=clock.context(env)))

    assert state == RotationState.FAILED
    assert [c.key_id for c in app.certificates] == [first_cert.key_id]
    new_key_id = versions(store, NAME)[-1].attributes["key_id"]
    assert graph.removed_key_ids == [new_key_id], "removeKey, proven with the new key itself"
    assert graph.invalid_proofs == 0
    assert _published(tmp_path) == first, "no consumer got the unproven certificate"


def test_a_listed_certificate_is_recognised_by_key_or_by_either_form_of_its_thumbprint() -> None:
    _, cert = _self_signed(datetime.now(UTC))
    _, other = _self_signed(datetime.now(UTC))
    der = cert.public_bytes(serialization.Encoding.DER)
    sha1 = cert.fingerprint(hashes.SHA1())  # noqa: S303 (Graph's thumbprint)

    def listed(thumbprint: str | None, key: str | None = None) -> KeyCredential:
        return KeyCredential("k", None, thumbprint, "Verify", None, None, key=key)

    assert _lists(listed(None, base64.b64encode(der).decode()), cert)
    assert _lists(listed(sha1.hex().upper()), cert)
    assert _lists(listed(base64.b64encode(sha1).decode()), cert)
    assert not _lists(listed(sha1.hex().upper()), other)
    assert not _lists(listed(sha1.hex(), base64.b64encode(b"not it").decode()), cert)


def _provider(
    graph: GraphDouble, app: StoredApplication, clock: FakeClock
) -> EntraCertificateProvider:
    context = PluginContext(
        now=clock.now,
        sleep=clock.sleep,
        env={ADMIN_ENV: ADMIN_SECRET},
        integrations={"contoso": EntraIntegration.model_validate(graph.integration(ADMIN_ENV))},
    )
    config = EntraCertificateConfig(
        integration="contoso", app_id=app.app_id, sign_in_lookback="15m"
    )
    return EntraCertificateProvider(config, context)


def test_residual_use_counts_the_sign_ins_with_the_old_certificates_key_id_in_the_window(
    graph: GraphDouble, app: StoredApplication
) -> None:
    graph.roles = {"Application.ReadWrite.All", "AuditLog.Read.All"}
    clock = FakeClock(datetime.now(UTC).replace(microsecond=0))
    now = clock.now()
    old, new = "0c0c0c0c-0000-4000-8000-000000000001", "0c0c0c0c-0000-4000-8000-000000000002"
    for minutes in (1, 2, 3):
        graph.add_sign_in(app, old, at=now - timedelta(minutes=minutes), ip_address="10.9.0.1")
    graph.add_sign_in(app, new, at=now - timedelta(minutes=1))
    graph.add_sign_in(app, old, at=now - timedelta(minutes=30))  # outside the window
    provider = _provider(graph, app, clock)
    policy = Policy(residual_use=ResidualUse(check_every=timedelta(minutes=5)))
    version = IssuedVersion(f"{app.app_id}:x", Secret(""), {"key_id": old, "app_id": app.app_id})

    async def ask() -> UsageReport:
        try:
            return await provider.residual_use(UsageRequest(NAME, version, policy=policy))
        finally:
            await provider.aclose()

    report = asyncio.run(ask())

    assert Capability.RESIDUAL_USE in provider.capabilities
    assert report.sessions == 3
    assert report.detail["window"] == "20m"
    assert report.detail["ip_addresses"] == ["10.9.0.1"]
    assert report.detail["sign_ins_with_other_secrets"] == 1


def test_preflight_with_residual_use_is_blocked_without_audit_log_read_all(
    graph: GraphDouble, app: StoredApplication
) -> None:
    provider = _provider(graph, app, FakeClock(datetime.now(UTC)))

    async def check(policy: Policy | None) -> PreflightResult:
        return await provider.preflight(PreflightRequest(NAME, policy))

    async def both() -> tuple[PreflightResult, PreflightResult]:
        try:
            return await check(Policy(residual_use=ResidualUse())), await check(None)
        finally:
            await provider.aclose()

    gated, plain = asyncio.run(both())

    assert gated.readiness == Readiness.BLOCKED
    assert "AuditLog.Read.All" in gated.reason
    assert plain.readiness == Readiness.READY, plain.reason
    assert "holds 0 certificate(s)" in plain.reason
    assert "the first rotation needs `method: patch`" in plain.reason
    assert graph.graph_requests("POST") == []
