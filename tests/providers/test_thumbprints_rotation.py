"""A code-signing certificate (`x509_ca`) rotated under a relay that pins thumbprints, end
to end on both store backends: the relay reads its accepted-thumbprint list (`file_format:
thumbprints`) and accepts a signature only from a listed certificate; every signature the
signer makes throughout a rotation is accepted, the list holds the new thumbprint before
the signer gets the certificate and the old one until just before it is revoked; a failed
check puts the list back byte for byte; a worker killed around the withdrawal is resumed
without repeating a step."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keyshift.domain.states import RotationState
from keyshift.engine.journal import StepEvent
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from keyshift.testing.clock import FAKE_CLOCK_START
from tests.certs import Ca, leaf_provider, make_ca
from tests.conftest import Cli
from tests.helpers import (
    assert_killed_rotation_completes_once,
    rotations_of,
    save_estate,
    steps,
    value_of,
    versions,
)

CREDENTIAL = "release-signing"
TICK = timedelta(minutes=1)
LIST_KEY = "Relay:AcceptedThumbprints"
LIST_STEP = "publishing:10:file@relay"
SIGNER_STEP = "publishing:20:file@signer"
WITHDRAW_STEP = "withdrawing:10:file@relay"
JOURNAL = [
    "validated",
    "preflighted",
    "creating",
    LIST_STEP,
    "waiting:signers",
    SIGNER_STEP,
    "verifying:provider",
    WITHDRAW_STEP,
    "revoking",
]
"""The succeeded steps of a rotation, in order: the list before the signer."""


def estate(
    tmp_path: Path,
    ca: Ca,
    *,
    grace: str = "10m",
    check: list[str] | None = None,
    hook: str | None = None,
) -> dict[str, Any]:
    """A code-signing leaf: the relay's list in `relay/settings.json` (SHA-1, upper hex,
    as Windows shows it) at order 10, the signer's key and certificate in `signer/` at 20;
    with `check`, a command checks the cutover; with `hook`, a second relay gets the list
    by webhook at order 11."""
    for directory in ("relay", "signer"):
        (tmp_path / directory).mkdir(exist_ok=True)
    actions: list[dict[str, Any]] = [
        {
            "type": "file",
            "order": 10,
            "on_failure": "abort",
            "consumer": "relay",
            "config": {
                "path": str(tmp_path / "relay" / "settings.json"),
                "file_format": "thumbprints",
                "thumbprints": {
                    "format": "json",
                    "key": LIST_KEY,
                    "algorithm": "sha1",
                    "encoding": "hex_upper",
                },
            },
        },
        {
            "type": "file",
            "order": 20,
            "on_failure": "abort",
            "consumer": "signer",
            "config": {
                "path": str(tmp_path / "signer" / "signing.crt"),
                "key_path": str(tmp_path / "signer" / "signing.key"),
                "file_format": "pem",
            },
        },
    ]
    if hook is not None:
        actions.append(
            {
                "type": "thumbprints_webhook",
                "order": 11,
                "on_failure": "abort",
                "config": {"url": hook, "algorithm": "sha1", "encoding": "hex_upper"},
            }
        )
    if check is not None:
        actions.append(
            {"type": "command_check", "order": 30, "on_failure": "abort", "config": {"argv": check}}
        )
    provider = leaf_provider(
        ca, common_name="release signing", sans=[], extended_key_usage=["code_signing"]
    )
    return {
        "credentials": [
            {
                "name": CREDENTIAL,
                "owner": "team-release",
                "environment": "dev",
                "policy": {"grace_period": grace},
                "provider": provider,
                "actions": actions,
            }
        ]
    }


def thumbprint(cert_pem: bytes) -> str:
    """A certificate's SHA-1 thumbprint as Windows shows it, computed apart from keyshift."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha1(der).hexdigest().upper()  # noqa: S324 (a thumbprint, not a password hash)


