"""`azure_keyvault` with `object: certificate`: x509_ca leaves imported into the local Key
Vault double through the real azure-keyvault-certificates SDK, over TLS, signed in with
azure-identity tokens from the Graph double."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import ValidationError

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.domain.states import RotationState
from keyshift.errors import PermanentError
from keyshift.service import rotations
from keyshift.store.store import Store
from keyshift.targets.azure_keyvault import AzureKeyVaultConfig, AzureKeyVaultTarget
from keyshift.targets.base import Delivery, PublishRequest, RollbackRequest, StepResult
from keyshift.testing import FakeClock, capture_logs
from tests.certs import Ca, cert_delivery, issue, leaf_provider, make_ca
from tests.conftest import ADMIN_ENV, ADMIN_SECRET, Cli
from tests.doubles.graph import GraphDouble
from tests.doubles.keyvault import PEM, PKCS12, VAULT_SCOPE, KeyVaultDouble
from tests.doubles.tls import TlsFiles
from tests.helpers import rotations_of, save_estate, steps, value_of, versions

CERT_NAME = "web-tls"
NAME = "web-tls"


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def graph(tls: TlsFiles) -> Iterator[GraphDouble]:
    with GraphDouble(tls, client_secret=ADMIN_SECRET) as double:
        double.scopes.add(VAULT_SCOPE)
        yield double


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca(tmp_path: Path, clock: FakeClock) -> Ca:
    return make_ca(tmp_path / "ca", at=clock.now())


def _integration(graph: GraphDouble, tls: TlsFiles) -> dict[str, Any]:
    return {
        "tenant_id": graph.tenant_id,
        "client_id": graph.client_id,
        "auth": {"method": "client_secret", "secret_from": f"env:{ADMIN_ENV}"},
        "authority": graph.authority,
        "graph_url": graph.graph_url,
        "ca_bundle": str(tls.ca_path),
    }


def _config(vault: KeyVaultDouble, **extra: Any) -> dict[str, Any]:
    return {
        "integration": "contoso",
        "vault_url": vault.vault_url,
        "object": "certificate",
        "certificate_name": CERT_NAME,
        "verify_challenge_resource": False,
        **extra,
    }


def target(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock, **extra: Any
) -> AzureKeyVaultTarget:
    context = PluginContext(
        now=clock.now,
        sleep=clock.sleep,
        env={ADMIN_ENV: ADMIN_SECRET},
        integrations={"contoso": EntraIntegration.model_validate(_integration(graph, tls))},
    )
    return AzureKeyVaultTarget(AzureKeyVaultConfig.model_validate(_config(vault, **extra)), context)


def sha1(pem: str) -> str:
    return x509.load_pem_x509_certificate(pem.encode()).fingerprint(hashes.SHA1()).hex()  # noqa: S303


def leaf(ca: Ca, clock: FakeClock, version_id: str) -> Delivery:
    return cert_delivery(issue(ca, at=clock.now()), version_id)


def publish(t: AzureKeyVaultTarget, new: Delivery) -> StepResult:
    return asyncio.run(t.publish(PublishRequest(new, None)))


def rollback(t: AzureKeyVaultTarget, failed: Delivery, previous: Delivery | None) -> StepResult:
    return asyncio.run(t.rollback(RollbackRequest(failed, previous)))


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"certificate_name": None}, "certificate_name is required"),
        ({"secret_name": "s"}, "secret_name is for object: secret"),
        ({"content_type": "text/plain"}, "content_type is for object: secret"),
        ({"expires_after": "90d"}, "expires_after is for object: secret"),
        ({"certificate_name": "web_tls"}, "letters, digits and '-'"),
        ({"certificate_format": "der"}, "certificate_format"),
    ],
)
def test_certificate_config_names_the_field_it_refuses(
    vault: KeyVaultDouble, extra: dict[str, Any], message: str
) -> None:
    config = {k: v for k, v in {**_config(vault), **extra}.items() if v is not None}
    with pytest.raises(ValidationError, match=message):
        AzureKeyVaultConfig.model_validate(config)


def test_a_certificate_object_for_a_credential_without_certificates_is_refused_at_apply(
    ks_env: dict[str, str], tmp_path: Path, vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles
) -> None:
    estate = {
        "integrations": [{"name": "contoso", "type": "entra", **_integration(graph, tls)}],
        "credentials": [
            {
                "name": "api-key",
                "owner": "team-web",
                "provider": {"type": "random"},
                "actions": [{"type": "azure_keyvault", "order": 10, "config": _config(vault)}],
            }
        ],
    }

    applied = Cli(ks_env)("apply", "-f", str(save_estate(tmp_path, estate)))

    assert applied.exit_code != 0
    assert "credentials[0].actions[0].config.object" in applied.output
    assert "object: certificate works for acme, entra_certificate, x509_ca" in applied.output
    assert "api-key is random" in applied.output


# --- publish and rollback through the SDK -----------------------------------------------------


@pytest.mark.parametrize(("fmt", "content_type"), [("pkcs12", PKCS12), ("pem", PEM)])
def test_publish_imports_key_certificate_and_chain_and_reads_the_thumbprint_back(
    vault: KeyVaultDouble,
    graph: GraphDouble,
    tls: TlsFiles,
    clock: FakeClock,
    ca: Ca,
    fmt: str,
    content_type: str,
) -> None:
    new = leaf(ca, clock, "v1")
    t = target(vault, graph, tls, clock, certificate_format=fmt, exportable=False)

    result = publish(t, new)

    [stored] = vault.certificate_versions(CERT_NAME)
    assert stored.thumbprint == sha1(new.attributes["certificate"])
    assert [c.subject for c in stored.chain] == [ca.cert.subject]
    assert (stored.content_type, stored.exportable, stored.enabled) == (content_type, False, True)
    assert stored.tags["keyshift-version"] == "v1"
    assert result.detail["key_vault_version"] == stored.version
    assert result.detail["x509_thumbprint"] == stored.thumbprint
    [post] = vault.logged("POST")
    assert post.path == f"/certificates/{CERT_NAME}/import"
    assert [r.path for r in vault.logged("GET")][-1] == (
        f"/certificates/{CERT_NAME}/{stored.version}"
    ), "publish read the imported version back"


def test_publishing_the_same_certificate_again_imports_nothing(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock, ca: Ca
) -> None:
    t = target(vault, graph, tls, clock)
    new = leaf(ca, clock, "v1")
    first = publish(t, new)

    again = publish(t, new)

    assert len(vault.certificate_versions(CERT_NAME)) == 1
    assert again.detail["key_vault_version"] == "unchanged"
    assert again.detail["current_version"] == first.detail["key_vault_version"]


def test_rollback_without_a_previous_certificate_disables_the_imported_one(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock, ca: Ca
) -> None:
    t = target(vault, graph, tls, clock)
    failed = leaf(ca, clock, "v1")
    publish(t, failed)

    result = rollback(t, failed, None)
    again = rollback(t, failed, None)

    [stored] = vault.certificate_versions(CERT_NAME)
    assert not stored.enabled
    assert result.detail["action"] == "disabled"
    assert again.detail["action"] == "none"


def test_rollback_leaves_a_certificate_someone_else_imported_since(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock, ca: Ca
) -> None:
    t = target(vault, graph, tls, clock)
    before, failed, other = (leaf(ca, clock, v) for v in ("v1", "v2", "v3"))
    publish(t, before)
    publish(t, failed)
    publish(t, other)

    result = rollback(t, failed, before)

    assert result.detail["action"] == "none"
    assert len(vault.certificate_versions(CERT_NAME)) == 3


def test_a_refused_import_names_the_certificates_permission(
    vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, clock: FakeClock, ca: Ca
) -> None:
    vault.revoke(graph.client_id, "certificates/import")

    with pytest.raises(PermanentError, match="lacks the certificates import permission"):
        publish(target(vault, graph, tls, clock), leaf(ca, clock, "v1"))


# --- through the engine -------------------------------------------------------------------------


def _estate(
    ca: Ca, vault: KeyVaultDouble, graph: GraphDouble, tls: TlsFiles, check: list[str]
) -> dict[str, Any]:
    return {
        "integrations": [{"name": "contoso", "type": "entra", **_integration(graph, tls)}],
        "credentials": [
            {
                "name": NAME,
                "owner": "team-web",
                "policy": {"grace_period": "0s"},
                "provider": leaf_provider(ca, validity="90d", renew_before="20d"),
                "actions": [
                    {
                        "type": "azure_keyvault",
                        "order": 10,
                        "on_failure": "abort",
                        "config": _config(vault),
                    },
                    {
                        "type": "command_check",
                        "order": 20,
                        "on_failure": "abort",
                        "config": {"argv": check},
                    },
                ],
            }
        ],
    }


def test_a_leaf_rotation_imports_into_key_vault_and_a_failed_check_puts_the_old_one_back(
    ks_env: dict[str, str],
    store: Store,
    tmp_path: Path,
    vault: KeyVaultDouble,
    graph: GraphDouble,
    tls: TlsFiles,
    clock: FakeClock,
    ca: Ca,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    env = {**ks_env, ADMIN_ENV: ADMIN_SECRET}
    cli = Cli(env)
    estate = _estate(ca, vault, graph, tls, ["true"])
    assert cli("apply", "-f", str(save_estate(tmp_path, estate))).exit_code == 0
    vault.fail_next(1, 429, retry_after=7, methods=("POST",))

    with capture_logs() as events:
        _, state = asyncio.run(
            rotations.rotate(store, NAME, actor="test", context=clock.context(env))
        )

        assert state == RotationState.COMPLETED
        assert 7.0 in clock.sleeps, "the throttled import was retried after its Retry-After"
        [first] = versions(store, NAME)
        [imported] = vault.certificate_versions(CERT_NAME)
        assert imported.thumbprint == sha1(first.attributes["certificate"])
        assert [c.subject for c in imported.chain] == [ca.cert.subject]
        throttled = [r for r in vault.logged("POST") if r.status == 429]
        assert len(throttled) == 1

        # The next rotation's check fails: Key Vault's current certificate is the old one again.
        failing = _estate(ca, vault, graph, tls, ["false"])
        assert cli("apply", "-f", str(save_estate(tmp_path, failing))).exit_code == 0
        _, state = asyncio.run(
            rotations.rotate(store, NAME, actor="test", context=clock.context(env))
        )

    assert state != RotationState.COMPLETED
    second = versions(store, NAME)[-1]
    assert second.id != first.id
    old, new, restored = vault.certificate_versions(CERT_NAME)
    assert new.thumbprint == sha1(second.attributes["certificate"]) != old.thumbprint
    current = vault.current_certificate(CERT_NAME)
    assert current is restored
    assert restored.thumbprint == old.thumbprint
    assert restored.tags["keyshift-restored-version"] == first.id
    assert [c.subject for c in restored.chain] == [ca.cert.subject]

    # No private key in logs, step details, errors or the audit trail.
    keys = [value_of(store, first), value_of(store, second)]
    journal = [
        repr((s.detail, s.error)) for r in rotations_of(store, NAME) for s in steps(store, r.id)
    ]
    export = cli("audit", "export", "--format", "jsonl").output
    assert events
    assert restored.version in export
    for text in [*journal, export, caplog.text, repr(events), repr(vault.requests)]:
        for key in keys:
            body = key.strip().splitlines()[1]
            assert body not in text
