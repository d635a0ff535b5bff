"""`kubernetes_configmap` (a JWKS or a CA bundle in a ConfigMap key) through the real
kubernetes client against the local HTTPS double of the API server: what its preflight
refuses, and how a write that keeps racing other writers, or a missing ConfigMap, ends.
The rollovers end to end are in tests/providers/test_jwks_outputs.py and
tests/providers/test_trust_bundle_configmap.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keyshift.errors import PermanentError, TransientError
from keyshift.providers.jwks_signing_key import public_jwk
from keyshift.providers.keys import new_private_key, private_pem
from keyshift.targets.base import Delivery, PreflightRequest, PublishRequest, Readiness
from keyshift.targets.jwks import render
from keyshift.targets.kubernetes import KubernetesConfigMapTarget
from keyshift.targets.kubernetes.client import MAX_CONFLICTS
from keyshift.testing import FakeClock
from tests.doubles.kubernetes import KubernetesDouble, rule
from tests.doubles.tls import TlsFiles

NS = "identity"
NAME = "verifier-keys"


@pytest.fixture
def api(tls: TlsFiles) -> Iterator[KubernetesDouble]:
    with KubernetesDouble(tls) as double:
        yield double


def signing_key(version_id: str) -> Delivery:
    key = new_private_key("ec-p256")
    jwk = public_jwk(key, "ES256")
    return Delivery(
        credential="tokens",
        rotation_id=f"rot-{version_id}",
        version_id=version_id,
        fingerprint=f"kid:{jwk['kid']}",
        value=private_pem(key),
        attributes={"kid": jwk["kid"], "jwk": json.dumps(jwk)},
    )


def target(
    api: KubernetesDouble, tmp_path: Path, **config: Any
) -> tuple[KubernetesConfigMapTarget, FakeClock]:
    clock = FakeClock()
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    settings = {"kubeconfig": str(kubeconfig), "namespace": NS, "configmap": NAME, **config}
    made = KubernetesConfigMapTarget(
        KubernetesConfigMapTarget.Config.model_validate(settings), clock.context()
    )
    return made, clock


def preflight(made: KubernetesConfigMapTarget) -> tuple[Readiness, str]:
    result = asyncio.run(made.preflight(PreflightRequest(credential="tokens")))
    return result.readiness, result.reason


def test_preflight_is_ready_for_a_jwks_key_and_refuses_what_it_could_not_write(
    api: KubernetesDouble, tmp_path: Path
) -> None:
    made, _ = target(api, tmp_path)
    assert preflight(made)[0] == Readiness.BLOCKED  # missing, create false
    api.add_configmap(NS, NAME, {"jwks.json": render([]), "other": "x"})
    assert preflight(made) == (
        Readiness.READY,
        f"may get and patch ConfigMap {NS}/{NAME}; key jwks.json",
    )
    api.change_configmap(NS, NAME, {"jwks.json": "not a document"})
    readiness, why = preflight(made)
    assert readiness == Readiness.BLOCKED
    assert "does not parse as a JWKS document" in why
    assert "not a document" not in why, "the content is never quoted"
    api.rules = [rule("get", "configmaps")]
    readiness, why = preflight(made)
    assert readiness == Readiness.BLOCKED
    assert "not allowed to patch configmaps/verifier-keys" in why


def test_a_pem_bundle_key_defaults_to_ca_crt_and_preflight_refuses_a_key_or_non_pem(
    api: KubernetesDouble, tmp_path: Path
) -> None:
    made, _ = target(api, tmp_path, format="pem_bundle")
    assert made.config.key == "ca.crt"
    assert type(made).trust_format(made.config) == "pem_bundle"
    api.add_configmap(NS, NAME, {"ca.crt": "", "jwks.json": "{}"})
    assert preflight(made) == (
        Readiness.READY,
        f"may get and patch ConfigMap {NS}/{NAME}; key ca.crt",
    )
    api.change_configmap(NS, NAME, {"ca.crt": "-----BEGIN PRIVATE KEY-----\nabc\n"})
    readiness, why = preflight(made)
    assert readiness == Readiness.BLOCKED
    assert "holds a private key" in why
    assert "abc" not in why, "the content is never quoted"
    api.change_configmap(NS, NAME, {"ca.crt": "not pem"})
    readiness, why = preflight(made)
    assert readiness == Readiness.BLOCKED
    assert "does not parse as PEM certificates" in why


def test_a_missing_configmap_is_created_with_create_true_and_refused_without(
    api: KubernetesDouble, tmp_path: Path
) -> None:
    new = signing_key("v1")
    refusing, _ = target(api, tmp_path)
    with pytest.raises(PermanentError, match="does not exist"):
        asyncio.run(refusing.publish(PublishRequest(new, None)))
    creating, _ = target(api, tmp_path, create=True)
    done = asyncio.run(creating.publish(PublishRequest(new, None)))
    assert done.detail["change"] == "created"
    data = api.configmap_data(NS, NAME) or {}
    assert [k["kid"] for k in json.loads(data["jwks.json"])["keys"]] == [new.attributes["kid"]]
    again = asyncio.run(creating.publish(PublishRequest(new, None)))
    assert again.detail["change"] == "unchanged"
    assert len(api.logged("PATCH")) == 0


def test_a_write_that_keeps_racing_other_writers_gives_up_as_transient(
    api: KubernetesDouble, tmp_path: Path
) -> None:
    api.add_configmap(NS, NAME, {"jwks.json": render([])})
    for n in range(MAX_CONFLICTS + 1):
        api.before_next_configmap_write(NS, NAME, {"other": str(n)})
    made, clock = target(api, tmp_path)
    with pytest.raises(TransientError, match="conflicting writes"):
        asyncio.run(made.publish(PublishRequest(signing_key("v2"), None)))
    assert len(clock.sleeps) == MAX_CONFLICTS
    assert json.loads((api.configmap_data(NS, NAME) or {})["jwks.json"]) == {"keys": []}