def listed(tmp_path: Path) -> list[str]:
    document = json.loads((tmp_path / "relay" / "settings.json").read_text(encoding="utf-8"))
    found: list[str] = document["Relay"]["AcceptedThumbprints"]
    return found


@dataclass(frozen=True)
class Signed:
    payload: bytes
    signature: bytes
    cert_pem: bytes


def sign(tmp_path: Path, payload: bytes) -> Signed:
    """What the signer does: sign with the key it holds now, present the certificate."""
    key = serialization.load_pem_private_key(
        (tmp_path / "signer" / "signing.key").read_bytes(), None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return Signed(payload, signature, (tmp_path / "signer" / "signing.crt").read_bytes())


def relay_accepts(tmp_path: Path, signed: Signed) -> str | None:
    """What the relay does: re-read its list, refuse a certificate whose thumbprint is not
    listed, then check the signature with the certificate's key. None when accepted."""
    if thumbprint(signed.cert_pem) not in listed(tmp_path):
        return "thumbprint not accepted"
    cert = x509.load_pem_x509_certificate(signed.cert_pem)
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    try:
        public.verify(signed.signature, signed.payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return "bad signature"
    return None


@dataclass
class Traffic:
    """The signer signing a release at every step and minute, the relay checking it;
    `failures` lists each signature the relay refused."""

    tmp_path: Path
    failures: list[str] = field(default_factory=list)
    presented: list[str] = field(default_factory=list)

    def __call__(self, _event: StepEvent | None = None) -> None:
        if not (self.tmp_path / "signer" / "signing.crt").exists():
            return
        signed = sign(self.tmp_path, f"release {len(self.presented)}".encode())
        self.presented.append(thumbprint(signed.cert_pem))
        refused = relay_accepts(self.tmp_path, signed)
        if refused is not None:
            self.failures.append(f"signature {len(self.presented)}: {refused}")


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path / "ca", at=FAKE_CLOCK_START)


def test_every_signature_is_accepted_throughout_a_rotation_and_the_old_cert_after_it_is_not(
    store: Store, tmp_path: Path, ca: Ca, capsys: pytest.CaptureFixture[str]
) -> None:
    clock = FakeClock()
    apply_estate(store, parse_estate(estate(tmp_path, ca)), actor="test")
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    old_cert = (tmp_path / "signer" / "signing.crt").read_bytes()
    old_key = (tmp_path / "signer" / "signing.key").read_text()
    old_print = thumbprint(old_cert)
    assert listed(tmp_path) == [old_print]
    traffic = Traffic(tmp_path)
    traffic()
    before_rotation = sign(tmp_path, b"signed just before the rotation")

    rotation_id, state = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context(), on_event=traffic)
    )
    assert state == RotationState.GRACE
    new_print = thumbprint((tmp_path / "signer" / "signing.crt").read_bytes())
    assert new_print != old_print
    assert listed(tmp_path) == [new_print, old_print], "both are accepted during grace"
    assert relay_accepts(tmp_path, before_rotation) is None

    for _ in range(15):
        clock.advance(TICK)
        traffic()
        asyncio.run(
            rotations.resume(store, actor="test", context=clock.context(), on_event=traffic)
        )

    assert traffic.failures == []
    assert set(traffic.presented) == {old_print, new_print}
    assert len(traffic.presented) > 15
    assert listed(tmp_path) == [new_print]
    assert relay_accepts(tmp_path, before_rotation) == "thumbprint not accepted"
    [_, rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "completed"
    old, new = versions(store, CREDENTIAL)
    assert (old.status, new.status) == ("revoked", "current")
    # The list's SHA-256 sibling is the version's fingerprint: the same certificate.
    assert (
        new.attributes["thumbprint"]
        == hashlib.sha256(
            x509.load_pem_x509_certificate(
                (tmp_path / "signer" / "signing.crt").read_bytes()
            ).public_bytes(serialization.Encoding.DER)
        ).hexdigest()
    )
    journal = [s.name for s in steps(store, rotation_id) if s.status == "succeeded"]
    assert journal == JOURNAL
    withdrawn = next(s for s in steps(store, rotation_id) if s.name == WITHDRAW_STEP)
    assert withdrawn.detail["thumbprints"] == [new_print]
    assert withdrawn.detail["withdrawn"] == old.fingerprint

    # Neither private key is in the relay's list, the journal or the logs.
    details = json.dumps([s.detail for s in steps(store, rotation_id)])
    seen = (tmp_path / "relay" / "settings.json").read_text() + details + capsys.readouterr().out
    assert "PRIVATE KEY" not in seen
    for key in (old_key, value_of(store, new)):
        assert not any(line in seen for line in key.splitlines()[1:-1])


def test_the_relay_refuses_the_new_cert_when_the_list_comes_after_the_signer(
    store: Store, tmp_path: Path, ca: Ca
) -> None:
    """The control: the same relay, had the signer got the certificate before the list
    held it, refuses its signatures. So the test above can fail."""
    traffic = Traffic(tmp_path)
    clock = FakeClock()
    apply_estate(store, parse_estate(estate(tmp_path, ca)), actor="test")
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    settings = (tmp_path / "relay" / "settings.json").read_bytes()
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    (tmp_path / "relay" / "settings.json").write_bytes(settings)  # as if the list lagged
    traffic()
    assert traffic.failures == ["signature 1: thumbprint not accepted"]


def test_a_failed_check_puts_the_list_back_byte_for_byte_and_the_old_cert_is_accepted(
    store: Store, tmp_path: Path, ca: Ca
) -> None:
    clock = FakeClock()
    marker = tmp_path / "fail"
    check = [sys.executable, "-c", f"import os,sys; sys.exit(os.path.exists({str(marker)!r}))"]
    apply_estate(store, parse_estate(estate(tmp_path, ca, grace="0s", check=check)), actor="test")
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    # Another key of the relay's settings, which the list must leave alone.
    path = tmp_path / "relay" / "settings.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    document["Relay"]["Endpoint"] = "sb://relay.example/"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    list_before = path.read_bytes()
    signer_before = (tmp_path / "signer" / "signing.crt").read_bytes()
    traffic = Traffic(tmp_path)

    marker.write_text("the relay's health check fails", encoding="utf-8")
    rotation_id, state = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context(), on_event=traffic)
    )
    assert state == RotationState.ROLLED_BACK
    assert path.read_bytes() == list_before
    assert (tmp_path / "signer" / "signing.crt").read_bytes() == signer_before
    assert listed(tmp_path) == [thumbprint(signer_before)]
    assert (
        json.loads(path.read_text(encoding="utf-8"))["Relay"]["Endpoint"] == "sb://relay.example/"
    )
    assert traffic.failures == []
    names = [s.name for s in steps(store, rotation_id) if s.status == "succeeded"]
    assert names.index("rollback:" + SIGNER_STEP) < names.index("rollback:" + LIST_STEP)


CRASH_BOUNDARIES = [LIST_STEP, "verifying:provider", WITHDRAW_STEP, "revoking"]


@pytest.mark.slow
@pytest.mark.parametrize("boundary", CRASH_BOUNDARIES, ids=lambda b: "killed after " + b)
def test_a_rotation_killed_around_the_withdrawal_is_resumed_to_the_end_once(
    boundary: str, cli: Cli, store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "ca", at=datetime.now(UTC))
    document = save_estate(tmp_path, estate(tmp_path, ca, grace="0s"))
    new = assert_killed_rotation_completes_once(
        cli, store, ks_env, document, CREDENTIAL, boundary, JOURNAL
    )
    cert = (tmp_path / "signer" / "signing.crt").read_bytes()
    assert listed(tmp_path) == [thumbprint(cert)]
    assert (tmp_path / "signer" / "signing.key").read_text() == value_of(store, new)
