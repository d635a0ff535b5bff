"""`jwks_signing_key` rollovers end to end on both store backends: verifiers that cache
the JWKS (and refetch on an unknown kid, at most so often) verify every token a signer
issues throughout a rotation, with no failure; the JWKS gets the new key `cache_ttl`
before the signers, keeps the old one `max_token_lifetime` after, then drops it; a failed
check puts the signers back on the old key with a JWKS that verifies it; and a worker
stopped anywhere, including during the wait, is resumed without repeating a step."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keyshift.domain.states import RotationState
from keyshift.engine.journal import StepEvent
from keyshift.service import alerting, rotations
from keyshift.service.estate import apply_estate, parse_estate
from keyshift.store.store import Store
from keyshift.testing import CachingVerifier, FakeClock, FileSigner
from tests.conftest import Cli
from tests.helpers import (
    assert_killed_rotation_completes_once,
    rotations_of,
    save_estate,
    steps,
    value_of,
    versions,
)

CREDENTIAL = "tokens"
TICK = timedelta(minutes=1)


def estate(
    tmp_path: Path,
    *,
    cache_ttl: str = "5m",
    max_token_lifetime: str = "30m",  # noqa: S107 (a duration, not a password)
    grace: str = "10m",
    key_type: str = "ec-p256",
    check: list[str] | None = None,
    jwks_action: tuple[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A signing key whose JWKS verifiers read from `jwks.json` (or the output of
    `jwks_action`: its type and config) and whose signer reads `signer.json` (key, kid,
    alg); with `check`, a command checks the cutover."""
    kind, config = jwks_action or (
        "file",
        {"path": str(tmp_path / "jwks.json"), "file_format": "jwks"},
    )
    actions: list[dict[str, Any]] = [
        {"type": kind, "order": 10, "on_failure": "abort", "config": config},
        {
            "type": "file",
            "order": 20,
            "on_failure": "abort",
            "config": {
                "path": str(tmp_path / "signer.json"),
                "file_format": "json",
                "keys": {"key": "private_key", "kid": "kid", "alg": "alg"},
            },
        },
    ]
    if check is not None:
        actions.append(
            {"type": "command_check", "order": 30, "on_failure": "abort", "config": {"argv": check}}
        )
    return {
        "credentials": [
            {
                "name": CREDENTIAL,
                "owner": "team-identity",
                "environment": "dev",
                "policy": {"grace_period": grace},
                "provider": {
                    "type": "jwks_signing_key",
                    "key_type": key_type,
                    "cache_ttl": cache_ttl,
                    "max_token_lifetime": max_token_lifetime,
                },
                "actions": actions,
            }
        ]
    }


def kids_in(path: Path) -> list[str]:
    return [k["kid"] for k in json.loads(path.read_text(encoding="utf-8"))["keys"]]


def signer_kid(tmp_path: Path) -> str:
    return str(json.loads((tmp_path / "signer.json").read_text(encoding="utf-8"))["kid"])


@dataclass
class Traffic:
    """A signer issuing a token every time it is asked, and verifiers checking every token
    still live; `failures` lists each token a verifier refused."""

    tmp_path: Path
    clock: FakeClock
    lifetime: timedelta
    verifiers: list[CachingVerifier]
    tokens: list[tuple[str, Any, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    checks: int = 0
    kids_signed: set[str] = field(default_factory=set)

    def __call__(self, _event: StepEvent | None = None) -> None:
        if not (self.tmp_path / "signer.json").exists():
            return
        signer = FileSigner(self.tmp_path / "signer.json", self.clock.now, self.lifetime)
        token, expires = signer.sign(f"t{len(self.tokens)}")
        kid = signer_kid(self.tmp_path)
        self.kids_signed.add(kid)
        self.tokens.append((token, expires, kid))
        now = self.clock.now()
        for number, (live, until, _kid) in enumerate(self.tokens):
            if until <= now:
                continue
            for which, verifier in enumerate(self.verifiers):
                verdict = verifier.verify(live)
                self.checks += 1
                if not verdict.ok:
                    self.failures.append(f"token {number} at verifier {which}: {verdict.why}")


def verifiers(tmp_path: Path, clock: FakeClock, cache_ttl: timedelta) -> list[CachingVerifier]:
    """Three verifiers: two refetch on an unknown kid at most once a minute, one never
    does (it waits for its cache to expire)."""
    return [
        CachingVerifier(tmp_path / "jwks.json", clock.now, cache_ttl, refetch_after=TICK),
        CachingVerifier(tmp_path / "jwks.json", clock.now, cache_ttl, refetch_after=TICK * 3),
        CachingVerifier(tmp_path / "jwks.json", clock.now, cache_ttl, refetch_after=cache_ttl),
    ]


def rollover(
    store: Store, tmp_path: Path, clock: FakeClock, traffic: Traffic, *, minutes: int = 120
) -> str:
    """A while of traffic on the first version, then a rotation, with the worker scanning
    (and the signer signing) every minute for `minutes`."""
    for _ in range(10):
        clock.advance(TICK)
        traffic()
    rotation_id, _ = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context(), on_event=traffic)
    )
    for _ in range(minutes):
        clock.advance(TICK)
        traffic()
        asyncio.run(
            rotations.resume(store, actor="test", context=clock.context(), on_event=traffic)
        )
    return rotation_id


