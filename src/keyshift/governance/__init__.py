"""Governance: the rules a rotation must pass before anything changes (allowlist, owner,
environment, window, overlap) and the approval rules of supervised mode.

Pure functions over domain models: the engine calls them and records the outcome.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from keyshift.domain.durations import format_duration
from keyshift.domain.estate import Approval, CredentialSpec, Governance, Policy
from keyshift.domain.states import Trigger


def refusals(
    spec: CredentialSpec,
    policy: Policy,
    governance: Governance,
    *,
    now: datetime,
    grace: timedelta,
    disabled: Collection[str] = (),
    exempt: Exemptions | None = None,
) -> list[str]:
    """Every reason this rotation may not run now; empty when it may. `disabled`: the
    integrations the credential connects through that the estate disables; `exempt`:
    what a break-glass rotation skips (the window)."""
    reasons: list[str] = []
    if not spec.enabled:
        reasons.append(f"{spec.name} is disabled in the estate (enabled: false)")
    reasons.extend(integration_disabled(name, spec.name) for name in disabled)
    allowlist = governance.allowlist
    if allowlist is not None:
        app_id = spec.provider.config().get("app_id")
        by_name = any(fnmatch.fnmatchcase(spec.name, p) for p in allowlist.credentials)
        by_app = isinstance(app_id, str) and app_id in allowlist.app_ids
        if not (by_name or by_app):
            reasons.append(f"{spec.name} is not in the approved inventory (governance.allowlist)")
    if governance.require_owner and not (spec.owner and spec.owner.strip()):
        reasons.append(f"{spec.name} has no owner; record the accountable person or team")
    if policy.environments is not None and spec.environment not in policy.environments:
        reasons.append(
            f"environment {spec.environment or '(none)'} is not allowed by policy "
            f"{policy.name} (allowed: {', '.join(policy.environments)})"
        )
    window = policy.window
    skip_window = exempt is not None and exempt.window
    if window is not None and not skip_window and not window.contains(now):
        reasons.append(
            f"outside the rotation window ({', '.join(window.days)} {window.hours} "
            f"{window.timezone})"
        )
    if policy.min_grace_period is not None and grace < policy.min_grace_period:
        reasons.append(
            f"grace period {format_duration(grace)} is shorter than the policy minimum "
            f"{format_duration(policy.min_grace_period)}"
        )
    return reasons


PROD = "prod"
"""The environment where break-glass needs `rotations:break_glass`."""
BREAK_GLASS_PERMISSION = "rotations:break_glass"


@dataclass(frozen=True)
class Exemptions:
    """What a rotation skips because of how it was asked for (all False for an ordinary
    one). A person's break-glass (`rotate --break-glass`) skips the window and every
    freeze, and asks one approval from a second person where the policy asks for
    approvals; an event of a trigger marked `break_glass` skips the window only."""

    window: bool = False
    freezes: bool = False
    one_approval: bool = False

    @property
    def break_glass(self) -> bool:
        return self.window


NO_EXEMPTIONS = Exemptions()


def exemptions(trigger: str, *, from_event: bool) -> Exemptions:
    """The exemptions of a rotation with this trigger (`Trigger` value), asked for by an
    inbound event or not."""
    if trigger != Trigger.BREAK_GLASS:
        return NO_EXEMPTIONS
    if from_event:
        return Exemptions(window=True)
    return Exemptions(window=True, freezes=True, one_approval=True)


def break_glass_refusal(environment: str | None, *, permitted: bool) -> list[str]:
    """Why a person's break-glass rotation is refused: on `prod`, without the permission."""
    if environment == PROD and not permitted:
        return [f"break-glass on {PROD} needs the {BREAK_GLASS_PERMISSION} permission"]
    return []


def approval_rule(approval: Approval, exempt: Exemptions) -> Approval:
    """The approval rule a rotation is held to: the policy's, or, for a person's
    break-glass, one approval (from a permitted approver other than the requester)
    however many the policy asks for."""
    if exempt.one_approval and approval.min_approvals != 1:
        return approval.model_copy(update={"min_approvals": 1})
    return approval


def integration_disabled(integration: str, credential: str) -> str:
    """Why nothing of `credential` is called through a disabled integration."""
    return (
        f"integration {integration} is disabled in the estate (enabled: false); "
        f"{credential} is not rotated through it"
    )


def person(actor: str) -> str:
    """The person behind an actor string: `cli:alice@host` -> `alice`."""
    if actor.startswith("cli:"):
        return actor.removeprefix("cli:").split("@", 1)[0]
    return actor


def may_approve(approver: str, approval: Approval, governance: Governance) -> bool:
    """Whether `approver` is one of the policy's approvers (by user or group)."""
    who = person(approver)
    for entry in approval.approvers:
        kind, _, name = entry.partition(":")
        if kind == "user" and name == who:
            return True
        if kind == "group" and who in governance.groups.get(name, []):
            return True
    return False


@dataclass(frozen=True)
class Decision:
    approver: str
    approved: bool
    plan_hash: str
    decided_at: datetime


@dataclass(frozen=True)
class Tally:
    counted: list[str]
    """Approvers whose approval counts."""
    ignored: list[tuple[str, str]]
    """(approver, why it does not count)."""
    rejected_by: str | None

    def satisfied(self, approval: Approval) -> bool:
        return self.rejected_by is None and len(self.counted) >= approval.min_approvals


def tally(
    decisions: Iterable[Decision],
    approval: Approval,
    governance: Governance,
    *,
    requester: str,
    plan_hash: str,
    now: datetime,
) -> Tally:
    """Which decisions count: distinct permitted approvers other than the requester,
    for this exact plan, not older than `expires_after`."""
    counted: list[str] = []
    ignored: list[tuple[str, str]] = []
    rejected_by: str | None = None
    for d in decisions:
        who = person(d.approver)
        if who == person(requester):
            ignored.append((who, "the requester cannot approve their own rotation"))
        elif not may_approve(d.approver, approval, governance):
            ignored.append((who, "not one of the policy's approvers"))
        elif d.plan_hash != plan_hash:
            ignored.append((who, "approved a different plan"))
        elif d.decided_at + approval.expires_after <= now:
            ignored.append((who, "approval expired"))
        elif not d.approved:
            rejected_by = who
        elif who not in counted:
            counted.append(who)
    return Tally(counted, ignored, rejected_by)
