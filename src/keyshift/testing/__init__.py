"""Test kit for keyshift and its plugins: fakes, log capture and the provider contract.

Shipped in the package so every provider's tests, the engine's tests and tests
outside this repository run the same checks:

- `FakeClock` gives plugins a clock and a sleep that never wait.
- `FakeProvider` issues versions into an in-memory issuer that tests can inspect,
  honours the idempotency marker and fails on demand (`fail_next`).
- `RecordingTarget` records what each consumer received (ids and fingerprints,
  never values) into a list shared by several targets, so their order shows.
- `capture_logs` captures structlog events and fails if one holds a secret value.
- `assert_provider_contract` is what every provider's tests run.
- `FileSigner` and `CachingVerifier` sign and verify tokens as the consumers of a
  `jwks_signing_key` do, so a test can count the tokens a rollover fails.
"""

from __future__ import annotations

from keyshift.testing.clock import FAKE_CLOCK_START, FakeClock
from keyshift.testing.contract import CAPABILITY_METHODS as CAPABILITY_METHODS
from keyshift.testing.contract import CONTRACT_POLICY, assert_provider_contract
from keyshift.testing.fakes import FakeConfig, FakeMethod, FakeProvider, FakeVersion
from keyshift.testing.jwks import CachingVerifier, FileSigner, Verdict
from keyshift.testing.logs import capture_logs
from keyshift.testing.recording import RecordingConfig, RecordingTarget, TargetCall

__all__ = [
    "CONTRACT_POLICY",
    "FAKE_CLOCK_START",
    "CachingVerifier",
    "FakeClock",
    "FakeConfig",
    "FakeMethod",
    "FakeProvider",
    "FakeVersion",
    "FileSigner",
    "RecordingConfig",
    "RecordingTarget",
    "TargetCall",
    "Verdict",
    "assert_provider_contract",
    "capture_logs",
]
