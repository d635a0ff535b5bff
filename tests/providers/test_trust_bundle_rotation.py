"""Trust-first CA rotations (`trust_bundle`) end to end, on both store backends.

A real nginx serves TLS with a leaf of the internal CA while a client connects every
20 ms with the CA bundle as its trust store, through a whole CA rotation with `nginx -s
reload`: no handshake fails, and at the end the bundle refuses the old CA. A leaf whose
check fails in phase 2 is rolled back while the bundle keeps both CAs; a worker killed
after any phase step is resumed to the end, re-issuing each leaf once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import PolicyBuilder, VerificationError
from cryptography.x509.verification import Store as TrustStore

from keyshift.domain.states import RotationState
from keyshift.engine.faults import ENV as CRASH_AT
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.certs import cert_delivery, issue, make_ca
from tests.conftest import Cli, run_subprocess
from tests.helpers import rotations_of, save_estate, steps, value_of, versions
from tests.servers import nginx_server

CA = "internal-ca"
LEAF = "web-tls"
PYTHON = sys.executable

TRUSTS_NEW_CA = """\
import hashlib, os, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[1])
held = [hashlib.sha256(d).hexdigest() for d in context.get_ca_certs(binary_form=True)]
want = os.environ["KEYSHIFT_FINGERPRINT"].removeprefix("sha256:")
sys.exit(0 if want in held else "the verifiers' bundle does not hold the new CA")
"""
"""The CA's check: a verifier's trust store, loaded from the bundle, holds the new CA."""

SERVES_NEW_LEAF = """\
import hashlib, os, socket, ssl, sys, time
port, cafile = int(sys.argv[1]), sys.argv[2]
want = os.environ["KEYSHIFT_FINGERPRINT"].removeprefix("sha256:")
deadline, in_a_row = time.monotonic() + 15, 0
while in_a_row < 20:
    context = ssl.create_default_context(cafile=cafile)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                got = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
    except ssl.SSLError:
        got = None  # an old worker, still serving a certificate of before
    in_a_row = in_a_row + 1 if got == want else 0
    if time.monotonic() > deadline:
        sys.exit("nginx does not serve the new certificate on every connection")
    time.sleep(0.01)
