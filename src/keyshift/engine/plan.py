"""The plan of one rotation: what it will call and in which order, fixed when requested.

A rotation runs the plan stored with it, not the estate as it is later, so a
resumed run does what was requested and the plan hash in the audit trail
(and, later, in approvals) names exactly what ran.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from typing import Any

from keyshift.domain.estate import CredentialSpec, Policy
from keyshift.domain.states import PHASE_ORDER, OnFailure, Phase
from keyshift.engine.plugins import target_phase
from keyshift.store.audit import canonical

DEFAULT_CONSUMER = "(default)"
"""How lists of consumers name the one that actions without `consumer` belong to."""


def consumer_name(consumer: str | None) -> str:
    return consumer if consumer is not None else DEFAULT_CONSUMER


@dataclass(frozen=True)
class PlannedAction:
    key: str
    type: str
    order: int
    on_failure: OnFailure
    agent_id: str | None
    phase: Phase
    config: dict[str, Any]
    consumer: str | None = None
    """The consumer the action serves, when the estate names one."""

    @property
    def consumer_name(self) -> str:
        """The consumer as operators read it: its name, or `(default)` for actions that
        name none."""
        return consumer_name(self.consumer)

    @property
    def step(self) -> str:
        """The journal name of this action's step, e.g. `publishing:10:file`."""
        return f"{self.phase.value}:{self.key}"


@dataclass(frozen=True)
class Plan:
    credential: str
    provider_type: str
    provider_config: dict[str, Any]
    policy: dict[str, Any]
    grace_period_s: float
    actions: tuple[PlannedAction, ...]
    integrations: dict[str, dict[str, Any]]
    """The integrations the provider connects through, as declared when requested."""

    @property
    def grace_period(self) -> timedelta:
        return timedelta(seconds=self.grace_period_s)

    def in_phase(self, phase: Phase) -> list[PlannedAction]:
        return [a for a in self.actions if a.phase == phase]

    @property
    def failing_only(self) -> bool:
        """Whether the policy rolls back only the failing consumer (`rollback:
        failing_only`): consumers then switch one after another (`one_by_one`)."""
        return self.policy.get("rollback") == "failing_only"

    def consumers(self) -> list[str | None]:
        """The consumers that are switched (publish, reload or verify actions), in the
        order their first action runs; None is the default consumer."""
        found: list[str | None] = []
        for action in self.actions:
            if action.phase != Phase.NOTIFY and action.consumer not in found:
                found.append(action.consumer)
        return found

    def one_by_one(self) -> list[PlannedAction]:
        """The publish, reload and verify actions consumer by consumer (`consumers`), each
        consumer's in phase order: how a `failing_only` rotation switches, so that a
        failed check stops the new version before the next consumer gets it."""
        return [
            a
            for consumer in self.consumers()
            for a in self.actions
            if a.consumer == consumer and a.phase != Phase.NOTIFY
        ]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready copy (fields by hand: `asdict` deep-copies every action twice)."""
        return {
            "credential": self.credential,
            "provider_type": self.provider_type,
            "provider_config": copy.deepcopy(self.provider_config),
            "policy": copy.deepcopy(self.policy),
            "grace_period_s": self.grace_period_s,
            "actions": [_action_json(a) for a in self.actions],
            "integrations": copy.deepcopy(self.integrations),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        actions = tuple(
            PlannedAction(
                key=a["key"],
                type=a["type"],
                order=a["order"],
                on_failure=OnFailure(a["on_failure"]),
                agent_id=a["agent_id"],
                phase=Phase(a["phase"]),
                config=a["config"],
                consumer=a.get("consumer"),
            )
            for a in data["actions"]
        )
        return cls(
            credential=data["credential"],
            provider_type=data["provider_type"],
            provider_config=data["provider_config"],
            policy=data["policy"],
            grace_period_s=data["grace_period_s"],
            actions=actions,
            integrations=data.get("integrations", {}),
        )

    @cached_property
    def hash(self) -> str:
        """sha256 of the canonical JSON form; computed once (a plan does not change)."""
        return hashlib.sha256(canonical(self.to_json()).encode()).hexdigest()


def stored_plan(spec: dict[str, Any], grace: timedelta | None = None) -> Plan:
    """The plan of a credential as the estate stores it (a credential row's `spec`: the
    credential, its resolved policy and the integrations it uses)."""
    return build_plan(
        CredentialSpec.model_validate(spec["credential"]),
        Policy.model_validate(spec["policy"]),
        grace,
        spec.get("integrations", {}),
    )


def build_plan(
    spec: CredentialSpec,
    policy: Policy,
    grace: timedelta | None = None,
    integrations: dict[str, dict[str, Any]] | None = None,
) -> Plan:
    """Order the actions by phase (publish, reload, verify, notify), then by `order`."""
    rank = {phase: i for i, phase in enumerate(PHASE_ORDER)}
    planned = [
        PlannedAction(
            key=a.key,
            type=a.type,
            order=a.order,
            on_failure=a.on_failure,
            agent_id=a.agent_id,
            phase=target_phase(a.type),
            config=dict(a.config),
            consumer=a.consumer,
        )
        for a in spec.actions
    ]
    planned.sort(key=lambda a: (rank[a.phase], a.order))
    effective_grace = policy.grace_period if grace is None else grace
    return Plan(
        credential=spec.name,
        provider_type=spec.provider.type,
        provider_config=spec.provider.config(),
        policy=policy.model_dump(mode="json"),
        grace_period_s=effective_grace.total_seconds(),
        actions=tuple(planned),
        integrations=dict(integrations or {}),
    )


def _action_json(action: PlannedAction) -> dict[str, Any]:
    data = {
        "key": action.key,
        "type": action.type,
        "order": action.order,
        "on_failure": action.on_failure.value,
        "agent_id": action.agent_id,
        "phase": action.phase.value,
        "config": copy.deepcopy(action.config),
        "consumer": action.consumer,
    }
    # Left out when unset, so plans without consumers keep the hash they had before the
    # field existed (a stored plan's hash is bound to its approvals).
    if data["consumer"] is None:
        del data["consumer"]
    return data
