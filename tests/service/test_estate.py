"""The estate file through `keyshift plan` / `apply`: refusals with field paths, plans, removal.

Every test here runs on SQLite and on a real PostgreSQL (the `cli` and `store` fixtures).
"""

from __future__ import annotations

import re
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from keyshift.store.models import (
    AuditEntry,
    CredentialRow,
    EstateRevision,
    IntegrationRow,
    RotationRow,
    VersionRow,
)
from keyshift.store.store import Store
from tests.helpers import env_value, rotations_of, steps

REFUSED = 2

# --- builders and reads of the store --------------------------------------------------------


def file_action(order: int, path: Path | str, key: str = "API_KEY", **extra: Any) -> dict[str, Any]:
    """An env-file action at `order`; `extra` overrides action fields (on_failure, config)."""
    action: dict[str, Any] = {
        "type": "file",
        "order": order,
        "on_failure": "abort",
        "config": {"path": str(path), "key": key, "file_format": "env"},
    }
    action.update(extra)
    return action


SMOKE_TEST: dict[str, Any] = {
    "type": "command_check",
    "order": 90,
    "on_failure": "abort",
    "config": {"argv": [sys.executable, "-c", "pass"]},
}
"""A post-cutover check: a `prod` credential needs one (`require_checks`)."""


