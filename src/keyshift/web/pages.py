"""The dashboard's pages, served by `keyshift serve` at `/`.

Each page reads through the same service functions as the REST route it mirrors and
requires that route's one permission (`Page`); each action calls the same
`keyshift.api.actions` function as its route, so a page can do nothing the API would
refuse. Buttons a viewer's roles do not allow are left out, and their routes refuse
anyway. Reading pages work without JavaScript; htmx only keeps the rotation timeline
live. No page, fragment or error page shows a secret value: the service functions
return ids, fingerprints, states and times only.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from keyshift.api import actions
from keyshift.api.auth import StoreDep
from keyshift.api.routes.common import (
    CredentialQuery,
    PathName,
    RotationId,
    actor_of,
    needs_entra_rotate,
)
from keyshift.api.runner import BackgroundRotations
from keyshift.domain.clock import utcnow
from keyshift.domain.estate import DEFAULT_POLICY_NAME
from keyshift.domain.rbac import Permission
from keyshift.domain.states import MANUAL_ROLLBACK_FROM, Lifecycle, RotationState, Trigger
from keyshift.errors import ConfigError, CsrfRefused, Unauthenticated
from keyshift.service import approvals as approvals_service
from keyshift.service import (
    catalog,
    entra,
    evidence,
    freezes,
    impact,
    overview,
    rotations,
    sessions,
)
from keyshift.service import estate as estate_service
from keyshift.service.scheduler import alerts as recent_alerts
from keyshift.store import audit
from keyshift.web.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SignedIn,
    Viewer,
    is_tls,
    login_csrf,
    login_nonce,
    same,
    viewer,
)
from keyshift.web.render import PageRoute, page

router = APIRouter(route_class=PageRoute, include_in_schema=False)

Reader = Annotated[Viewer, viewer(Permission.CREDENTIALS_READ)]
Rotator = Annotated[Viewer, viewer(Permission.ROTATIONS_RUN)]
Approver = Annotated[Viewer, viewer(Permission.APPROVALS_DECIDE)]
Auditor = Annotated[Viewer, viewer(Permission.AUDIT_READ)]
EntraReader = Annotated[Viewer, viewer(Permission.ENTRA_READ)]
Admin = Annotated[Viewer, viewer(Permission.ADMIN)]

Text = Annotated[str, Form(max_length=1000)]
Reason = Annotated[str, Form(min_length=1, max_length=200)]
Filter = Annotated[str | None, Query(max_length=128)]


def _background(request: Request) -> BackgroundRotations:
    running: BackgroundRotations = request.app.state.rotations
    return running


def _now(request: Request) -> datetime:
    """Now, by the clock the server's rotations use (tests inject one)."""
    context = _background(request).context
    return context.now() if context is not None else utcnow()


