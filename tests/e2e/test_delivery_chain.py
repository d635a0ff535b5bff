"""End-to-end delivery (issue 6): one `random` credential through the whole chain of targets,
applied with `keyshift apply` and rotated through the rotation service on a fake clock,
against local doubles of Key Vault, Kubernetes, Secrets Manager (moto) and Spring.

The chain (see conftest): Key Vault primary (10) and secondary (20), a Kubernetes Secret
(30), Secrets Manager (40), a JSON file (50); then a rollout restart (60) and a Spring
refresh (70) reload the consumers, and an HTTP check (80) verifies one.

Faults are armed as the failing step starts (not before: preflight would meet them) and
sized to the engine's retry policy, so every case ends the same way on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import pytest

from keyshift.domain.states import RotationState
from keyshift.engine.run import RETAIN_DISABLED
from keyshift.engine.steps import TRANSIENT_ATTEMPTS
from keyshift.store.models import RotationRow, VersionRow
from keyshift.targets.aws_secretsmanager import request_token
from keyshift.targets.azure_keyvault import TAG_RESTORED, TAG_VERSION
from keyshift.targets.kubernetes import VERSION_ANNOTATION
from tests.doubles.moto_proxy import DROP
from tests.doubles.spring import Fault as SpringFault
from tests.e2e.conftest import (
    CREDENTIAL,
    K8S_KEY,
    K8S_OTHER_KEY,
    K8S_OTHER_VALUE,
    K8S_SECRET,
    KV_PATH,
    KV_SECRET,
    NS,
    SECRET_PATH,
    STEPS,
    STORES,
    WORKLOAD_PATH,
    Chain,
    digest,
)
from tests.helpers import rotations_of, steps, versions

LONG_RETRY_AFTER: Final = 3600
"""An hour: longer than the engine waits inside a step, so the first 429 fails the step."""
BACKOFF: Final = [2.0**attempt for attempt in range(TRANSIENT_ATTEMPTS - 1)]
"""The engine's waits between tries of a step that failed transiently without Retry-After."""
ABORT_CASES: Final = [
    (store, fault)
    for store in ("kv-primary", "kv-secondary", "k8s-secret", "aws")
    for fault in ("hang", "500", "403", "429")
]
"""(failing store, fault): every API-backed store meets every fault: a hang, a server
error, a refusal and throttling."""
CONTINUE_CASES: Final = [("kv-secondary", "hang"), ("aws", "500")]
"""Failing stores inside the chain: stores before and after them switch."""

PUBLISH_WRITES: Final[dict[str, list[tuple[str, str]]]] = {
    "kv-primary": [("kv-primary", f"PUT {KV_PATH}")],
    "kv-secondary": [("kv-secondary", f"PUT {KV_PATH}")],
    "k8s-secret": [("k8s", f"PATCH {SECRET_PATH}")],
    # The new version as AWSPENDING, AWSCURRENT moved to it, AWSPENDING removed again.
    "aws": [
        ("aws", "PutSecretValue"),
        ("aws", "UpdateSecretVersionStage"),
        ("aws", "UpdateSecretVersionStage"),
    ],
    "file": [],  # a file on this host, not a double: its writes show in `Event.file`
}
"""The writes each double sees when a publishing target publishes."""
RESTORE_WRITES: Final[dict[str, list[tuple[str, str]]]] = {
    "kv-primary": [("kv-primary", f"PUT {KV_PATH}")],
    "kv-secondary": [("kv-secondary", f"PUT {KV_PATH}")],
    "k8s-secret": [("k8s", f"PATCH {SECRET_PATH}")],
    "aws": [("aws", "UpdateSecretVersionStage")],  # AWSCURRENT back to the old version
    "file": [],
}
"""The writes each double sees when a publishing target restores the previous version."""
RESTART: Final = ("k8s", f"PATCH {WORKLOAD_PATH}")
REFRESH: Final = ("spring", "POST /actuator/refresh")