def credential(name: str, actions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """A `prod` credential delivered by `actions`, then checked by `SMOKE_TEST`."""
    return {
        "name": name,
        "owner": "team-billing",
        "environment": "prod",
        "provider": {"type": "random", "length": 32},
        "actions": [*actions, SMOKE_TEST],
        **extra,
    }


def write_yaml(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def valid_estate(tmp_path: Path) -> dict[str, Any]:
    """Two credentials, each delivered to an env file in tmp_path (so rotations succeed)."""
    return {
        "policies": [{"name": "prod-default", "grace_period": "1h", "max_lifetime": "90d"}],
        "credentials": [
            credential(
                "billing-api-key",
                [
                    file_action(10, tmp_path / "billing.env"),
                    file_action(20, tmp_path / "billing-worker.env", key="BILLING_KEY"),
                ],
                policy="prod-default",
            ),
            credential("reports-token", [file_action(10, tmp_path / "reports.env")]),
        ],
    }


@dataclass(frozen=True)
class StoreState:
    """What an estate apply may change: evidence counts and the declared rows, field by field."""

    audit_entries: int
    estate_revisions: int
    credentials: tuple[tuple[Any, ...], ...]
    integrations: tuple[tuple[Any, ...], ...]


def store_state(store: Store) -> StoreState:
    with store.transaction() as s:
        audit_entries = s.scalar(select(func.count()).select_from(AuditEntry))
        revisions = s.scalar(select(func.count()).select_from(EstateRevision))
        creds = tuple(
            (
                c.id,
                c.name,
                c.owner,
                c.environment,
                c.provider_type,
                c.spec,
                c.digest,
                c.auto_rotate,
                c.scheduled,
                c.active_rotation_id,
                c.created_at,
                c.updated_at,
                c.removed_at,
            )
            for c in s.scalars(select(CredentialRow).order_by(CredentialRow.name))
        )
        integrations = tuple(
            (i.name, i.type, i.config, i.updated_at)
            for i in s.scalars(select(IntegrationRow).order_by(IntegrationRow.name))
        )
    return StoreState(audit_entries or 0, revisions or 0, creds, integrations)


def credential_row(store: Store, name: str) -> CredentialRow:
    with store.transaction() as s:
        row = s.scalars(select(CredentialRow).where(CredentialRow.name == name)).one()
        s.expunge(row)
    return row


def error_lines(output: str) -> list[tuple[str, str]]:
    """Each `error: <field path>: <message>` line as (path, message)."""
    out = []
    for line in output.splitlines():
        if line.startswith("error: "):
            path, _, message = line.removeprefix("error: ").partition(": ")
            out.append((path, message))
    return out


def plan_lines(output: str) -> list[str]:
    """The change lines of a plan or apply, with runs of spaces collapsed."""
    return [
        re.sub(r"\s+", " ", line.strip())
        for line in output.splitlines()
        if line[:2] in ("+ ", "~ ", "- ")
    ]


# --- refused estate files -----------------------------------------------------------------

GOOD_CREDENTIAL = """\
  - name: billing-api-key
    provider: {type: random, length: 32}
    actions:
      - type: file
        order: 10
        config: {path: /srv/billing/app.env, key: API_KEY, file_format: env}
"""


def case(yaml_text: str, *expected: tuple[str, str], id: str) -> Any:
    """A malformed estate file and the (field path, message fragment) of each problem in it."""
    return pytest.param(textwrap.dedent(yaml_text), list(expected), id=id)


MALFORMED = [
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random, length: 32
            actions: []
        """,
        ("line 4", "(YAML syntax)"),
        id="yaml-syntax-error-names-its-line",
    ),
    case(
        """\
        - name: billing-api-key
          provider: {type: random}
        """,
        ("(top level)", "must be a mapping with credentials"),
        id="top-level-list-is-refused",
    ),
    case(
        "just a string\n",
        ("(top level)", "must be a mapping with credentials"),
        id="top-level-scalar-is-refused",
    ),
    case(
        "credential:\n" + GOOD_CREDENTIAL,
        ("credential", "is not a known field"),
        id="misspelt-top-level-key-is-unknown",
    ),
    case(
        """\
        credentials:
          - owner: team-billing
            provider: {type: random}
        """,
        ("credentials[0].name", "is required"),
        id="credential-without-name",
    ),
    case(
        "credentials:\n"
        + GOOD_CREDENTIAL
        + "  - name: Reports Token\n"
        + "    provider: {type: random}\n",
        ("credentials[1].name", "must use lowercase letters, digits, '.', '_' or '-'"),
        id="credential-name-with-capitals-and-space",
    ),
    case(
        "credentials:\n" + GOOD_CREDENTIAL + GOOD_CREDENTIAL,
        ("credentials[1].name", "'billing-api-key' is declared twice"),
        id="duplicate-credential-names",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
        """,
        ("credentials[0].provider", "is required"),
        id="credential-without-provider",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: hashicorp_vault}
        """,
        (
            "credentials[0].provider.type",
            "unknown provider type 'hashicorp_vault'; "
            "known: acme, entra_certificate, entra_client_secret, jwks_signing_key, kms_key, "
            "postgres, random, redis",
        ),
        id="unknown-provider-type-lists-known-ones",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random, length: 8}
        """,
        ("credentials[0].provider.length", "greater than or equal to 16"),
        id="random-length-below-minimum",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random, size: 40}
        """,
        ("credentials[0].provider.size", "is not a known field"),
        id="unknown-provider-field",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: sftp_upload, order: 10, config: {host: files.internal}}
        """,
        (
            "credentials[0].actions[0].type",
            "unknown action type 'sftp_upload'; known: ",
        ),
        id="unknown-action-type-lists-known-ones",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {path: /srv/a.env, key: K, file_format: env}}
              - {type: command, config: {argv: [systemctl, reload, billing]}}
        """,
        ("credentials[0].actions[1].order", "is required"),
        id="action-without-order",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: -5, config: {path: /srv/a.env, key: K, file_format: env}}
        """,
        ("credentials[0].actions[0].order", "greater than or equal to 0"),
        id="negative-action-order",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {path: /srv/a.env, key: K, file_format: env}}
              - {type: command, order: 10, config: {argv: [systemctl, reload, billing]}}
        """,
        ("credentials[0].actions", "two actions have order 10 (file and command)"),
        id="two-actions-with-the-same-order",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 10, consumer: web, config: {path: /a, key: K, file_format: env}}
              - {type: command, order: 10, consumer: web, config: {argv: [systemctl, reload, web]}}
        """,
        ("credentials[0].actions", "two actions of consumer web have order 10 (file and command)"),
        id="two-actions-of-one-named-consumer-with-the-same-order",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 20, config: {path: /srv/a.env, key: K, file_format: env}}
              - {type: command, order: 10, config: {argv: [systemctl, reload, billing]}}
        """,
        (
            "credentials[0].actions[1].order",
            "command (reload) at order 10 comes before file (publish) at order 20; "
            "publish first, then reload, then notify",
        ),
        id="reload-ordered-before-the-publish-of-its-consumer",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {path: /srv/a.env, key: K, file_format: env}}
              - {type: command, order: 30, config: {argv: [systemctl, reload, billing]}}
              - {type: webhook, order: 20, config: {url: "https://hooks.internal/rotations"}}
        """,
        (
            "credentials[0].actions[2].order",
            "webhook (notify) at order 20 comes before command (reload) at order 30; "
            "publish first, then reload, then notify",
        ),
        id="notify-ordered-before-a-reload-of-its-consumer",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 10, consumer: web, config: {path: /w, key: K, file_format: env}}
              - {type: file, order: 30, consumer: api, config: {path: /a, key: K, file_format: env}}
              - {type: command, order: 20, consumer: api, config: {argv: [systemctl, reload, api]}}
              - {type: command, order: 20, consumer: web, config: {argv: [systemctl, reload, web]}}
        """,
        (
            "credentials[0].actions[2].order",
            "command (reload) at order 20 comes before file (publish) at order 30 of consumer "
            "api; publish first, then reload, then notify (verify checks in between): give it "
            "an order above 30",
        ),
        id="reload-before-publish-is-refused-per-consumer-only",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 20, config: {path: /srv/a.env, key: K, file_format: env}}
              - {type: command, order: 10, config: {argv: [systemctl, reload, billing]}}
              - {type: command, order: 5, config: {argv: [systemctl, reload, worker]}}
              - {type: webhook, order: 1, consumer: Billing Web, config: {url: "https://h.internal"}}
        """,
        ("credentials[0].actions[1].order", "comes before file (publish) at order 20"),
        ("credentials[0].actions[2].order", "comes before file (publish) at order 20"),
        (
            "credentials[0].actions[3].consumer",
            "must use lowercase letters, digits, '.', '_' or '-'",
        ),
        id="every-misordered-action-and-a-bad-consumer-name-one-line-each",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - type: file
                order: 10
                on_failure: retry
                config: {path: /srv/a.env, key: K, file_format: env}
        """,
        ("credentials[0].actions[0].on_failure", "must be one of abort, continue"),
        id="on-failure-not-abort-or-continue",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {path: /srv/a.env, key: K, file_format: env}}
              - {type: file, order: 20, config: {path: /srv/a.toml, key: K, file_format: toml}}
        """,
        (
            "credentials[0].actions[1].config.file_format",
            "must be one of json, yaml, env, ini, pem, pkcs12, jwks, pem_bundle",
        ),
        id="file-action-with-unknown-file-format",
    ),
    case(
        """\
        credentials:
          - name: web-tls
            provider:
              type: x509_ca
              common_name: web.internal
              sans: [web.internal, "bad name!"]
              key_type: dsa-1024
              validity: 30d
              renew_before: 30d
              ca_key_from: "-----BEGIN PRIVATE KEY-----"
              ca_cert_from: file:/etc/ca.pem
        """,
        ("credentials[0].provider.sans", "'bad name!' is not a DNS name or IP address"),
        ("credentials[0].provider.key_type", "must be one of rsa-2048, rsa-3072, ec-p256"),
        ("credentials[0].provider.renew_before", "must be shorter than validity (30d)"),
        ("credentials[0].provider.ca_key_from", "must be env:NAME, file:/path or credential"),
        id="x509-ca-provider-with-bad-fields",
    ),
    case(
        """\
        credentials:
          - name: web-tls
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {path: /srv/web.crt, file_format: pem}}
              - type: kubernetes_secret
                order: 20
                config: {namespace: web, secret: s, secret_type: kubernetes.io/tls, key: k}
        """,
        ("credentials[0].actions[0].config", "file_format pem needs key_path"),
        ("credentials[0].actions[1].config", "a kubernetes.io/tls Secret takes no key"),
        id="certificate-target-options-that-do-not-fit",
    ),
    case(
        """\
        credentials:
          - name: tokens
            environment: dev
            provider:
              type: jwks_signing_key
              key_type: ed25519
              alg: RS256
              cache_ttl: 0s
            actions: []
        """,
        ("credentials[0].provider.alg", "alg RS256 does not fit key_type ed25519"),
        ("credentials[0].provider.cache_ttl", "cache_ttl must be longer than 0s"),
        id="jwks-signing-key-provider-with-bad-fields",
    ),
    case(
        """\
        credentials:
          - name: tokens
            environment: dev
            provider: {type: jwks_signing_key}
            actions:
              - type: file
                order: 10
                config: {path: /srv/signer.json, file_format: json, keys: {key: private_key}}
              - {type: file, order: 20, config: {path: /srv/jwks.json, file_format: jwks}}
        """,
        ("credentials[0].actions[1].order", "must come before every action that hands"),
        id="jwks-document-ordered-after-the-signer",
    ),
    case(
        """\
        credentials:
          - name: tokens
            environment: dev
            provider: {type: jwks_signing_key}
            actions:
              - type: file
                order: 10
                config: {path: /srv/signer.json, file_format: json, keys: {key: private_key}}
        """,
        ("credentials[0].actions", "add an action that publishes its JWKS"),
        id="jwks-signing-key-without-a-jwks-document",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            environment: dev
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {path: /srv/jwks.json, file_format: jwks}}
        """,
        ("credentials[0].actions[0].config.file_format", "holds the public keys of a jwks"),
        id="jwks-document-of-a-credential-that-is-no-signing-key",
    ),
    case(
        """\
        credentials:
          - name: tokens
            environment: dev
            provider: {type: jwks_signing_key}
            actions:
              - type: file
                order: 10
                config: {path: /srv/jwks.json, file_format: jwks, key_path: /srv/k}
        """,
        ("credentials[0].actions[0].config", "key_path is for file_format pem or pkcs12"),
        id="jwks-document-with-certificate-options",
    ),
    case(
        """\
        credentials:
          - name: mesh-ca
            environment: dev
            provider: {type: trust_bundle, common_name: mesh CA, validity: 0s}
            actions:
              - type: file
                order: 10
                config: {path: /srv/ca.json, file_format: json, keys: {key: private_key}}
              - {type: file, order: 20, config: {path: /srv/jwks.json, file_format: jwks}}
        """,
        ("credentials[0].provider.validity", "validity must be longer than 0s"),
        id="trust-bundle-provider-with-bad-fields",
    ),
    case(
        """\
        credentials:
          - name: mesh-ca
            environment: dev
            provider: {type: trust_bundle, common_name: mesh CA}
            actions:
              - {type: file, order: 10, config: {path: /srv/ca.pem, file_format: pem_bundle}}
              - type: file
                order: 20
                config: {path: /srv/ca.json, file_format: json, keys: {key: private_key}}
        """,
        ("credentials[0].actions[1]", "its value is the CA's private key, which no consumer"),
        id="trust-bundle-handing-its-key-to-a-consumer",
    ),
    case(
        """\
        credentials:
          - name: mesh-ca
            environment: dev
            provider: {type: trust_bundle, common_name: mesh CA}
            actions:
              - {type: file, order: 10, config: {path: /srv/jwks.json, file_format: jwks}}
        """,
        ("credentials[0].actions[0].config.file_format", "JWKS document holds the public keys"),
        id="trust-bundle-publishing-a-jwks",
    ),
    case(
        """\
        credentials:
          - name: mesh-ca
            environment: dev
            provider: {type: trust_bundle, common_name: mesh CA}
            actions:
              - type: command_check
                order: 10
                config: {argv: [/bin/true]}
        """,
        ("credentials[0].actions", "add an action that publishes its CA bundle"),
        id="trust-bundle-without-a-bundle",
    ),
    case(
        """\
        credentials:
          - name: tokens
            environment: dev
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {path: /srv/ca.pem, file_format: pem_bundle}}
        """,
        ("credentials[0].actions[0].config.file_format", "of a trust_bundle credential"),
        id="ca-bundle-of-a-credential-that-is-no-ca",
    ),
    case(
        """\
        credentials:
          - name: mesh-ca
            environment: dev
            provider: {type: trust_bundle, common_name: mesh CA, validity: 365d}
            actions:
              - {type: file, order: 10, config: {path: /srv/ca.pem, file_format: pem_bundle}}
          - name: web-tls
            environment: dev
            provider:
              type: x509_ca
              common_name: web.internal
              validity: 400d
              ca_key_from: credential:mesh-ca
              ca_cert_from: file:/etc/ca.pem
            actions:
              - type: file
                order: 10
                config: {path: /srv/web.crt, key_path: /srv/web.key, file_format: pem}
        """,
        ("credentials[1].provider.ca_cert_from", "use credential:mesh-ca for both"),
        ("credentials[1].provider.validity", "must be shorter than the validity of the CA"),
        id="leaf-of-a-trust-bundle-with-a-foreign-certificate-and-too-long-validity",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {key: API_KEY, file_format: env}}
        """,
        ("credentials[0].actions[0].config.path", "is required"),
        id="file-action-without-path-names-the-path-field",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - type: file
                order: 10
                config: {path: /srv/a.env, key: API_KEY, file_format: env, mode: "0600"}
        """,
        ("credentials[0].actions[0].config.mode", "is not a known field"),
        id="file-action-with-unknown-config-field",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: command, order: 30, config: {argv: []}}
        """,
        ("credentials[0].actions[0].config.argv", "at least 1 item"),
        id="command-action-with-empty-argv",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: command, order: 30, config: {argv: [/usr/bin/reload], value_via: env}}
        """,
        ("credentials[0].actions[0].config", "env_name is required when value_via is 'env'"),
        id="command-value-via-env-without-env-name",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - {type: webhook, order: 50, config: {url: "hooks.internal/rotations"}}
        """,
        ("credentials[0].actions[0].config.url", "url must start with http:// or https://"),
        id="webhook-url-without-scheme",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - type: webhook
                order: 50
                config: {url: "https://hooks.internal/rotations", signing_secret_from: hunter2}
        """,
        (
            "credentials[0].actions[0].config.signing_secret_from",
            "must be env:NAME, file:/path or credential:NAME (secret values are never inline)",
        ),
        id="webhook-signing-secret-given-inline",
    ),
    case(
        "credentials:\n" + GOOD_CREDENTIAL + "    policy: prod-default\n",
        ("credentials[0].policy", "no policy named 'prod-default'"),
        id="credential-names-an-undeclared-policy",
    ),
    case(
        """\
        integrations:
          - {name: db-admin, type: postgres, dsn: "postgresql://admin@db:5432/app",
             password_from: "env:DB_ADMIN_PASSWORD"}
        credentials:
          - name: app-db
            provider: {type: postgres, integration: other-db, strategy: single_user, user: app}
        """,
        ("credentials[0].provider.integration", "no integration named 'other-db'"),
        id="provider-names-an-undeclared-integration",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - type: file
                order: 10
                config: {path: /etc/b.json, file_format: json, key: k, integration: vault-prod}
        """,
        ("credentials[0].actions[0].config.integration", "no integration named 'vault-prod'"),
        ("credentials[0].actions[0].config.integration", "is not a known field"),
        id="action-names-an-undeclared-integration",
    ),
    case(
        """\
        integrations:
          - {name: db-admin, type: postgres, dsn: "postgresql://admin@db:5432/app",
             password_from: "env:DB_ADMIN_PASSWORD"}
        credentials:
          - name: app-db
            policy: {residual_use: {quiet_for: 10m}}
            provider: {type: postgres, integration: db-admin, strategy: single_user, user: app}
        """,
        ("credentials[0].policy", "residual_use cannot be observed for provider postgres"),
        id="residual-use-the-provider-cannot-observe",
    ),
    case(
        """\
        integrations:
          - {name: contoso, type: entra, tenant_id: t, client_id: c,
             auth: {method: client_secret, secret_from: "env:ENTRA"}}
        credentials:
          - name: billing-entra
            policy: {residual_use: {quiet_for: 10m}}
            provider: {type: entra_client_secret, app_id: a, sign_in_lookback: 1m}
        """,
        ("credentials[0].provider.sign_in_lookback", "must be between 5m"),
        id="entra-sign-in-look-back-shorter-than-the-log-delay",
    ),
    case(
        """\
        integrations:
          - {name: entra-a, type: entra, tenant_id: t-a, client_id: c-a,
             auth: {method: client_secret, secret_from: "env:ENTRA_A"}}
          - {name: entra-b, type: entra, tenant_id: t-b, client_id: c-b,
             auth: {method: client_secret, secret_from: "env:ENTRA_B"}}
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - type: azure_keyvault
                order: 10
                config: {vault_url: "https://kv.vault.azure.net", secret_name: billing}
        """,
        (
            "credentials[0].actions[0].config.integration",
            "required: the estate has 2 entra integrations (entra-a, entra-b); name one",
        ),
        id="action-without-integration-when-two-of-its-type-are-declared",
    ),
    case(
        """\
        integrations:
          - {name: db-admin, type: postgres, dsn: "postgresql://admin@db:5432/app",
             password_from: "env:DB_ADMIN_PASSWORD"}
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - type: azure_keyvault
                order: 10
                config: {vault_url: "https://kv.vault.azure.net", secret_name: billing}
        """,
        (
            "credentials[0].actions[0].config.integration",
            "required: the estate has no entra integration; declare one under integrations",
        ),
        id="action-without-integration-when-none-of-its-type-is-declared",
    ),
    case(
        """\
        credentials:
          - name: app-db
            provider: {type: postgres, strategy: single_user, user: app}
        """,
        (
            "credentials[0].provider.integration",
            "required: the estate has no postgres integration; declare one under integrations",
        ),
        id="provider-without-integration-when-none-of-its-type-is-declared",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - type: kubernetes_rollout_restart
                order: 20
                config: {namespace: billing, deployment: billing-api, kind: Deployment}
        """,
        (
            "credentials[0].actions[0].config",
            "give either deployment or kind and name, not both",
        ),
        id="rollout-restart-with-deployment-shorthand-and-kind",
    ),
    case(
        """\
        integrations:
          - {name: okta-admin, type: okta}
        """,
        (
            "integrations[0].type",
            "unknown integration type 'okta'; known: agent, entra, postgres, redis",
        ),
        id="unknown-integration-type-lists-known-ones",
    ),
    case(
        """\
        integrations:
          - {name: db-admin, type: postgres, dsn: "postgresql://admin:hunter2@db:5432/app",
             password_from: "env:DB_ADMIN_PASSWORD"}
        """,
        ("integrations[0].dsn", "must not contain a password; use password_from"),
        id="admin-dsn-with-an-inline-password",
    ),
    case(
        """\
        integrations:
          - {name: db-admin, type: postgres, dsn: "postgresql://admin@db:5432/app",
             password_from: "env:DB_ADMIN_PASSWORD"}
        credentials:
          - name: app-db
            provider: {type: postgres, integration: db-admin, users: [app_a]}
        """,
        ("credentials[0].provider", "alternating_users needs users: [two distinct roles]"),
        id="alternating-users-with-one-user",
    ),
    case(
        """\
        policies:
          - {name: prod-default, grace_period: soon}
        """,
        ("policies[0].grace_period", "'soon' is not a duration such as 30s, 10m, 12h or 30d"),
        id="named-policy-with-unparseable-duration",
    ),
    case(
        "credentials:\n" + GOOD_CREDENTIAL + "    policy: {grace_period: soon}\n",
        (
            "credentials[0].policy.grace_period",
            "'soon' is not a duration such as 30s, 10m, 12h or 30d",
        ),
        id="inline-policy-with-unparseable-duration-is-one-problem",
    ),
    case(
        """\
        policies:
          - {name: prod-default, rotate_before_expiry: 90d, max_lifetime: 90d}
        """,
        ("policies[0]", "rotate_before_expiry must be shorter than max_lifetime"),
        id="rotate-before-expiry-not-shorter-than-max-lifetime",
    ),
    case(
        """\
        policies:
          - name: prod-default
            approval: {required: true, approvers: [platform-oncall]}
        """,
        (
            "policies[0].approval.approvers",
            "approver 'platform-oncall' must be group:NAME or user:NAME",
        ),
        id="policy-approver-without-group-or-user",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random, length: 4}
            actions:
              - {type: file, order: 10, config: {path: /srv/a.env, key: K, file_format: toml}}
              - {type: command, order: 20, config: {argv: []}}
              - {type: webhook, order: 30, config: {url: "ftp://hooks.internal"}}
        """,
        ("credentials[0].provider.length", "greater than or equal to 16"),
        (
            "credentials[0].actions[0].config.file_format",
            "must be one of json, yaml, env, ini, pem, pkcs12, jwks, pem_bundle",
        ),
        ("credentials[0].actions[1].config.argv", "at least 1 item"),
        ("credentials[0].actions[2].config.url", "url must start with http:// or https://"),
        id="several-plugin-config-problems-one-line-each",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            provider: {type: random}
            actions:
              - type: file
                order: 10
                config: {path: /etc/billing.ini, key: api_key, file_format: ini}
        """,
        ("credentials[0].actions[0].config", "must be 'Section:key' for an ini file"),
        id="ini-file-key-without-section",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            policy: prod-defualt
            provider: {type: random}
          - name: billing-api-key
            provider: {type: postgres, integration: contoso-db, strategy: single_user, user: app}
        """,
        ("credentials[1].name", "'billing-api-key' is declared twice"),
        ("credentials[0].policy", "no policy named 'prod-defualt'"),
        ("credentials[1].provider.integration", "no integration named 'contoso-db'"),
        id="several-reference-problems-one-line-each",
    ),
    case(
        """\
        credentials:
          - name: billing-api-key
            policy: prod-default
            provider: {type: random}
            actions:
              - {type: file, order: 10, config: {path: /srv/a.env, key: K, file_format: toml}}
        """,
        ("credentials[0].policy", "no policy named 'prod-default'"),
        (
            "credentials[0].actions[0].config.file_format",
            "must be one of json, yaml, env, ini, pem, pkcs12, jwks, pem_bundle",
        ),
        id="reference-and-plugin-config-problems-reported-together",
    ),
]


