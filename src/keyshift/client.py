"""`Client`: the keyshift REST API over HTTP, for the CLI's `--server URL` mode.

Answers come back as the service layer's own view types (`StatusRow`, `Timeline`,
`ApprovalView`, `ImpactRow`...), validated with pydantic, so the CLI renders the same
tables whether it runs embedded or talks to a server. Rotations the server runs in the
background are followed by polling (`follow`) until they rest.

A problem-JSON answer becomes a `ServerRefused` carrying the server's stable `code`, its
`detail` and any field `problems`; a server that cannot be reached becomes
`ServerUnreachable`. Both are `KeyshiftError`s, so the CLI prints one line.

The API token travels only in the `Authorization` header; it is never part of a
message, and responses never carry a secret value.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from urllib.parse import parse_qs, quote, urlsplit

import httpx
from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_jsonable_python

from keyshift import __version__
from keyshift.domain.freeze import Freeze
from keyshift.domain.preflight import PreflightResult, Readiness
from keyshift.domain.secret import Secret
from keyshift.domain.states import FINAL_STATES, WAITING_STATES
from keyshift.errors import AuditChainBroken, KeyshiftError, ServerRefused, ServerUnreachable
from keyshift.service.approvals import ApprovalView
from keyshift.service.catalog import Page
from keyshift.service.entra import EntraCredential, Finding, Summary, SyncResult
from keyshift.service.estate import Change, Frozen
from keyshift.service.evidence import Verification
from keyshift.service.foreign import ForeignReport
from keyshift.service.identities import IssuedToken, Principal, RoleView, TokenInfo
from keyshift.service.impact import ImpactRow
from keyshift.service.imports import Imported
from keyshift.service.integrations import Check
from keyshift.service.notifications import Delivery
from keyshift.service.rotations import CredentialDetail, RotationSummary, StatusRow, Timeline
from keyshift.service.scheduler import Alert

T = TypeVar("T")

TIMEOUT_SECONDS = 30.0
"""How long one request may take (connect, read) before the CLI gives up."""

FOLLOW_INTERVAL_SECONDS = 0.5
"""How often `follow` asks for a rotation's state."""

PROBLEM_MEDIA_TYPE = "application/problem+json"

_FINAL = {s.value for s in FINAL_STATES}
_RESTING = _FINAL | {s.value for s in WAITING_STATES}


# The API's own answer shapes, where they are not a service view type ------------------


@dataclass(frozen=True)
class Started:
    """A rotation the server started (or resumed) in the background."""

    rotation_id: str
    credential: str
    state: str


@dataclass(frozen=True)
class Decision:
    request_id: str
    rotation_id: str
    decision: Literal["approved", "rejected"]


@dataclass(frozen=True)
class Unfinished:
    """A rotation not in a final state, and whether the answering server runs it now."""

    rotation_id: str
    credential: str
    state: str
    running_here: bool


@dataclass(frozen=True)
class _StepReadiness:
    step: str
    readiness: Readiness
    reason: str


@dataclass(frozen=True)
class _DryRun:
    plan_hash: str
    steps: list[_StepReadiness]


@dataclass(frozen=True)
class _AuditVerification:
    ok: bool
    entries: int | None
    broken_at: int | None
    reason: str | None


@dataclass(frozen=True)
class _EstateChanges:
    changes: list[Change]
    warnings: list[str]
    frozen: list[Frozen] = field(default_factory=list)


@dataclass(frozen=True)
class _TokenCreated:
    token: str
    info: TokenInfo