def inject(chain: Chain, store: str, fault: str) -> Callable[[], None]:
    """What arms `fault` on `store`'s API so that each try of its publish step meets it
    (one try for a 403, which is permanent, and for a 429 asking to wait an hour; all of
    the engine's tries otherwise)."""
    tries = TRANSIENT_ATTEMPTS
    if store in ("kv-primary", "kv-secondary"):
        vault = chain.primary if store == "kv-primary" else chain.secondary
        put = ("PUT",)
        return {
            "hang": lambda: vault.hang_next(tries),
            "500": lambda: vault.fail_next(tries, 500, methods=put),
            "403": lambda: vault.fail_next(1, 403, methods=put),
            "429": lambda: vault.fail_next(1, 429, retry_after=LONG_RETRY_AFTER, methods=put),
        }[fault]
    if store == "k8s-secret":
        kube = chain.kube
        return {
            "hang": lambda: kube.hang(tries, seconds=1.0),
            "500": lambda: kube.fail(tries, 500),
            "403": lambda: kube.fail(1, 403, message="secrets is forbidden (injected)"),
            "429": lambda: kube.fail(1, 429, retry_after=LONG_RETRY_AFTER),
        }[fault]
    assert store == "aws"
    proxy = chain.proxy
    # Secrets Manager's own error codes; it throttles with a 400 and no Retry-After.
    code = {
        "hang": DROP,
        "500": "InternalServiceError",
        "403": "AccessDeniedException",
        "429": "ThrottlingException",
    }[fault]
    return lambda: proxy.fail("PutSecretValue", code, 1 if fault == "403" else tries)


def engine_waits(store: str, fault: str) -> list[float]:
    """The waits the engine makes between tries of the failing step: none after a
    permanent error or a Retry-After longer than the engine waits in a step (an hour
    here), else its backoff."""
    if fault == "403" or (fault == "429" and store != "aws"):
        return []
    return BACKOFF


def request_timeout(fault: str) -> str:
    """A short request timeout where a hang is injected, so the hang fails fast."""
    return "500ms" if fault == "hang" else "5s"


def versions_of_last_rotation(chain: Chain) -> tuple[VersionRow, VersionRow]:
    """The version the last rotation replaced (old) and the one it issued (new)."""
    rotation = last_rotation(chain)
    by_id = {v.id: v for v in versions(chain.store, CREDENTIAL)}
    assert rotation.old_version_id is not None
    assert rotation.new_version_id is not None
    return by_id[rotation.old_version_id], by_id[rotation.new_version_id]


def last_rotation(chain: Chain) -> RotationRow:
    return rotations_of(chain.store, CREDENTIAL)[-1]


def assert_no_value_in(text: str | None, *values: str | None) -> None:
    for value in values:
        assert value is not None
        assert value not in (text or "")


# --- the whole chain, in order --------------------------------------------------------------


def test_one_rotation_reaches_every_store_in_the_configured_order(chain: Chain) -> None:
    old = chain.current_value()
    start, file_inode = chain.timeline.mark(), chain.file.stat().st_ino

    _, state = chain.rotate()

    assert state == RotationState.COMPLETED
    new = chain.current_value()
    assert new is not None
    assert new != old
    assert chain.held() == dict.fromkeys(STORES, new)
    assert chain.aws_value("AWSPREVIOUS") == old
    assert chain.kube.secret_data(NS, K8S_SECRET) == {K8S_OTHER_KEY: K8S_OTHER_VALUE, K8S_KEY: new}
    assert chain.file.stat().st_ino != file_inode, "the file was replaced"
    # Every write, numbered as the doubles saw it: the configured order.
    assert chain.timeline.writes(start) == [
        *PUBLISH_WRITES["kv-primary"],
        *PUBLISH_WRITES["kv-secondary"],
        *PUBLISH_WRITES["k8s-secret"],
        *PUBLISH_WRITES["aws"],
        RESTART,
        REFRESH,
    ]
    events = chain.timeline.since(start)
    # The file (50) was written after Secrets Manager (40) and before the restart (60).
    last_aws = max(e.seq for e in events if e.source == "aws")
    restart = next(e for e in events if (e.source, e.what) == RESTART)
    assert all(e.file == digest(old) for e in events if e.seq <= last_aws)
    assert restart.file == digest(new)
    # The health check (80) ran last, after the refresh.
    refresh = next(e for e in events if (e.source, e.what) == REFRESH)
    checks = [e for e in events if e.what == "GET /actuator/health" and e.seq > refresh.seq]
    assert checks, "the http_check verified the application after its refresh"
    assert events[-1] == checks[-1]


