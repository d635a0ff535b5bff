"""One delivery chain for the end-to-end tests: a `random` credential published to two Key
Vaults, a Kubernetes Secret, AWS Secrets Manager and a JSON file, then a rollout restart,
a Spring refresh and an HTTP health check, every one of them through its real client
against a local double (moto behind a fault-injecting proxy for AWS).

`Timeline` puts what the doubles saw into one order: each double's request log is
replaced by a list that, on every append, also takes the next number of one shared
counter and notes what the JSON file held at that moment. Writes are numbered as they
happen, so their order cannot come out right by accident.

One chain serves all tests of a module (starting it and rotating once takes seconds):
the `chain` fixture hands it over with every store holding the current version, and
each test compares the stores with what they held when it started.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from keyshift.domain.states import RotationState, StepStatus
from keyshift.engine.journal import StepEvent
from keyshift.service import rotations
from keyshift.store.models import VersionRow
from keyshift.store.store import Store
from keyshift.testing import FakeClock
from tests.conftest import Cli
from tests.doubles.graph import GraphDouble
from tests.doubles.keyvault import VAULT_SCOPE, KeyVaultDouble
from tests.doubles.kubernetes import KubernetesDouble
from tests.doubles.moto import DUMMY_KEY_ID, DUMMY_SECRET_KEY, MotoServer, moto_server
from tests.doubles.moto_proxy import MotoProxy
from tests.doubles.spring import SpringActuatorDouble
from tests.doubles.tls import TlsFiles, make_pki
from tests.helpers import save_estate, value_of, versions

T = TypeVar("T")

CREDENTIAL: Final = "payments-api-key"
ADMIN_ENV: Final = "ENTRA_ADMIN_SECRET"
ADMIN_SECRET: Final = "double-admin-secret-value"
KV_SECRET: Final = "payments-api-key"
NS: Final = "payments"
K8S_SECRET: Final = "payments-api"
K8S_KEY: Final = "api-key"
K8S_OTHER_KEY: Final = "db-url"
K8S_OTHER_VALUE: Final = "postgres://db.payments.svc/app"
WORKLOAD: Final = "payments-api"
AWS_SECRET: Final = "payments/api-key"
REGION: Final = "eu-west-1"
FILE_KEY: Final = "Payments:ApiKey"
ENV: Final = {
    ADMIN_ENV: ADMIN_SECRET,
    "AWS_KEY_ID": DUMMY_KEY_ID,
    "AWS_SECRET_KEY": DUMMY_SECRET_KEY,
}

STORES: Final = ("kv-primary", "kv-secondary", "k8s-secret", "aws", "file")
"""The publishing targets, in their configured order."""
STEPS: Final = {
    "kv-primary": "publishing:10:azure_keyvault",
    "kv-secondary": "publishing:20:azure_keyvault",
    "k8s-secret": "publishing:30:kubernetes_secret",
    "aws": "publishing:40:aws_secretsmanager",
    "file": "publishing:50:file",
    "rollout-restart": "reloading:60:kubernetes_rollout_restart",
    "spring": "reloading:70:spring_refresh",
    "health": "verifying:80:http_check",
}
"""Each action's journal step name (`phase:order:type`)."""

SECRET_PATH: Final = f"/api/v1/namespaces/{NS}/secrets/{K8S_SECRET}"
WORKLOAD_PATH: Final = f"/apis/apps/v1/namespaces/{NS}/deployments/{WORKLOAD}"
KV_PATH: Final = f"/secrets/{KV_SECRET}"


def digest(value: str | None) -> str | None:
    """A short digest standing for a value in the timeline, so no value is kept there."""
    return hashlib.sha256(value.encode()).hexdigest()[:16] if value is not None else None


@dataclass(frozen=True)
class Event:
    """One request a double saw, numbered in the order all doubles saw theirs."""

    seq: int
    source: str
    """Which double: `kv-primary`, `kv-secondary`, `k8s`, `aws` or `spring`."""
    what: str
    """`METHOD path` for REST doubles, the action name for AWS."""
    status: int
    write: bool
    """Whether it changed what a consumer reads (an accepted write)."""
    file: str | None
    """The digest of the file's value when the event happened."""


