"""What rotating a CA (`trust_bundle`) will do, phase by phase, with the consumers in
each, as `keyshift plan` shows it before anything is applied (`keyshift.engine.bundle`
runs it).

1. trust: the bundle actions write the new CA beside the old one for their consumers
   (the verifiers); the CA credential's reload and verify actions prove they hold it.
2. identity: each leaf (an x509_ca credential whose `ca_key_from` is
   `credential:<bundle>`) is re-issued by its own rotation, to its own consumers.
3. withdrawal: after the grace period, once every leaf presents a certificate of the
   new CA, the old CA leaves the bundles of phase 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyshift.domain.durations import format_duration
from keyshift.domain.estate import ActionSpec, CredentialSpec, Estate
from keyshift.domain.states import Phase
from keyshift.engine.bundle import LEAF_PROVIDER, signed_by
from keyshift.engine.plan import consumer_name
from keyshift.engine.plugins import target_class, trust_only

__all__ = ["CaPhase", "ca_phases", "leaves_in"]

BUNDLE_PROVIDER = "trust_bundle"


@dataclass(frozen=True)
class CaPhase:
    """One phase of a CA rotation: what it does and to which consumers."""

    credential: str
    number: int
    name: str
    does: str
    consumers: list[str]


def leaves_in(estate: Estate, bundle: str) -> list[CredentialSpec]:
    """The x509_ca credentials of the estate that the CA `bundle` signs, by name."""
    return sorted(
        (
            c
            for c in estate.credentials
            if c.provider.type == LEAF_PROVIDER and signed_by(c.provider.config(), bundle)
        ),
        key=lambda c: c.name,
    )


def _consumers(cred: CredentialSpec) -> list[str]:
    found: list[str] = []
    for action in cred.actions:
        if target_class(action.type).phase == Phase.NOTIFY:
            continue
        name = consumer_name(action.consumer)
        if name not in found:
            found.append(name)
    return found


def _bundle_at(action: ActionSpec) -> str:
    """Where a CA bundle action writes: a file's path, a ConfigMap's namespace/name."""
    config = action.config
    if "configmap" in config:
        return f"ConfigMap {config.get('namespace', '-')}/{config['configmap']}"
    return str(config.get("path", action.key))


def ca_phases(estate: Estate) -> list[CaPhase]:
    """The three phases of rotating each trust_bundle credential of the estate."""
    phases: list[CaPhase] = []
    for cred in estate.credentials:
        if cred.provider.type != BUNDLE_PROVIDER:
            continue
        bundles = [a for a in cred.actions if trust_only(a.type, dict(a.config))]
        proofs = [
            a for a in cred.actions if target_class(a.type).phase in (Phase.RELOAD, Phase.VERIFY)
        ]
        files = ", ".join(_bundle_at(a) for a in bundles) or "-"
        leaves = leaves_in(estate, cred.name)
        grace = format_duration(estate.policy_for(cred).grace_period)
        phases += [
            CaPhase(
                cred.name,
                1,
                "trust",
                f"add the new CA to {files}; then {', '.join(a.key for a in proofs) or 'no check'}"
                " and the cutover",
                _consumers(cred),
            ),
            CaPhase(
                cred.name,
                2,
                "identity",
                "re-issue "
                + (", ".join(c.name for c in leaves) or "no leaf")
                + " under the new CA, each by its own rotation",
                [f"{c.name}: {', '.join(_consumers(c)) or '-'}" for c in leaves],
            ),
            CaPhase(
                cred.name,
                3,
                "withdrawal",
                f"after grace ({grace}) and once every leaf presents the new CA: remove the "
                f"old CA from {files}",
                [consumer_name(a.consumer) for a in bundles],
            ),
        ]
    return phases
