"""A trust-first CA rotation (`trust_bundle`) whose verifiers read their CA bundle from a
Kubernetes ConfigMap key (`kubernetes_configmap` with `format: pem_bundle`, as
trust-manager distributes bundles), through the real client against the API double with
throttling (429, Retry-After) and a racing writer (409): the key holds the old and the
new CA through the window and the new alone at the end; a TLS client trusting it accepts
leaves of both CAs in the window and refuses the old CA's leaf at the end; other keys and
a hand-kept certificate stay; a rollback puts the data back byte for byte; no CA private
key reaches the ConfigMap, the journal, the audit trail or a log."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keyshift.domain.states import RotationState, StepStatus
from keyshift.engine.journal import StepEvent
from keyshift.errors import EstateInvalid
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock, capture_logs
from tests.certs import make_ca
from tests.doubles.kubernetes import KubernetesDouble
from tests.doubles.tls import TlsFiles
from tests.helpers import rotations_of, steps, versions
from tests.providers.test_trust_bundle_rotation import (
    CA,
    FAILS_WHILE_FLAGGED,
    LEAF,
    PYTHON,
    ca_key_of,
    flagged_check,
    leaf,
    pem_action,
)
from tests.providers.test_trust_bundle_rotation import PHASE_STEPS as FILE_STEPS

NS = "trust"
CONFIGMAP = "ca-bundle"
KEY = "ca.crt"

PHASE_STEPS = [step.replace(":10:file", ":10:kubernetes_configmap") for step in FILE_STEPS]
"""A CA rotation's steps, the bundle being the ConfigMap."""

WRITES = ["publishing:10:kubernetes_configmap", "withdrawing:10:kubernetes_configmap"]


@pytest.fixture
def api(tls: TlsFiles) -> Iterator[KubernetesDouble]:
    with KubernetesDouble(tls) as double:
        yield double