class _Observed(list[T]):
    """A double's request log that also reports each entry as it is appended."""

    def __init__(self, report: Callable[[T], None]) -> None:
        super().__init__()
        self._report = report

    def append(self, item: T) -> None:
        super().append(item)
        self._report(item)


class Timeline:
    """The requests of every double of the chain in one order (see the module docstring)."""

    def __init__(self, read_file: Callable[[], str | None]) -> None:
        self.events: list[Event] = []
        self._read_file = read_file
        self._counter = itertools.count()
        self._lock = threading.Lock()

    def observe(
        self, source: str, describe: Callable[[T], tuple[str, int, bool] | None]
    ) -> _Observed[T]:
        """A request log for a double; `describe` turns an entry into (what, status,
        write), or None to leave it out."""

        def report(item: T) -> None:
            described = describe(item)
            if described is not None:
                self.record(source, *described)

        return _Observed(report)

    def record(self, source: str, what: str, status: int, write: bool) -> None:
        # Read the file before numbering: this event happened with whatever it holds now.
        held = digest(self._read_file())
        with self._lock:
            self.events.append(Event(next(self._counter), source, what, status, write, held))

    def mark(self) -> int:
        """Where the events from now on start (to look at one rotation only)."""
        with self._lock:
            return len(self.events)

    def writes(self, since: int = 0) -> list[tuple[str, str]]:
        """(source, what) of each accepted write since `since`, in order."""
        with self._lock:
            return [(e.source, e.what) for e in self.events[since:] if e.write]

    def since(self, start: int) -> list[Event]:
        with self._lock:
            return list(self.events[start:])


def _kv_event(r: Any) -> tuple[str, int, bool] | None:
    if not r.authorized:
        return None  # the SDK's first try without a token
    return (
        f"{r.method} {r.path.rstrip('/')}",
        r.status,
        r.method in ("PUT", "PATCH") and (r.status == 200),
    )


def _k8s_write(write: tuple[str, str]) -> tuple[str, int, bool]:
    method, path = write
    return f"{method} {path}", 200, True


def _aws_event(call: Any) -> tuple[str, int, bool] | None:
    changes = call.action in ("CreateSecret", "PutSecretValue", "UpdateSecretVersionStage")
    return call.action, call.status, changes and call.status == 200


def _spring_event(r: Any) -> tuple[str, int, bool]:
    # A refresh changes no store, but it is the step that makes the application switch.
    # (The double logs no status: the event says 200 for any answer.)
    return f"{r.method} {r.path}", 200, r.method == "POST"


# --- the chain -------------------------------------------------------------------------------