"""
"""The leaf's check: nginx serves the new certificate on every connection (20 in a row)
and a client trusting the bundle accepts it. Until nginx's old workers, which reload
gracefully, stop taking connections, a handshake may still meet the certificate of
before: the leaf is replaced only once none does."""

FAILS_WHILE_FLAGGED = "import pathlib, sys; sys.exit(pathlib.Path(sys.argv[1]).exists())"


def bundle_path(tmp_path: Path) -> Path:
    return tmp_path / "trust" / "bundle.pem"


def estate(
    tmp_path: Path,
    leaf_actions: list[dict[str, Any]],
    *,
    checked: Path | None = None,
    ca_grace: str = "0s",
) -> Path:
    """The CA, whose bundle verifiers read (the CA's check reads `checked`, by default
    that bundle), and one leaf it signs, for `localhost`."""
    bundle = bundle_path(tmp_path)
    bundle.parent.mkdir(exist_ok=True)
    return save_estate(
        tmp_path,
        {
            "credentials": [
                {
                    "name": CA,
                    "owner": "team-platform",
                    "environment": "prod",
                    "policy": {"grace_period": ca_grace},
                    "provider": {
                        "type": "trust_bundle",
                        "common_name": "keyshift test CA",
                        "validity": "3650d",
                    },
                    "actions": [
                        {
                            "type": "file",
                            "order": 10,
                            "on_failure": "abort",
                            "config": {"path": str(bundle), "file_format": "pem_bundle"},
                        },
                        {
                            "type": "command_check",
                            "order": 20,
                            "on_failure": "abort",
                            "config": {
                                "argv": [PYTHON, "-c", TRUSTS_NEW_CA, str(checked or bundle)]
                            },
                        },
                    ],
                },
                leaf(leaf_actions),
            ]
        },
    )


def leaf(actions: list[dict[str, Any]]) -> dict[str, Any]:
    """The leaf the CA signs, for `localhost`, delivered by `actions`."""
    return {
        "name": LEAF,
        "owner": "team-web",
        "environment": "prod",
        "policy": {"grace_period": "0s"},
        "provider": {
            "type": "x509_ca",
            "common_name": "localhost",
            "sans": ["localhost", "127.0.0.1"],
            "validity": "30d",
            "renew_before": "10d",
            "ca_key_from": f"credential:{CA}",
            "ca_cert_from": f"credential:{CA}",
        },
        "actions": actions,
    }


def pem_action(tls: Path) -> dict[str, Any]:
    return {
        "type": "file",
        "order": 10,
        "on_failure": "abort",
        "config": {
            "file_format": "pem",
            "path": str(tls / "site.crt"),
            "key_path": str(tls / "site.key"),
            "fullchain": True,
        },
    }


def flagged_check(flag: Path) -> dict[str, Any]:
    """A check of the leaf that fails while `flag` exists."""
    return {
        "type": "command_check",
        "order": 30,
        "on_failure": "abort",
        "config": {"argv": [PYTHON, "-c", FAILS_WHILE_FLAGGED, str(flag)]},
    }


def thumbprints(bundle: Path) -> list[str]:
    return [
        hashlib.sha256(c.public_bytes(serialization.Encoding.DER)).hexdigest()
        for c in x509.load_pem_x509_certificates(bundle.read_bytes())
    ]


def accepted(bundle: Path, leaf_pem: str) -> bool:
    """Whether a TLS client trusting only `bundle` accepts the leaf for `localhost`."""
    store = TrustStore(x509.load_pem_x509_certificates(bundle.read_bytes()))
    verifier = PolicyBuilder().store(store).build_server_verifier(x509.DNSName("localhost"))
    try:
        verifier.verify(x509.load_pem_x509_certificate(leaf_pem.encode("ascii")), [])
    except VerificationError:
        return False
    return True


@dataclass
class Clients:
    """A TLS client connecting every 20 ms, trusting the bundle file as it is then."""

    port: int
    bundle: Path
    stop: threading.Event = field(default_factory=threading.Event)
    handshakes: int = 0
    failures: list[str] = field(default_factory=list)
    served: list[str] = field(default_factory=list)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                context = ssl.create_default_context(cafile=str(self.bundle))
                with (
                    socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname="localhost") as tls,
                ):
                    der = tls.getpeercert(binary_form=True) or b""
                print_ = hashlib.sha256(der).hexdigest()
                if not self.served or self.served[-1] != print_:
                    self.served.append(print_)
                self.handshakes += 1
            except (OSError, ssl.SSLError) as exc:
                self.failures.append(f"{time.monotonic():.3f}: {exc}")
            self.stop.wait(0.02)


def settle(port: int, bundle: Path, thumbprint: str) -> None:
    """Wait until 20 handshakes in a row meet the certificate `thumbprint`."""
    in_a_row, deadline = 0, time.monotonic() + 30
    while in_a_row < 20:
        assert time.monotonic() < deadline, "nginx does not settle on one certificate"
        context = ssl.create_default_context(cafile=str(bundle))
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                der = tls.getpeercert(binary_form=True) or b""
            same = hashlib.sha256(der).hexdigest() == thumbprint
        except ssl.SSLError:
            same = False
        in_a_row = in_a_row + 1 if same else 0
        time.sleep(0.01)


def ca_steps(store: Store, rotation_id: str) -> list[str]:
    return [s.name for s in steps(store, rotation_id) if s.status == "succeeded"]


PHASE_STEPS = [
    "validated",
    "preflighted",
    "creating",
    "publishing:10:file",
    "waiting:signers",
    "verifying:20:command_check",
    "verifying:provider",
    "reissuing:web-tls",
    "reissued:web-tls",
    "checking:leaves",
    "withdrawing:10:file",
    "revoking",
]
"""A CA rotation's steps: phase 1 (bundle, check, cutover), 2 (the leaf), 3 (withdrawal)."""


