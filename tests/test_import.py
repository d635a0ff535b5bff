"""`keyshift import NAME`: an existing value brought under management without rotating.
It comes on stdin or from a reference, never as an argument; it is stored as the
credential's first current version with `imported` provenance, a fingerprint and an
expiry, touching no issuer and no consumer; the first rotation afterwards rolls back
to it. Audited, and no value is ever printed."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from click.testing import Result
from typer.testing import CliRunner

from keyshift.cli import app
from keyshift.domain.clock import utcnow
from keyshift.domain.secret import Secret
from keyshift.service import rotations
from keyshift.store.store import Store
from tests.api.conftest import open_api
from tests.conftest import Cli
from tests.helpers import audit_details, json_value, versions, write_estate

VALUE = "imported-value-0123456789abcdef-XYZ"


def _import(cli: Cli, *args: str, stdin: str | None = None) -> Result:
    """`keyshift import` with `stdin` as its standard input."""
    return cli("import", *args, stdin=stdin)


def test_an_imported_value_becomes_version_1_touching_no_consumer(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    done = _import(cli, "api-key", stdin=VALUE + "\n")
    assert done.exit_code == 0, done.output
    assert VALUE not in done.output

    [version] = versions(store, "api-key")
    assert (version.serial, version.status, version.provenance) == (1, "current", "imported")
    assert version.rotation_id is None
    assert version.fingerprint == store.fingerprint(Secret(VALUE))
    assert store.reveal(version).reveal() == VALUE  # the trailing newline is not the value
    assert version.expires_at is not None  # the policy's max_lifetime, from now
    assert abs(version.expires_at - (utcnow() + timedelta(days=90))) < timedelta(minutes=1)
    assert version.id[:8] in done.output
    # No consumer was written or reloaded.
    assert not (tmp_path / "app.json").exists()
    assert not (tmp_path / "reload.log").exists()
    assert rotations.history_rows(store, "api-key") == []
    [row] = rotations.status_rows(store, now=utcnow())
    assert row.version_id == version.id
    [audited] = audit_details(store, "version.imported")
    assert audited["version_id"] == version.id
    assert audited["fingerprint"] == version.fingerprint
    assert audited["provenance"] == "imported"
    assert VALUE not in json.dumps(audited)


def test_an_import_reads_a_reference_and_takes_an_expiry(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    source = tmp_path / "current.txt"
    source.write_text(VALUE + "\n", encoding="utf-8")
    done = _import(cli, "api-key", "--from", f"file:{source}", "--expires", "2031-01-02")
    assert done.exit_code == 0, done.output
    [version] = versions(store, "api-key")
    assert store.reveal(version).reveal() == VALUE
    assert version.expires_at is not None
    assert version.expires_at.isoformat().startswith("2031-01-02T00:00:00")


def test_an_import_is_refused_changing_nothing(cli: Cli, store: Store, tmp_path: Path) -> None:
    """Never a value as an argument, never an empty one, never over a current version."""
    assert cli("apply", "-f", str(write_estate(tmp_path))).exit_code == 0
    as_argument = _import(cli, "api-key", VALUE)
    assert as_argument.exit_code == 2
    assert VALUE not in as_argument.output
    empty = _import(cli, "api-key", stdin="\n")
    assert empty.exit_code == 2
    assert "empty" in empty.output
    unset = _import(cli, "api-key", "--from", "env:KS_NO_SUCH_VARIABLE")
    assert unset.exit_code == 1
    assert "KS_NO_SUCH_VARIABLE" in unset.output
    missing = _import(cli, "no-such", stdin=VALUE)
    assert missing.exit_code == 1
    assert versions(store, "api-key") == []
    assert audit_details(store, "version.imported") == []

    assert cli("rotate", "api-key", "--grace", "0s").exit_code == 0
    over = _import(cli, "api-key", stdin=VALUE)
    assert over.exit_code == 1
    assert "current version" in over.output
    assert [v.provenance for v in versions(store, "api-key")] == ["issued"]


def test_the_first_rotation_after_an_import_rolls_back_to_the_imported_value(
    cli: Cli, store: Store, tmp_path: Path
) -> None:
    """Imported, rotated, the reload after publishing fails: the rollback writes the
    imported value back to the consumer, which it never had from keyshift before."""
    fail = tmp_path / "fail.py"
    fail.write_text("import sys; sys.exit(5)\n")
    estate = write_estate(tmp_path)
    estate.write_text(estate.read_text().replace(str(tmp_path / "reload.py"), str(fail)))
    assert cli("apply", "-f", str(estate)).exit_code == 0
    assert _import(cli, "api-key", stdin=VALUE).exit_code == 0

    result = cli("rotate", "api-key")
    assert result.exit_code == 1, result.output
    assert "rolled_back" in result.output
    assert json_value(tmp_path / "app.json") == VALUE
    [rotation] = rotations.history_rows(store, "api-key")
    assert rotation.state == "rolled_back"
    imported, new = versions(store, "api-key")
    assert (imported.provenance, imported.status) == ("imported", "current")
    assert new.status == "disabled"


def test_the_api_imports_with_its_own_permission_and_never_answers_the_value(
    store: Store, tmp_path: Path
) -> None:
    for api in open_api(store):
        estate = json.loads(write_estate(tmp_path).read_text())
        assert api.call("POST", "/v1/estate/apply", json=estate).status_code == 200
        body = {"value": VALUE}
        for role in ("viewer", "rotator", "approver", "auditor"):
            refused = api.call("POST", "/v1/credentials/api-key/import", json=body, role=role)
            assert refused.status_code == 403, (role, refused.text)
            assert refused.json()["permission"] == "credentials:import"
        made = api.call("POST", "/v1/credentials/api-key/import", json=body, role="operator")
        assert made.status_code == 201, made.text
        assert VALUE not in made.text
        assert made.json()["provenance"] == "imported"
        assert made.json()["serial"] == 1
        again = api.call("POST", "/v1/credentials/api-key/import", json=body, role="operator")
        assert again.status_code == 409, again.text
        assert VALUE not in again.text
        empty = api.call("POST", "/v1/credentials/api-key/import", json={"value": ""})
        assert empty.status_code == 422
        detail = api.call("GET", "/v1/credentials/api-key", role="viewer").json()
        assert [v["provenance"] for v in detail["versions"]] == ["imported"]
        assert VALUE not in json.dumps(detail)


def test_import_help_says_where_the_value_comes_from() -> None:
    result = CliRunner().invoke(app, ["import", "--help"])
    assert result.exit_code == 0
    assert "stdin" in result.output
    assert "--from" in result.output
