"""A `jwks_signing_key` rollover whose JWKS verifiers read from a Kubernetes ConfigMap key
(the API double, through the real client, throttling and racing writers), a webhook
receiver, or `keyshift serve`'s `/.well-known/jwks/<credential>.json`: every token signed
throughout verifies with caching verifiers fetching from that output; the old key leaves
it at the withdrawal; a failed check puts it back as it was; no private key reaches it,
the journal, the audit trail or a log."""

from __future__ import annotations

import asyncio
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keyshift.api import create_app
from keyshift.domain.states import RotationState, StepStatus
from keyshift.engine.journal import StepEvent
from keyshift.errors import EstateInvalid
from keyshift.service import rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from keyshift.targets.jwks import render
from keyshift.testing import CachingVerifier, FakeClock, capture_logs
from tests.doubles.kubernetes import KubernetesDouble
from tests.doubles.receiver import Answer, Receiver
from tests.doubles.tls import TlsFiles
from tests.helpers import rotations_of, steps, versions
from tests.providers.test_jwks_rotation import CREDENTIAL, TICK, Traffic, signer_kid
from tests.providers.test_jwks_rotation import estate as rotation_estate

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

NS = "identity"
CONFIGMAP = "verifier-keys"
HAND_KEY = {"kty": "oct-not-ours", "kid": "kept-by-hand", "use": "sig"}
"""A key of the document that keyshift did not put there: it stays."""
OUTPUTS = ["kubernetes_configmap", "jwks_webhook", "jwks_serve"]


@dataclass
class Output:
    """One JWKS output: its action config, and how a verifier fetches the document."""

    action: dict[str, Any]
    fetch: Callable[[], str]
    arm_faults: Callable[[], None] = lambda: None
    """Switch on the output's misbehaviour for its next write."""


@pytest.fixture
def output(
    request: pytest.FixtureRequest, store: Store, tmp_path: Path, tls: TlsFiles
) -> Iterator[Output]:
    kind = request.param
    if kind == "kubernetes_configmap":
        with KubernetesDouble(tls) as double:
            double.add_configmap(
                NS, CONFIGMAP, {"jwks.json": render([HAND_KEY]), "issuer.txt": "id.internal"}
            )
            kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)

            def faults() -> None:
                # A throttled read (429, Retry-After), then another writer racing the
                # merge (409 on the resourceVersion it read): re-read, merged again.
                double.fail(1, 429, retry_after=1)
                double.before_next_configmap_write(NS, CONFIGMAP, {"issuer.txt": "changed"})

            def fetch() -> str:
                return (double.configmap_data(NS, CONFIGMAP) or {})["jwks.json"]

            request.node.double = double
            yield Output(
                {
                    "kubeconfig": str(kubeconfig),
                    "namespace": NS,
                    "configmap": CONFIGMAP,
                    "key": "jwks.json",
                },
                fetch,
                faults,
            )
    elif kind == "jwks_webhook":
        receiver = request.getfixturevalue("receiver")
        receiver.signing_key = "hook-signing-key-0123456789"

        def served() -> str:
            # A receiver serves the last document it took (answered 2xx).
            taken = [r for r in receiver.requests if r.status < 300]
            return json.dumps(json.loads(taken[-1].body)["jwks"])

        yield Output(
            {
                "url": receiver.url,
                "signing_secret_from": "env:HOOK_KEY",
                "retries": 1,
                "backoff": "1s",
            },
            served,
        )
    else:
        with TestClient(create_app(store)) as client:
            yield Output({}, lambda: client.get(f"/.well-known/jwks/{CREDENTIAL}.json").text)


def estate(kind: str, output: Output, tmp_path: Path, check: list[str] | None) -> dict[str, Any]:
    """The rollover estate of test_jwks_rotation, its JWKS going to `output`."""
    return rotation_estate(tmp_path, check=check, jwks_action=(kind, output.action))