def _local(target: str | None) -> str:
    """`target` if it is a path on this server, else `/` (no open redirect)."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target


def _see(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)


# Sign-in ---------------------------------------------------------------------------------


def _login_page(request: Request, *, next_: str, error: str | None, status: int) -> Response:
    nonce = request.cookies.get(LOGIN_COOKIE) or login_nonce()
    response = page(
        request,
        "login.html",
        {"csrf": login_csrf(nonce), "next": _local(next_), "error": error},
        status_code=status,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=is_tls(request),
        path="/login",
    )
    return response


@router.get("/login")
def login_form(request: Request, next: Annotated[str, Query(max_length=512)] = "/") -> Response:
    """The sign-in form: paste an API token (`keyshift tokens create`)."""
    return _login_page(request, next_=next, error=None, status=200)


@router.post("/login")
def login(
    request: Request,
    store: StoreDep,
    token: Annotated[str, Form(max_length=256)],
    csrf: Annotated[str, Form(max_length=128)],
    next: Annotated[str, Form(max_length=512)] = "/",
) -> Response:
    """Exchange an API token for a session cookie (HttpOnly, SameSite=Strict, Secure
    under TLS). The token is not kept in the browser."""
    nonce = request.cookies.get(LOGIN_COOKIE)
    if nonce is None or not same(csrf, login_csrf(nonce)):
        raise CsrfRefused("the sign-in form is stale or from elsewhere; reload it")
    try:
        started = sessions.sign_in(store, token.strip(), now=_now(request))
    except Unauthenticated:
        return _login_page(
            request,
            next_=next,
            error="That token is not valid: check it, or ask an admin for a new one.",
            status=401,
        )
    response = _see(_local(next))
    response.set_cookie(
        SESSION_COOKIE,
        started.cookie.reveal(),
        max_age=int(sessions.SESSION_LIFETIME.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=is_tls(request),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(request: Request, store: StoreDep, who: SignedIn) -> Response:
    """End the session and forget its cookie."""
    sessions.sign_out(store, request.cookies.get(SESSION_COOKIE, ""), now=_now(request))
    response = _see("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# Overview and credentials ----------------------------------------------------------------


@router.get("/")
def overview_page(request: Request, store: StoreDep, who: Reader) -> Response:
    """Totals, expiring in 7/30/90 days, in grace, rotating, needing attention, waiting
    for approval, the most urgent credentials and the unfinished rotations."""
    now = _now(request)
    summary = overview.overview(store, now=now, include_entra=who.can(Permission.ENTRA_READ))
    unfinished = overview.recent_rotations(store, limit=20, unfinished=True)
    frozen = freezes.holding(store, now=now)
    return page(
        request,
        "overview.html",
        {"viewer": who, "o": summary, "unfinished": unfinished, "freezes": frozen},
    )


@router.get("/credentials")
def credentials_page(
    request: Request,
    store: StoreDep,
    who: Reader,
    query: Annotated[CredentialQuery, Query()],
) -> Response:
    """Every credential, filtered by lifecycle, owner, environment and provider, sorted
    by any column, 50 to a page."""
    if "sort" not in request.query_params:
        query = query.model_copy(update={"sort": "expires"})
    criteria = query.criteria()
    found = catalog.listing(rotations.status_rows(store, now=_now(request)), criteria)
    return page(
        request,
        "credentials.html",
        {
            "viewer": who,
            "found": found,
            "criteria": criteria,
            "query": query.filters(),
            "href": _listing_href(query.filters(), criteria),
            "lifecycles": [lc.value for lc in Lifecycle],
            "sorts": list(catalog.SORTS),
        },
    )


def _listing_href(filters: dict[str, str], criteria: catalog.Criteria) -> Any:
    """`href(sort=, desc=, page=)`: the link to this listing with those changed."""

    def href(**changes: Any) -> str:
        params: dict[str, Any] = {
            **filters,
            "sort": criteria.sort,
            "desc": criteria.descending,
            "page": criteria.page,
            **changes,
        }
        params = {k: ("true" if v is True else v) for k, v in params.items() if v is not False}
        return "/credentials?" + urlencode(params)

    return href


def _rotatable(who: Viewer, provider: str) -> bool:
    return who.can(Permission.ROTATIONS_RUN) and (
        not needs_entra_rotate(provider) or who.can(Permission.ENTRA_ROTATE)
    )


@router.get("/credentials/{name}")
def credential_page(request: Request, store: StoreDep, who: Reader, name: PathName) -> Response:
    """Versions by id and fingerprint, rotation history, consumers, and Rotate."""
    detail = rotations.credential_detail(store, name, now=_now(request))
    return page(
        request,
        "credential.html",
        {
            "viewer": who,
            "d": detail,
            "history": list(reversed(rotations.history_rows(store, name))),
            "consumers": impact.impact(store, name),
            "can_rotate": _rotatable(who, detail.provider),
        },
    )


@router.post("/credentials/{name}/dry-run")
async def dry_run_page(request: Request, store: StoreDep, who: Rotator, name: PathName) -> Response:
    """Preflight every step (ready / manual review / blocked), then ask for a reason and
    a confirmation. Changes nothing but the audit."""
    plan_hash, results = await rotations.dry_run(store, name, actor=actor_of(who.identity))
    return page(
        request,
        "dry_run.html",
        {
            "viewer": who,
            "name": name,
            "plan_hash": plan_hash,
            "steps": results,
            "ready": all(r.readiness.value == "ready" for _step, r in results),
        },
    )


class Confirmation(BaseModel):
    """The dry run's form: why, the plan it showed, and the tick that confirms it."""

    reason: str = Field(min_length=1, max_length=200)
    plan_hash: str = Field(min_length=1, max_length=128)
    confirm: str = Field(default="", max_length=8)