# --- a failing step with on_failure: abort -------------------------------------------------


@pytest.mark.parametrize(("failing", "fault"), ABORT_CASES)
def test_a_failed_publish_rolls_back_the_stores_before_it_and_writes_none_after(
    chain: Chain, failing: str, fault: str
) -> None:
    chain.apply(timeout=request_timeout(fault))
    old = chain.current_value()
    assert old is not None
    start, waits, file_inode = (
        chain.timeline.mark(),
        len(chain.clock.sleeps),
        chain.file.stat().st_ino,
    )

    _, state = chain.rotate({failing: inject(chain, failing, fault)})

    assert state == RotationState.ROLLED_BACK
    assert chain.held() == dict.fromkeys(STORES, old), "every store holds the old value again"
    before = list(STORES[: STORES.index(failing)])
    assert chain.timeline.writes(start) == [
        *(w for store in before for w in PUBLISH_WRITES[store]),
        *(w for store in reversed(before) for w in RESTORE_WRITES[store]),
    ], "written in order up to the failing store, restored newest first, nothing after it"
    assert chain.file.stat().st_ino == file_inode, "the file (50) was never written"
    assert chain.clock.sleeps[waits:] == engine_waits(failing, fault)
    old_row, new_row = versions_of_last_rotation(chain)
    assert (old_row.status, new_row.status) == ("current", "disabled")
    assert new_row.expires_at == chain.clock.now() + RETAIN_DISABLED
    status = chain.cli("status")
    assert status.exit_code == 0
    assert f"{old_row.id[:8]} " in status.output, "keyshift status shows the old version"
    assert "rolled_back" in status.output
    rotation = last_rotation(chain)
    assert rotation.error is not None
    assert rotation.error.startswith(f"{STEPS[failing]}: ")
    assert_no_value_in(rotation.error, old, chain.value_of(new_row))
    # What the stores that were switched say about the version they hold now.
    if "kv-secondary" in before:
        restored = chain.secondary.latest(KV_SECRET)
        assert restored is not None
        assert restored.tags[TAG_RESTORED] == restored.tags[TAG_VERSION] == old_row.id
    if "k8s-secret" in before:
        secret = chain.kube.secret(NS, K8S_SECRET)
        assert secret is not None
        assert secret["metadata"]["annotations"][VERSION_ANNOTATION] == old_row.id
        assert chain.kube.secret_data(NS, K8S_SECRET) == {
            K8S_OTHER_KEY: K8S_OTHER_VALUE,
            K8S_KEY: old,
        }
    stages = chain.aws_stages()
    assert stages[request_token(old_row.id)] == ["AWSCURRENT"]
    assert "AWSCURRENT" not in stages.get(request_token(new_row.id), [])


def test_a_failed_reload_restores_every_store_newest_first_then_restarts_onto_the_old_value(
    chain: Chain,
) -> None:
    old = chain.current_value()
    start = chain.timeline.mark()

    def refuse_refresh() -> None:
        chain.spring.faults.append(SpringFault(403))

    _, state = chain.rotate({"spring": refuse_refresh})

    assert state == RotationState.ROLLED_BACK
    assert chain.held() == dict.fromkeys(STORES, old)
    publishes = [w for store in STORES for w in PUBLISH_WRITES[store]]
    restores = [w for store in reversed(STORES) for w in RESTORE_WRITES[store]]
    # The refresh that failed switched nothing and is not repeated; the restart that
    # succeeded runs again once every store holds the old value, so pods start on it.
    assert chain.timeline.writes(start) == [*publishes, RESTART, REFRESH, *restores, RESTART]
    events = chain.timeline.since(start)
    first_restart, again = (e for e in events if (e.source, e.what) == RESTART)
    assert first_restart.file == digest(chain.value_of(versions_of_last_rotation(chain)[1]))
    assert again.file == digest(old), "the file (50) was restored before the restart"
    assert not [e for e in events if e.seq > first_restart.seq and e.what.endswith("/health")], (
        "the http_check never ran, so the rollback has nothing to check again"
    )