@dataclass
class Chain:
    """Every double of the delivery chain, the store, a fake clock and the estate."""

    tmp: Path
    graph: GraphDouble
    primary: KeyVaultDouble
    secondary: KeyVaultDouble
    kube: KubernetesDouble
    kubeconfig: Path
    aws: MotoServer
    proxy: MotoProxy
    spring: SpringActuatorDouble
    file: Path
    timeline: Timeline
    store: Store
    cli: Cli
    clock: FakeClock = field(default_factory=FakeClock)
    applied: str | None = None
    """The estate last applied, as canonical JSON."""

    # --- estate --------------------------------------------------------------------------

    def actions(self, on_failure: Mapping[str, str], timeout: str) -> list[dict[str, Any]]:
        """The chain's actions; `on_failure` maps a name of STEPS to `continue`, `timeout`
        bounds each request to a vault or the Kubernetes API."""
        kv = {"integration": "contoso", "secret_name": KV_SECRET, "timeout": timeout}
        # The doubles listen on 127.0.0.1, not on a subdomain of vault.azure.net.
        kv["verify_challenge_resource"] = False
        k8s = {"kubeconfig": str(self.kubeconfig), "namespace": NS, "request_timeout": timeout}
        configs: dict[str, tuple[str, dict[str, Any]]] = {
            "kv-primary": ("azure_keyvault", {**kv, "vault_url": self.primary.vault_url}),
            "kv-secondary": ("azure_keyvault", {**kv, "vault_url": self.secondary.vault_url}),
            "k8s-secret": ("kubernetes_secret", {**k8s, "secret": K8S_SECRET, "key": K8S_KEY}),
            "aws": (
                "aws_secretsmanager",
                {
                    "secret_id": AWS_SECRET,
                    "region": REGION,
                    "endpoint_url": self.proxy.endpoint,
                    "access_key_id_from": "env:AWS_KEY_ID",
                    "secret_access_key_from": "env:AWS_SECRET_KEY",
                    "create": True,
                },
            ),
            "file": ("file", {"path": str(self.file), "key": FILE_KEY, "file_format": "json"}),
            "rollout-restart": (
                "kubernetes_rollout_restart",
                {**k8s, "kind": "Deployment", "name": WORKLOAD},
            ),
            "spring": ("spring_refresh", {"url": self.spring.refresh_url}),
            "health": (
                "http_check",
                {
                    "url": f"{self.spring.base_url}/actuator/health",
                    "expect_status": 200,
                    "expect_body": "UP",
                },
            ),
        }
        return [
            {
                "type": kind,
                "order": int(STEPS[name].split(":")[1]),
                "on_failure": on_failure.get(name, "abort"),
                "config": config,
            }
            for name, (kind, config) in configs.items()
        ]

    def apply(self, on_failure: Mapping[str, str] | None = None, timeout: str = "5s") -> None:
        """`keyshift apply` of the estate (the entra integration and the one credential),
        unless it is applied as it stands already."""
        estate = {
            "integrations": [
                {"name": "contoso", "type": "entra", **self.graph.integration(ADMIN_ENV)}
            ],
            "credentials": [
                {
                    "name": CREDENTIAL,
                    "owner": "team-payments",
                    "policy": {"grace_period": "0s", "max_lifetime": "90d"},
                    "provider": {"type": "random", "length": 32},
                    "actions": self.actions(on_failure or {}, timeout),
                }
            ],
        }
        text = json.dumps(estate, sort_keys=True)
        if text == self.applied:
            return
        applied = self.cli("apply", "-f", str(save_estate(self.tmp, estate)))
        assert applied.exit_code == 0, applied.output
        self.applied = text

    # --- running -------------------------------------------------------------------------

    def rotate(
        self, when_step_starts: Mapping[str, Callable[[], None]] | None = None
    ) -> tuple[str, RotationState]:
        """One rotation through the service layer on the fake clock. `when_step_starts`
        maps a name of STEPS to what to do (arm a fault) as that step starts, so a fault
        meets the step and not the preflight before it."""
        pending = {STEPS[name]: arm for name, arm in (when_step_starts or {}).items()}

        def on_event(event: StepEvent) -> None:
            if event.status == StepStatus.RUNNING and event.step in pending:
                pending.pop(event.step)()

        rotation_id, state = asyncio.run(
            rotations.rotate(
                self.store,
                CREDENTIAL,
                actor="e2e-test",
                context=self.clock.context(ENV),
                on_event=on_event,
            )
        )
        assert not pending, f"steps that never started: {sorted(pending)}"
        return rotation_id, state

    def settle(self) -> None:
        """Apply the plain estate and make every store hold the current version: a clean
        rotation when there is none yet, or when an earlier test left a store behind."""
        self.apply()
        current = self.current_value()
        if current is None or self.held() != dict.fromkeys(STORES, current):
            _, state = self.rotate()
            assert state == RotationState.COMPLETED
            current = self.current_value()
            assert current is not None
            assert self.held() == dict.fromkeys(STORES, current)

    # --- reading the stores back -----------------------------------------------------------

    def held(self) -> dict[str, str | None]:
        """What each store gives a consumer now (None where it holds nothing)."""
        primary = self.primary.latest(KV_SECRET)
        secondary = self.secondary.latest(KV_SECRET)
        return {
            "kv-primary": primary.value if primary else None,
            "kv-secondary": secondary.value if secondary else None,
            "k8s-secret": (self.kube.secret_data(NS, K8S_SECRET) or {}).get(K8S_KEY),
            "aws": self.aws_value("AWSCURRENT"),
            "file": self.file_value(),
        }

    @functools.cached_property
    def sm(self) -> Any:
        """An administrator's Secrets Manager client of moto itself (not through the proxy)."""
        return self.aws.client("secretsmanager", region=REGION)

    def aws_value(self, stage: str) -> str | None:
        """The value labelled `stage`."""
        sm = self.sm
        try:
            answer = sm.get_secret_value(SecretId=AWS_SECRET, VersionStage=stage)
        except sm.exceptions.ResourceNotFoundException:
            return None
        return str(answer["SecretString"])

    def aws_stages(self) -> dict[str, list[str]]:
        listed = self.sm.list_secret_version_ids(SecretId=AWS_SECRET, IncludeDeprecated=True)
        return {v["VersionId"]: sorted(v.get("VersionStages", [])) for v in listed["Versions"]}

    def file_value(self) -> str | None:
        return read_file_key(self.file)

    def value_of(self, version: VersionRow) -> str:
        return value_of(self.store, version)

    def current_value(self) -> str | None:
        """The value of the credential's current version at keyshift (None before one)."""
        current = [v for v in versions(self.store, CREDENTIAL) if v.status == "current"]
        return value_of(self.store, current[0]) if current else None


