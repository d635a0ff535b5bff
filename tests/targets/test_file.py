"""The `file` target writes one key of a json, yaml, env or ini file, atomically and in place."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from pydantic import ValidationError

from keyshift.context import PluginContext
from keyshift.domain.secret import Secret
from keyshift.domain.states import Phase
from keyshift.errors import PermanentError, PluginError, TransientError
from keyshift.targets.base import (
    Delivery,
    PreflightRequest,
    PublishRequest,
    Readiness,
    RollbackRequest,
    StepResult,
)
from keyshift.targets.file import FileConfig, FileTarget
from tests.certs import Ca, cert_delivery, issue, make_ca


def new_secret() -> str:
    return "S3CRET-" + secrets.token_hex(8)


def delivery(value: str, version_id: str = "v2") -> Delivery:
    return Delivery(
        credential="payments-api",
        rotation_id="rot-1",
        version_id=version_id,
        fingerprint=f"fp-{version_id}",
        value=Secret(value),
    )


def target(path: Path, key: str, file_format: str, **extra: Any) -> FileTarget:
    config = FileConfig.model_validate(
        {"path": str(path), "key": key, "file_format": file_format, **extra}
    )
    return FileTarget(config, PluginContext())


def publish(t: FileTarget, value: str, version_id: str = "v2") -> StepResult:
    return asyncio.run(t.publish(PublishRequest(delivery(value, version_id), None)))


def rollback(t: FileTarget, failed: str, previous: str | None) -> StepResult:
    before = delivery(previous, "v1") if previous is not None else None
    return asyncio.run(t.rollback(RollbackRequest(delivery(failed, "v2"), before)))


def preflight(t: FileTarget) -> tuple[Readiness, str]:
    result = asyncio.run(t.preflight(PreflightRequest("payments-api")))
    return result.readiness, result.reason


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".keyshift-" in p.name)


# --- json -----------------------------------------------------------------------------------


def test_nested_json_key_is_created_and_siblings_keep_their_order(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text(
        json.dumps({"Logging": {"Level": "Info"}, "Entra": {"TenantId": "t1"}, "Port": 8080})
    )
    value = new_secret()

    result = publish(target(path, "Entra:Credentials:ClientSecret", "json"), value)

    text = path.read_text()
    data = json.loads(text)
    assert list(data) == ["Logging", "Entra", "Port"]
    assert list(data["Entra"]) == ["TenantId", "Credentials"]
    assert data["Entra"]["Credentials"] == {"ClientSecret": value}
    assert data["Logging"] == {"Level": "Info"}
    assert data["Port"] == 8080
    assert text.endswith("}\n")
    assert '\n  "Logging"' in text
    assert dict(result.detail) == {
        "path": str(path),
        "key": "Entra:Credentials:ClientSecret",
        "fingerprint": "fp-v2",
        "changed": True,
    }
    assert value not in repr(result.detail)


def test_publishing_the_same_version_twice_leaves_one_state_and_no_rewrite(
    tmp_path: Path,
) -> None:
    path = tmp_path / "appsettings.json"
    t = target(path, "Entra:ClientSecret", "json")
    value = new_secret()
    publish(t, value)
    first = path.read_bytes()
    inode = path.stat().st_ino

    again = publish(t, value)

    assert again.detail["changed"] is False
    assert path.read_bytes() == first
    assert path.stat().st_ino == inode  # not replaced at all
    assert leftovers(tmp_path) == []


def test_json_byte_order_mark_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    path.write_bytes('\ufeff{"A": 1}'.encode())

    publish(target(path, "B", "json"), new_secret())

    raw = path.read_bytes()
    assert raw.startswith("\ufeff".encode())
    assert list(json.loads(raw.decode("utf-8-sig"))) == ["A", "B"]


def test_json_path_through_a_non_object_is_refused_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text('{"Entra": "not-an-object"}\n')
    value = new_secret()

    with pytest.raises(PermanentError, match="'Entra' holds a non-object") as caught:
        publish(target(path, "Entra:ClientSecret", "json"), value)

    assert value not in str(caught.value)
    assert path.read_text() == '{"Entra": "not-an-object"}\n'


# --- yaml -----------------------------------------------------------------------------------


def test_yaml_nested_key_is_written_and_other_keys_keep_their_order(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"
    path.write_text("service:\n  name: payments\n  port: 8080\nreplicas: 2\n")
    value = new_secret()

    publish(target(path, "service:auth:token", "yaml"), value)

    data = yaml.safe_load(path.read_text())
    assert list(data) == ["service", "replicas"]
    assert list(data["service"]) == ["name", "port", "auth"]
    assert data["service"]["auth"] == {"token": value}
    assert data["replicas"] == 2
    assert "{" not in path.read_text()  # block style, not flow style


def test_yaml_value_that_looks_like_a_number_stays_a_string(tmp_path: Path) -> None:
    path = tmp_path / "values.yaml"

    publish(target(path, "pin", "yaml"), "0012345")

    assert yaml.safe_load(path.read_text()) == {"pin": "0012345"}


# --- env ------------------------------------------------------------------------------------


def test_env_key_colons_become_double_underscores_and_other_lines_stay(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text(
        "# payments api\nLOG_LEVEL=info\n\n"
        "export Entra__ClientSecret=old-value # rotated\nPORT=8080\n"
    )
    value = new_secret()

    publish(target(path, "Entra:ClientSecret", "env"), value)

    assert path.read_text() == (
        "# payments api\nLOG_LEVEL=info\n\n"
        f"export Entra__ClientSecret={value} # rotated\nPORT=8080\n"
    )


def test_env_value_with_spaces_hash_quotes_dollar_or_backslash_is_double_quoted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1\n")
    token = secrets.token_hex(4)
    value = f'S3CRET {token} #x $HOME "q" back\\slash'

    publish(target(path, "Db:Password", "env"), value)

    expected = f'"S3CRET {token} #x $HOME \\"q\\" back\\\\slash"'
    assert path.read_text() == f"A=1\nDb__Password={expected}\n"


def test_env_line_is_appended_to_a_file_without_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1")
    value = new_secret()

    publish(target(path, "TOKEN", "env"), value)

    assert path.read_text() == f"A=1\nTOKEN={value}\n"


def test_env_quoted_multiline_value_is_replaced_as_one_entry(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text('KEY="-----BEGIN\nabc\n-----END"\nAFTER=1\n')
    value = new_secret()

    publish(target(path, "KEY", "env"), value)

    assert path.read_text() == f"KEY={value}\nAFTER=1\n"


def test_env_republishing_a_quoted_value_is_recognised_as_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    t = target(path, "KEY", "env")
    value = f'with space "and quote" {secrets.token_hex(4)}'
    publish(t, value)

    assert publish(t, value).detail["changed"] is False


def test_env_key_that_is_not_a_variable_name_is_refused_at_config() -> None:
    with pytest.raises(ValidationError, match="valid env variable name"):
        FileConfig.model_validate({"path": "/x", "key": "has space", "file_format": "env"})


# --- ini ------------------------------------------------------------------------------------


def test_ini_section_and_key_are_written_with_case_and_order_kept(tmp_path: Path) -> None:
    path = tmp_path / "app.ini"
    path.write_text("[Server]\nPort = 8080\n\n[Database]\nHost = db\nUserName = app\n")
    value = new_secret() + "%d"  # a '%' must not be taken for interpolation

    publish(target(path, "Database:Password", "ini"), value)

    assert path.read_text() == (
        f"[Server]\nPort = 8080\n\n[Database]\nHost = db\nUserName = app\nPassword = {value}\n\n"
    )


def test_ini_new_section_is_added_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "app.ini"
    path.write_text("[Server]\nPort = 8080\n")
    value = new_secret()

    publish(target(path, "Auth:Token", "ini"), value)

    assert path.read_text().endswith(f"[Auth]\nToken = {value}\n\n")


def test_ini_key_without_a_section_is_refused_at_config() -> None:
    with pytest.raises(ValidationError, match="must be 'Section:key' for an ini file"):
        FileConfig.model_validate({"path": "/x", "key": "Password", "file_format": "ini"})


def test_ini_value_with_a_line_break_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "app.ini"
    value = new_secret() + "\nsecond-line"

    with pytest.raises(PermanentError, match="line breaks") as caught:
        publish(target(path, "A:b", "ini"), value)

    assert "S3CRET" not in str(caught.value)
    assert not path.exists()


# --- config -----------------------------------------------------------------------------------


def test_file_format_outside_the_supported_literals_is_a_literal_error() -> None:
    with pytest.raises(ValidationError) as caught:
        FileConfig.model_validate({"path": "/x", "key": "K", "file_format": "toml"})

    errors = caught.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [(("file_format",), "literal_error")]


def test_aliases_target_path_and_secret_key_are_accepted() -> None:
    config = FileConfig.model_validate(
        {"target_path": "/etc/app.json", "secret_key": "A:B", "file_format": "json"}
    )

    assert (config.path, config.key, config.create) == ("/etc/app.json", "A:B", True)


def test_unknown_config_fields_and_empty_key_parts_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        FileConfig.model_validate({"path": "/x", "key": "K", "file_format": "json", "mode": 1})
    with pytest.raises(ValidationError, match="empty part"):
        FileConfig.model_validate({"path": "/x", "key": "A::B", "file_format": "json"})


def test_file_target_declares_its_kind_phase_and_config() -> None:
    assert (FileTarget.kind, FileTarget.phase, FileTarget.Config) == (
        "file",
        Phase.PUBLISH,
        FileConfig,
    )


# --- permissions, atomicity -------------------------------------------------------------------


def test_existing_file_mode_0640_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text("{}")
    path.chmod(0o640)
    before = path.stat()

    publish(target(path, "A", "json"), new_secret())

    after = path.stat()
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert after.st_ino != before.st_ino  # replaced, not written in place


def test_new_file_is_created_readable_by_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "new.json"

    publish(target(path, "A", "json"), new_secret())

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another owner")
def test_existing_owner_is_kept_when_replacing(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("A=1\n")
    os.chown(path, 4321, 8765)

    publish(target(path, "B", "env"), new_secret())

    assert (path.stat().st_uid, path.stat().st_gid) == (4321, 8765)


def test_failed_replace_leaves_no_temp_file_and_the_target_untouched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text('{"A": 1}\n')
    value = new_secret()

    def disk_full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)

    with pytest.raises(TransientError, match="cannot write") as caught:
        publish(target(path, "B", "json"), value)

    assert value not in str(caught.value)
    assert leftovers(tmp_path) == []
    assert path.read_text() == '{"A": 1}\n'


def test_symlinked_file_is_updated_through_the_link(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    value = new_secret()

    publish(target(link, "A", "json"), value)

    assert link.is_symlink()
    assert json.loads(real.read_text()) == {"A": value}


# --- rollback ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_format", "key", "read"),
    [
        (
            "json",
            "Entra:ClientSecret",
            lambda p: json.loads(p.read_text())["Entra"]["ClientSecret"],
        ),
        (
            "yaml",
            "Entra:ClientSecret",
            lambda p: yaml.safe_load(p.read_text())["Entra"]["ClientSecret"],
        ),
        ("env", "Entra:ClientSecret", lambda p: p.read_text().split("=", 1)[1].strip()),
        ("ini", "Entra:ClientSecret", lambda p: p.read_text().split("= ", 1)[1].strip()),
    ],
)
def test_rollback_writes_the_previous_value_back(
    tmp_path: Path, file_format: str, key: str, read: Any
) -> None:
    path = tmp_path / f"app.{file_format}"
    t = target(path, key, file_format)
    old, new = new_secret(), new_secret()
    publish(t, old, "v1")
    publish(t, new, "v2")

    result = rollback(t, new, old)
    again = rollback(t, new, old)

    assert read(path) == old
    assert result.detail["fingerprint"] == "fp-v1"
    assert result.detail["changed"] is True
    assert again.detail["changed"] is False
    assert new not in repr(result.detail)
    assert old not in repr(result.detail)


def test_rollback_without_previous_removes_the_key_and_the_parents_it_emptied(
    tmp_path: Path,
) -> None:
    path = tmp_path / "appsettings.json"
    path.write_text('{"Entra": {"TenantId": "t1"}, "Port": 1}')
    t = target(path, "Entra:Credentials:ClientSecret", "json")
    new = new_secret()
    publish(t, new)

    result = rollback(t, new, None)
    again = rollback(t, new, None)

    assert json.loads(path.read_text()) == {"Entra": {"TenantId": "t1"}, "Port": 1}
    assert result.detail["removed"] is True
    assert result.detail["changed"] is True
    assert again.detail["changed"] is False


@pytest.mark.parametrize(
    ("file_format", "key", "original"),
    [
        ("env", "Db:Password", "# keep\nA=1\n"),
        ("ini", "Db:Password", "[Server]\nPort = 1\n\n"),
        ("yaml", "db:password", "server:\n  port: 1\n"),
    ],
)
def test_rollback_without_previous_restores_the_file_publish_changed(
    tmp_path: Path, file_format: str, key: str, original: str
) -> None:
    path = tmp_path / f"app.{file_format}"
    path.write_text(original)
    t = target(path, key, file_format)
    new = new_secret()
    publish(t, new)
    assert new in path.read_text()

    rollback(t, new, None)

    assert path.read_text() == original


def test_rollback_without_previous_on_a_missing_file_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"

    result = rollback(target(path, "A", "json"), new_secret(), None)

    assert result.detail["changed"] is False
    assert not path.exists()


# --- parse errors, preflight ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_format", "content"),
    [
        ("json", '{"Password": "{leak}", oops'),
        ("yaml", "Password: {leak}\n  - : : [\n"),
        ("env", "Password={leak}\nthis is not an assignment\n"),
        ("ini", "Password = {leak}\n"),
    ],
)
def test_unparseable_file_is_refused_without_echoing_its_content(
    tmp_path: Path, file_format: str, content: str
) -> None:
    path = tmp_path / f"app.{file_format}"
    leak = new_secret()
    path.write_text(content.replace("{leak}", leak))
    t = target(path, "S:k", file_format)
    value = new_secret()

    with pytest.raises(PermanentError, match=f"does not parse as {file_format}") as caught:
        publish(t, value)
    readiness, reason = preflight(t)

    message = str(caught.value)
    assert leak not in message
    assert value not in message
    assert "oops" not in message
    assert str(path) in message
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None
    assert readiness is Readiness.BLOCKED
    assert f"does not parse as {file_format}" in reason
    assert leak not in reason
    assert leak in path.read_text()  # left as it was


def test_preflight_is_ready_for_a_new_file_in_a_writable_directory(tmp_path: Path) -> None:
    t = target(tmp_path / "new.json", "A", "json")

    assert preflight(t) == (Readiness.READY, "")
    assert list(tmp_path.iterdir()) == []  # preflight changes nothing


def test_preflight_is_blocked_when_the_directory_does_not_exist(tmp_path: Path) -> None:
    readiness, reason = preflight(target(tmp_path / "nope" / "a.json", "A", "json"))

    assert readiness is Readiness.BLOCKED
    assert "does not exist" in reason


def test_missing_file_with_create_false_is_blocked_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    t = target(path, "A", "json", create=False)

    readiness, reason = preflight(t)
    with pytest.raises(PermanentError, match="does not exist and create is false"):
        publish(t, new_secret())

    assert readiness is Readiness.BLOCKED
    assert "create is false" in reason
    assert not path.exists()


def test_every_failure_is_a_plugin_error_that_never_names_the_value(tmp_path: Path) -> None:
    directory = tmp_path / "dir.json"
    directory.mkdir()
    value = new_secret()

    with pytest.raises(PluginError) as caught:
        publish(target(directory, "A", "json"), value)

    assert "not a regular file" in str(caught.value)
    assert value not in str(caught.value)


# --- certificates (pem, pkcs12) -------------------------------------------------------------


def cert_target(tmp_path: Path, **config: Any) -> FileTarget:
    settings = {
        "path": str(tmp_path / "site.crt"),
        "key_path": str(tmp_path / "site.key"),
        "file_format": "pem",
        **config,
    }
    return FileTarget(FileConfig.model_validate(settings), PluginContext(env={"P12": "pfx-pw"}))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return make_ca(tmp_path / "ca")


def test_pem_writes_key_0600_and_certificate_and_chain_0644(tmp_path: Path, ca: Ca) -> None:
    version = issue(ca)
    t = cert_target(tmp_path, chain_path=str(tmp_path / "chain.pem"))
    result = asyncio.run(t.publish(PublishRequest(cert_delivery(version), None)))
    assert result.detail["changed"] is True
    assert (tmp_path / "site.key").read_text() == version.value.reveal()
    assert (tmp_path / "site.crt").read_text() == version.attributes["certificate"]
    assert (tmp_path / "chain.pem").read_text() == ca.cert_path.read_text()
    assert (mode(tmp_path / "site.key"), mode(tmp_path / "site.crt")) == (0o600, 0o644)
    assert mode(tmp_path / "chain.pem") == 0o644
    again = asyncio.run(t.publish(PublishRequest(cert_delivery(version), None)))
    assert again.detail["changed"] is False


def test_pem_fullchain_puts_the_chain_after_the_certificate(tmp_path: Path, ca: Ca) -> None:
    version = issue(ca)
    asyncio.run(
        cert_target(tmp_path, fullchain=True).publish(PublishRequest(cert_delivery(version), None))
    )
    text = (tmp_path / "site.crt").read_text()
    assert text == version.attributes["certificate"] + ca.cert_path.read_text()
    assert len(x509.load_pem_x509_certificates(text.encode())) == 2


def test_pem_key_file_loses_permissions_for_others_but_keeps_its_group(
    tmp_path: Path, ca: Ca
) -> None:
    key = tmp_path / "site.key"
    key.write_text("old")
    key.chmod(0o644)
    asyncio.run(cert_target(tmp_path).publish(PublishRequest(cert_delivery(issue(ca)), None)))
    assert mode(key) == 0o640


def test_pem_rollback_restores_the_previous_files_exactly(tmp_path: Path, ca: Ca) -> None:
    old, new = issue(ca), issue(ca)
    t = cert_target(tmp_path, chain_path=str(tmp_path / "chain.pem"))
    previous = cert_delivery(old, "v1")
    asyncio.run(t.publish(PublishRequest(previous, None)))
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.*") if p.is_file()}
    asyncio.run(t.publish(PublishRequest(cert_delivery(new), previous)))
    assert (tmp_path / "site.key").read_text() == new.value.reveal()
    asyncio.run(t.rollback(RollbackRequest(cert_delivery(new), previous)))
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.*") if p.is_file()} == before


def test_pem_rollback_without_previous_removes_only_files_still_holding_the_new_version(
    tmp_path: Path, ca: Ca
) -> None:
    new = issue(ca)
    t = cert_target(tmp_path)
    asyncio.run(t.publish(PublishRequest(cert_delivery(new), None)))
    (tmp_path / "site.crt").write_text("someone else's certificate")
    result = asyncio.run(t.rollback(RollbackRequest(cert_delivery(new), None)))
    assert result.detail["removed"] is True
    assert not (tmp_path / "site.key").exists()
    assert (tmp_path / "site.crt").read_text() == "someone else's certificate"


def test_pem_of_a_version_without_a_certificate_names_the_fields_it_has(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="has no field 'certificate'"):
        asyncio.run(cert_target(tmp_path).publish(PublishRequest(delivery("plain"), None)))


def test_pkcs12_bundle_holds_key_certificate_and_chain_under_the_password(
    tmp_path: Path, ca: Ca
) -> None:
    version = issue(ca)
    bundle = tmp_path / "site.p12"
    t = cert_target(
        tmp_path, path=str(bundle), key_path=None, file_format="pkcs12", password_from="env:P12"
    )
    assert asyncio.run(t.publish(PublishRequest(cert_delivery(version), None))).detail["changed"]
    key, cert, chain = pkcs12.load_key_and_certificates(bundle.read_bytes(), b"pfx-pw")
    assert cert is not None
    assert key is not None
    assert (
        cert.public_bytes(serialization.Encoding.PEM).decode()
        == (version.attributes["certificate"])
    )
    assert chain == [ca.cert]
    assert mode(bundle) == 0o600
    written = bundle.read_bytes()
    again = asyncio.run(t.publish(PublishRequest(cert_delivery(version), None)))
    assert again.detail["changed"] is False
    assert bundle.read_bytes() == written


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"file_format": "pem", "key": "K"}, "writes whole files: give no key or keys"),
        ({"file_format": "pem"}, "needs key_path"),
        ({"file_format": "pkcs12"}, "needs password_from"),
        ({"file_format": "json", "key": "K", "key_path": "/k"}, "key_path is for file_format"),
        ({"file_format": "pem", "key_path": "/etc/a.crt"}, "three different files"),
        ({"file_format": "pkcs12", "password_from": "hunter2"}, "env:NAME"),
    ],
)
def test_certificate_file_options_are_refused_where_they_do_not_fit(
    config: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        FileConfig.model_validate({"path": "/etc/a.crt", **config})