@pytest.mark.parametrize(("yaml_text", "expected"), MALFORMED)
def test_malformed_estate_is_refused_with_one_line_per_problem_and_changes_nothing(
    cli: Any, store: Store, tmp_path: Path, yaml_text: str, expected: list[tuple[str, str]]
) -> None:
    applied = cli("apply", "-f", str(write_yaml(tmp_path / "valid.yaml", valid_estate(tmp_path))))
    assert applied.exit_code == 0, applied.output
    before = store_state(store)
    bad = tmp_path / "estate.yaml"
    bad.write_text(yaml_text, encoding="utf-8")

    result = cli("apply", "-f", str(bad))

    assert result.exit_code == REFUSED, result.output
    problems = error_lines(result.output)
    assert sorted(path for path, _ in problems) == sorted(path for path, _ in expected), (
        result.output
    )
    for path, fragment in expected:
        assert any(p == path and fragment in m for p, m in problems), (path, fragment, problems)
    assert "Applied" not in result.output
    assert store_state(store) == before


# --- plan and apply -------------------------------------------------------------------------


def test_plan_lists_new_credentials_and_changes_nothing(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    before = store_state(store)
    estate = write_yaml(tmp_path / "estate.yaml", valid_estate(tmp_path))

    result = cli("plan", "-f", str(estate))

    assert result.exit_code == 0, result.output
    assert plan_lines(result.output) == [
        "+ credential billing-api-key (3 action(s))",
        "+ credential reports-token (2 action(s))",
    ]
    assert "Plan: 2 to add, 0 to change, 0 to remove." in result.output
    after = store_state(store)
    assert after == before
    assert (after.estate_revisions, after.credentials) == (0, ())


def test_plan_lists_actions_added_to_and_removed_from_a_stored_credential(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    document = valid_estate(tmp_path)
    path = write_yaml(tmp_path / "estate.yaml", document)
    assert cli("apply", "-f", str(path)).exit_code == 0
    before = store_state(store)
    billing = document["credentials"][0]
    billing["actions"] = [
        billing["actions"][0],
        {"type": "command", "order": 30, "config": {"argv": ["systemctl", "reload", "billing"]}},
        SMOKE_TEST,
    ]
    write_yaml(path, document)

    result = cli("plan", "-f", str(path))

    assert result.exit_code == 0, result.output
    assert plan_lines(result.output) == [
        "+ action billing-api-key 30:command",
        "- action billing-api-key 20:file",
    ]
    assert "Plan: 1 to add, 0 to change, 1 to remove." in result.output
    assert store_state(store) == before


def test_plan_after_apply_reports_no_changes(cli: Any, store: Store, tmp_path: Path) -> None:
    estate = write_yaml(tmp_path / "estate.yaml", valid_estate(tmp_path))
    assert cli("apply", "-f", str(estate)).exit_code == 0
    before = store_state(store)

    result = cli("plan", "-f", str(estate))

    assert result.exit_code == 0, result.output
    assert "No changes" in result.output
    assert plan_lines(result.output) == []
    assert store_state(store) == before


def test_plan_shows_a_changed_action_config_as_changed_action(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    document = valid_estate(tmp_path)
    path = write_yaml(tmp_path / "estate.yaml", document)
    assert cli("apply", "-f", str(path)).exit_code == 0
    document["credentials"][0]["actions"][1]["config"]["key"] = "BILLING_API_KEY"
    write_yaml(path, document)

    planned = cli("plan", "-f", str(path))

    assert planned.exit_code == 0, planned.output
    assert plan_lines(planned.output) == ["~ action billing-api-key 20:file (changed: config)"]
    applied = cli("apply", "-f", str(path))
    assert applied.exit_code == 0, applied.output
    assert plan_lines(applied.output) == ["~ action billing-api-key 20:file (changed: config)"]
    stored = credential_row(store, "billing-api-key").spec["credential"]["actions"][1]
    assert stored["config"]["key"] == "BILLING_API_KEY"


def test_removed_credential_is_unscheduled_and_keeps_its_rotation_history(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    document = valid_estate(tmp_path)
    path = write_yaml(tmp_path / "estate.yaml", document)
    assert cli("apply", "-f", str(path)).exit_code == 0
    rotated = cli("rotate", "reports-token")
    assert rotated.exit_code == 0, rotated.output
    assert "API_KEY=" in (tmp_path / "reports.env").read_text(encoding="utf-8")
    row = credential_row(store, "reports-token")
    with store.transaction() as s:
        rotation_ids = list(
            s.scalars(select(RotationRow.id).where(RotationRow.credential_id == row.id))
        )
        versions = s.scalar(
            select(func.count()).select_from(VersionRow).where(VersionRow.credential_id == row.id)
        )
    assert len(rotation_ids) == 1
    assert versions == 1
    document["credentials"] = document["credentials"][:1]
    write_yaml(path, document)

    planned = cli("plan", "-f", str(path))
    assert plan_lines(planned.output) == [
        "- credential reports-token (schedule removed; history kept)"
    ]
    assert credential_row(store, "reports-token").removed_at is None
    applied = cli("apply", "-f", str(path))

    assert applied.exit_code == 0, applied.output
    assert plan_lines(applied.output) == plan_lines(planned.output)
    removed = credential_row(store, "reports-token")
    assert removed.id == row.id
    assert removed.scheduled is False
    assert removed.auto_rotate is False
    assert isinstance(removed.removed_at, datetime)
    status = cli("status")
    assert status.exit_code == 0, status.output
    assert "billing-api-key" in status.output
    assert "reports-token" not in status.output
    history = cli("history", "reports-token")
    assert history.exit_code == 0, history.output
    assert rotation_ids[0] in history.output
    with store.transaction() as s:
        assert (
            list(s.scalars(select(RotationRow.id).where(RotationRow.credential_id == row.id)))
            == rotation_ids
        )
        assert (
            s.scalar(
                select(func.count())
                .select_from(VersionRow)
                .where(VersionRow.credential_id == row.id)
            )
            == versions
        )
    assert "No changes" in cli("plan", "-f", str(path)).output


def test_applying_the_same_file_twice_keeps_one_row_per_credential_and_reports_no_changes(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    estate = write_yaml(tmp_path / "estate.yaml", valid_estate(tmp_path))
    first = cli("apply", "-f", str(estate))
    assert first.exit_code == 0, first.output
    assert "Applied: 2 to add, 0 to change, 0 to remove." in first.output
    rows_before = {c[1]: c[:9] for c in store_state(store).credentials}

    second = cli("apply", "-f", str(estate))

    assert second.exit_code == 0, second.output
    assert "No changes" in second.output
    assert plan_lines(second.output) == []
    with store.transaction() as s:
        per_name = dict(
            s.execute(select(CredentialRow.name, func.count()).group_by(CredentialRow.name)).all()
        )
    assert per_name == {"billing-api-key": 1, "reports-token": 1}
    # id, name, owner, environment, provider, spec, digest, auto_rotate, scheduled: all kept.
    assert {c[1]: c[:9] for c in store_state(store).credentials} == rows_before


def test_file_action_with_legacy_target_path_and_secret_key_is_accepted_and_delivers(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    target = tmp_path / "legacy.env"
    document = {
        "credentials": [
            credential(
                "legacy-api-key",
                [
                    {
                        "type": "file",
                        "order": 10,
                        "on_failure": "abort",
                        "agent_id": None,
                        "config": {
                            "target_path": str(target),
                            "secret_key": "Legacy:ApiKey",
                            "file_format": "env",
                        },
                    }
                ],
            )
        ]
    }
    path = write_yaml(tmp_path / "estate.yaml", document)

    applied = cli("apply", "-f", str(path))

    assert applied.exit_code == 0, applied.output
    assert plan_lines(applied.output) == ["+ credential legacy-api-key (2 action(s))"]
    assert credential_row(store, "legacy-api-key").scheduled is True
    rotated = cli("rotate", "legacy-api-key")
    assert rotated.exit_code == 0, rotated.output
    written = target.read_text(encoding="utf-8").splitlines()
    assert len(written) == 1
    assert re.fullmatch(r"Legacy__ApiKey=[A-Za-z0-9]{32}", written[0])


# --- consumers and the order of actions -----------------------------------------------------


def test_actions_of_different_consumers_may_share_an_order_and_run_as_distinct_steps(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    web, api = tmp_path / "web.env", tmp_path / "api.env"
    document = {
        "credentials": [
            credential(
                "shared-key",
                [
                    file_action(10, web, consumer="web"),
                    file_action(10, api, consumer="api"),
                    {
                        "type": "command",
                        "order": 20,
                        "consumer": "api",
                        "config": {"argv": [sys.executable, "-c", "pass"]},
                    },
                ],
            )
        ]
    }
    path = write_yaml(tmp_path / "estate.yaml", document)

    planned = cli("plan", "-f", str(path))
    applied = cli("apply", "-f", str(path))
    rotated = cli("rotate", "shared-key")

    assert planned.exit_code == 0, planned.output
    assert applied.exit_code == 0, applied.output
    assert rotated.exit_code == 0, rotated.output
    [rotation] = rotations_of(store, "shared-key")
    names = [step.name for step in steps(store, rotation.id)]
    assert "publishing:10:file@web" in names
    assert "publishing:10:file@api" in names
    assert "reloading:20:command@api" in names
    assert env_value(web) is not None
    assert env_value(web) == env_value(api)
    stored = credential_row(store, "shared-key").spec["credential"]["actions"]
    assert [a.get("consumer") for a in stored] == ["web", "api", "api", None]
    document["credentials"][0]["actions"][1]["config"]["key"] = "API_KEY_2"
    write_yaml(path, document)
    assert plan_lines(cli("plan", "-f", str(path)).output) == [
        "~ action shared-key 10:file@api (changed: config)"
    ]


def test_a_reload_of_one_consumer_may_come_before_the_publish_of_another(
    cli: Any, tmp_path: Path
) -> None:
    document = {
        "credentials": [
            credential(
                "shared-key",
                [
                    # api's reload comes before web's publish: only its own publish counts.
                    file_action(30, tmp_path / "web.env", consumer="web"),
                    file_action(10, tmp_path / "api.env", consumer="api"),
                    {
                        "type": "command",
                        "order": 20,
                        "consumer": "api",
                        "config": {"argv": ["systemctl", "reload", "api"]},
                    },
                ],
            )
        ]
    }

    result = cli("apply", "-f", str(write_yaml(tmp_path / "estate.yaml", document)))

    assert result.exit_code == 0, result.output
    assert plan_lines(result.output) == ["+ credential shared-key (4 action(s))"]


def test_actions_without_a_consumer_are_stored_as_before_so_an_upgrade_changes_nothing(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "estate.yaml", valid_estate(tmp_path))
    assert cli("apply", "-f", str(path)).exit_code == 0

    stored = credential_row(store, "billing-api-key").spec["credential"]["actions"]

    assert [sorted(a) for a in stored] == [
        ["agent_id", "config", "on_failure", "order", "type"],
        ["agent_id", "config", "on_failure", "order", "type"],
        ["agent_id", "config", "on_failure", "order", "type"],
    ]
    with store.transaction() as s:
        document = s.scalars(select(EstateRevision.document)).one()
    assert all("consumer" not in a for c in document["credentials"] for a in c["actions"])


# --- integrations left out ------------------------------------------------------------------


def estate_with_implicit_integrations(*, explicit: bool = False) -> dict[str, Any]:
    """One entra and one postgres integration; a Key Vault action and a postgres provider
    that name theirs only when `explicit`."""
    vault = {"vault_url": "https://kv-billing.vault.azure.net", "secret_name": "billing-db"}
    provider = {"type": "postgres", "strategy": "single_user", "user": "billing_app"}
    if explicit:
        vault["integration"] = "contoso-entra"
        provider["integration"] = "billing-db-admin"
    return {
        "integrations": [
            {
                "name": "contoso-entra",
                "type": "entra",
                "tenant_id": "t-1",
                "client_id": "c-1",
                "auth": {"method": "client_secret", "secret_from": "env:ENTRA_SECRET"},
            },
            {
                "name": "billing-db-admin",
                "type": "postgres",
                "dsn": "postgresql://admin@db:5432/billing",
                "password_from": "env:DB_ADMIN_PASSWORD",
            },
        ],
        "credentials": [
            {
                "name": "billing-db",
                "owner": "team-billing",
                "provider": provider,
                "actions": [{"type": "azure_keyvault", "order": 10, "config": vault}],
            }
        ],
    }


def test_a_provider_and_an_action_without_integration_use_the_estates_only_one_of_their_type(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "estate.yaml", estate_with_implicit_integrations())

    applied = cli("apply", "-f", str(path))

    assert applied.exit_code == 0, applied.output
    spec = credential_row(store, "billing-db").spec
    assert spec["credential"]["provider"]["integration"] == "billing-db-admin"
    assert spec["credential"]["actions"][0]["config"]["integration"] == "contoso-entra"
    # The rotation's plan carries the integrations it connects through, resolved ones too.
    assert sorted(spec["integrations"]) == ["billing-db-admin", "contoso-entra"]


def test_a_left_out_integration_is_stored_like_a_named_one_so_reapplying_changes_nothing(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    path = write_yaml(tmp_path / "estate.yaml", estate_with_implicit_integrations())
    assert cli("apply", "-f", str(path)).exit_code == 0
    before = store_state(store)

    again = cli("apply", "-f", str(path))
    write_yaml(path, estate_with_implicit_integrations(explicit=True))
    explicit = cli("plan", "-f", str(path))

    assert again.exit_code == 0, again.output
    assert "No changes" in again.output
    assert explicit.exit_code == 0, explicit.output
    assert "No changes" in explicit.output, "naming the only integration is the same estate"
    assert store_state(store) == before


def test_a_second_integration_of_the_type_makes_a_left_out_one_an_error_naming_both(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    document = estate_with_implicit_integrations()
    path = write_yaml(tmp_path / "estate.yaml", document)
    assert cli("apply", "-f", str(path)).exit_code == 0
    before = store_state(store)
    second = dict(document["integrations"][0], name="fabrikam-entra", tenant_id="t-2")
    document["integrations"].append(second)
    write_yaml(path, document)

    result = cli("plan", "-f", str(path))

    assert result.exit_code == REFUSED, result.output
    assert error_lines(result.output) == [
        (
            "credentials[0].actions[0].config.integration",
            "required: the estate has 2 entra integrations (contoso-entra, fabrikam-entra); "
            "name one",
        )
    ]
    assert store_state(store) == before


def test_an_entra_credential_may_gate_revocation_on_sign_ins_with_the_old_secret(
    cli: Any, store: Store, tmp_path: Path
) -> None:
    estate = {
        "integrations": [
            {
                "name": "contoso",
                "type": "entra",
                "tenant_id": "t",
                "client_id": "c",
                "auth": {"method": "client_secret", "secret_from": "env:ENTRA"},
            }
        ],
        "credentials": [
            {
                "name": "billing-entra",
                "policy": {"residual_use": {"check_every": "1m", "quiet_for": "15m"}},
                "provider": {"type": "entra_client_secret", "app_id": "a"},
                "actions": [],
            }
        ],
    }

    applied = cli("apply", "-f", str(write_yaml(tmp_path / "estate.yaml", estate)))

    assert applied.exit_code == 0, applied.output
    spec = credential_row(store, "billing-entra").spec
    assert spec["policy"]["residual_use"]["quiet_for"] == "15m"
    assert spec["credential"]["provider"]["integration"] == "contoso"