@router.post("/credentials/{name}/rotate")
async def rotate_page(
    request: Request,
    store: StoreDep,
    who: Rotator,
    name: PathName,
    form: Annotated[Confirmation, Form()],
) -> Response:
    """Start the rotation confirmed on the dry run, then follow its timeline. Refused,
    starting nothing, unconfirmed or when the plan changed since the dry run."""
    if form.confirm != "yes":
        raise ConfigError("confirm", "tick the box to confirm the rotation")
    current = await run_in_threadpool(rotations.current_plan_hash, store, name)
    if current != form.plan_hash:
        raise ConfigError(
            "plan_hash", "the estate changed since the dry run; run the dry run again"
        )
    rotation_id = await actions.request_rotation(
        store, who.identity, name, grace=None, reason=form.reason.strip(), trigger=Trigger.WEB
    )
    _background(request).start(rotation_id, actor=actor_of(who.identity))
    return _see(f"/rotations/{rotation_id}")


# Rotations -------------------------------------------------------------------------------


@router.get("/rotations")
def rotations_page(
    request: Request, store: StoreDep, who: Reader, unfinished: bool = False
) -> Response:
    """The latest rotations of the whole estate, newest first."""
    recent = overview.recent_rotations(store, limit=100, unfinished=unfinished)
    return page(
        request,
        "rotations.html",
        {"viewer": who, "recent": recent, "unfinished": unfinished},
    )


def _rotation_context(who: Viewer, store: Any, timeline: rotations.Timeline) -> dict[str, Any]:
    provider = rotations.provider_type(store, timeline.credential)
    state = RotationState(timeline.rotation.state)
    return {
        "viewer": who,
        "t": timeline,
        "can_roll_back": _rotatable(who, provider)
        and state in MANUAL_ROLLBACK_FROM
        and timeline.at_rest,
    }


@router.get("/rotations/{rotation_id}")
def rotation_page(
    request: Request, store: StoreDep, who: Reader, rotation_id: RotationId
) -> Response:
    """One rotation: its steps in words with durations and errors, the rollout, Roll
    back where allowed, and the evidence bundle."""
    timeline = _background(request).timeline(rotation_id)
    return page(request, "rotation.html", _rotation_context(who, store, timeline))


@router.get("/rotations/{rotation_id}/timeline")
def rotation_timeline_fragment(
    request: Request, store: StoreDep, who: Reader, rotation_id: RotationId
) -> Response:
    """The timeline alone, which the rotation page polls until the rotation rests."""
    timeline = _background(request).timeline(rotation_id)
    return page(request, "_timeline.html", _rotation_context(who, store, timeline))


@router.post("/rotations/{rotation_id}/rollback")
async def rollback_page(
    request: Request, store: StoreDep, who: Rotator, rotation_id: RotationId, reason: Reason
) -> Response:
    """Roll the rotation back (the old version goes back to the switched consumers)."""
    full_id = await actions.roll_back(
        store, _background(request), who.identity, rotation_id, reason=reason
    )
    return _see(f"/rotations/{full_id}")


@router.get("/rotations/{rotation_id}/evidence")
def evidence_download(
    request: Request, store: StoreDep, who: Auditor, rotation_id: RotationId
) -> Response:
    """The rotation's evidence bundle as a JSON download (the same as `keyshift evidence`)."""
    bundle = evidence.export(store, rotation_id, actor=actor_of(who.identity), now=_now(request))
    full_id = str(bundle.get("rotation", {}).get("id", rotation_id))
    return Response(
        json.dumps(bundle, indent=2, sort_keys=True, default=str),
        media_type="application/json",
        headers={
            "Content-Disposition": f'attachment; filename="evidence-{full_id}.json"',
            "Cache-Control": "no-store",
        },
    )


# Approvals -------------------------------------------------------------------------------


