"""`require_checks` and `rollback: failing_only` at `plan` / `apply`: what a policy asks of a
credential's provider and actions is refused, with the field path and the fix, when they
cannot do it."""

from __future__ import annotations

from typing import Any

import pytest

from keyshift.domain.estate import Policy
from keyshift.errors import EstateInvalid
from keyshift.service.estate import parse_estate

PG = {
    "name": "db-admin",
    "type": "postgres",
    "dsn": "postgresql://admin@db:5432/app",
    "password_from": "env:DB_ADMIN_PASSWORD",
}
FILE = {
    "type": "file",
    "order": 10,
    "config": {"path": "/etc/app.env", "key": "K", "file_format": "env"},
}
CHECK = {"type": "command_check", "order": 50, "config": {"argv": ["/usr/bin/true"]}}
HTTP_CHECK = {"type": "http_check", "order": 50, "config": {"url": "https://app.internal/h"}}


def _estate(credential: dict[str, Any], *, integrations: list[dict[str, Any]] | None = None) -> Any:
    cred = {"name": "billing-key", "owner": "team-billing", "provider": {"type": "random"}}
    return {"integrations": integrations or [], "credentials": [{**cred, **credential}]}


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(EstateInvalid) as refused:
        parse_estate(data)
    return [(p.path, p.message) for p in refused.value.problems]


def test_a_prod_credential_without_a_check_is_refused_naming_the_field_and_the_fix() -> None:
    [(path, message)] = _problems(_estate({"environment": "prod", "actions": [FILE]}))

    assert path == "credentials[0].actions"
    assert "billing-key has no post-cutover check" in message
    assert "environment prod" in message
    assert "command_check, http_check" in message
    assert "require_checks: false" in message


@pytest.mark.parametrize(
    "credential",
    [
        pytest.param({"environment": "prod", "actions": [FILE, CHECK]}, id="a-command-check"),
        pytest.param({"environment": "prod", "actions": [FILE, HTTP_CHECK]}, id="an-http-check"),
        pytest.param({"environment": "staging", "actions": [FILE]}, id="not-prod"),
        pytest.param({"actions": [FILE]}, id="no-environment"),
        pytest.param(
            {"environment": "prod", "policy": {"require_checks": False}, "actions": [FILE]},
            id="prod-with-require-checks-false",
        ),
    ],
)
def test_a_credential_with_a_check_or_not_required_to_have_one_is_accepted(
    credential: dict[str, Any],
) -> None:
    assert parse_estate(_estate(credential)).credentials[0].name == "billing-key"


def test_a_provider_that_signs_in_is_a_check() -> None:
    credential = {
        "environment": "prod",
        "provider": {"type": "postgres", "strategy": "single_user", "user": "app"},
        "actions": [FILE],
    }
    assert parse_estate(_estate(credential, integrations=[PG])).credentials


def test_require_checks_true_applies_outside_prod_too() -> None:
    credential = {"environment": "dev", "policy": {"require_checks": True}, "actions": [FILE]}
    [(path, message)] = _problems(_estate(credential))
    assert path == "credentials[0].actions"
    assert "require_checks is true in its policy" in message


def test_require_checks_is_unset_by_default_and_resolves_by_environment() -> None:
    policy = Policy()
    assert policy.require_checks is None
    assert policy.checks_required("prod")
    assert not policy.checks_required("staging")
    assert not policy.checks_required(None)
    assert not Policy(require_checks=False).checks_required("prod")


def test_policies_at_their_defaults_serialise_as_before_the_new_fields() -> None:
    """Stored plan hashes and credential digests do not change on upgrade."""
    dumped = Policy().model_dump(mode="json")
    assert "require_checks" not in dumped
    assert "rollback" not in dumped
    changed = Policy(require_checks=True, rollback="failing_only").model_dump(mode="json")
    assert changed["require_checks"] is True
    assert changed["rollback"] == "failing_only"


def test_failing_only_with_a_provider_that_cannot_hold_two_versions_is_refused() -> None:
    credential = {
        "policy": {"rollback": "failing_only"},
        "provider": {"type": "postgres", "strategy": "single_user", "user": "app"},
        "actions": [FILE, CHECK],
    }
    [(path, message)] = _problems(_estate(credential, integrations=[PG]))

    assert path == "credentials[0].policy.rollback"
    assert "keeps the old and new versions valid at once" in message
    assert "alternating_users" in message


def test_failing_only_with_an_alternating_provider_is_accepted() -> None:
    credential = {
        "policy": {"rollback": "failing_only"},
        "provider": {
            "type": "postgres",
            "strategy": "alternating_users",
            "users": ["a", "b"],
            "group_role": "app",
        },
        "actions": [FILE, CHECK],
    }
    assert parse_estate(_estate(credential, integrations=[PG])).credentials


def test_failing_only_needs_each_consumer_to_have_its_own_publish_and_check() -> None:
    actions = [
        {**FILE, "consumer": "web"},
        {**CHECK, "consumer": "web"},
        {
            **FILE,
            "consumer": "worker",
            "config": {"path": "/etc/w.env", "key": "K", "file_format": "env"},
        },
        {**HTTP_CHECK, "consumer": "batch"},
    ]
    problems = _problems(_estate({"policy": {"rollback": "failing_only"}, "actions": actions}))

    assert [p for p, _ in problems] == ["credentials[0].actions", "credentials[0].actions"]
    assert "consumer worker has no verify action" in problems[0][1]
    assert "consumer batch has no publish action" in problems[1][1]


def test_a_named_failing_only_policy_is_refused_at_the_credential_that_uses_it() -> None:
    data = _estate(
        {
            "policy": "single",
            "provider": {"type": "postgres", "strategy": "single_user", "user": "app"},
            "actions": [FILE, CHECK],
        },
        integrations=[PG],
    )
    data["policies"] = [{"name": "single", "rollback": "failing_only"}]
    [(path, _)] = _problems(data)
    assert path == "credentials[0].policy"
