"""Use cases on the estate file: load and validate it, show what `apply` would change, apply it.

Validation collects every problem before refusing, each with its field path;
a refused file changes nothing. `apply` writes the whole estate in one
transaction: a credential removed from the file loses its rotation schedule in
that same transaction, while its versions, rotations and audit history stay.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from sqlalchemy import select

from keyshift import files
from keyshift.context import PluginContext
from keyshift.domain.clock import utcnow
from keyshift.domain.durations import format_duration
from keyshift.domain.estate import (
    INTEGRATION_FIELDS,
    ActionSpec,
    CredentialSpec,
    Estate,
    IntegrationSpec,
    Policy,
    action_key,
    disabled_integrations,
    reference_problems,
)
from keyshift.domain.freeze import FreezeSource
from keyshift.domain.problems import config_errors
from keyshift.domain.states import PHASE_ORDER, Phase
from keyshift.engine import freezes as held
from keyshift.engine.approvals import GOVERNANCE_KEY
from keyshift.engine.plugins import (
    build_provider,
    effective_policy,
    integration_class,
    provider_class,
    target_class,
    trust_format,
    trust_only,
    validate_config,
)
from keyshift.errors import ConfigError, EstateInvalid
from keyshift.providers.base import Capability, trust_first_of
from keyshift.providers.trust_bundle import TrustBundleConfig
from keyshift.providers.x509_ca import X509CaConfig
from keyshift.service import freezes
from keyshift.service.entra import forget_integrations
from keyshift.service.notifications import channel_problems
from keyshift.store.audit import canonical
from keyshift.store.models import CredentialRow, EstateRevision, IntegrationRow, Meta
from keyshift.store.store import Store
from keyshift.targets import AGENT_KINDS, VERIFY_KINDS


@dataclass(frozen=True)
class Change:
    """One line of a plan: `+` added, `~` changed, `-` removed."""

    op: str
    kind: str
    name: str
    detail: str = ""


@dataclass(frozen=True)
class EstateWarning:
    """Something in an estate file that is accepted but not as written: a legacy field
    renamed, or an action that will need a person. `path` names the field."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _not_a_mapping() -> EstateInvalid:
    return EstateInvalid([ConfigError("(top level)", "must be a mapping with credentials")])


def load_estate(path: Path, warnings: list[EstateWarning] | None = None) -> Estate:
    """Read and validate an estate file; raise EstateInvalid listing every problem.

    Warnings (legacy fields normalised, actions that need manual review) are appended to
    `warnings` when given; `plan` and `apply` print them."""
    return parse_estate(read_document(path), warnings)


def read_document(path: Path) -> dict[str, Any]:
    """The estate file's document as parsed from YAML, not yet validated (the CLI sends it
    to a server as is); EstateInvalid when it cannot be read, is not YAML, is empty or is
    not a mapping."""
    try:
        text = files.read_text(path)
    except ConfigError as exc:
        raise EstateInvalid([exc]) from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise EstateInvalid([ConfigError(where, f"{problem} (YAML syntax)")]) from None
    if data is None:
        # An empty file would unschedule every credential; make that explicit.
        raise EstateInvalid(
            [ConfigError(str(path), "is empty; to remove every credential write `credentials: []`")]
        )
    if not isinstance(data, dict):
        raise _not_a_mapping()
    return data


MAX_NODES = 10_000_000
"""The most YAML nodes an estate file may stand for once its aliases (`*name`) are
expanded: a few nested aliases can stand for billions ("billion laughs"), while an
estate of 50,000 credentials sharing policies by alias stays far below."""