@router.get("/approvals")
def approvals_page(
    request: Request,
    store: StoreDep,
    who: Reader,
    all_: Annotated[bool, Query(alias="all")] = False,
) -> Response:
    """Rotations waiting for a decision, each with what changes, the rollback plan and
    the plan hash; approve or reject with a comment."""
    waiting = approvals_service.requests(store, pending_only=not all_)
    return page(
        request,
        "approvals.html",
        {"viewer": who, "requests": waiting, "all": all_},
    )


async def _decide(
    request: Request, store: Any, who: Viewer, request_id: str, *, comment: str, approve: bool
) -> Response:
    _full_id, rotation_id = await actions.record_decision(
        store, who.identity, request_id, approve=approve, comment=comment, now=_now(request)
    )
    _background(request).start(rotation_id, actor=actor_of(who.identity))
    return _see(f"/rotations/{rotation_id}")


@router.post("/approvals/{request_id}/approve")
async def approve_page(
    request: Request, store: StoreDep, who: Approver, request_id: PathName, comment: Text = ""
) -> Response:
    """Approve as the signed-in person (never one's own request)."""
    return await _decide(request, store, who, request_id, comment=comment, approve=True)


@router.post("/approvals/{request_id}/reject")
async def reject_page(
    request: Request, store: StoreDep, who: Approver, request_id: PathName, comment: Text = ""
) -> Response:
    """Reject as the signed-in person."""
    return await _decide(request, store, who, request_id, comment=comment, approve=False)


# Entra ID, alerts, audit, sessions -------------------------------------------------------


@router.get("/entra")
def entra_page(
    request: Request, store: StoreDep, who: EntraReader, state: Filter = None
) -> Response:
    """Discovered apps, secrets and certificates with their lifecycle state, and the
    outside-keyshift and over-lifetime findings."""
    now = _now(request)
    current = estate_service.current_estate(store, with_credentials=False)
    found = entra.inventory(store, now=now, alerts=current.alerts, state=state)
    return page(
        request,
        "entra.html",
        {
            "viewer": who,
            "summary": entra.summary(store, now=now, alerts=current.alerts),
            "found": found,
            "findings": entra.findings(
                store, now=now, default_policy=current.named_policy(DEFAULT_POLICY_NAME)
            ),
            "state": state or "",
            "lifecycles": [lc.value for lc in Lifecycle],
        },
    )


@router.get("/alerts")
def alerts_page(request: Request, store: StoreDep, who: Reader) -> Response:
    """The newest alerts the worker raised (30 and 7 days before expiry, stuck, ...)."""
    return page(request, "alerts.html", {"viewer": who, "alerts": recent_alerts(store, limit=200)})


@router.get("/audit")
def audit_page(request: Request, store: StoreDep, who: Auditor) -> Response:
    """The newest audit entries, a button that verifies the chain, and the export."""
    with store.transaction() as s:
        entries = audit.latest(s, limit=200)
    return page(request, "audit.html", {"viewer": who, "entries": entries, "check": None})


@router.post("/audit/verify")
def audit_verify_page(request: Request, store: StoreDep, who: Auditor) -> Response:
    """Recompute the hash chain and say whether it holds, or the first entry that breaks it."""
    check = evidence.verify_chain(store)
    with store.transaction() as s:
        entries = audit.latest(s, limit=200)
    return page(request, "audit.html", {"viewer": who, "entries": entries, "check": check})


@router.get("/audit/export")
def audit_export_download(store: StoreDep, who: Auditor) -> StreamingResponse:
    """Every audit entry as JSON Lines, streamed."""
    return StreamingResponse(
        evidence.audit_lines(store),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="keyshift-audit.jsonl"'},
    )


@router.get("/sessions")
def sessions_page(request: Request, store: StoreDep, who: Admin) -> Response:
    """Every web session with its state; an admin revokes one at once."""
    listed = sessions.listing(store, now=_now(request))
    return page(request, "sessions.html", {"viewer": who, "sessions": listed})


@router.post("/sessions/{session_id}/revoke")
def revoke_session_page(
    request: Request, store: StoreDep, who: Admin, session_id: PathName
) -> Response:
    """End a session at once (audited `session.revoked`)."""
    sessions.revoke(store, session_id, actor=actor_of(who.identity), now=_now(request))
    return _see("/sessions")
