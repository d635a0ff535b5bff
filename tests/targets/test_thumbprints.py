"""Accepted-thumbprint lists (`keyshift.targets.thumbprints`): as a file (`file_format:
thumbprints`, whole lines, a JSON array or an env value at one key, every other key kept)
and as a `thumbprints_webhook` to a real local receiver; [new, old] on publish, [new] on
withdraw, [old] on rollback; never a private key; bad config and estates name the field."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.engine.plugins import build_target
from keyshift.errors import EstateInvalid, PermanentError
from keyshift.service.estate import parse_estate
from keyshift.targets.base import Delivery, PublishRequest, RollbackRequest, WithdrawRequest
from keyshift.targets.thumbprints import ThumbprintSpec, thumbprint_of
from keyshift.testing import FakeClock
from tests.certs import START, Ca, cert_delivery, issue, leaf_provider, make_ca
from tests.doubles.receiver import Receiver


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path / "ca")


@pytest.fixture
def pair(ca: Ca) -> tuple[Delivery, Delivery]:
    """(old, new): two certificate versions of one credential."""
    old = cert_delivery(issue(ca), "v1")
    new = cert_delivery(issue(ca, at=START + timedelta(days=60)), "v2")
    return old, new


def der(delivery: Delivery) -> bytes:
    pem = delivery.attributes["certificate"].encode("ascii")
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def file_target(path: Path, **thumbprints: Any) -> Any:
    config: dict[str, Any] = {"path": str(path), "file_format": "thumbprints"}
    if thumbprints:
        config["thumbprints"] = thumbprints
    return build_target("file", config, FakeClock().context())


def private_lines(*deliveries: Delivery) -> list[str]:
    return [line for d in deliveries for line in d.value.reveal().splitlines()[1:-1]]


@pytest.mark.parametrize(
    ("algorithm", "encoding", "expected"),
    [
        ("sha256", "hex", lambda d: hashlib.sha256(d).hexdigest()),
        ("sha1", "hex_upper", lambda d: hashlib.sha1(d).hexdigest().upper()),  # noqa: S324
        ("sha256", "hex_upper_colons", lambda d: hashlib.sha256(d).digest().hex(":").upper()),
        (
            "sha1",
            "base64url",
            lambda d: base64.urlsafe_b64encode(hashlib.sha1(d).digest()).rstrip(b"=").decode(),  # noqa: S324
        ),
    ],
)
def test_a_thumbprint_is_the_digest_of_the_certificate_der_in_the_chosen_encoding(
    pair: tuple[Delivery, Delivery], algorithm: str, encoding: str, expected: Any
) -> None:
    _, new = pair
    spec = ThumbprintSpec.model_validate({"algorithm": algorithm, "encoding": encoding})
    assert thumbprint_of(new, spec) == expected(der(new))
    if (algorithm, encoding) == ("sha256", "hex"):
        # The same as the version's own thumbprint and fingerprint.
        assert thumbprint_of(new, spec) == new.attributes["thumbprint"]
        assert new.fingerprint == "sha256:" + thumbprint_of(new, spec)


def test_a_version_without_a_certificate_is_refused_naming_it_not_its_value() -> None:
    value = "S3CRET-not-a-certificate"
    version = Delivery("build-token", "rot-1", "v7", "fp", Secret(value), {})
    with pytest.raises(PermanentError) as raised:
        thumbprint_of(version, ThumbprintSpec())
    assert "v7" in str(raised.value)
    assert value not in str(raised.value)


def test_a_lines_file_holds_new_and_old_then_new_alone_then_old_on_rollback(
    tmp_path: Path, pair: tuple[Delivery, Delivery]
) -> None:
    old, new = pair
    path = tmp_path / "accepted.txt"
    spec = ThumbprintSpec(algorithm="sha1", encoding="hex_upper")
    other = "0123456789ABCDEF0123456789ABCDEF01234567"
    # The relay's own comment and a thumbprint of another signer stay where they are.
    path.write_text(f"# accepted signers\n{thumbprint_of(old, spec)}\n{other}\n")
    target = file_target(path, algorithm="sha1", encoding="hex_upper")
    t_old, t_new = thumbprint_of(old, spec), thumbprint_of(new, spec)

    published = asyncio.run(target.publish(PublishRequest(new, old)))
    assert path.read_text() == f"# accepted signers\n{t_new}\n{t_old}\n{other}\n"
    assert published.detail["thumbprints"] == [t_new, t_old, other]
    assert asyncio.run(target.publish(PublishRequest(new, old))).detail["changed"] is False

    withdrawn = asyncio.run(target.withdraw(WithdrawRequest(current=new, withdrawn=old)))
    assert path.read_text() == f"# accepted signers\n{t_new}\n{other}\n"
    assert withdrawn.detail["withdrawn"] == old.fingerprint

    rolled = asyncio.run(target.rollback(RollbackRequest(failed=new, previous=old)))
    assert path.read_text() == f"# accepted signers\n{t_old}\n{other}\n"
    assert rolled.detail["fingerprint"] == old.fingerprint
    text = path.read_text()
    assert "PRIVATE KEY" not in text
    assert not any(line in text for line in private_lines(old, new))


def test_a_new_lines_file_is_public_and_a_rollback_of_a_first_version_empties_it(
    tmp_path: Path, pair: tuple[Delivery, Delivery]
) -> None:
    _, new = pair
    path = tmp_path / "accepted.txt"
    target = file_target(path)
    asyncio.run(target.publish(PublishRequest(new, None)))
    assert path.read_text() == new.attributes["thumbprint"] + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    asyncio.run(target.rollback(RollbackRequest(failed=new, previous=None)))
    assert path.read_text() == ""


def test_a_json_list_sits_at_its_key_and_every_other_key_stays(
    tmp_path: Path, pair: tuple[Delivery, Delivery]
) -> None:
    old, new = pair
    path = tmp_path / "appsettings.json"
    path.write_text(
        json.dumps({"Relay": {"Endpoint": "sb://relay/"}, "Logging": {"Level": "Info"}})
    )
    target = file_target(path, format="json", key="Relay:Accepted", encoding="hex_upper_colons")
    asyncio.run(target.publish(PublishRequest(new, old)))
    document = json.loads(path.read_text())
    spec = ThumbprintSpec(encoding="hex_upper_colons")
    assert document == {
        "Relay": {
            "Endpoint": "sb://relay/",
            "Accepted": [thumbprint_of(new, spec), thumbprint_of(old, spec)],
        },
        "Logging": {"Level": "Info"},
    }
    asyncio.run(target.withdraw(WithdrawRequest(current=new, withdrawn=old)))
    assert json.loads(path.read_text())["Relay"]["Accepted"] == [thumbprint_of(new, spec)]


def test_an_env_value_is_comma_separated_and_other_lines_stay(
    tmp_path: Path, pair: tuple[Delivery, Delivery]
) -> None:
    old, new = pair
    path = tmp_path / "relay.env"
    path.write_text("# relay\nRELAY_URL=sb://relay/\n")
    target = file_target(path, format="env", key="Relay:Accepted", algorithm="sha1")
    asyncio.run(target.publish(PublishRequest(new, old)))
    spec = ThumbprintSpec(algorithm="sha1")
    both = f"{thumbprint_of(new, spec)},{thumbprint_of(old, spec)}"
    assert path.read_text() == f"# relay\nRELAY_URL=sb://relay/\nRelay__Accepted={both}\n"
    asyncio.run(target.withdraw(WithdrawRequest(current=new, withdrawn=old)))
    assert path.read_text().endswith(f"\nRelay__Accepted={thumbprint_of(new, spec)}\n")


def test_a_key_holding_something_else_than_a_list_is_refused_without_quoting_it(
    tmp_path: Path, pair: tuple[Delivery, Delivery]
) -> None:
    old, new = pair
    path = tmp_path / "appsettings.json"
    path.write_text(json.dumps({"Relay": {"Accepted": {"password": "S3CRET-x"}}}))
    target = file_target(path, format="json", key="Relay:Accepted")
    with pytest.raises(PermanentError, match="does not hold a list") as raised:
        asyncio.run(target.publish(PublishRequest(new, old)))
    assert "S3CRET" not in str(raised.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"thumbprints": {"format": "json"}}, "format json needs key"),
        ({"thumbprints": {"key": "Relay:Accepted"}}, "key is for format json or env"),
        ({"thumbprints": {"encoding": "hex_lower"}}, "thumbprints.encoding: must be one of"),
        ({"thumbprints": {"algorithm": "md5"}}, "thumbprints.algorithm: must be one of sha256"),
        ({"key": "Relay:Accepted"}, "writes whole files"),
        ({"file_format": "json", "key": "a"}, "thumbprints is for file_format thumbprints"),
    ],
)
def test_bad_thumbprint_config_is_refused_naming_the_field(
    tmp_path: Path, config: dict[str, Any], message: str
) -> None:
    action = {
        "type": "file",
        "order": 10,
        "config": {
            "path": str(tmp_path / "a"),
            "file_format": "thumbprints",
            "thumbprints": {},
            **config,
        },
    }
    with pytest.raises(EstateInvalid) as raised:
        parse_estate({"credentials": [credential({"type": "random"}, [action])]})
    [problem] = raised.value.problems
    assert problem.path.startswith("credentials[0].actions[0].config")
    assert message in f"{problem.path}: {problem.message}"


def credential(provider: dict[str, Any], actions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "release-signing",
        "owner": "team-release",
        "environment": "dev",
        "provider": provider,
        "actions": actions,
    }


def list_action(tmp_path: Path, order: int) -> dict[str, Any]:
    return {
        "type": "file",
        "order": order,
        "config": {"path": str(tmp_path / "accepted.txt"), "file_format": "thumbprints"},
    }


def signer_action(tmp_path: Path, order: int) -> dict[str, Any]:
    return {
        "type": "file",
        "order": order,
        "config": {
            "path": str(tmp_path / "s.crt"),
            "key_path": str(tmp_path / "s.key"),
            "file_format": "pem",
        },
    }


def problems_of(document: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(EstateInvalid) as raised:
        parse_estate(document)
    return [(p.path, p.message) for p in raised.value.problems]


def test_a_thumbprint_list_of_a_credential_without_certificates_is_refused(
    tmp_path: Path, receiver: Receiver
) -> None:
    hook = {"type": "thumbprints_webhook", "order": 11, "config": {"url": receiver.url}}
    document = {"credentials": [credential({"type": "random"}, [list_action(tmp_path, 10), hook])]}
    [(file_path, file_message), (hook_path, hook_message)] = problems_of(document)
    assert file_path == "credentials[0].actions[0].config.file_format"
    assert hook_path == "credentials[0].actions[1].type"
    for message in (file_message, hook_message):
        assert "thumbprints of a certificate credential" in message
        assert "release-signing is random" in message


def test_a_thumbprint_list_after_the_signer_is_refused_naming_its_order(
    tmp_path: Path, ca: Ca
) -> None:
    actions = [signer_action(tmp_path, 10), list_action(tmp_path, 20)]
    document = {"credentials": [credential(leaf_provider(ca), actions)]}
    [(path, message)] = problems_of(document)
    assert path == "credentials[0].actions[1].order"
    assert "accepted-thumbprint list action (order 20) must come before" in message


def test_a_certificate_with_its_list_first_or_without_one_is_valid(tmp_path: Path, ca: Ca) -> None:
    first = [list_action(tmp_path, 10), signer_action(tmp_path, 20)]
    parse_estate({"credentials": [credential(leaf_provider(ca), first)]})
    parse_estate({"credentials": [credential(leaf_provider(ca), [signer_action(tmp_path, 20)])]})


def hook_target(receiver: Receiver, **config: Any) -> Any:
    context = PluginContext(now=FakeClock().now, env={"HOOK_KEY": "k3y-for-hmac"})
    settings = {"url": receiver.url, "signing_secret_from": "env:HOOK_KEY", **config}
    return build_target("thumbprints_webhook", settings, context)


def test_the_webhook_receives_new_and_old_then_new_then_old_signed_and_without_a_key(
    receiver: Receiver, pair: tuple[Delivery, Delivery]
) -> None:
    old, new = pair
    receiver.signing_key = "k3y-for-hmac"
    target = hook_target(receiver, algorithm="sha1", encoding="hex_upper")
    spec = ThumbprintSpec(algorithm="sha1", encoding="hex_upper")
    t_old, t_new = thumbprint_of(old, spec), thumbprint_of(new, spec)

    sent = asyncio.run(target.publish(PublishRequest(new, old)))
    asyncio.run(target.withdraw(WithdrawRequest(current=new, withdrawn=old)))
    asyncio.run(target.rollback(RollbackRequest(failed=new, previous=old)))

    bodies = [json.loads(r.body) for r in receiver.requests]
    assert [b["thumbprints"] for b in bodies] == [[t_new, t_old], [t_new], [t_old]]
    assert [b["reason"] for b in bodies] == ["published", "withdrawn", "rolled_back"]
    assert {b["event"] for b in bodies} == {"thumbprints.accepted"}
    assert all(b["algorithm"] == "sha1" and b["encoding"] == "hex_upper" for b in bodies)
    assert [r.signature_valid for r in receiver.requests] == [True, True, True]
    deliveries = [r.headers["X-Keyshift-Delivery"] for r in receiver.requests]
    assert len(set(deliveries)) == 3, "receivers drop duplicates by it: one per list"
    assert sent.detail["thumbprints"] == [t_new, t_old]
    raw = b"".join(r.body for r in receiver.requests).decode()
    assert "PRIVATE KEY" not in raw
    assert not any(line in raw for line in private_lines(old, new))


def test_the_webhook_refuses_include_value_naming_the_field(receiver: Receiver) -> None:
    action = {
        "type": "thumbprints_webhook",
        "order": 10,
        "config": {"url": receiver.url, "include_value": True},
    }
    [(path, message)] = problems_of({"credentials": [credential({"type": "random"}, [action])]})
    assert path == "credentials[0].actions[0].config"
    assert "include_value" in message


def test_an_agent_action_refuses_a_thumbprint_list_naming_its_file_format(tmp_path: Path) -> None:
    """The agent writes keys of files only: a list there would be written as nothing."""
    action = {
        "type": "agent_secret_sync",
        "order": 10,
        "agent_id": "web-01",
        "config": {"path": str(tmp_path / "a"), "file_format": "thumbprints"},
    }
    problems = problems_of({"credentials": [credential({"type": "random"}, [action])]})
    assert "credentials[0].actions[0].config.file_format" in [p for p, _ in problems], problems
    assert any("agent_secret_sync writes keys" in m for _, m in problems)