def watch(
    store: Store, tmp_path: Path, clock: FakeClock, traffic: Traffic, new_kid: str, *, minutes: int
) -> tuple[int | None, int | None]:
    """Traffic and a worker pass every minute for `minutes`; the minutes at which the
    signer switched to `new_kid` and at which the JWKS held it alone."""
    switched_at = removed_at = None
    for minute in range(1, minutes + 1):
        clock.advance(TICK)
        traffic()
        asyncio.run(
            rotations.resume(store, actor="test", context=clock.context(), on_event=traffic)
        )
        if switched_at is None and signer_kid(tmp_path) == new_kid:
            switched_at = minute
        if removed_at is None and kids_in(tmp_path / "jwks.json") == [new_kid]:
            removed_at = minute
    return switched_at, removed_at


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048", "ed25519"])
def test_tokens_signed_throughout_a_rollover_all_verify_and_the_old_key_goes_last(
    store: Store, tmp_path: Path, key_type: str
) -> None:
    clock = FakeClock()
    apply_estate(store, parse_estate(estate(tmp_path, key_type=key_type)), actor="test")
    traffic = Traffic(tmp_path, clock, timedelta(minutes=30), [])
    # Each verifier first fetches the JWKS at a different moment, so their caches expire
    # at different times.
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    traffic.verifiers = verifiers(tmp_path, clock, timedelta(minutes=5))
    for verifier in traffic.verifiers:
        clock.advance(TICK)
        traffic()
        assert verifier.fetches == 1
    first = signer_kid(tmp_path)

    rotation_id, state = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context(), on_event=traffic)
    )
    # `rotate` does not block for cache_ttl: the rotation rests, the JWKS holds both keys,
    # the signers still sign with the old one.
    assert state == RotationState.PUBLISHING
    old, new = versions(store, CREDENTIAL)
    second = new.attributes["kid"]
    assert kids_in(tmp_path / "jwks.json") == [first, second]
    assert signer_kid(tmp_path) == first
    wait = [s for s in steps(store, rotation_id) if s.name == "waiting:signers"]
    assert [s.detail["cache_ttl"] for s in wait] == ["5m"]

    switched_at, removed_at = watch(store, tmp_path, clock, traffic, second, minutes=99)

    assert traffic.failures == []
    assert traffic.kids_signed == {first, second}
    assert traffic.checks > 1000
    assert switched_at == 5, "the signers get the key cache_ttl after the JWKS"
    assert removed_at == 5 + 30, "the old key stays max_token_lifetime (30m > grace 10m)"
    [_, rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "completed"
    old, new = versions(store, CREDENTIAL)
    assert (old.status, new.status) == ("revoked", "current")
    assert old.ciphertext is None, "the old private key is erased"
    journal = [s.name for s in steps(store, rotation_id) if s.status == "succeeded"]
    assert journal == [
        "validated",
        "preflighted",
        "creating",
        "publishing:10:file",
        "waiting:signers",
        "publishing:20:file",
        "verifying:provider",
        "withdrawing:10:file",
        "revoking",
    ]


def test_the_verifier_would_fail_tokens_if_signers_switched_before_its_cache_expired(
    store: Store, tmp_path: Path
) -> None:
    """The control: with cache_ttl shorter than the verifiers' real cache, the verifier
    that waits for its cache refuses the new key's tokens. So the test above can fail."""
    clock = FakeClock()
    apply_estate(store, parse_estate(estate(tmp_path, cache_ttl="1m")), actor="test")
    traffic = Traffic(tmp_path, clock, timedelta(minutes=30), [])
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    traffic.verifiers = verifiers(tmp_path, clock, timedelta(minutes=5))
    # The verifiers fetch one minute after this, then every 5 minutes: the rotation
    # starts (12 minutes on) one minute after a fetch, the signers switch a minute later.
    for _ in range(2):
        clock.advance(TICK)
        traffic()
    rollover(store, tmp_path, clock, traffic, minutes=60)
    assert traffic.failures, "a cache the signers did not wait for refuses the new kid"
    assert all(f.endswith("unknown kid") for f in traffic.failures), traffic.failures


def test_a_failed_check_puts_the_signers_back_and_the_jwks_verifies_the_old_key(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    marker = tmp_path / "fail"
    check = [sys.executable, "-c", f"import os,sys; sys.exit(os.path.exists({str(marker)!r}))"]
    apply_estate(store, parse_estate(estate(tmp_path, check=check)), actor="test")
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    traffic = Traffic(tmp_path, clock, timedelta(minutes=30), [])
    traffic.verifiers = verifiers(tmp_path, clock, timedelta(minutes=5))
    first = signer_kid(tmp_path)
    traffic()
    signer_before = (tmp_path / "signer.json").read_bytes()
    jwks_before = (tmp_path / "jwks.json").read_bytes()

    marker.write_text("the consumer refuses the new key", encoding="utf-8")
    rotation_id, state = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context(), on_event=traffic)
    )
    assert state == RotationState.PUBLISHING
    for _ in range(10):
        clock.advance(TICK)
        traffic()
        asyncio.run(
            rotations.resume(store, actor="test", context=clock.context(), on_event=traffic)
        )

    [_, rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "rolled_back"
    assert signer_kid(tmp_path) == first
    assert (tmp_path / "signer.json").read_bytes() == signer_before
    assert kids_in(tmp_path / "jwks.json") == [first]
    assert (tmp_path / "jwks.json").read_bytes() == jwks_before
    old, new = versions(store, CREDENTIAL)
    assert (old.status, new.status) == ("current", "disabled")
    # Every token signed with the old key, before and after, still verifies.
    old_tokens = [t for t in traffic.tokens if t[2] == first]
    assert len(old_tokens) > 5
    assert all(v.verify(t).ok for t, _, _ in old_tokens for v in traffic.verifiers)
    names = [s.name for s in steps(store, rotation_id) if s.status == "succeeded"]
    assert names.index("rollback:publishing:20:file") < names.index("rollback:publishing:10:file")


def test_a_worker_resumed_during_the_wait_goes_on_with_it_and_repeats_no_step(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    apply_estate(store, parse_estate(estate(tmp_path)), actor="test")
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    first = signer_kid(tmp_path)
    rotation_id, state = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context())
    )
    assert state == RotationState.PUBLISHING
    jwks = (tmp_path / "jwks.json").read_bytes()
    for minutes in (1, 3, 4):
        # Each resume is a new Engine, as a restarted worker would build.
        later = FakeClock(clock.now() + timedelta(minutes=minutes))
        [(_, _, resumed)] = asyncio.run(
            rotations.resume(store, actor="test", context=later.context())
        )
        assert resumed == RotationState.PUBLISHING
        assert signer_kid(tmp_path) == first
        assert (tmp_path / "jwks.json").read_bytes() == jwks
    clock.advance(timedelta(minutes=5))
    asyncio.run(rotations.resume(store, actor="test", context=clock.context()))
    assert signer_kid(tmp_path) != first
    journal = steps(store, rotation_id)
    counts: dict[str, int] = {}
    for s in journal:
        counts[s.name] = counts.get(s.name, 0) + 1
    assert counts["publishing:10:file"] == counts["waiting:signers"] == 1
    assert counts["publishing:20:file"] == 1
    [_, rotation] = rotations_of(store, CREDENTIAL)
    assert rotation.state == "grace"
    assert rotation.grace_until is not None
    assert rotation.grace_until.replace(tzinfo=None) == (
        clock.now() + timedelta(minutes=30)
    ).replace(tzinfo=None), "the grace is max_token_lifetime when that is longer"


