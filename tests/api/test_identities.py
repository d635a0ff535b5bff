"""API tokens: shown once, stored only as a hash, expiring, revocable; identities audited."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import inspect, select, text

from keyshift.domain.clock import utcnow
from keyshift.service import identities
from keyshift.store.audit import export
from keyshift.store.models import ApiTokenRow
from keyshift.store.store import Store
from tests.api.conftest import Api
from tests.conftest import Cli


def _every_stored_text(store: Store) -> str:
    """Every column of every row of every table, as one string."""
    chunks: list[str] = []
    with store.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):  # noqa: S608 (table names from the schema)
                chunks += [str(v) for v in row]
    return "\n".join(chunks)


def test_token_is_shown_once_and_the_store_holds_only_its_hash(api: Api) -> None:
    created = api.call(
        "POST", "/v1/tokens", json={"principal": "viewer-1", "name": "ci", "expires_in": "1d"}
    )
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    info = created.json()["info"]
    assert token.startswith(info["prefix"] + "_")
    stored = _every_stored_text(api.store)
    assert token not in stored
    assert token.split("_", 2)[2] not in stored  # not even the secret part
    with api.store.transaction() as s:
        row = s.get(ApiTokenRow, info["id"])
        assert row is not None
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    listed = api.call("GET", "/v1/tokens")
    assert token.split("_", 2)[2] not in listed.text
    assert info["id"] in listed.text
    # The new token works, and its use is recorded.
    used = api.client.get("/v1/credentials", headers={"Authorization": f"Bearer {token}"})
    assert used.status_code == 200
    with api.store.transaction() as s:
        assert s.get(ApiTokenRow, info["id"]).last_used_at is not None  # type: ignore[union-attr]
        entries = [e for e in export(s) if e["subject"] == f"token:{info['id']}"]
    assert [e["action"] for e in entries] == ["token.created"]
    assert token not in str(entries)


def test_an_expired_token_is_refused(api: Api) -> None:
    created = api.call("POST", "/v1/tokens", json={"principal": "auditor-1"}).json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert api.client.get("/v1/credentials", headers=headers).status_code == 200
    with api.store.transaction() as s:  # time passes
        s.execute(
            select(ApiTokenRow).where(ApiTokenRow.id == created["info"]["id"])
        ).scalar_one().expires_at = utcnow() - timedelta(seconds=1)
    refused = api.client.get("/v1/credentials", headers=headers)
    assert refused.status_code == 401
    assert "expired" in refused.json()["detail"]
    states = {t["id"]: t["state"] for t in api.call("GET", "/v1/tokens").json()}
    assert states[created["info"]["id"]] == "expired"


def test_a_revoked_token_stops_working_at_once_and_the_revocation_is_audited(api: Api) -> None:
    created = api.call("POST", "/v1/tokens", json={"principal": "operator-1"}).json()
    headers = {"Authorization": f"Bearer {created['token']}"}
    assert api.client.get("/v1/credentials", headers=headers).status_code == 200
    revoked = api.call("POST", f"/v1/tokens/{created['info']['prefix']}/revoke")
    assert revoked.status_code == 200
    assert revoked.json()["state"] == "revoked"
    refused = api.client.get("/v1/credentials", headers=headers)
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    # The other token of the same principal still works.
    assert api.call("GET", "/v1/credentials", role="operator").status_code == 200
    with api.store.transaction() as s:
        actions = [e["action"] for e in export(s) if e["subject"].startswith("token:")]
    assert actions.count("token.revoked") == 1


def test_disabling_a_principal_stops_its_tokens_but_not_the_last_admin(api: Api) -> None:
    assert api.call("GET", "/v1/credentials", role="viewer").status_code == 200
    assert api.call("POST", "/v1/users/viewer-1/disable").json()["disabled_at"] is not None
    assert api.call("GET", "/v1/credentials", role="viewer").status_code == 401
    last_admin = api.call("POST", "/v1/users/root/disable")
    assert last_admin.status_code == 409
    assert last_admin.json()["code"] == "conflict"
    assert api.call("GET", "/v1/users").status_code == 200


def test_users_created_through_the_api_get_roles_and_names_are_unique(api: Api) -> None:
    body = {"name": "deploy-bot", "kind": "service_account", "roles": ["operator"]}
    created = api.call("POST", "/v1/users", json=body)
    assert created.status_code == 201
    assert created.json()["roles"] == ["operator"]
    again = api.call("POST", "/v1/users", json=body)
    assert again.status_code == 409
    token = api.call("POST", "/v1/tokens", json={"principal": "deploy-bot"}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/v1/audit/verify", headers=headers).status_code == 200
    assert api.client.get("/v1/users", headers=headers).status_code == 403


def test_init_prints_the_token_once_and_refuses_a_second_time(cli: Cli, store: Store) -> None:
    first = cli("init", "--name", "alice")
    assert first.exit_code == 0, first.output
    token = first.stdout.strip().splitlines()[-1]
    assert token.startswith("ks_")
    second = cli("init", "--name", "mallory")
    assert second.exit_code == 1
    assert "already initialised" in second.output
    assert token not in second.output
    listed = cli("tokens", "list")
    assert token[:19] in listed.output  # the prefix ks_<id>
    assert token not in listed.output
    assert [p.name for p in identities.list_principals(store)] == ["alice"]
    created = cli("tokens", "create", "alice", "--expires-in", "never")
    assert created.exit_code == 0
    assert created.stdout.strip().startswith("ks_")
    revoked = cli("tokens", "revoke", token[:19])
    assert revoked.exit_code == 0
    assert token not in _every_stored_text(store)
    with store.transaction() as s:
        actions = [e["action"] for e in export(s)]
    assert actions == ["principal.created", "token.created", "token.created", "token.revoked"]


def test_users_and_roles_commands(cli: Cli) -> None:
    assert cli("users", "add", "bob", "--role", "viewer").exit_code == 0
    bad = cli("users", "add", "eve", "--role", "superuser")
    assert bad.exit_code == 1
    assert "unknown role superuser" in bad.output
    assert "bob" in cli("users", "list").output
    assert cli("users", "disable", "bob").exit_code == 0
    roles = cli("roles", "list").output
    assert "approvals:decide" in roles
    assert "auditor" in roles