def read_file_key(path: Path) -> str | None:
    """The value at FILE_KEY in the JSON file, or None (no file, not JSON, or no such key)."""
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    for part in FILE_KEY.split(":"):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data if isinstance(data, str) else None


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_pki(tmp_path_factory.mktemp("e2e-pki"))


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[MotoServer]:
    with moto_server() as server:
        yield server


@pytest.fixture(scope="module")
def shared_chain(
    pki: TlsFiles, moto_endpoint: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chain]:
    """The whole chain, its doubles started and wired into one timeline, and a store on
    SQLite (the store suite covers PostgreSQL). Shared by the tests of a module: each
    test starts from the state the one before left, through `chain`."""
    moto_endpoint.reset()
    tmp = tmp_path_factory.mktemp("e2e-chain")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSHIFT_")}
    env |= {"KEYSHIFT_HOME": str(tmp / "home"), "KEYSHIFT_ACTOR": "e2e-operator", **ENV}
    app_file = tmp / "appsettings.json"
    app_file.write_text(json.dumps({"Logging": {"LogLevel": "Warning"}}), encoding="utf-8")
    timeline = Timeline(lambda: read_file_key(app_file))
    store = Store.open(env)
    with (
        GraphDouble(pki, client_secret=ADMIN_SECRET) as graph,
        KeyVaultDouble(pki, graph, name="kv-primary") as primary,
        KeyVaultDouble(pki, graph, name="kv-secondary") as secondary,
        KubernetesDouble(pki) as kube,
        MotoProxy(moto_endpoint.endpoint) as proxy,
        SpringActuatorDouble() as spring,
    ):
        graph.scopes.add(VAULT_SCOPE)
        primary.requests = timeline.observe("kv-primary", _kv_event)
        secondary.requests = timeline.observe("kv-secondary", _kv_event)
        kube.writes = timeline.observe("k8s", _k8s_write)
        proxy.requests = timeline.observe("aws", _aws_event)
        spring.requests = timeline.observe("spring", _spring_event)
        kube.add_secret(NS, K8S_SECRET, {K8S_OTHER_KEY: K8S_OTHER_VALUE})
        kube.add_workload("Deployment", NS, WORKLOAD, rollout_reads=2)
        try:
            yield Chain(
                tmp=tmp,
                graph=graph,
                primary=primary,
                secondary=secondary,
                kube=kube,
                kubeconfig=kube.write_kubeconfig(tmp / "kubeconfig", namespace=NS),
                aws=moto_endpoint,
                proxy=proxy,
                spring=spring,
                file=app_file,
                timeline=timeline,
                store=store,
                cli=Cli(env),
            )
        finally:
            store.close()


@pytest.fixture
def chain(shared_chain: Chain) -> Chain:
    """The shared chain with every store holding the current version (a clean rotation
    first when they do not), nothing armed, and the estate as `apply()` makes it."""
    shared_chain.settle()
    return shared_chain


@pytest.fixture
def chain_as_left(shared_chain: Chain) -> Chain:
    """The shared chain as the test before left it, once it has a current version: for
    tests that only compare each store with what it held when they started."""
    shared_chain.apply()
    if shared_chain.current_value() is None:
        shared_chain.settle()
    return shared_chain