def kids(output: Output) -> list[str]:
    return [str(k["kid"]) for k in json.loads(output.fetch())["keys"]]


class Run:
    """A store, clock, traffic and the private keys seen (to look for them everywhere)."""

    def __init__(self, store: Store, tmp_path: Path, output: Output) -> None:
        self.store = store
        self.tmp_path = tmp_path
        self.output = output
        self.clock = FakeClock()
        self.traffic = Traffic(tmp_path, self.clock, timedelta(minutes=30), [])
        self.private_keys: list[str] = []
        self.env = {"HOOK_KEY": "hook-signing-key-0123456789"}

    def tick(self, event: StepEvent | None = None) -> None:
        self.traffic(event)
        signer = self.tmp_path / "signer.json"
        if signer.exists():
            key = json.loads(signer.read_text(encoding="utf-8"))["key"]
            if key not in self.private_keys:
                self.private_keys.append(key)

    def rotate(self, on_event: Callable[[StepEvent], None] | None = None) -> tuple[str, Any]:
        def both(event: StepEvent) -> None:
            self.tick(event)
            if on_event is not None:
                on_event(event)

        return asyncio.run(
            rotations.rotate(
                self.store,
                CREDENTIAL,
                actor="test",
                context=self.clock.context(self.env),
                on_event=both,
            )
        )

    def minute(self) -> None:
        self.clock.advance(TICK)
        self.tick()
        asyncio.run(
            rotations.resume(
                self.store, actor="test", context=self.clock.context(self.env), on_event=self.tick
            )
        )

    def start_verifiers(self) -> None:
        fetch = self.output.fetch
        ttl = timedelta(minutes=5)
        self.traffic.verifiers = [
            CachingVerifier(fetch, self.clock.now, ttl, refetch_after=TICK),
            CachingVerifier(fetch, self.clock.now, ttl, refetch_after=TICK * 3),
            CachingVerifier(fetch, self.clock.now, ttl, refetch_after=ttl),
        ]
        for verifier in self.traffic.verifiers:
            # Each first fetches at a different moment: their caches expire apart.
            self.clock.advance(TICK)
            self.tick()
            assert verifier.fetches == 1

    def assert_no_private_key_anywhere(self, seen_outputs: list[str]) -> None:
        assert len(self.private_keys) >= 2
        journal = [
            json.dumps(s.detail) + (s.error or "")
            for r in rotations_of(self.store, CREDENTIAL)
            for s in steps(self.store, r.id)
        ]
        audit = [json.dumps(e) for e in self.store.audit_entries()]
        for text in [*seen_outputs, *journal, *audit]:
            assert "PRIVATE KEY" not in text
            for key in self.private_keys:
                body = "".join(key.strip().splitlines()[1:-1])
                assert body[:40] not in text.replace("\n", "")
        for document in seen_outputs:
            for jwk in json.loads(document)["keys"]:
                assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)