_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_yaml(text: str) -> Any:
    """`yaml.safe_load`, refusing a document whose aliases expand past MAX_NODES (counted
    on the composed node graph, where an alias is one shared node, before anything is
    built). With libyaml's parser where PyYAML has it: the pure-Python one takes
    seconds per thousand credentials."""
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _count_nodes(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise EstateInvalid([_at(node, "a YAML alias refers to itself")])
        open_.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        open_.discard(key)
        if total > MAX_NODES:
            raise EstateInvalid(
                [_at(node, f"its YAML aliases expand to more than {MAX_NODES:,} nodes")]
            )
        sizes[key] = total
        return total

    size(root)


def _at(node: yaml.Node, message: str) -> ConfigError:
    mark = node.start_mark
    return ConfigError(f"line {mark.line + 1}" if mark is not None else "estate", message)


def parse_estate(data: Any, warnings: list[EstateWarning] | None = None) -> Estate:
    """Validate estate data (as parsed from YAML or JSON) including every plugin config.

    Legacy fields are normalised first (`_legacy_fields`); what that changed is appended
    to `warnings` when given. A provider or action that needs an integration and names
    none gets the estate's only integration of that type, in the returned estate (the
    caller's data is not changed).
    """
    if not isinstance(data, dict):
        raise _not_a_mapping()
    problems: list[ConfigError] = []
    data = _copy_tree(data)  # what follows normalises this copy in place
    noted = _legacy_fields(data, problems)
    if warnings is not None:
        warnings.extend(noted)
    unresolved = _with_implicit_integrations(data)
    problems.extend(unresolved)
    try:
        estate = Estate.model_validate(data)
    except ValidationError as exc:
        problems.extend(config_errors(exc))
    else:
        problems.extend(channel_problems(estate.notifications))
    # References and plugin configs are checked on the raw data, so every kind of
    # problem in a file is reported in one pass.
    problems.extend(reference_problems(data))
    problems.extend(_plugin_problems(data))
    problems.extend(_action_order_problems(data))
    unenrolled: list[EstateWarning] = []
    problems.extend(_agent_problems(data, unenrolled))
    if warnings is not None:
        warnings.extend(unenrolled)
    # An integration that could not be chosen is explained above; the config model's
    # plain "is required" for the same field would only repeat it.
    explained = {p.path for p in unresolved}
    problems = [p for p in problems if not (p.path in explained and p.message == "is required")]
    if problems:
        raise EstateInvalid(problems)
    _check_capabilities(estate)
    return estate


def current_estate(store: Store, *, with_credentials: bool = True) -> Estate:
    """The estate as last applied (an empty one before the first apply); without its
    credentials with `with_credentials=False`, for a caller that reads only its other
    parts (alerts, governance, triggers, policies, the worker): validating 10,000
    credentials takes seconds."""
    with store.transaction() as s:
        latest = s.execute(
            select(EstateRevision.document).order_by(EstateRevision.id.desc()).limit(1)
        ).scalar_one_or_none()
    if latest is None:
        return Estate()
    if not with_credentials:
        latest = {**latest, "credentials": []}
    return Estate.model_validate(latest)


def _check_capabilities(estate: Estate) -> None:
    """What a policy asks of a credential's provider and actions, checked against what
    they can do (`Capability`); every problem is reported with its field path."""
    problems: list[ConfigError] = []
    context = PluginContext()  # one for all: it copies the environment when made
    for i, cred in enumerate(estate.credentials):
        policy = estate.policy_for(cred)
        provider = build_provider(cred.provider.type, cred.provider.config(), context)
        held = provider.capabilities
        problems += _residual_use_problems(i, cred, policy, held)
        problems += _check_problems(i, cred, policy, held)
        problems += _rollback_problems(i, cred, policy, held)
        problems += _trust_problems(i, cred, trust_first=trust_first_of(provider) is not None)
        problems += _pairing_problems(i, cred, provider)
    problems += _leaf_problems(estate)
    if problems:
        raise EstateInvalid(problems)


def _residual_use_problems(
    i: int, cred: CredentialSpec, policy: Policy, held: frozenset[Capability]
) -> list[ConfigError]:
    """A residual_use policy needs a way to observe use: a provider that sees sessions per
    version, or a command. Accepting it otherwise would revoke without the evidence asked."""
    gate = policy.residual_use
    if gate is None or gate.command or Capability.RESIDUAL_USE in held:
        return []
    return [
        ConfigError(
            f"credentials[{i}].policy",
            f"residual_use cannot be observed for provider {cred.provider.type} with "
            "this configuration (it cannot tell the old version's sessions from the "
            "new one's); add residual_use.command or use alternating_users",
        )
    ]


def _check_problems(
    i: int, cred: CredentialSpec, policy: Policy, held: frozenset[Capability]
) -> list[ConfigError]:
    """Under `require_checks` (by default on `prod`) a rotation must test its cutover: a
    verify action, or a provider whose `verify` really signs in. Without one it would
    "complete" with nothing having proved that the new version works."""
    if not policy.checks_required(cred.environment) or Capability.AUTHENTICATES in held:
        return []
    if any(a.type in VERIFY_KINDS for a in cred.actions):
        return []
    why = (
        "require_checks is true in its policy"
        if policy.require_checks
        else f"it is in environment {cred.environment} (require_checks defaults to true there)"
    )
    return [
        ConfigError(
            f"credentials[{i}].actions",
            f"{cred.name} has no post-cutover check and {why}: provider "
            f"{cred.provider.type} cannot sign in with the new version, so add a verify "
            f"action ({', '.join(sorted(VERIFY_KINDS))}) that tests a consumer with it, or set "
            "require_checks: false in its policy",
        )
    ]


def _rollback_problems(
    i: int, cred: CredentialSpec, policy: Policy, held: frozenset[Capability]
) -> list[ConfigError]:
    """`rollback: failing_only` leaves some consumers on the new version and others on
    the old one: the issuer must accept both at once, and each consumer must be put back
    and judged on its own (its own publish and verify actions)."""
    if policy.rollback != "failing_only":
        return []
    path = f"credentials[{i}].policy"
    if Capability.DUAL_ACTIVE not in held:
        return [
            ConfigError(
                f"{path}.rollback" if not isinstance(cred.policy, str) else path,
                f"rollback: failing_only needs a provider that keeps the old and new "
                f"versions valid at once; {cred.provider.type} with this configuration "
                "replaces the value in place (use a dual or alternating strategy, e.g. "
                "postgres alternating_users or redis dual_password, or rollback: all)",
            )
        ]
    problems: list[ConfigError] = []
    for consumer, phases in _consumer_phases(cred).items():
        if phases <= {Phase.NOTIFY}:
            continue  # told, not switched: it holds no version to put back
        missing = [
            PHASE_WORDS[phase] for phase in (Phase.PUBLISH, Phase.VERIFY) if phase not in phases
        ]
        if missing:
            whose = f"consumer {consumer}" if consumer else "the default consumer"
            problems.append(
                ConfigError(
                    f"credentials[{i}].actions",
                    f"with rollback: failing_only every consumer needs its own publish and "
                    f"verify actions, to be switched, judged and put back on its own; "
                    f"{whose} has no {' and no '.join(missing)} action (name it in "
                    "`consumer:` on the actions, or use rollback: all)",
                )
            )
    return problems


TRUST_FORMAT: dict[str, str] = {
    "jwks_signing_key": "jwks",
    "trust_bundle": "pem_bundle",
    "x509_ca": "thumbprints",
    "acme": "thumbprints",
    "entra_certificate": "thumbprints",
}
"""The trust each provider's verifiers read: required of the trust-first providers (a
signing key, a CA), optional for a certificate (a verifier that pins thumbprints)."""
TRUST_FILE_HOLDS: dict[str, str] = {
    "jwks": "a JWKS document holds the public keys of a jwks_signing_key credential",
    "pem_bundle": "a CA bundle holds the CA certificates of a trust_bundle credential",
    "thumbprints": "an accepted-thumbprint list holds the thumbprints of a certificate "
    "credential (x509_ca, acme, entra_certificate)",
}


_TRUST_NAME: dict[str, str] = {
    "jwks": "JWKS",
    "pem_bundle": "CA bundle",
    "thumbprints": "accepted-thumbprint list",
}


def _trust_holds(action: ActionSpec) -> tuple[str, str]:
    """What a trust action holds (`jwks`, `pem_bundle`, `thumbprints`: its class's
    `trust_format`) and the field that says it: a file's `file_format`, a ConfigMap's
    `format` (its class's `trust_format_field`), else the type of a target that holds one
    thing (`jwks_webhook`, `thumbprints_webhook`, ...)."""
    fmt = str(trust_format(action.type, dict(action.config)))
    if action.type == "file":
        return fmt, "config.file_format"
    return fmt, str(getattr(target_class(action.type), "trust_format_field", "type"))


def _pairing_problems(i: int, cred: CredentialSpec, provider: object) -> list[ConfigError]:
    """Actions that only one kind of credential can take, and actions a kind of credential
    cannot do without, as the plugins declare them: a target class's `serves` names the
    provider types it works for (a `kms_rewrap` needs a KMS key version); a provider
    class's `required_actions` maps each action type it needs to why (a `kms_key`
    credential needs its alias moved, or it could never disable the old key)."""
    problems: list[ConfigError] = []
    kind = cred.provider.type
    for j, action in enumerate(cred.actions):
        cls = target_class(action.type)
        serves = getattr(cls, "serves", None)
        if isinstance(serves, frozenset) and kind not in serves:
            problems.append(
                ConfigError(
                    f"credentials[{i}].actions[{j}].type",
                    f"{action.type} works for {', '.join(sorted(serves))} credentials only, "
                    f"and {cred.name} is {kind}",
                )
            )
        # A class's `serves_for(config)` narrows by a config field instead (an
        # azure_keyvault action with object: certificate): (field, provider types, why).
        serves_for = getattr(cls, "serves_for", None)
        narrowed = serves_for(dict(action.config)) if callable(serves_for) else None
        if narrowed is not None and kind not in narrowed[1]:
            field, kinds, why = narrowed
            problems.append(
                ConfigError(
                    f"credentials[{i}].actions[{j}].{field}",
                    f"{action.type} with {field.removeprefix('config.')}: "
                    f"{action.config.get(field.removeprefix('config.'))} works for "
                    f"{', '.join(sorted(kinds))} credentials only ({why}), and {cred.name} "
                    f"is {kind}",
                )
            )
    required = getattr(provider, "required_actions", None) or {}
    present = {a.type for a in cred.actions}
    for needed, why in sorted(required.items()):
        if needed not in present:
            problems.append(
                ConfigError(
                    f"credentials[{i}].actions",
                    f"{cred.name} ({kind}) needs a {needed} action: {why}",
                )
            )
    return problems


def _trust_problems(i: int, cred: CredentialSpec, *, trust_first: bool) -> list[ConfigError]:
    """A trust-first credential (a JWKS signing key, a CA) publishes to its verifiers (a
    JWKS document, a CA bundle) before its signers, and a rollback undoes the signers
    first: so it needs a trust action, each ordered before every other publish action. A
    certificate may have trust actions (accepted-thumbprint lists), ordered the same way.
    A thumbprint list is only for a certificate credential, a JWKS document only for a
    signing key, a CA bundle only for a trust_bundle (no other version has a certificate,
    a public JWK or is a CA); a trust_bundle's value is the CA's key, so each of its
    publish actions writes a bundle."""
    trusts = [(j, a) for j, a in enumerate(cred.actions) if trust_only(a.type, dict(a.config))]
    kind = cred.provider.type
    wanted = TRUST_FORMAT.get(kind)
    held = {j: _trust_holds(a) for j, a in trusts}
    wrong = [
        ConfigError(
            f"credentials[{i}].actions[{j}].{field_name}",
            f"{TRUST_FILE_HOLDS.get(fmt, 'a trust file')}; {cred.name} is {kind}",
        )
        for j, (fmt, field_name) in held.items()
        if fmt != wanted
    ]
    if wrong:
        return wrong
    if not trusts and not trust_first:
        return []  # a certificate without a thumbprint list: nothing is trusted first
    if not trusts:
        what = (
            "its CA bundle (type: file with file_format: pem_bundle, or "
            "kubernetes_configmap with format: pem_bundle)"
            if wanted == "pem_bundle"
            else (
                "its JWKS to the verifiers (type: file with file_format: jwks, "
                "kubernetes_configmap, jwks_webhook or jwks_serve)"
            )
        )
        return [
            ConfigError(
                f"credentials[{i}].actions",
                f"{cred.name} is a {kind} credential: add an action that publishes "
                f"{what}, which runs before the signers get a new key",
            )
        ]
    signers = [
        (j, a)
        for j, a in enumerate(cred.actions)
        if target_class(a.type).phase == Phase.PUBLISH and not trust_only(a.type, dict(a.config))
    ]
    if kind == "trust_bundle":
        return [
            ConfigError(
                f"credentials[{i}].actions[{j}]",
                f"{cred.name} is a trust_bundle: its value is the CA's private key, which no "
                "consumer gets; its publish actions write CA bundles (type: file with "
                "file_format: pem_bundle, or kubernetes_configmap with format: pem_bundle), "
                "and the leaves get certificates through their "
                "own x509_ca credentials",
            )
            for j, _ in signers
        ]
    first_signer = min((a.order for _, a in signers), default=None)
    return [
        ConfigError(
            f"credentials[{i}].actions[{j}].order",
            f"the {_TRUST_NAME[held[j][0]]} action (order {a.order}) must come "
            "before every action that hands the signers the key or certificate (the first "
            f"has order {first_signer}): verifiers trust a new one before anything signs "
            "with it",
        )
        for j, a in trusts
        if first_signer is not None and a.order >= first_signer
    ]


def _leaf_problems(estate: Estate) -> list[ConfigError]:
    """An x509_ca leaf signed by a trust_bundle credential (`credential:NAME`) reads the
    CA's key and certificate from it, so both references name it; and its certificates
    expire before the CA does."""
    bundles = {c.name: c for c in estate.credentials if c.provider.type == "trust_bundle"}
    problems: list[ConfigError] = []
    for i, cred in enumerate(estate.credentials):
        config = cred.provider.config()
        if cred.provider.type != "x509_ca":
            continue
        refs = {f: str(config.get(f, "")) for f in ("ca_key_from", "ca_cert_from")}
        named = {
            f: ref.removeprefix("credential:")
            for f, ref in refs.items()
            if ref.startswith("credential:") and ref.removeprefix("credential:") in bundles
        }
        if not named:
            continue
        bundle = next(iter(named.values()))
        for field_name, ref in refs.items():
            if named.get(field_name) != bundle:
                problems.append(
                    ConfigError(
                        f"credentials[{i}].provider.{field_name}",
                        f"is {ref or 'missing'}; a leaf of the trust_bundle {bundle} reads "
                        f"the CA's key and certificate from it: use credential:{bundle} for "
                        "both ca_key_from and ca_cert_from",
                    )
                )
        leaf_validity = X509CaConfig.model_validate(config).validity
        ca_validity = TrustBundleConfig.model_validate(bundles[bundle].provider.config()).validity
        if leaf_validity >= ca_validity:
            problems.append(
                ConfigError(
                    f"credentials[{i}].provider.validity",
                    f"({format_duration(leaf_validity)}) must be shorter than the validity "
                    f"of the CA {bundle} ({format_duration(ca_validity)}) that signs it",
                )
            )
    return problems


def _consumer_phases(cred: CredentialSpec) -> dict[str | None, set[Phase]]:
    """The phases each consumer of `cred` has actions in (None: the default consumer)."""
    phases: dict[str | None, set[Phase]] = {}
    for action in cred.actions:
        phases.setdefault(action.consumer, set()).add(target_class(action.type).phase)
    return phases


def _copy_tree(value: Any) -> Any:
    """A copy of a parsed document's mappings and lists (the values in them are shared):
    what `copy.deepcopy` makes of it, several times faster."""
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    return value


def _with_implicit_integrations(data: dict[str, Any]) -> list[ConfigError]:
    """Make every provider and action in `data` that needs an integration and names none
    name the estate's only integration of the type it needs; a problem for each one
    where there is no such integration or several.

    Resolved here, before anything else reads the file, the stored estate holds the name
    as if it had been written: the engine's plan, `keyshift impact` and preflight all see
    it, and a file that names its only integration is the same estate as one that does not.
    """
    by_type: dict[str, list[str]] = {}
    for _i, item in _mappings(data, "integrations"):
        if isinstance(item.get("name"), str) and isinstance(item.get("type"), str):
            by_type.setdefault(item["type"], []).append(item["name"])
    problems: list[ConfigError] = []
    for i, cred in _mappings(data, "credentials"):
        base = f"credentials[{i}]"
        provider = cred.get("provider")
        if isinstance(provider, dict):
            problem = _fill_integration(
                provider_class, provider, provider, by_type, f"{base}.provider"
            )
            problems += [problem] if problem else []
        for j, action in _mappings(cred, "actions"):
            config = action.get("config")
            if isinstance(config, dict):
                path = f"{base}.actions[{j}].config"
                problem = _fill_integration(target_class, action, config, by_type, path)
                problems += [problem] if problem else []
    return problems


def _mappings(data: dict[str, Any], field: str) -> list[tuple[int, dict[str, Any]]]:
    items = data.get(field)
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _fill_integration(
    lookup: Any,
    declared: dict[str, Any],
    config: dict[str, Any],
    by_type: dict[str, list[str]],
    path: str,
) -> ConfigError | None:
    """Set `config["integration"]` when the plugin of `declared["type"]` must connect
    through an integration and `config` names none; a problem when no single one fits."""
    if config.get("integration") is not None or not isinstance(declared.get("type"), str):
        return None
    try:
        cls = lookup(declared["type"])
    except EstateInvalid:
        return None  # the unknown type is reported by _check
    wanted: str | None = getattr(cls, "integration_type", None)
    field = cls.Config.model_fields.get("integration")
    if wanted is None or field is None or not field.is_required():
        # A plugin that may work without an integration is not handed one it did not ask for.
        return None
    candidates = sorted(by_type.get(wanted, []))
    if len(candidates) == 1:
        config["integration"] = candidates[0]
        return None
    if candidates:
        why = f"the estate has {len(candidates)} {wanted} integrations ({', '.join(candidates)})"
        return ConfigError(f"{path}.integration", f"required: {why}; name one")
    return ConfigError(
        f"{path}.integration",
        f"required: the estate has no {wanted} integration; declare one under integrations "
        "and name it here",
    )


def _plugin_problems(data: dict[str, Any]) -> list[ConfigError]:
    """Every provider and action config checked against its registered type's model."""
    problems: list[ConfigError] = []
    integrations: dict[str, str] = {}
    raw_integrations = data.get("integrations")
    for i, item in enumerate(raw_integrations if isinstance(raw_integrations, list) else []):
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            config = {k: v for k, v in item.items() if k not in INTEGRATION_FIELDS}
            problems.extend(_check(integration_class, item["type"], config, f"integrations[{i}]"))
            if isinstance(item.get("name"), str):
                integrations[item["name"]] = item["type"]
    alerts = data.get("alerts")
    hooks = alerts.get("webhooks") if isinstance(alerts, dict) else None
    for i, hook in enumerate(hooks if isinstance(hooks, list) else []):
        if isinstance(hook, dict):
            path = f"alerts.webhooks[{i}]"
            problems.extend(_check(target_class, "webhook", hook, path))
            if hook.get("include_value"):
                problems.append(ConfigError(f"{path}.include_value", "alerts never carry a value"))
    credentials = data.get("credentials")
    if not isinstance(credentials, list):
        return problems
    for i, cred in enumerate(credentials):
        if not isinstance(cred, dict):
            continue
        base = f"credentials[{i}]"
        provider = cred.get("provider")
        if isinstance(provider, dict) and isinstance(provider.get("type"), str):
            config = {k: v for k, v in provider.items() if k != "type"}
            problems.extend(_check(provider_class, provider["type"], config, f"{base}.provider"))
            problems.extend(
                _integration_type_problems(
                    provider_class,
                    provider["type"],
                    provider,
                    integrations,
                    f"{base}.provider.integration",
                )
            )
        actions = cred.get("actions")
        for j, action in enumerate(actions if isinstance(actions, list) else []):
            if isinstance(action, dict) and isinstance(action.get("type"), str):
                config = action.get("config") or {}
                if isinstance(config, dict):
                    path = f"{base}.actions[{j}]"
                    problems.extend(
                        _check(target_class, action["type"], config, f"{path}.config", path)
                    )
                    problems.extend(
                        _integration_type_problems(
                            target_class,
                            action["type"],
                            config,
                            integrations,
                            f"{path}.config.integration",
                        )
                    )
    return problems


def _actions(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every action mapping of the raw file with its path, `credentials[i].actions[j]`."""
    credentials = data.get("credentials")
    for i, cred in enumerate(credentials if isinstance(credentials, list) else []):
        actions = cred.get("actions") if isinstance(cred, dict) else None
        for j, action in enumerate(actions if isinstance(actions, list) else []):
            if isinstance(action, dict):
                yield f"credentials[{i}].actions[{j}]", action


def _agent_types() -> list[str]:
    """The action types a host agent performs (their classes say `runs_on_agent`), known
    without importing every target. A list: a YAML `type` may be unhashable."""
    return sorted(AGENT_KINDS)


def _legacy_fields(data: dict[str, Any], problems: list[ConfigError]) -> list[EstateWarning]:
    """Accept what older rotation tools write, normalised, with a warning for each:
    `iis_recycle`'s `site_name` becomes `app_pool`; an agent action with `config.agent_url`
    and no `agent_id` is kept, as manual review (it is never sent a value). Changes `data`
    in place."""
    warnings: list[EstateWarning] = []
    for path, action in _actions(data):
        config = action.get("config")
        if not isinstance(config, dict):
            continue
        if action.get("type") == "iis_recycle" and "site_name" in config:
            if "app_pool" in config:
                problems.append(
                    ConfigError(
                        f"{path}.config.site_name",
                        "give app_pool only (site_name is its legacy name)",
                    )
                )
                del config["site_name"]  # reported once, here, not again as unknown
            else:
                config["app_pool"] = config.pop("site_name")
                warnings.append(EstateWarning(f"{path}.config.site_name", "renamed to app_pool"))
        if action.get("type") in _agent_types() and isinstance(config.get("agent_url"), str):
            if action.get("agent_id") is None:
                message = (
                    "not an enrolled agent: manual review required; keyshift never sends it "
                    "the value, so a rotation records this step as not delivered and ends "
                    "needs_attention with the old version kept. Enrol the agent (an agent "
                    "integration) and set agent_id"
                )
            else:
                message = "ignored: the action runs through the agent named by agent_id"
            warnings.append(EstateWarning(f"{path}.config.agent_url", message))
    return warnings


def _agent_problems(data: dict[str, Any], warnings: list[EstateWarning]) -> list[ConfigError]:
    """Only the agent action types take an `agent_id`, and they need one (unless written
    with a legacy `config.agent_url`, which `_legacy_fields` notes).

    An `agent_id` that no agent integration declares (by its agent_id or its name) is
    accepted as written, as other tools write it, but with a warning: the action is
    manual review until the agent is enrolled, and is never sent a value."""
    declared = [
        IntegrationSpec.model_construct(**item)
        for item in data.get("integrations") or []
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    ]
    on_agents = _agent_types()
    problems: list[ConfigError] = []
    for path, action in _actions(data):
        kind, agent_id, config = action.get("type"), action.get("agent_id"), action.get("config")
        try:
            cls = target_class(kind) if isinstance(kind, str) else None
        except EstateInvalid:
            continue  # the unknown type is reported by _check
        if cls is None or (agent_id is not None and not isinstance(agent_id, str)):
            continue
        on_agent = bool(getattr(cls, "runs_on_agent", False))
        if agent_id is None:
            legacy = isinstance(config, dict) and isinstance(config.get("agent_url"), str)
            if on_agent and not legacy:
                problems.append(
                    ConfigError(
                        f"{path}.agent_id",
                        f"is required: {kind} runs through a host agent; name an agent "
                        "integration by its agent_id or name",
                    )
                )
        elif not on_agent:
            problems.append(
                ConfigError(
                    f"{path}.agent_id",
                    f"{kind} runs where keyshift runs and takes no agent_id; the actions "
                    f"that run through an agent are {', '.join(on_agents)}",
                )
            )
        elif not any(integration.is_agent(agent_id) for integration in declared):
            warnings.append(
                EstateWarning(
                    f"{path}.agent_id",
                    f"no agent integration with agent_id {agent_id} (or named so): manual "
                    "review required; keyshift never sends a value to an agent it cannot "
                    "authenticate, so a rotation records this step as not delivered and ends "
                    "needs_attention with the old version kept. Declare the agent under "
                    "integrations with type: agent",
                )
            )
    return problems


PHASE_WORDS: dict[Phase, str] = {
    Phase.PUBLISH: "publish",
    Phase.RELOAD: "reload",
    Phase.VERIFY: "verify",
    Phase.NOTIFY: "notify",
}


def _action_order_problems(data: dict[str, Any]) -> list[ConfigError]:
    """Per consumer, no action may be ordered before an action of an earlier phase.

    The engine runs every publish action, then every reload, verify and notify action
    (by `order` within each phase), so a reload ordered before the publish of its own
    consumer would not run when its `order` says. Refusing it keeps the file's order
    the order that runs. Works on the raw data, so it is reported with every other
    problem; actions of unknown types are left to the type check.
    """
    problems: list[ConfigError] = []
    credentials = data.get("credentials")
    rank = {phase: i for i, phase in enumerate(PHASE_ORDER)}
    for i, cred in enumerate(credentials if isinstance(credentials, list) else []):
        actions = cred.get("actions") if isinstance(cred, dict) else None
        placed: list[tuple[int, str | None, int, Phase, str]] = []
        for j, action in enumerate(actions if isinstance(actions, list) else []):
            if not isinstance(action, dict):
                continue
            kind, order, consumer = action.get("type"), action.get("order"), action.get("consumer")
            if not isinstance(kind, str) or type(order) is not int:
                continue
            try:
                phase: Phase = target_class(kind).phase
            except EstateInvalid:
                continue
            placed.append((j, consumer if isinstance(consumer, str) else None, order, phase, kind))
        for j, consumer, order, phase, kind in placed:
            earlier = [
                (other_order, other_phase, other_kind)
                for _k, other_consumer, other_order, other_phase, other_kind in placed
                if other_consumer == consumer
                and rank[other_phase] < rank[phase]
                and other_order > order
            ]
            if not earlier:
                continue
            last_order, last_phase, last_kind = max(earlier)
            whose = f" of consumer {consumer}" if consumer else ""
            problems.append(
                ConfigError(
                    f"credentials[{i}].actions[{j}].order",
                    f"{kind} ({PHASE_WORDS[phase]}) at order {order} comes before "
                    f"{last_kind} ({PHASE_WORDS[last_phase]}) at order {last_order}{whose}; "
                    "publish first, then reload, then notify (verify checks in between): "
                    f"give it an order above {last_order}",
                )
            )
    return problems


def _integration_type_problems(
    lookup: Any, kind: str, config: dict[str, Any], integrations: dict[str, str], path: str
) -> list[ConfigError]:
    """A provider or action must connect through an integration of the type it declares."""
    try:
        cls = lookup(kind)
    except EstateInvalid:
        return []  # the unknown type is reported by _check
    wanted: str | None = getattr(cls, "integration_type", None)
    name = config.get("integration")
    if wanted is None:
        return []
    if not isinstance(name, str):
        return [] if "integration" not in config else [ConfigError(path, "must be a name")]
    have = integrations.get(name)
    if have is not None and have != wanted:
        return [ConfigError(path, f"integration '{name}' is of type {have}, not {wanted}")]
    return []


def _check(
    lookup: Any, kind: str, config: dict[str, Any], path: str, type_path: str | None = None
) -> list[ConfigError]:
    try:
        cls = lookup(kind, f"{type_path or path}.type")
        validate_config(cls, config, path)
    except EstateInvalid as exc:
        return exc.problems
    return []


def _credential_specs(estate: Estate) -> dict[str, dict[str, Any]]:
    """What is stored per credential: the declaration, its effective policy and the
    integrations it connects through (so a changed connection shows as a change)."""
    declared = {i.name: i.model_dump(mode="json") for i in estate.integrations}
    return {
        c.name: {
            "credential": c.model_dump(mode="json"),
            "policy": effective_policy(
                estate.policy_for(c), c.provider.type, c.provider.config()
            ).model_dump(mode="json"),
            "integrations": {name: declared[name] for name in estate.integration_names(c)},
        }
        for c in estate.credentials
    }


def issuer_app(provider: dict[str, Any]) -> tuple[str | None, str | None]:
    """(integration, appId) of the application whose credentials a provider rotates (an
    Entra ID application's), or (None, None) when it names none."""
    app_id = provider.get("app_id")
    if not app_id:
        return None, None
    return str(provider.get("integration") or ""), str(app_id)


def _digest(obj: Any) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def _action_changes(name: str, old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    def by_key(spec: dict[str, Any]) -> dict[str, Any]:
        return {
            action_key(a["order"], a["type"], a.get("consumer")): a
            for a in spec["credential"]["actions"]
        }

    before, after = by_key(old), by_key(new)
    out = [Change("+", "action", f"{name} {k}") for k in after if k not in before]
    out += [Change("-", "action", f"{name} {k}") for k in before if k not in after]
    out += [
        Change("~", "action", f"{name} {k}", _fields_changed(before[k], after[k]))
        for k in after
        if k in before and before[k] != after[k]
    ]
    return out


def _fields_changed(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "changed: " + ", ".join(keys)


@dataclass(frozen=True)
class Frozen:
    """A credential of the estate that a freeze will cover once the estate is applied: one
    holding now (started by an operator, or by an earlier apply) or one the file declares."""

    credential: str
    freeze: str
    """What the freeze covers: `environment prod`, `all credentials`."""
    reason: str
    source: str
    """cli, api or estate."""
    freeze_id: str | None
    """None for a freeze the file declares that `apply` has not started yet."""
    until: datetime | None


def frozen(store: Store, estate: Estate, *, now: datetime | None = None) -> list[Frozen]:
    """Every credential of `estate` and each freeze that will cover it after `apply`,
    by credential: the operators' freezes holding now and the file's own freezes (an
    estate freeze the file no longer declares is lifted by the apply, so not listed)."""
    now = now or utcnow()
    with store.transaction() as s:
        holding = [f for f in held.holding(s, now) if f.source != FreezeSource.ESTATE]
        stored = {
            (f.scope.value, f.value): f.id
            for f in held.holding(s, now)
            if f.source == FreezeSource.ESTATE
        }
    declared = [f for f in estate.freeze if f.until is None or f.until > now]
    out: list[Frozen] = []
    for cred in sorted(estate.credentials, key=lambda c: c.name):
        for f in holding:
            if f.covers(cred.name, cred.owner, cred.environment):
                out.append(Frozen(cred.name, f.what, f.reason, f.source.value, f.id, f.until))
        for spec in declared:
            if spec.covers(cred.name, cred.owner, cred.environment):
                out.append(
                    Frozen(
                        cred.name,
                        freezes.what(spec.scope.value, spec.value),
                        spec.reason,
                        FreezeSource.ESTATE.value,
                        stored.get((spec.scope.value, spec.value)),
                        spec.until,
                    )
                )
    return out


def _freeze_changes(diff: freezes.EstateFreezes) -> list[Change]:
    out = [
        Change("+", "freeze", freezes.what(f.scope.value, f.value), f.reason) for f in diff.start
    ]
    out += [
        Change(
            "~",
            "freeze",
            freezes.what(row.scope, row.value),
            _fields_changed(
                {"reason": row.reason, "until": row.until},
                {"reason": spec.reason, "until": spec.until},
            ),
        )
        for row, spec in diff.change
    ]
    out += [
        Change("-", "freeze", freezes.what(row.scope, row.value), "lifted") for row in diff.lift
    ]
    return out


def plan_estate(store: Store, estate: Estate) -> list[Change]:
    """What `apply` would change, in order: credentials, their actions, integrations,
    alerts and governance, inbound triggers, the estate's freezes."""
    specs = _credential_specs(estate)
    with store.transaction() as s:
        # Digests first: the stored specs of the credentials that changed alone are read.
        live = CredentialRow.removed_at.is_(None)
        stored: dict[str, str] = dict(
            s.execute(select(CredentialRow.name, CredentialRow.digest).where(live)).all()
        )
        changed = sorted(
            name for name, spec in specs.items() if name in stored and stored[name] != _digest(spec)
        )
        before: dict[str, dict[str, Any]] = {}
        for first in range(0, len(changed), 500):  # bound the parameters of one query
            query = select(CredentialRow.name, CredentialRow.spec).where(
                live, CredentialRow.name.in_(changed[first : first + 500])
            )
            before.update(s.execute(query).all())
        integrations = {i.name: i for i in s.execute(select(IntegrationRow)).scalars()}
        declared_freezes = freezes.estate_diff(s, estate.freeze, utcnow())
    changes: list[Change] = []
    for name, spec in specs.items():
        if name not in stored:
            n = len(spec["credential"]["actions"])
            changes.append(Change("+", "credential", name, f"{n} action(s)"))
        elif name in before:
            old_spec = before[name]
            old_cred = {k: v for k, v in old_spec["credential"].items() if k != "actions"}
            new_cred = {k: v for k, v in spec["credential"].items() if k != "actions"}
            fields = [
                k
                for k in sorted(set(old_cred) | set(new_cred))
                if old_cred.get(k) != new_cred.get(k)
            ]
            if old_spec["policy"] != spec["policy"]:
                fields.append("effective policy")
            if fields:
                changes.append(Change("~", "credential", name, "changed: " + ", ".join(fields)))
            changes.extend(_action_changes(name, old_spec, spec))
    for name in stored:
        if name not in specs:
            changes.append(Change("-", "credential", name, "schedule removed; history kept"))
    declared = {i.name: i.model_dump(mode="json") for i in estate.integrations}
    for name, config in declared.items():
        if name not in integrations:
            changes.append(Change("+", "integration", name, config["type"]))
        elif integrations[name].config != config:
            changes.append(Change("~", "integration", name))
    for name in integrations:
        if name not in declared:
            changes.append(Change("-", "integration", name, "discovered entries removed"))
    applied = current_estate(store, with_credentials=False)
    if applied.alerts != estate.alerts:
        changes.append(Change("~", "alerts", "alerts", "thresholds or webhooks changed"))
    if applied.governance != estate.governance:
        changes.append(
            Change("~", "governance", "governance", "allowlist, owner rule or groups changed")
        )
    changes.extend(_trigger_changes(applied, estate))
    changes.extend(_freeze_changes(declared_freezes))
    return changes


def _trigger_changes(applied: Estate, estate: Estate) -> list[Change]:
    """The inbound triggers the file adds, changes or removes."""
    before = {t.name: t for t in applied.triggers}
    after = {t.name: t for t in estate.triggers}
    out = [Change("+", "trigger", n, t.kind.value) for n, t in after.items() if n not in before]
    out += [Change("~", "trigger", n) for n, t in after.items() if n in before and before[n] != t]
    out += [Change("-", "trigger", n) for n in before if n not in after]
    return out


def apply_estate(store: Store, estate: Estate, *, actor: str) -> list[Change]:
    """Store the estate in one transaction and return what changed."""
    changes = plan_estate(store, estate)
    if not changes:
        return changes  # nothing to store: no revision, no audit entry, no timestamps touched
    specs = _credential_specs(estate)
    now = utcnow()
    with store.transaction() as s:
        rows = {c.name: c for c in s.execute(select(CredentialRow)).scalars()}
        for cred in estate.credentials:
            spec = specs[cred.name]
            row = rows.get(cred.name)
            if row is None:
                row = CredentialRow(id=str(uuid.uuid4()), name=cred.name, created_at=now)
                s.add(row)
            row.owner = cred.owner
            row.environment = cred.environment
            row.provider_type = cred.provider.type
            row.spec = spec
            row.policy_json = json.dumps(spec["policy"], sort_keys=True)
            provider = spec["credential"]["provider"]
            row.provider_json = json.dumps(provider, sort_keys=True)
            row.issuer_integration, row.issuer_app_id = issuer_app(provider)
            row.digest = _digest(spec)
            row.auto_rotate = cred.auto_rotate
            # Disabled, or through a disabled integration: nothing rotates it.
            row.scheduled = cred.enabled and not disabled_integrations(spec["integrations"])
            row.removed_at = None
            row.updated_at = now
        for name, row in rows.items():
            if name not in specs and row.removed_at is None:
                row.scheduled = False
                row.auto_rotate = False
                row.removed_at = now
                row.updated_at = now
        declared = {i.name: i.model_dump(mode="json") for i in estate.integrations}
        for existing in s.execute(select(IntegrationRow)).scalars():
            if existing.name not in declared:
                s.delete(existing)
        # Entries discovered through an integration that left the estate go with it.
        forget_integrations(s, keep=set(declared), now=now)
        for name, config in declared.items():
            integration = s.get(IntegrationRow, name)
            if integration is None:
                s.add(IntegrationRow(name=name, type=config["type"], config=config, updated_at=now))
            elif integration.config != config:
                integration.type = config["type"]
                integration.config = config
                integration.updated_at = now
        # The estate's own freezes; an operator's (`keyshift freeze`) are not touched.
        freezes.apply_declared(
            store, s, freezes.estate_diff(s, estate.freeze, now), actor=actor, now=now
        )
        document = estate.model_dump(mode="json")
        digest = _digest(document)
        s.merge(Meta(key=GOVERNANCE_KEY, value=canonical(document["governance"])))
        s.add(EstateRevision(applied_at=now, applied_by=actor, digest=digest, document=document))
        store.audit(
            s,
            actor=actor,
            action="estate.applied",
            subject="estate",
            details={
                "digest": digest,
                "changes": [f"{c.op} {c.kind} {c.name} {c.detail}".strip() for c in changes],
            },
        )
    return changes