@pytest.fixture
def hand_kept(tmp_path: Path) -> str:
    """A CA certificate someone put in the bundle by hand: it stays, first."""
    made = make_ca(tmp_path / "hand-kept", at=datetime.now(UTC))
    return made.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def document(
    api: KubernetesDouble, tmp_path: Path, *, flag: Path, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The CA, whose bundle is the ConfigMap key (its check fails while `flag` exists),
    and one leaf it signs, for `localhost`, written to files."""
    tls = tmp_path / "tls"
    tls.mkdir(exist_ok=True)
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    bundle = {
        "kubeconfig": str(kubeconfig),
        "namespace": NS,
        "configmap": CONFIGMAP,
        "format": "pem_bundle",
        **(config or {}),
    }
    return {
        "credentials": [
            {
                "name": CA,
                "owner": "team-platform",
                "environment": "prod",
                "policy": {"grace_period": "1h"},
                "provider": {
                    "type": "trust_bundle",
                    "common_name": "keyshift test CA",
                    "validity": "3650d",
                },
                "actions": [
                    {
                        "type": "kubernetes_configmap",
                        "order": 10,
                        "on_failure": "abort",
                        "config": bundle,
                    },
                    {
                        "type": "command_check",
                        "order": 20,
                        "on_failure": "abort",
                        "config": {"argv": [PYTHON, "-c", FAILS_WHILE_FLAGGED, str(flag)]},
                    },
                ],
            },
            leaf([pem_action(tls), flagged_check(tmp_path / "never")]),
        ]
    }


def bundle_of(api: KubernetesDouble) -> str:
    return (api.configmap_data(NS, CONFIGMAP) or {})[KEY]


def thumbprints(pem: str) -> list[str]:
    return [
        hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
        for c in x509.load_pem_x509_certificates(pem.encode("ascii"))
    ]


def handshake(cadata: str, fullchain: str, key: str) -> bool:
    """Whether a python ssl client trusting only `cadata` completes a TLS handshake with a
    server presenting `fullchain` (leaf first) and `key`, for `localhost`."""
    with tempfile.TemporaryDirectory() as held:
        cert_file, key_file = Path(held) / "site.crt", Path(held) / "site.key"
        cert_file.write_text(fullchain)
        key_file.write_text(key)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=cadata)
    ours, theirs = socket.socketpair()

    def serve() -> None:
        try:
            with server.wrap_socket(theirs, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with client.wrap_socket(ours, server_hostname="localhost"):
            return True
    except ssl.SSLCertVerificationError:
        return False
    finally:
        ours.close()
        thread.join(timeout=10)


def leaf_files(tmp_path: Path) -> tuple[str, str]:
    tls = tmp_path / "tls"
    return (tls / "site.crt").read_text(), (tls / "site.key").read_text()


def test_the_configmap_bundle_trusts_both_cas_in_the_window_and_the_new_alone_at_the_end(
    store: Store, tmp_path: Path, api: KubernetesDouble, hand_kept: str
) -> None:
    api.add_configmap(NS, CONFIGMAP, {KEY: hand_kept, "owner.txt": "platform"})
    apply_estate(
        store, parse_estate(document(api, tmp_path, flag=tmp_path / "never")), actor="test"
    )
    clock = FakeClock(datetime.now(UTC))  # the TLS client checks validity by the real time
    context = clock.context()
    for name in (CA, LEAF):
        asyncio.run(rotations.rotate(store, name, actor="test", context=context))
    [old_ca] = versions(store, CA)
    old_leaf = leaf_files(tmp_path)
    assert thumbprints(bundle_of(api)) == [
        thumbprints(hand_kept)[0],
        old_ca.attributes["thumbprint"],
    ]
    assert handshake(bundle_of(api), *old_leaf)

    def arm(event: StepEvent) -> None:
        # As the bundle is written (phase 1) and withdrawn from (phase 3): a throttled
        # read (429, Retry-After), then another writer racing the merge (409 on the
        # resourceVersion it read): re-read, merged again.
        if event.step in WRITES and event.status == StepStatus.RUNNING:
            api.fail(1, 429, retry_after=1)
            api.before_next_configmap_write(NS, CONFIGMAP, {"owner.txt": event.step})

    private_keys: list[str] = [ca_key_of(store)]
    seen: list[str] = []
    with capture_logs(private_keys) as events:
        rotation_id, state = asyncio.run(
            rotations.rotate(store, CA, actor="test", context=context, on_event=arm)
        )
        assert state == RotationState.GRACE, [
            (s.name, s.status, s.error) for s in steps(store, rotation_id)
        ]
        _, new_ca = versions(store, CA)
        private_keys.append(ca_key_of(store))
        window = bundle_of(api)
        seen.append(window)
        new_leaf = leaf_files(tmp_path)
        assert new_leaf != old_leaf, "the leaf was re-issued under the new CA"
        assert new_leaf[0].endswith(str(new_ca.attributes["certificate"]))
        assert thumbprints(window) == [
            thumbprints(hand_kept)[0],
            old_ca.attributes["thumbprint"],
            new_ca.attributes["thumbprint"],
        ], "phase 1 added the new CA after the old; the hand-kept one stays first"
        assert handshake(window, *old_leaf), "the old CA's leaf still verifies in the window"
        assert handshake(window, *new_leaf)

        clock.advance(timedelta(hours=2))
        asyncio.run(rotations.resume(store, actor="test", context=context, on_event=arm))
    assert rotations_of(store, CA)[-1].state == "completed"
    assert [s.name for s in steps(store, rotation_id) if s.status == "succeeded"] == PHASE_STEPS
    final = bundle_of(api)
    seen.append(final)
    assert thumbprints(final) == [thumbprints(hand_kept)[0], new_ca.attributes["thumbprint"]]
    assert final.startswith(hand_kept), "the hand-kept certificate is kept byte for byte"
    assert not handshake(final, *old_leaf), "the old CA's leaf is refused at the end"
    assert handshake(final, *new_leaf)
    data = api.configmap_data(NS, CONFIGMAP) or {}
    assert data["owner.txt"] == WRITES[-1], "the racing writer's key is kept"
    details = {s.name: s.detail for s in steps(store, rotation_id)}
    for step in WRITES:
        assert details[step]["conflicts"] == 1
        assert details[step]["format"] == "pem_bundle"
    assert details["withdrawing:10:kubernetes_configmap"]["thumbprints"] == thumbprints(final)

    # No CA private key in the ConfigMap, the journal, the audit trail or a log.
    journal = [
        json.dumps(s.detail) + (s.error or "")
        for r in rotations_of(store, CA)
        for s in steps(store, r.id)
    ]
    audit = [json.dumps(e) for e in store.audit_entries()]
    logged = [json.dumps(e, default=str) for e in events]
    assert events, "the rotation logged"
    for text in [*seen, *journal, *audit, *logged]:
        assert "PRIVATE KEY" not in text
        for key in private_keys:
            assert key not in text.replace("\n", "").replace("\\n", "")


def test_a_check_failing_in_phase_1_puts_the_configmap_back_byte_for_byte(
    store: Store, tmp_path: Path, api: KubernetesDouble, hand_kept: str
) -> None:
    api.add_configmap(NS, CONFIGMAP, {KEY: hand_kept, "owner.txt": "platform"})
    flag = tmp_path / "ca-check-fails"
    apply_estate(store, parse_estate(document(api, tmp_path, flag=flag)), actor="test")
    for name in (CA, LEAF):
        asyncio.run(rotations.rotate(store, name, actor="test"))
    before = api.configmap_data(NS, CONFIGMAP)
    flag.touch()

    api.before_next_configmap_write(NS, CONFIGMAP, {"owner.txt": "platform"})
    _, state = asyncio.run(rotations.rotate(store, CA, actor="test"))
    assert state == RotationState.ROLLED_BACK
    assert api.configmap_data(NS, CONFIGMAP) == before, "the data is back byte for byte"
    old, new = versions(store, CA)
    assert (old.status, new.status) == ("current", "disabled")
    assert len(rotations_of(store, LEAF)) == 1, "no leaf was re-issued"


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ({"format": "jwks"}, "config.format", "a JWKS document holds the public keys"),
        ({"key": "a/b"}, "config.key", "key must consist of"),
        ({"format": "pem"}, "config.format", "pem_bundle"),
    ],
)
def test_a_configmap_bundle_that_does_not_fit_names_the_field(
    api: KubernetesDouble, tmp_path: Path, config: dict[str, Any], field: str, says: str
) -> None:
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(document(api, tmp_path, flag=tmp_path / "never", config=config))
    problems = {(e.path, e.message) for e in raised.value.problems}
    assert any(path.endswith(f"actions[0].{field}") for path, _ in problems), problems
    assert any(says in message for _, message in problems), problems


def test_a_pem_bundle_configmap_on_a_signing_key_names_the_format_field(
    api: KubernetesDouble, tmp_path: Path
) -> None:
    estate = document(api, tmp_path, flag=tmp_path / "never")
    ca = estate["credentials"][0]
    ca["provider"] = {"type": "jwks_signing_key", "key_type": "ec-p256"}
    ca["actions"] = ca["actions"][:1]
    estate["credentials"] = [ca]
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(estate)
    paths = {e.path: e.message for e in raised.value.problems}
    assert "credentials[0].actions[0].config.format" in paths, paths
    assert "CA bundle" in paths["credentials[0].actions[0].config.format"]