CRASH_BOUNDARIES = [
    "publishing:10:file",
    "waiting:signers",
    "publishing:20:file",
    "verifying:provider",
    "withdrawing:10:file",
    "revoking",
]


@pytest.mark.slow
@pytest.mark.parametrize("boundary", CRASH_BOUNDARIES, ids=lambda b: "killed after " + b)
def test_a_rollover_killed_at_any_step_is_resumed_to_the_end_once(
    boundary: str, cli: Cli, store: Store, ks_env: dict[str, str], tmp_path: Path
) -> None:
    document = estate(tmp_path, cache_ttl="1s", max_token_lifetime="1s", grace="0s")
    journal = [
        "validated",
        "preflighted",
        "creating",
        "publishing:10:file",
        "waiting:signers",
        "publishing:20:file",
        "verifying:provider",
        "withdrawing:10:file",
        "revoking",
    ]
    new = assert_killed_rotation_completes_once(
        cli, store, ks_env, save_estate(tmp_path, document), CREDENTIAL, boundary, journal
    )
    assert kids_in(tmp_path / "jwks.json") == [new.attributes["kid"]]
    signer = json.loads((tmp_path / "signer.json").read_text(encoding="utf-8"))
    assert signer["key"] == value_of(store, new)


def test_a_rotation_resting_until_its_signers_may_switch_is_not_stuck_before_then(
    store: Store, tmp_path: Path
) -> None:
    clock = FakeClock()
    apply_estate(store, parse_estate(estate(tmp_path, cache_ttl="2h")), actor="test")
    asyncio.run(rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context()))
    _, state = asyncio.run(
        rotations.rotate(store, CREDENTIAL, actor="test", context=clock.context())
    )
    assert state == RotationState.PUBLISHING
    # stuck_after is 30m by default: the wait (2h) is not counted against it.
    assert alerting.raise_stuck(store, actor="test", now=clock.now() + timedelta(hours=2)) == 0
    later = clock.now() + timedelta(hours=2, minutes=31)
    assert alerting.raise_stuck(store, actor="test", now=later) == 1