class Client:
    """A keyshift API server at `server` (e.g. `https://keyshift.example:8080`), called
    with `token` as bearer. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        server: str,
        token: str | None,
        *,
        timeout: float = TIMEOUT_SECONDS,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        headers = {"User-Agent": f"keyshift/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.server, headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # Estate ---------------------------------------------------------------------------

    def plan_estate(
        self, document: dict[str, Any], *, apply: bool = False
    ) -> tuple[list[Change], list[str], list[Frozen]]:
        """`POST /v1/estate/plan` (or `/apply`): the estate document as read from its file.
        Returns the changes, the warnings (`path: message`) and the credentials freezes
        cover."""
        path = "/v1/estate/apply" if apply else "/v1/estate/plan"
        answer = self._post(path, _EstateChanges, document)
        return answer.changes, answer.warnings, answer.frozen

    # Credentials and rotations ----------------------------------------------------------

    def status_rows(self) -> list[StatusRow]:
        """`GET /v1/credentials`: one row per credential."""
        return self._get("/v1/credentials", list[StatusRow])

    def status_page(self, *, limit: int, cursor: str | None = None) -> Page:
        """`GET /v1/credentials?limit=…&cursor=…`: one page by name, and the cursor of
        the next (from the response's `Link: <…>; rel="next"`)."""
        path = "/v1/credentials"
        params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
        response = self._send("GET", path, params=params)
        rows = self._validate(path, _json(self.server, path, response.text), list[StatusRow])
        following = response.links.get("next", {}).get("url")
        after = parse_qs(urlsplit(following).query).get("cursor", [None])[0] if following else None
        return Page(rows, after)

    def credential_detail(self, credential: str) -> CredentialDetail:
        """`GET /v1/credentials/{name}`: its status and every version (certificates with
        their public facts)."""
        return self._get(f"/v1/credentials/{_seg(credential)}", CredentialDetail)

    def history_rows(self, credential: str) -> list[RotationSummary]:
        """`GET /v1/credentials/{name}/rotations`: every rotation, oldest first."""
        return self._get(f"/v1/credentials/{_seg(credential)}/rotations", list[RotationSummary])

    def impact(self, credential: str) -> list[ImpactRow]:
        """`GET /v1/credentials/{name}/impact`: the blast radius, in run order."""
        return self._get(f"/v1/credentials/{_seg(credential)}/impact", list[ImpactRow])

    def dry_run(self, credential: str) -> tuple[str, list[tuple[str, PreflightResult]]]:
        """`POST /v1/credentials/{name}/dry-run`: the plan hash and each step's readiness."""
        found = self._post(f"/v1/credentials/{_seg(credential)}/dry-run", _DryRun)
        return found.plan_hash, [
            (s.step, PreflightResult(s.readiness, s.reason)) for s in found.steps
        ]

    def start_rotation(
        self, credential: str, *, grace: str | None, reason: str, break_glass: bool = False
    ) -> Started:
        """`POST /v1/credentials/{name}/rotations`: the server runs it in the background
        (`break_glass`: outside the window and through freezes)."""
        body: dict[str, Any] = {"reason": reason}
        if grace is not None:
            body["grace"] = grace
        if break_glass:
            body["break_glass"] = True
        return self._post(f"/v1/credentials/{_seg(credential)}/rotations", Started, body)

    def rotation(self, rotation_id: str) -> Timeline:
        """`GET /v1/rotations/{id}`: one rotation (id or unique prefix) with its steps."""
        path = f"/v1/rotations/{_seg(rotation_id)}"
        return self._timeline(path, self._request("GET", path))

    def _timeline(self, path: str, body: Any) -> Timeline:
        """A rotation document (`RotationOut`) as the service's `Timeline`: the document
        holds the `RotationSummary` fields beside the timeline's own, so it is read as both."""
        if isinstance(body, dict):
            body = {**body, "rotation": body}
        return self._validate(path, body, Timeline)

    def unfinished(self) -> list[Unfinished]:
        """`GET /v1/rotations`: every rotation not in a final state, oldest first."""
        return self._get("/v1/rotations", list[Unfinished])

    def roll_back(self, rotation_id: str, reason: str) -> Timeline:
        """`POST /v1/rotations/{id}/rollback`: roll it back (the server answers once done)."""
        path = f"/v1/rotations/{_seg(rotation_id)}/rollback"
        return self._timeline(path, self._request("POST", path, body={"reason": reason}))

    def resume(self, rotation_id: str) -> Started:
        """`POST /v1/rotations/{id}/resume`: continue it in the background."""
        return self._post(f"/v1/rotations/{_seg(rotation_id)}/resume", Started)

    def follow(
        self, rotation_id: str, *, interval: float = FOLLOW_INTERVAL_SECONDS
    ) -> Iterator[Timeline]:
        """The rotation's timeline every `interval` seconds, until it rests: in a final
        state, or waiting (grace, an approval) while the server no longer runs it.

        An unfinished state that is not waiting is followed on even when no server runs
        it: a worker will resume it. Whether it runs (`running`: a lease held by any
        worker or server, or queued at the server answering) comes in the same document
        as its state."""
        while True:
            timeline = self.rotation(rotation_id)
            yield timeline
            state = timeline.rotation.state
            resting = state in _RESTING or timeline.signers_from is not None
            if state in _FINAL or (resting and not timeline.running):
                return
            time.sleep(interval)

    # Approvals --------------------------------------------------------------------------

    def approval_requests(self, *, pending_only: bool = True) -> list[ApprovalView]:
        """`GET /v1/approvals`: pending requests (every request with `pending_only=False`)."""
        params = {} if pending_only else {"all": "true"}
        return self._get("/v1/approvals", list[ApprovalView], params=params)

    def approval(self, request_id: str) -> ApprovalView:
        """`GET /v1/approvals/{id}`: one request (id or unique prefix)."""
        return self._get(f"/v1/approvals/{_seg(request_id)}", ApprovalView)

    def decide(self, request_id: str, *, approve: bool, comment: str) -> Decision:
        """`POST /v1/approvals/{id}/approve` (or `/reject`) as the token's principal."""
        verb = "approve" if approve else "reject"
        return self._post(
            f"/v1/approvals/{_seg(request_id)}/{verb}", Decision, {"comment": comment}
        )

    # Audit and evidence -----------------------------------------------------------------

    def evidence(self, rotation_id: str) -> dict[str, Any]:
        """`GET /v1/rotations/{id}/evidence`: the evidence bundle."""
        return self._get(f"/v1/rotations/{_seg(rotation_id)}/evidence", dict[str, Any])

    def verify_evidence(self, bundle: dict[str, Any]) -> Verification:
        """`POST /v1/evidence/verify`: the bundle checked against the server's audit chain."""
        return self._post("/v1/evidence/verify", Verification, bundle)

    def audit_verify(self) -> int:
        """`GET /v1/audit/verify`: how many entries verified; AuditChainBroken names the
        first broken entry, as the local check does."""
        found = self._get("/v1/audit/verify", _AuditVerification)
        if not found.ok:
            raise AuditChainBroken(found.broken_at or 0, found.reason or "does not verify")
        return found.entries or 0

    def audit_entries(self) -> Iterator[dict[str, Any]]:
        """`GET /v1/audit/export`: every audit entry, read as the server streams them."""
        path = "/v1/audit/export"
        with self._unreachable(), self._http.stream("GET", path) as response:
            if not response.is_success:
                response.read()
                raise _refusal(self.server, path, response)
            for line in response.iter_lines():
                if line.strip():
                    yield self._validate(path, _json(self.server, path, line), dict[str, Any])

    # Integrations, Entra ID, alerts -----------------------------------------------------

    def test_integration(self, name: str) -> list[Check]:
        """`POST /v1/integrations/{name}/test`: each check and its outcome."""
        return self._post(f"/v1/integrations/{_seg(name)}/test", list[Check])

    def entra_sync(self, only: list[str] | None) -> list[SyncResult]:
        """`POST /v1/entra/sync`: every `entra` integration (or `only` these)."""
        return self._post("/v1/entra/sync", list[SyncResult], {"integrations": only})

    def entra_credentials(
        self, *, state: str | None, app: str | None, removed: bool
    ) -> list[EntraCredential]:
        """`GET /v1/entra/credentials`, filtered by state and app (name or id)."""
        params = {"removed": "true" if removed else "false"}
        if state is not None:
            params["state"] = state
        if app is not None:
            params["app"] = app
        return self._get("/v1/entra/credentials", list[EntraCredential], params=params)

    def entra_summary(self, *, top: int) -> Summary:
        """`GET /v1/entra/summary`."""
        return self._get("/v1/entra/summary", Summary, params={"top": str(top)})

    def entra_findings(self) -> list[Finding]:
        """`GET /v1/entra/report`."""
        return self._get("/v1/entra/report", list[Finding])

    def foreign(self) -> ForeignReport:
        """`GET /v1/foreign`: versions at the issuers that keyshift did not issue."""
        return self._get("/v1/foreign", ForeignReport)

    def alerts(self, *, limit: int) -> list[Alert]:
        """`GET /v1/alerts`: the newest alerts, newest first."""
        return self._get("/v1/alerts", list[Alert], params={"limit": str(limit)})

    def notifications(self, *, status: str | None, limit: int) -> list[Delivery]:
        """`GET /v1/notifications`: the newest events and their deliveries."""
        params = {"limit": str(limit), **({"status": status} if status else {})}
        return self._get("/v1/notifications", list[Delivery], params=params)

    def test_channel(self, channel: str) -> str:
        """`POST /v1/notifications/{channel}/test`: the channel's answer."""
        sent = self._post(f"/v1/notifications/{quote(channel)}/test", dict[str, str])
        return sent["detail"]

    # Users, tokens, roles ---------------------------------------------------------------

    def users(self) -> list[Principal]:
        return self._get("/v1/users", list[Principal])

    def add_user(self, name: str, *, kind: str, roles: list[str]) -> Principal:
        body = {"name": name, "kind": kind, "roles": roles}
        return self._post("/v1/users", Principal, body)

    def disable_user(self, name: str) -> Principal:
        return self._post(f"/v1/users/{_seg(name)}/disable", Principal)

    def tokens(self, *, principal: str | None) -> list[TokenInfo]:
        params = {"principal": principal} if principal is not None else None
        return self._get("/v1/tokens", list[TokenInfo], params=params)

    def create_token(self, principal: str, *, name: str, expires_in: str) -> IssuedToken:
        """`POST /v1/tokens`: the new token, held as a `Secret` (shown once by the caller)."""
        body = {"principal": principal, "name": name, "expires_in": expires_in}
        created = self._post("/v1/tokens", _TokenCreated, body)
        return IssuedToken(info=created.info, token=Secret(created.token))

    def revoke_token(self, token_id: str) -> TokenInfo:
        return self._post(f"/v1/tokens/{_seg(token_id)}/revoke", TokenInfo)

    def roles(self) -> list[RoleView]:
        return self._get("/v1/roles", list[RoleView])

    def freezes(self) -> list[Freeze]:
        """`GET /v1/freezes`: the freezes holding now."""
        return self._get("/v1/freezes", list[Freeze])

    def freeze(
        self, *, scope: str, value: str | None, reason: str, until: datetime | None
    ) -> Freeze:
        """`POST /v1/freezes`: start a freeze."""
        body = {
            "scope": scope,
            "value": value,
            "reason": reason,
            "until": until.isoformat() if until else None,
        }
        return self._post("/v1/freezes", Freeze, body)

    def unfreeze(self, freeze_id: str) -> Freeze:
        """`POST /v1/freezes/{id}/lift`: lift a freeze."""
        return self._post(f"/v1/freezes/{_seg(freeze_id)}/lift", Freeze)

    def import_value(
        self,
        credential: str,
        value: Secret,
        *,
        username: str | None = None,
        kid: str | None = None,
        expires_at: datetime | None = None,
    ) -> Imported:
        """`POST /v1/credentials/{name}/import`: the value in the body, never in the URL."""
        body = {
            "value": value.reveal(),
            "username": username,
            "kid": kid,
            "expires_at": expires_at.isoformat() if expires_at else None,
        }
        return self._post(f"/v1/credentials/{_seg(credential)}/import", Imported, body)

    # Transport ------------------------------------------------------------------------

    def _get(self, path: str, shape: type[T], params: dict[str, str] | None = None) -> T:
        return self._validate(path, self._request("GET", path, params=params), shape)

    def _post(self, path: str, shape: type[T], body: Any = None) -> T:
        return self._validate(path, self._request("POST", path, body=body), shape)

    def _validate(self, path: str, body: Any, shape: type[T]) -> T:
        try:
            return _adapter(shape).validate_python(body)
        except ValidationError as exc:
            raise ServerUnreachable(
                f"{self.server}{path} answered with an unexpected document "
                f"({exc.error_count()} field problem(s)); is it a keyshift server of "
                f"version {__version__}?"
            ) from None

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        return _json(self.server, path, self._send(method, path, params=params, body=body).text)

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        """The server's successful response (else its refusal, raised)."""
        # YAML gives dates where JSON has strings; the server reads them back the same.
        content = None if body is None else to_jsonable_python(body)
        with self._unreachable():
            response = self._http.request(method, path, params=params, json=content)
        if response.is_success:
            return response
        raise _refusal(self.server, path, response)

    @contextmanager
    def _unreachable(self) -> Iterator[None]:
        try:
            yield
        except httpx.HTTPError as exc:
            # The class and URL only: the request's headers (the token) are never shown.
            raise ServerUnreachable(
                f"cannot reach the keyshift server at {self.server} ({type(exc).__name__})"
            ) from None


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(shape: type[T]) -> TypeAdapter[T]:
    """One validator per answer shape (building one costs more than using it; `follow`
    validates two answers per poll)."""
    adapter = _ADAPTERS.get(shape)
    if adapter is None:
        adapter = _ADAPTERS[shape] = TypeAdapter(shape)
    return adapter


def _seg(value: str) -> str:
    """`value` as one path segment."""
    return quote(value, safe="")


def _json(server: str, path: str, text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ServerUnreachable(
            f"{server}{path} did not answer JSON; is it a keyshift server?"
        ) from None


def _refusal(server: str, path: str, response: httpx.Response) -> KeyshiftError:
    """The error a non-success answer stands for."""
    problem: Any = None
    if response.headers.get("content-type", "").startswith(PROBLEM_MEDIA_TYPE):
        try:
            problem = response.json()
        except ValueError:
            problem = None
    if not isinstance(problem, dict) or not isinstance(problem.get("code"), str):
        return ServerUnreachable(
            f"{server}{path} answered HTTP {response.status_code} without a problem "
            "document; is it a keyshift server?"
        )
    code: str = problem["code"]
    detail = str(problem.get("detail") or problem.get("title") or code)
    listed = [
        (str(item["path"]), str(item["message"]))
        for item in problem.get("problems") or []
        if isinstance(item, dict) and "path" in item and "message" in item
    ]
    for where, message in listed:
        if f"{where}: {message}" not in detail:  # a one-field problem's detail names it
            detail += f"; {where}: {message}"
    if code == "unauthenticated":
        detail += " (set KEYSHIFT_TOKEN to an API token for this server)"
    return ServerRefused(response.status_code, code, detail, listed)
