"""The estate's `triggers:` block and the signatures and payloads of inbound events: bad
declarations are refused naming the field, signatures are checked over the raw body."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from keyshift.domain.triggers import signature_matches
from keyshift.errors import EstateInvalid
from keyshift.service.estate import parse_estate

CREDENTIAL = {
    "name": "ci-token",
    "owner": "team-ci",
    "provider": {"type": "random", "length": 32},
    "actions": [],
}
GOOD = {"name": "github", "kind": "github_secret_scanning", "secret_from": "env:GH_HOOK"}


def _problems(triggers: list[dict[str, Any]]) -> list[str]:
    with pytest.raises(EstateInvalid) as refused:
        parse_estate({"credentials": [CREDENTIAL], "triggers": triggers})
    return [str(p) for p in refused.value.problems]


def test_a_good_declaration_is_accepted_with_its_defaults() -> None:
    match = [{"secret_type": "github_personal_access_token", "credential": "ci-token"}]
    estate = parse_estate({"credentials": [CREDENTIAL], "triggers": [{**GOOD, "match": match}]})
    [trigger] = estate.triggers
    assert trigger.break_glass is False
    assert trigger.rate_limit.events > 0
    assert trigger.match[0].repository is None


@pytest.mark.parametrize(
    ("trigger", "path"),
    [
        ({**GOOD, "kind": "gitlab"}, "triggers[0].kind"),
        ({**GOOD, "secret_from": "hunter2"}, "triggers[0].secret_from"),
        ({**GOOD, "secret_from": "credential:ci-token"}, "triggers[0].secret_from"),
        ({**GOOD, "rate_limit": {"events": 0, "per": "1m"}}, "triggers[0].rate_limit.events"),
        ({**GOOD, "colour": "red"}, "triggers[0].colour"),
        ({**GOOD, "name": "Not A Name"}, "triggers[0].name"),
        (
            {**GOOD, "match": [{"secret_type": "x", "credential": "no-such"}]},
            "triggers[0].match[0].credential",
        ),
        (
            {**GOOD, "kind": "generic", "match": [{"secret_type": "x", "credential": "ci-token"}]},
            "triggers[0].match",
        ),
    ],
    ids=[
        "unknown-kind",
        "inline-secret",
        "credential-reference",
        "zero-rate",
        "unknown-field",
        "bad-name",
        "unknown-credential",
        "match-on-generic",
    ],
)
def test_a_bad_trigger_is_refused_naming_the_field(trigger: dict[str, Any], path: str) -> None:
    assert any(p.startswith(path) for p in _problems([trigger])), _problems([trigger])


def test_two_triggers_of_one_name_are_refused() -> None:
    assert any("triggers[1].name" in p for p in _problems([GOOD, GOOD]))


def _sign(body: bytes, secret: bytes = b"s3cret") -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (_sign(b"{}"), True),
        (_sign(b"{}").upper().replace("SHA256=", "sha256="), True),
        (_sign(b"{} "), False),
        (_sign(b"{}", b"other"), False),
        (None, False),
        ("", False),
        ("sha256=", False),
        ("sha1=" + hashlib.sha1(b"{}").hexdigest(), False),  # noqa: S324 (refused, not used)
        ("sha256=zz" + "0" * 62, False),
    ],
    ids=[
        "good",
        "upper-hex",
        "other-body",
        "other-secret",
        "none",
        "empty",
        "no-digest",
        "sha1",
        "not-hex",
    ],
)
def test_a_signature_matches_only_the_raw_body_under_the_secret(
    header: str | None, ok: bool
) -> None:
    assert signature_matches(b"s3cret", b"{}", header) is ok