def test_clients_trusting_the_bundle_never_fail_a_handshake_through_a_ca_rotation(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    # nginx starts on a placeholder certificate, which the leaf's first version replaces.
    placeholder = cert_delivery(
        issue(make_ca(tmp_path / "placeholder", at=datetime.now(UTC)), at=datetime.now(UTC))
    )
    (tls / "site.crt").write_text(str(placeholder.attributes["certificate"]))
    (tls / "site.key").write_text(placeholder.value.reveal())
    bundle = bundle_path(tmp_path)
    with nginx_server(tmp_path / "nginx", tls / "site.crt", tls / "site.key") as nginx:
        leaf_actions = [
            pem_action(tls),
            {
                "type": "command",
                "order": 20,
                "on_failure": "abort",
                "config": {"argv": nginx.reload},
            },
            {
                "type": "command_check",
                "order": 30,
                "on_failure": "abort",
                "config": {"argv": [PYTHON, "-c", SERVES_NEW_LEAF, str(nginx.port), str(bundle)]},
            },
        ]
        # A second of grace: the old CA stays while anything may still present its leaf.
        document = estate(tmp_path, leaf_actions, ca_grace="1s")
        assert cli("apply", "-f", str(document)).exit_code == 0
        assert cli("rotate", CA).exit_code == 0
        first = cli("rotate", LEAF)
        assert first.exit_code == 0, first.output
        [old_ca] = versions(store, CA)
        [old_leaf] = versions(store, LEAF)

        # nginx's workers from before the first leaf may still take a connection for a
        # moment (with the placeholder, which nobody trusts): the clients start after.
        settle(nginx.port, bundle, str(old_leaf.attributes["thumbprint"]))
        clients = Clients(nginx.port, bundle)
        thread = threading.Thread(target=clients.run, daemon=True)
        thread.start()
        try:
            while clients.handshakes < 10 and not clients.failures:
                time.sleep(0.02)
            rotated = cli("rotate", CA)
            for _ in range(20):
                if rotations_of(store, CA)[-1].state != "grace":
                    break
                time.sleep(0.25)
                resumed = cli("resume")
                assert resumed.exit_code == 0, resumed.output
            seen = clients.handshakes
            while clients.handshakes < seen + 10 and not clients.failures:
                time.sleep(0.02)
        finally:
            clients.stop.set()
            thread.join(timeout=10)
    assert rotated.exit_code == 0, rotated.output
    assert clients.failures == [], (
        f"{len(clients.failures)} of {clients.handshakes} failed: {clients.failures[:3]}"
    )
    assert clients.handshakes >= 20

    _, rotation = rotations_of(store, CA)
    assert rotation.state == "completed"
    assert ca_steps(store, rotation.id) == PHASE_STEPS
    old, new_ca = versions(store, CA)
    assert old.id == old_ca.id
    assert (old.status, new_ca.status) == ("revoked", "current")
    assert old.ciphertext is None, "the old CA's key is erased"
    _, new_leaf = versions(store, LEAF)
    assert new_leaf.status == "current"
    # The clients saw the old leaf, then the new one, and nothing else (while nginx's old
    # worker drains, a connection may still meet the old leaf after the new one).
    old_print, new_print = (str(v.attributes["thumbprint"]) for v in (old_leaf, new_leaf))
    assert (clients.served[0], clients.served[-1]) == (old_print, new_print)
    assert set(clients.served) == {old_print, new_print}
    # The bundle holds the new CA alone: the old CA, and what it signed, are refused.
    assert thumbprints(bundle) == [new_ca.attributes["thumbprint"]]
    assert not accepted(bundle, str(old_leaf.attributes["certificate"]))
    assert accepted(bundle, str(new_leaf.attributes["certificate"]))
    assert (tls / "site.crt").read_text().endswith(str(new_ca.attributes["certificate"]))


def test_a_leaf_failing_its_check_in_phase_2_is_rolled_back_and_the_bundle_keeps_both_cas(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    flag = tmp_path / "leaf-check-fails"
    document = estate(tmp_path, [pem_action(tls), flagged_check(flag)])
    assert cli("apply", "-f", str(document)).exit_code == 0
    assert cli("rotate", CA).exit_code == 0
    assert cli("rotate", LEAF).exit_code == 0
    before = {p.name: p.read_bytes() for p in tls.iterdir()}
    flag.touch()

    assert cli("rotate", CA).exit_code != 0
    _, rotation = rotations_of(store, CA)
    assert rotation.state == "needs_attention"
    assert "reissued:web-tls" in (rotation.error or "")
    assert "keep the old and the new CA" in (rotation.error or "")
    _, leaf_rotation = rotations_of(store, LEAF)
    assert leaf_rotation.state == "rolled_back"
    assert {p.name: p.read_bytes() for p in tls.iterdir()} == before, "the old leaf is back"
    old, new = versions(store, CA)
    assert (old.status, new.status) == ("previous", "current")
    assert thumbprints(bundle_path(tmp_path)) == [
        old.attributes["thumbprint"],
        new.attributes["thumbprint"],
    ], "trust added in phase 1 stays"
    old_leaf, failed_leaf = versions(store, LEAF)
    assert (old_leaf.status, failed_leaf.status) == ("current", "disabled")
    assert accepted(bundle_path(tmp_path), str(old_leaf.attributes["certificate"]))

    # Rolling the CA back now would take the new CA from the bundles: refused.
    refused = cli("rollback", rotation.id, "--reason", "try")
    assert refused.exit_code != 0
    assert "re-issued under the new CA" in refused.output
    assert len(thumbprints(bundle_path(tmp_path))) == 2

    # Fixed, the leaf rotates onto the new CA, which the bundle already trusts.
    flag.unlink()
    assert cli("rotate", LEAF).exit_code == 0
    current = versions(store, LEAF)[-1]
    assert str(current.attributes["chain"]) == str(new.attributes["certificate"])


def test_a_check_failing_in_phase_1_takes_the_new_ca_out_of_the_bundle_before_any_leaf(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    document = estate(tmp_path, [pem_action(tls), flagged_check(tmp_path / "never")])
    assert cli("apply", "-f", str(document)).exit_code == 0
    assert cli("rotate", CA).exit_code == 0
    assert cli("rotate", LEAF).exit_code == 0
    bundle = bundle_path(tmp_path)
    before = bundle.read_bytes()
    # The verifiers' check reads a bundle that never gets the new CA.
    stale = tmp_path / "stale.pem"
    stale.write_bytes(before)
    broken = estate(tmp_path, [pem_action(tls), flagged_check(tmp_path / "never")], checked=stale)
    assert cli("apply", "-f", str(broken)).exit_code == 0

    assert cli("rotate", CA).exit_code != 0
    _, rotation = rotations_of(store, CA)
    assert rotation.state == "rolled_back"
    assert bundle.read_bytes() == before, "the bundle holds the old CA alone again"
    old, new = versions(store, CA)
    assert (old.status, new.status) == ("current", "disabled")
    assert len(rotations_of(store, LEAF)) == 1, "no leaf was re-issued"
    assert not any(s.name.startswith("reissuing:") for s in steps(store, rotation.id))


def test_leaves_are_re_issued_only_once_reload_within_passed_after_the_bundles_got_the_ca(
    store: Store, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    leaf_actions = [pem_action(tls), flagged_check(tmp_path / "never")]
    document = json.loads(estate(tmp_path, leaf_actions).read_text())
    document["credentials"][0]["provider"]["reload_within"] = "10m"
    apply_estate(store, parse_estate(document), actor="test")
    clock = FakeClock()
    context = clock.context()
    for name in (CA, LEAF):
        asyncio.run(rotations.rotate(store, name, actor="test", context=context))
    rotation_id, state = asyncio.run(rotations.rotate(store, CA, actor="test", context=context))
    # Resting before its check (the first action after the bundles) until verifiers re-read.
    assert state == RotationState.VERIFYING
    assert len(thumbprints(bundle_path(tmp_path))) == 2
    assert len(rotations_of(store, LEAF)) == 1
    clock.advance(timedelta(minutes=9))
    asyncio.run(rotations.resume(store, actor="test", context=context))
    assert rotations_of(store, CA)[-1].state == "verifying"
    clock.advance(timedelta(minutes=2))
    asyncio.run(rotations.resume(store, actor="test", context=context))
    assert rotations_of(store, CA)[-1].state == "completed"
    assert [r.state for r in rotations_of(store, LEAF)] == ["completed", "completed"]
    assert ca_steps(store, rotation_id) == PHASE_STEPS


def test_a_leaf_already_rotating_is_left_to_finish_then_re_issued_under_the_new_ca(
    store: Store, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    leaf_actions = [pem_action(tls), flagged_check(tmp_path / "never")]
    apply_estate(
        store, parse_estate(json.loads(estate(tmp_path, leaf_actions).read_text())), actor="test"
    )
    for name in (CA, LEAF):
        asyncio.run(rotations.rotate(store, name, actor="test"))
    someone_elses = rotations.request(store, LEAF, actor="someone", reason="renewal")

    _, state = asyncio.run(rotations.rotate(store, CA, actor="test"))
    assert state == RotationState.GRACE, "waiting for the leaf's other rotation"
    ca_rotation = rotations_of(store, CA)[-1]
    assert not any(s.name.startswith("reissuing:") for s in steps(store, ca_rotation.id))
    for _ in range(3):
        asyncio.run(rotations.resume(store, actor="test"))
    assert rotations_of(store, CA)[-1].state == "completed"
    leaf_rotations = rotations_of(store, LEAF)
    assert [r.id for r in leaf_rotations][1] == someone_elses
    assert [r.state for r in leaf_rotations] == ["completed"] * 3
    _, new_ca = versions(store, CA)
    assert str(versions(store, LEAF)[-1].attributes["chain"]) == str(
        new_ca.attributes["certificate"]
    )


P256_PKCS8_HEADER = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"
"""What every P-256 private key's PEM body starts with (its DER structure, no secret)."""


def ca_key_of(store: Store, name: str = CA) -> str:
    """The private part of the current CA's P-256 key as its PEM body spells it: the 32
    bytes after the common header (what follows is the public key, also in the CA's
    certificate)."""
    current = [v for v in versions(store, name) if v.status == "current"][-1]
    key = value_of(store, current).split("-----BEGIN CERTIFICATE-----")[0]
    body = "".join(line for line in key.splitlines() if not line.startswith("-----"))
    assert body.startswith(P256_PKCS8_HEADER)
    return body[len(P256_PKCS8_HEADER) : len(P256_PKCS8_HEADER) + 42]


def test_no_ca_key_reaches_output_the_audit_export_the_journal_or_a_file(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    document = estate(tmp_path, [pem_action(tls), flagged_check(tmp_path / "never")])
    assert cli("apply", "-f", str(document)).exit_code == 0
    outputs = [cli("rotate", CA).output]
    keys = [ca_key_of(store)]
    outputs.append(cli("rotate", LEAF).output)
    outputs.append(cli("rotate", CA).output)
    keys.append(ca_key_of(store))
    for args in (
        ("status", "-o", "json"),
        ("versions", CA, "-o", "json"),
        ("versions", CA),
        ("history", CA, "-o", "json"),
        ("show", rotations_of(store, CA)[-1].id, "-o", "json"),
        ("audit", "export", "--format", "jsonl"),
    ):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    journal = [
        json.dumps(s.detail) + (s.error or "")
        for r in rotations_of(store, CA) + rotations_of(store, LEAF)
        for s in steps(store, r.id)
    ]
    files = [p.read_text() for p in (*tls.iterdir(), bundle_path(tmp_path))]
    texts = outputs + journal + files
    assert len(set(keys)) == 2
    pieces = {k[i : i + 16] for k in keys for i in range(0, len(k) - 16, 4)}
    assert [t[:80] for t in texts if any(p in t for p in pieces)] == []
    assert not any("PRIVATE KEY" in f for f in files[-1:]), "the bundle holds no key"


def test_the_old_ca_stays_in_the_bundle_while_a_leaf_presents_a_certificate_it_signed(
    store: Store, tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    document = json.loads(
        estate(tmp_path, [pem_action(tls), flagged_check(tmp_path / "never")]).read_text()
    )
    document["credentials"][0]["policy"] = {"grace_period": "1h"}
    document["credentials"][1]["policy"] = {"grace_period": "2h"}
    apply_estate(store, parse_estate(document), actor="test")
    clock = FakeClock()
    context = clock.context()
    for name in (CA, LEAF):
        asyncio.run(rotations.rotate(store, name, actor="test", context=context))
    ca_rotation, state = asyncio.run(rotations.rotate(store, CA, actor="test", context=context))
    assert state == RotationState.GRACE
    leaf_rotation = rotations_of(store, LEAF)[-1]
    assert leaf_rotation.state == "grace", "re-issued, its old certificate kept for 2h"
    # An operator puts the leaf's old certificate (of the old CA) back.
    asyncio.run(
        rotations.roll_back(store, leaf_rotation.id, actor="test", reason="bad", context=context)
    )
    clock.advance(timedelta(hours=1, minutes=1))
    asyncio.run(rotations.resume(store, actor="test", context=context))

    rotation = rotations_of(store, CA)[-1]
    assert rotation.state == "needs_attention"
    assert "checking:leaves" in (rotation.error or "")
    assert "web-tls still present a certificate that is not of the new CA" in (rotation.error or "")
    old, new = versions(store, CA)
    assert (old.status, new.status) == ("previous", "current"), "the old CA is not revoked"
    assert thumbprints(bundle_path(tmp_path)) == [
        old.attributes["thumbprint"],
        new.attributes["thumbprint"],
    ]
    assert not any(s.name.startswith("withdrawing:") for s in steps(store, ca_rotation))


def test_plan_shows_the_three_phases_of_a_ca_rotation_and_the_consumers_in_each(
    cli: Cli,
) -> None:
    example = Path(__file__).parents[2] / "examples" / "trust-bundle.yaml"
    planned = cli("plan", "-f", str(example))
    assert planned.exit_code == 0, planned.output
    lines = [line.strip() for line in planned.stdout.splitlines()]
    at = lines.index("CA rotation of mesh-ca (trust first, identity second):")
    phases = lines[at + 1 : at + 7]
    assert phases[0].startswith(
        "phase 1 trust: add the new CA to /etc/ssl/mesh/ca-bundle.pem, "
        "/etc/nginx/tls/client-ca.pem, ConfigMap mesh/mesh-ca-bundle;"
    )
    assert phases[1] == "consumers: api-clients; nginx-mtls; mesh-workloads"
    assert phases[2].startswith("phase 2 identity: re-issue api-tls, web-tls under the new CA")
    assert phases[3] == "consumers: api-tls: api; web-tls: nginx"
    assert phases[4].startswith("phase 3 withdrawal: after grace (1d)")
    assert phases[5] == "consumers: api-clients; nginx-mtls; mesh-workloads"


@pytest.mark.slow
@pytest.mark.parametrize(
    "boundary",
    [
        "publishing:10:file",
        "reissuing:web-tls",
        "reissued:web-tls",
        "checking:leaves",
        "withdrawing:10:file",
    ],
    ids=lambda b: "killed after " + b,
)
def test_a_ca_rotation_killed_after_a_phase_step_is_resumed_to_the_end_once(
    boundary: str, cli: Cli, store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    document = estate(tmp_path, [pem_action(tls), flagged_check(tmp_path / "never")])
    assert cli("apply", "-f", str(document)).exit_code == 0
    assert cli("rotate", CA).exit_code == 0
    assert cli("rotate", LEAF).exit_code == 0

    crashed = run_subprocess(["rotate", CA], {**ks_env, CRASH_AT: boundary})
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    for _ in range(5):
        resumed = run_subprocess(["resume"], ks_env)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        if rotations_of(store, CA)[-1].state == "completed":
            break
    _, rotation = rotations_of(store, CA)
    assert rotation.state == "completed"
    assert ca_steps(store, rotation.id) == PHASE_STEPS, "every step succeeded exactly once"
    interrupted = [
        (s.name, s.attempt)
        for s in steps(store, rotation.id)
        if (s.error or "").startswith("interrupted")
    ]
    assert interrupted == [(boundary, 1)]
    assert len(rotations_of(store, LEAF)) == 2, "the leaf was re-issued once"
    assert [v.status for v in versions(store, LEAF)] == ["revoked", "current"]
    _, new_ca = versions(store, CA)
    assert thumbprints(bundle_path(tmp_path)) == [new_ca.attributes["thumbprint"]]
    leaf = versions(store, LEAF)[-1]
    assert str(leaf.attributes["chain"]) == str(new_ca.attributes["certificate"])


def test_a_ca_rotation_after_importing_the_ca_and_its_leaf_keeps_the_imported_ca_trusted(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    """An existing CA and a leaf it signed are imported; the CA's first rotation puts the
    new CA in the bundle beside the imported one (trust first), re-issues the leaf, and
    when the leaf's check fails, the leaf gets its imported certificate back while the
    bundle still trusts the imported CA."""
    tls = tmp_path / "tls"
    tls.mkdir()
    flag = tmp_path / "leaf-check-fails"
    assert (
        cli("apply", "-f", str(estate(tmp_path, [pem_action(tls), flagged_check(flag)]))).exit_code
        == 0
    )
    existing = make_ca(tmp_path / "existing", at=datetime.now(UTC))
    ca_text = existing.key_path.read_text() + existing.cert_path.read_text()
    assert cli("import", CA, stdin=ca_text).exit_code == 0
    leaf = issue(existing, at=datetime.now(UTC), common_name="localhost", sans=["localhost"])
    leaf_text = (
        leaf.value.reveal() + leaf.attributes["certificate"] + existing.cert_path.read_text()
    )
    assert cli("import", LEAF, stdin=leaf_text).exit_code == 0
    bundle_path(tmp_path).write_text(existing.cert_path.read_text())  # what verifiers hold
    flag.touch()

    assert cli("rotate", CA).exit_code != 0
    imported, new = versions(store, CA)
    assert imported.provenance == "imported"
    assert (
        imported.attributes["thumbprint"]
        == hashlib.sha256(existing.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )
    assert thumbprints(bundle_path(tmp_path)) == [
        imported.attributes["thumbprint"],
        new.attributes["thumbprint"],
    ], "the imported CA stays trusted beside the new one"
    old_leaf, failed_leaf = versions(store, LEAF)
    assert (old_leaf.provenance, old_leaf.status, failed_leaf.status) == (
        "imported",
        "current",
        "disabled",
    )
    served = x509.load_pem_x509_certificate((tls / "site.crt").read_bytes())
    assert (
        served.public_bytes(serialization.Encoding.PEM).decode() == leaf.attributes["certificate"]
    )
    served.verify_directly_issued_by(existing.cert)  # by the CA the bundle still holds
