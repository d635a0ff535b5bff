"""The `random` provider: keyshift is the issuer, so values must be strong, well-formed, fresh."""

from __future__ import annotations

import asyncio
import base64
import string
from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from keyshift.domain.estate import Policy
from keyshift.providers.base import (
    CreateRequest,
    IssuedVersion,
    PreflightRequest,
    Readiness,
    VerifyRequest,
)
from keyshift.providers.random import DEFAULT_ALPHABET, RandomConfig, RandomProvider
from keyshift.testing import FakeClock, assert_provider_contract

HEX = frozenset(string.hexdigits.lower())
URLSAFE_B64 = frozenset(string.ascii_letters + string.digits + "-_")


def provider(clock: FakeClock | None = None, **config: Any) -> RandomProvider:
    return RandomProvider(RandomConfig(**config), (clock or FakeClock()).context())


def create(p: RandomProvider, policy: Policy | None = None) -> IssuedVersion:
    request = CreateRequest(
        credential="api-key",
        rotation_id="rot-1",
        marker="keyshift:rot-1",
        policy=policy or Policy(),
        current=None,
    )
    return asyncio.run(p.create(request))


def draw(p: RandomProvider, n: int) -> list[str]:
    async def many() -> list[str]:
        request = CreateRequest(
            credential="api-key",
            rotation_id="rot-1",
            marker="keyshift:rot-1",
            policy=Policy(),
            current=None,
        )
        return [(await p.create(request)).value.reveal() for _ in range(n)]

    return asyncio.run(many())


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({}, id="default alphabet"),
        pytest.param({"format": "base64", "length": 32}, id="base64"),
        pytest.param({"format": "hex", "length": 16}, id="hex"),
        pytest.param({"alphabet": "abcdefghij", "length": 16}, id="small alphabet"),
    ],
)
def test_random_provider_keeps_the_provider_contract(config: dict[str, Any]) -> None:
    asyncio.run(assert_provider_contract(provider(**config)))


def test_preflight_is_ready_since_keyshift_itself_is_the_issuer() -> None:
    result = asyncio.run(provider().preflight(PreflightRequest("api-key")))
    assert result.readiness == Readiness.READY
    assert "keyshift generates the values" in result.reason


def test_alphabet_values_have_the_configured_length_and_only_alphabet_characters() -> None:
    values = draw(provider(length=24, alphabet="ABCDEFGHJK23456789"), 200)
    assert all(len(v) == 24 for v in values)
    assert set("".join(values)) <= set("ABCDEFGHJK23456789")


def test_default_alphabet_is_letters_and_digits_and_every_character_gets_drawn() -> None:
    values = draw(provider(), 200)
    assert all(len(v) == 40 for v in values)
    # 8000 draws from 62 characters: each one is missed with probability ~1e-56.
    assert set("".join(values)) == set(DEFAULT_ALPHABET)


def test_duplicate_alphabet_characters_do_not_bias_or_widen_the_charset() -> None:
    values = draw(provider(alphabet="aaaaaaaaaabcdefghij0", length=16), 200)
    assert set("".join(values)) == set("abcdefghij0")


def test_base64_values_encode_length_random_bytes_urlsafe_without_padding() -> None:
    values = draw(provider(format="base64", length=32), 200)
    for value in values:
        assert set(value) <= URLSAFE_B64
        assert "=" not in value
        assert len(value) == 43  # ceil(32 * 4 / 3)
        assert len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) == 32


def test_hex_values_encode_length_random_bytes_as_lowercase_hex() -> None:
    values = draw(provider(format="hex", length=20), 200)
    for value in values:
        assert len(value) == 40
        assert set(value) <= HEX
        assert len(bytes.fromhex(value)) == 20


@pytest.mark.parametrize("fmt", ["alphabet", "base64", "hex"])
def test_one_thousand_draws_give_one_thousand_distinct_values_and_refs(fmt: str) -> None:
    async def many() -> list[IssuedVersion]:
        p = provider(format=fmt, length=16)
        request = CreateRequest(
            credential="api-key",
            rotation_id="rot-1",
            marker="keyshift:rot-1",
            policy=Policy(),
            current=None,
        )
        return [await p.create(request) for _ in range(1000)]

    issued = asyncio.run(many())
    assert len({v.value.reveal() for v in issued}) == 1000
    assert len({v.provider_ref for v in issued}) == 1000


def test_max_lifetime_sets_expires_at_from_the_injected_clock() -> None:
    clock = FakeClock()
    clock.advance(timedelta(days=3, hours=5))
    policy = Policy(max_lifetime=timedelta(days=90), rotate_before_expiry=timedelta(days=7))
    version = create(provider(clock), policy)
    assert version.expires_at == clock.now() + timedelta(days=90)


def test_without_max_lifetime_a_version_does_not_expire() -> None:
    assert create(provider()).expires_at is None


def test_a_value_of_another_length_does_not_verify() -> None:
    p = provider(length=20)
    other = create(provider(length=30))
    result = asyncio.run(p.verify(VerifyRequest(credential="api-key", version=other)))
    assert not result.ok


@pytest.mark.parametrize(
    ("config", "field"),
    [
        pytest.param({"length": 15}, "length", id="length below 16"),
        pytest.param({"alphabet": "abcdefghi"}, "alphabet", id="alphabet of 9 characters"),
        pytest.param(
            {"alphabet": "aaaaaaaaaaaaaaaaaaaaabcde"}, "alphabet", id="alphabet of 5 distinct"
        ),
        pytest.param({"lenght": 32}, "lenght", id="unknown field"),
        pytest.param({"format": "base32"}, "format", id="unknown format"),
    ],
)
def test_bad_config_is_refused_naming_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RandomConfig(**config)
    errors = caught.value.errors()
    named = {str(part) for e in errors for part in e["loc"]} | {
        word for e in errors for word in e["msg"].split()
    }
    assert field in named


def test_issued_version_repr_never_shows_the_value() -> None:
    version = create(provider(format="hex", length=16))
    value = version.value.reveal()
    assert value not in repr(version)
    assert value not in str(version)
    assert value not in f"{version}"