@pytest.mark.parametrize("output", OUTPUTS, indirect=True)
def test_tokens_signed_throughout_verify_from_the_output_and_the_old_key_leaves_it_last(
    store: Store, tmp_path: Path, output: Output, request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["output"]
    apply_estate(store, parse_estate(estate(kind, output, tmp_path, None)), actor="test")
    run = Run(store, tmp_path, output)
    seen: list[str] = []
    with capture_logs(run.private_keys):
        run.rotate()
        run.start_verifiers()
        first = signer_kid(tmp_path)

        def arm(event: StepEvent) -> None:
            if event.step == f"publishing:10:{kind}" and event.status == StepStatus.RUNNING:
                output.arm_faults()

        rotation_id, state = run.rotate(on_event=arm)
        assert state == RotationState.PUBLISHING
        _, new = versions(store, CREDENTIAL)
        second = new.attributes["kid"]
        assert second in kids(output)
        assert first in kids(output)
        assert signer_kid(tmp_path) == first
        seen.append(output.fetch())
        output.arm_faults()  # again, for the withdrawal

        switched_at = removed_at = None
        for minute in range(1, 60):
            run.minute()
            if switched_at is None and signer_kid(tmp_path) == second:
                switched_at = minute
                seen.append(output.fetch())
            if removed_at is None and first not in kids(output):
                removed_at = minute
                seen.append(output.fetch())

    assert run.traffic.failures == []
    assert run.traffic.kids_signed == {first, second}
    assert run.traffic.checks > 500
    assert switched_at == 5, "the signers get the key cache_ttl after the output has it"
    assert removed_at == 5 + 30, "the old key stays max_token_lifetime after the switch"
    assert second in kids(output)
    [_, rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "completed"
    journal = [s.name for s in steps(store, rotation_id) if s.status == "succeeded"]
    assert journal == [
        "validated",
        "preflighted",
        "creating",
        f"publishing:10:{kind}",
        "waiting:signers",
        "publishing:20:file",
        "verifying:provider",
        f"withdrawing:10:{kind}",
        "revoking",
    ]
    if kind == "kubernetes_configmap":
        double: KubernetesDouble = request.node.double
        data = double.configmap_data(NS, CONFIGMAP) or {}
        assert data["issuer.txt"] == "changed", "the racing writer's key is kept"
        assert kids(output) == ["kept-by-hand", second], "the hand-kept kid stays, first"
        details = {s.name: s.detail for s in steps(store, rotation_id)}
        assert details[f"publishing:10:{kind}"]["conflicts"] == 1
        assert details[f"withdrawing:10:{kind}"]["conflicts"] == 1
        assert [r.path for r in double.logged("PATCH")] == [
            f"/api/v1/namespaces/{NS}/configmaps/{CONFIGMAP}"
        ] * 5, "first version, publish (refused once, then written), withdraw (likewise)"
    else:
        assert kids(output) == [second]
    run.assert_no_private_key_anywhere(seen)


@pytest.mark.parametrize("output", OUTPUTS, indirect=True)
def test_a_failed_check_puts_the_output_back_as_it_was(
    store: Store, tmp_path: Path, output: Output, request: pytest.FixtureRequest
) -> None:
    kind = request.node.callspec.params["output"]
    marker = tmp_path / "fail"
    check = [sys.executable, "-c", f"import os,sys; sys.exit(os.path.exists({str(marker)!r}))"]
    apply_estate(store, parse_estate(estate(kind, output, tmp_path, check)), actor="test")
    run = Run(store, tmp_path, output)
    with capture_logs(run.private_keys):
        run.rotate()
        run.start_verifiers()
        first = signer_kid(tmp_path)
        before = output.fetch()
        configmap_before = None
        if kind == "kubernetes_configmap":
            configmap_before = request.node.double.configmap_data(NS, CONFIGMAP)
        marker.write_text("the consumer refuses the new key", encoding="utf-8")
        rotation_id, state = run.rotate()
        assert state == RotationState.PUBLISHING
        during = output.fetch()
        for _ in range(10):
            run.minute()

    [_, rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "rolled_back"
    assert signer_kid(tmp_path) == first
    assert output.fetch() == before, "the document is back, byte for byte"
    if configmap_before is not None:
        assert request.node.double.configmap_data(NS, CONFIGMAP) == configmap_before
    # Only tokens the rolled-back key signed (between the switch and the rollback) stop
    # verifying once it leaves the document (docs/jwks.md); every old-key token verifies.
    refused = {int(f.split()[1]) for f in run.traffic.failures}
    assert {run.traffic.tokens[n][2] for n in refused} <= {
        versions(store, CREDENTIAL)[1].attributes["kid"]
    }
    old_tokens = [t for t, _, kid in run.traffic.tokens if kid == first]
    assert len(old_tokens) > 5
    assert all(v.verify(t).ok for t in old_tokens for v in run.traffic.verifiers)
    names = [s.name for s in steps(store, rotation_id) if s.status == "succeeded"]
    assert f"rollback:publishing:10:{kind}" in names
    run.assert_no_private_key_anywhere([before, during, output.fetch()])


@pytest.mark.parametrize("output", ["jwks_webhook"], indirect=True)
def test_a_webhook_that_refuses_the_jwks_fails_the_step_and_the_signers_keep_the_old_key(
    store: Store, tmp_path: Path, output: Output, receiver: Receiver
) -> None:
    apply_estate(store, parse_estate(estate("jwks_webhook", output, tmp_path, None)), actor="test")
    run = Run(store, tmp_path, output)
    run.rotate()
    first = signer_kid(tmp_path)
    # The receiver refuses the publish (an answer retrying will not change); it takes the
    # rollback's post.
    receiver.script = [Answer(400)]
    _, state = run.rotate()
    assert state == RotationState.ROLLED_BACK
    [_, rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.error is not None
    assert "publishing:10:jwks_webhook" in rotation.error
    assert signer_kid(tmp_path) == first
    assert kids(output) == [first]
    assert all(r.signature_valid for r in receiver.requests)


@pytest.mark.parametrize("output", ["jwks_serve"], indirect=True)
def test_the_served_jwks_is_public_cached_for_cache_ttl_and_tagged(
    store: Store, tmp_path: Path, output: Output
) -> None:
    document = estate("jwks_serve", output, tmp_path, None)
    document["credentials"].append(
        {
            "name": "plain-secret",
            "owner": "team-identity",
            "provider": {"type": "random"},
            "actions": [
                {
                    "type": "file",
                    "order": 10,
                    "config": {"path": str(tmp_path / "s.env"), "file_format": "env", "key": "S"},
                }
            ],
        }
    )
    apply_estate(store, parse_estate(document), actor="test")
    Run(store, tmp_path, output).rotate()
    with TestClient(create_app(store)) as client:
        path = f"/.well-known/jwks/{CREDENTIAL}.json"
        answer = client.get(path)  # no token
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/jwk-set+json")
        assert answer.headers["cache-control"] == "public, max-age=300"
        etag = answer.headers["etag"]
        assert client.get(path, headers={"If-None-Match": etag}).status_code == 304
        assert client.get("/.well-known/jwks/plain-secret.json").status_code == 404
        assert client.get("/.well-known/jwks/no-such.json").status_code == 404
        # Every other route still wants a token.
        assert client.get(f"/v1/credentials/{CREDENTIAL}").status_code == 401


@pytest.mark.parametrize("kind", ["kubernetes_configmap", "jwks_webhook", "jwks_serve"])
def test_a_jwks_output_on_a_credential_that_is_no_signing_key_is_refused(
    kind: str, tmp_path: Path
) -> None:
    configs: dict[str, dict[str, Any]] = {
        "kubernetes_configmap": {"namespace": NS, "configmap": CONFIGMAP},
        "jwks_webhook": {"url": "https://hooks.example/jwks"},
        "jwks_serve": {},
    }
    document = {
        "credentials": [
            {
                "name": "plain-secret",
                "owner": "team-identity",
                "provider": {"type": "random"},
                "actions": [{"type": kind, "order": 10, "config": configs[kind]}],
            }
        ]
    }
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(document)
    # A ConfigMap holds what its `format` says (a JWKS or a CA bundle): that is the field.
    field = "config.format" if kind == "kubernetes_configmap" else "type"
    assert f"credentials[0].actions[0].{field}" in str(raised.value)
    assert "jwks_signing_key" in str(raised.value)


def test_a_jwks_output_ordered_after_the_signer_is_refused(tmp_path: Path) -> None:
    output = Output({}, lambda: "")
    document = estate("jwks_serve", output, tmp_path, None)
    document["credentials"][0]["actions"][0]["order"] = 30
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(document)
    assert "credentials[0].actions[0].order" in str(raised.value)
