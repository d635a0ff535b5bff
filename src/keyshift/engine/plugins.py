"""Turning `type` + `config` from the estate into provider and target instances.

One place validates plugin config against the registered class's `Config`
model, so `apply` and the engine refuse the same things with the same paths.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ValidationError

from keyshift.context import PluginContext
from keyshift.domain.estate import INTEGRATION_FIELDS, Policy
from keyshift.domain.problems import config_errors
from keyshift.domain.states import Phase
from keyshift.errors import ConfigError, EstateInvalid
from keyshift.providers import INTEGRATIONS, PROVIDERS, Provider
from keyshift.registry import Registry
from keyshift.targets import TARGETS, Target


def _lookup(registry: Registry[Any], kind: str, what: str, path: str) -> Any:
    """The class of `kind`, imported now if it is the first use of that type."""
    if kind in registry:
        return registry[kind]
    known = ", ".join(sorted(str(k) for k in registry))
    raise EstateInvalid([ConfigError(path, f"unknown {what} type '{kind}'; known: {known}")])


def validate_config(cls: Any, config: dict[str, Any], path: str) -> BaseModel:
    """Validate `config` against `cls.Config`; raise EstateInvalid with every bad field."""
    try:
        model: BaseModel = cls.Config.model_validate(config)
    except ValidationError as exc:
        raise EstateInvalid(config_errors(exc, path)) from None
    return model


class _ConfigOnly:
    """An integration type seen as a plugin class: it has a `Config` and nothing else."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.Config = model


def integration_class(kind: str, path: str = "type") -> Any:
    return _ConfigOnly(_lookup(INTEGRATIONS, kind, "integration", path))


def build_integrations(declared: dict[str, dict[str, Any]]) -> dict[str, BaseModel]:
    """Validated integration configs by name, from their stored form (with `type`)."""
    out: dict[str, BaseModel] = {}
    for name, raw in declared.items():
        cls = integration_class(raw["type"], f"integrations.{name}.type")
        config = {k: v for k, v in raw.items() if k not in INTEGRATION_FIELDS}
        out[name] = validate_config(cls, config, f"integrations.{name}")
    return out


def provider_class(kind: str, path: str = "provider.type") -> Any:
    return _lookup(PROVIDERS, kind, "provider", path)


def target_class(kind: str, path: str = "type") -> Any:
    return _lookup(TARGETS, kind, "action", path)


def target_phase(kind: str) -> Phase:
    phase: Phase = target_class(kind).phase
    return phase


def effective_policy(policy: Policy, kind: str, config: dict[str, Any]) -> Policy:
    """The policy a credential of provider `kind` with `config` is rotated under.

    A provider that says by itself when renewal is due before a version's expiry (a
    classmethod `rotate_before_expiry(config) -> timedelta | None`: x509_ca's
    `renew_before`) sets `rotate_before_expiry` for its credential, so the schedule,
    `status` and the expiry alerts, which read the stored effective policy, follow it
    unchanged. Every other policy is returned as it is."""
    cls = provider_class(kind)
    says = getattr(cls, "rotate_before_expiry", None)
    if says is None:
        return policy
    due_before = says(validate_config(cls, config, "provider"))
    if due_before is None or due_before == policy.rotate_before_expiry:
        return policy
    return policy.model_copy(update={"rotate_before_expiry": due_before})


def build_provider(kind: str, config: dict[str, Any], context: PluginContext) -> Provider:
    cls = provider_class(kind)
    provider: Provider = cls(validate_config(cls, config, "provider"), context)
    return provider


def build_target(
    kind: str, config: dict[str, Any], context: PluginContext, agent_id: str | None = None
) -> Target:
    """The target of an action; `agent_id` (the action's) tells an agent target its agent."""
    cls = target_class(kind)
    if agent_id is not None:
        context = replace(context, agent_id=agent_id)
    target: Target = cls(validate_config(cls, config, "config"), context)
    return target


def trust_only(kind: str, config: dict[str, Any]) -> bool:
    """Whether an action of target `kind` with `config` serves verifiers only (a JWKS
    document): its class says so with a classmethod `trust_only(config) -> bool`."""
    cls = target_class(kind)
    says = getattr(cls, "trust_only", None)
    if says is None:
        return False
    return bool(says(validate_config(cls, config, "config")))


def trust_format(kind: str, config: dict[str, Any]) -> str | None:
    """What a trust action holds (`jwks`, `pem_bundle`), as its class says with a
    classmethod `trust_format(config)`; None for an action that is not a trust action."""
    if not trust_only(kind, config):
        return None
    cls = target_class(kind)
    says = getattr(cls, "trust_format", None)
    return None if says is None else str(says(validate_config(cls, config, "config")))
