"""The worked example shipped with keyshift, and the estate platform teams already write,
stay valid as the models change."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from keyshift.engine.plugins import effective_policy
from keyshift.notify import CHANNELS
from keyshift.providers import PROVIDERS
from keyshift.service.estate import EstateWarning, load_estate, parse_estate
from keyshift.targets import TARGETS
from keyshift.targets.agent import AGENT_TYPES

EXAMPLE = Path(__file__).parents[1] / "examples" / "estate.yaml"
CERTIFICATE_EXAMPLE = Path(__file__).parents[1] / "examples" / "x509-ca.yaml"
JWKS_EXAMPLE = Path(__file__).parents[1] / "examples" / "jwks.yaml"
JWKS_OUTPUTS_EXAMPLE = Path(__file__).parents[1] / "examples" / "jwks-outputs.yaml"
ENTRA_CERTIFICATE_EXAMPLE = Path(__file__).parents[1] / "examples" / "entra-certificate.yaml"
TRUST_BUNDLE_EXAMPLE = Path(__file__).parents[1] / "examples" / "trust-bundle.yaml"
ACME_EXAMPLE = Path(__file__).parents[1] / "examples" / "acme.yaml"
KMS_EXAMPLE = Path(__file__).parents[1] / "examples" / "kms.yaml"
SHARED_EXAMPLE = Path(__file__).parents[2] / "shared" / "examples" / "estate.example.yaml"
"""What a platform team would write; the repository sits beside `shared`."""


def test_the_worked_example_estate_validates_and_covers_every_provider() -> None:
    estate = load_estate(EXAMPLE)
    assert {c.provider.type for c in estate.credentials} == set(PROVIDERS)
    kinds = {a.type for c in estate.credentials for a in c.actions}
    assert kinds == set(TARGETS)
    assert {c.type for c in estate.notifications.channels} == set(CHANNELS)


def test_the_internal_ca_example_validates_and_renews_renew_before_the_not_after() -> None:
    estate = load_estate(CERTIFICATE_EXAMPLE)
    [credential] = estate.credentials
    assert credential.provider.type == "x509_ca"
    formats = [a.config.get("file_format") for a in credential.actions if a.type == "file"]
    assert formats == ["pem", "pkcs12"]
    effective = effective_policy(
        estate.policy_for(credential), credential.provider.type, credential.provider.config()
    )
    assert estate.policy_for(credential).rotate_before_expiry == timedelta(days=30)
    assert effective.rotate_before_expiry == timedelta(days=21)


def test_the_acme_example_validates_with_both_challenges_and_renews_renew_before() -> None:
    estate = load_estate(ACME_EXAMPLE)
    www, wildcard = estate.credentials
    assert {www.provider.type, wildcard.provider.type} == {"acme"}
    assert www.provider.config()["challenge"]["type"] == "http-01"
    assert wildcard.provider.config()["challenge"]["type"] == "dns-01"
    assert wildcard.provider.config()["domains"][0].startswith("*.")
    for credential in (www, wildcard):
        effective = effective_policy(
            estate.policy_for(credential), credential.provider.type, credential.provider.config()
        )
        assert effective.rotate_before_expiry == timedelta(days=30)


def test_the_jwks_example_validates_and_publishes_the_jwks_before_the_signer() -> None:
    estate = load_estate(JWKS_EXAMPLE)
    [credential] = estate.credentials
    assert credential.provider.type == "jwks_signing_key"
    publishing = sorted(
        (a.order, a.config.get("file_format")) for a in credential.actions if a.type == "file"
    )
    assert [fmt for _, fmt in publishing] == ["jwks", "json"]
    assert any(a.type == "command_check" for a in credential.actions)


def test_the_jwks_outputs_example_validates_and_publishes_every_jwks_before_the_signer() -> None:
    estate = load_estate(JWKS_OUTPUTS_EXAMPLE)
    [credential] = estate.credentials
    assert credential.provider.type == "jwks_signing_key"
    order = {a.type: a.order for a in credential.actions}
    outputs = ("kubernetes_configmap", "jwks_webhook", "jwks_serve")
    assert all(order[kind] < order["file"] for kind in outputs)


def test_the_entra_certificate_example_validates_and_renews_renew_before_the_not_after() -> None:
    estate = load_estate(ENTRA_CERTIFICATE_EXAMPLE)
    [credential] = estate.credentials
    assert credential.provider.type == "entra_certificate"
    assert credential.provider.config()["method"] == "add_key"
    effective = effective_policy(
        estate.policy_for(credential), credential.provider.type, credential.provider.config()
    )
    assert effective.rotate_before_expiry == timedelta(days=30)
    [pem] = [a for a in credential.actions if a.type == "file"]
    assert pem.config["file_format"] == "pem"


def test_the_kms_example_validates_and_moves_the_alias_after_every_rewrap() -> None:
    estate = load_estate(KMS_EXAMPLE)
    [credential] = estate.credentials
    assert credential.provider.type == "kms_key"
    assert credential.provider.config()["alias"] == "alias/orders-data"
    kinds = [a.type for a in sorted(credential.actions, key=lambda a: a.order)]
    assert kinds == ["kms_rewrap", "kms_rewrap", "kms_alias"]
    assert all(a.on_failure == "abort" for a in credential.actions)


def test_the_trust_bundle_example_validates_with_two_leaves_signed_by_its_ca() -> None:
    estate = load_estate(TRUST_BUNDLE_EXAMPLE)
    ca, *leaves = estate.credentials
    assert ca.provider.type == "trust_bundle"
    formats = {a.config.get("file_format") for a in ca.actions if a.type == "file"}
    assert formats == {"pem_bundle"}
    configmaps = [a.config for a in ca.actions if a.type == "kubernetes_configmap"]
    assert [c.get("format") for c in configmaps] == ["pem_bundle"]
    assert [leaf.provider.type for leaf in leaves] == ["x509_ca", "x509_ca"]
    for leaf in leaves:
        config = leaf.provider.config()
        assert config["ca_key_from"] == config["ca_cert_from"] == f"credential:{ca.name}"


def test_the_estate_platform_teams_write_validates_in_the_shapes_they_use() -> None:
    # A missing file fails here rather than skipping: the test would otherwise prove nothing.
    assert SHARED_EXAMPLE.is_file(), f"{SHARED_EXAMPLE} is missing"
    data: dict[str, Any] = yaml.safe_load(SHARED_EXAMPLE.read_text(encoding="utf-8"))
    warnings: list[EstateWarning] = []

    estate = parse_estate(data, warnings)

    # The shared policy's residual_use holds for the Entra credential too: keyshift reads
    # sign-ins with the old client secret's keyId from Entra ID's sign-in log.
    policies = {c.name: estate.policy_for(c) for c in estate.credentials}
    gate = policies["billing-api-entra-secret"].residual_use
    assert gate is not None
    assert (gate.check_every, gate.quiet_for, gate.on_timeout) == (
        timedelta(seconds=30),
        timedelta(minutes=10),
        "fail",
    )
    # The host agent it names is not declared as an integration: its two actions are
    # accepted as written, each with a warning, and are manual review until it is.
    agent = "11111111-1111-1111-1111-111111111111"
    assert [w.path for w in warnings] == [
        "credentials[0].actions[1].agent_id",
        "credentials[0].actions[2].agent_id",
    ]
    assert all(f"no agent integration with agent_id {agent}" in w.message for w in warnings)
    assert {a.agent_id for a in estate.credentials[0].actions if a.type in AGENT_TYPES} == {agent}
    actions = {(c.name, a.type): a.config for c in estate.credentials for a in c.actions}
    # Key Vault without `integration`: the estate's one entra integration.
    assert actions["billing-api-entra-secret", "azure_keyvault"]["integration"] == "contoso-entra"
    assert actions["payments-db-app", "kubernetes_secret"]["keys"] == {
        "DB_USER": "username",
        "DB_PASSWORD": "password",
    }
    assert actions["payments-db-app", "kubernetes_rollout_restart"]["deployment"] == "payments-api"


CODE_SIGNING_EXAMPLE = Path(__file__).parents[1] / "examples" / "code-signing-thumbprints.yaml"


def test_the_code_signing_example_validates_and_lists_thumbprints_before_the_signer() -> None:
    estate = load_estate(CODE_SIGNING_EXAMPLE)
    [credential] = estate.credentials
    assert credential.provider.type == "x509_ca"
    assert credential.provider.config()["extended_key_usage"] == ["code_signing"]
    actions = sorted(credential.actions, key=lambda a: a.order)
    lists = [
        a
        for a in actions
        if a.type == "thumbprints_webhook" or a.config.get("file_format") == "thumbprints"
    ]
    signer = next(a for a in actions if a.config.get("file_format") == "pem")
    assert len(lists) == 3
    assert all(a.order < signer.order for a in lists)
    assert {a.config.get("thumbprints", {}).get("format") for a in lists} == {"json", "env", None}