def test_a_store_that_cannot_be_restored_leaves_the_rotation_failed_naming_it(
    chain: Chain,
) -> None:
    old = chain.current_value()
    original = chain.file.read_bytes()

    def corrupt_file() -> None:
        chain.file.write_text('{"Payments": {"ApiKey": ', encoding="utf-8")

    try:
        _, state = chain.rotate({"file": corrupt_file})

        assert state == RotationState.FAILED
        held = chain.held()
        assert held.pop("file") is None, "the file still does not parse"
        assert held == dict.fromkeys(STORES[:-1], old), "the other stores are restored"
        old_row, new_row = versions_of_last_rotation(chain)
        assert (old_row.status, new_row.status) == ("current", "disabled")
        error = last_rotation(chain).error
        assert error is not None
        assert f"rollback incomplete, not restored: {STEPS['file']}" in error
        assert f"new version {new_row.id} kept disabled" in error
        assert_no_value_in(error, old, chain.value_of(new_row))
    finally:
        chain.file.write_bytes(original)


# --- a Kubernetes write conflict --------------------------------------------------------------


def test_a_kubernetes_conflict_mid_rotation_keeps_the_key_another_writer_changed(
    chain: Chain,
) -> None:
    start = chain.timeline.mark()
    replica = "postgres://db-replica.payments.svc/app"

    def another_writer() -> None:
        # Between keyshift's read and its patch, someone changes the other key.
        chain.kube.before_next_write(NS, K8S_SECRET, {K8S_OTHER_KEY: replica})

    try:
        rotation_id, state = chain.rotate({"k8s-secret": another_writer})

        assert state == RotationState.COMPLETED
        new = chain.current_value()
        assert chain.kube.secret_data(NS, K8S_SECRET) == {K8S_OTHER_KEY: replica, K8S_KEY: new}
        assert chain.held() == dict.fromkeys(STORES, new)
        [step] = [s for s in steps(chain.store, rotation_id) if s.name == STEPS["k8s-secret"]]
        assert step.detail["conflicts"] == 1, "the stale patch was refused and read again"
        assert chain.timeline.writes(start).count(("k8s", f"PATCH {SECRET_PATH}")) == 1
    finally:
        chain.kube.change_secret(NS, K8S_SECRET, {K8S_OTHER_KEY: K8S_OTHER_VALUE})


# --- a failing publish with on_failure: continue ---------------------------------------------
# Last in the file: they leave the failing store behind, so a test using `chain` after them
# would first need a clean rotation.


@pytest.mark.parametrize(("failing", "fault"), CONTINUE_CASES)
def test_a_failed_publish_that_may_continue_ends_needing_attention_with_the_rest_switched(
    chain_as_left: Chain, failing: str, fault: str
) -> None:
    chain = chain_as_left
    chain.apply(on_failure={failing: "continue"}, timeout=request_timeout(fault))
    before = chain.held()
    start = chain.timeline.mark()

    _, state = chain.rotate({failing: inject(chain, failing, fault)})

    assert state == RotationState.NEEDS_ATTENTION
    new = chain.current_value()
    assert new is not None
    assert new not in before.values()
    assert chain.held() == {store: before[failing] if store == failing else new for store in STORES}
    assert chain.timeline.writes(start) == [
        *(w for store in STORES if store != failing for w in PUBLISH_WRITES[store]),
        RESTART,
        REFRESH,
    ]
    rotation = last_rotation(chain)
    assert rotation.attention is not None
    assert STEPS[failing] in rotation.attention
    assert_no_value_in(rotation.attention, new)
    status = chain.cli("status")
    assert "Needs Attention" in status.output
    assert f"{versions_of_last_rotation(chain)[1].id[:8]} " in status.output
