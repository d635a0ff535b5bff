"""`GraphClient`: the Microsoft Graph endpoints keyshift calls, on `GraphHttp`'s requests.

Applications and their client secrets (`addPassword`, `removePassword`), their
certificates (`addKey`, `removeKey`, an update of `keyCredentials`), the app
management policies in force for an application, and the (beta) sign-in log.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import structlog

from keyshift.domain.secret import Secret
from keyshift.errors import PermanentError
from keyshift.providers.graph.http import (
    GraphHttp,
    GraphRequestFailed,
    encode_query,
    needing,
    segment,
)
from keyshift.providers.graph.models import (
    AddedPassword,
    Application,
    AppManagementPolicy,
    KeyCredential,
    PasswordCredential,
    SignIn,
)

log = structlog.get_logger("keyshift.providers.graph")

WRITE_ROLES: Final = ("Application.ReadWrite.OwnedBy", "Application.ReadWrite.All")
"""Application permissions that allow adding and removing client secrets."""
AUDIT_LOG_ROLE: Final = "AuditLog.Read.All"
"""The application permission that allows reading the sign-in log."""
SIGN_IN_PERMISSION: Final = (
    "the Graph application permission AuditLog.Read.All (and a Microsoft Entra ID P1 or P2 "
    "licence in the tenant) to read the sign-in log"
)
POLICY_PERMISSION: Final = (
    "the Graph application permission Policy.Read.All to read app management policies"
)
SIGN_IN_PAGE_SIZE: Final = 1000
"""The documented maximum (and default) page size of `auditLogs/signIns`."""
APPLICATION_FIELDS: Final = "id,appId,displayName,passwordCredentials,keyCredentials"


def odata_literal(value: str) -> str:
    """`value` as an OData string literal for `$filter`: single-quoted, quotes doubled.

    Raises ValueError for control characters or anything else not printable, which no
    application name or id holds and which could change how the filter is parsed.
    """
    if not value.isprintable():
        raise ValueError("a $filter literal must not contain control or unprintable characters")
    return "'" + value.replace("'", "''") + "'"


def graph_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("Graph times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class GraphClient(GraphHttp):
    """An async Microsoft Graph client for application password credentials.

    `base_url` defaults to the global cloud; national clouds and tests pass theirs.
    `transport` and `verify` are handed to httpx (tests pass an SSLContext that
    trusts their CA). Close with `aclose()` or use `async with`.
    """

    # --- applications ------------------------------------------------------------------

    async def list_applications(
        self, filter: str | None = None, *, with_owners: bool = False
    ) -> AsyncIterator[Application]:
        """Applications matching the `$filter` expression (build literals with
        `odata_literal`), all pages, `page_size` per request; `with_owners` expands
        each application's owners in the same requests."""
        params: dict[str, str | int] = {"$top": self._page_size}
        if filter is not None:
            params["$filter"] = filter
        if with_owners:
            params["$select"] = APPLICATION_FIELDS
            params["$expand"] = "owners($select=id,displayName,userPrincipalName)"
        async for item in self.paged("applications", params):
            yield Application.from_graph(item)

    async def get_application(self, app_object_id: str) -> Application:
        """The application with this object id; GraphRequestFailed (404) if none."""
        return Application.from_graph(await self.get(f"applications/{segment(app_object_id)}"))

    async def add_password(
        self, app_object_id: str, display_name: str, end: datetime | None
    ) -> AddedPassword:
        """Add a client secret valid from now until `end` (None: Graph's default, two years).
        Not idempotent: each call that succeeds mints a new secret; look for
        `display_name` before calling again."""
        credential: dict[str, str] = {"displayName": display_name}
        if end is not None:
            credential["endDateTime"] = graph_time(end)
        body = {"passwordCredential": credential}
        answer = await self.post(f"applications/{segment(app_object_id)}/addPassword", body)
        if answer is None:
            raise PermanentError(f"Graph addPassword on {app_object_id} answered no body")
        secret_text = answer.pop("secretText", None)
        if not isinstance(secret_text, str) or not secret_text:
            raise PermanentError(f"Graph addPassword on {app_object_id} answered no secretText")
        secret = Secret(secret_text)
        listed = PasswordCredential.from_graph(answer)
        log.info(
            "graph.password_added",
            app_object_id=app_object_id,
            key_id=listed.key_id,
            end=listed.end.isoformat() if listed.end else None,
        )
        return AddedPassword(
            key_id=listed.key_id,
            display_name=listed.display_name,
            hint=listed.hint,
            start=listed.start,
            end=listed.end,
            secret=secret,
        )

    async def remove_password(self, app_object_id: str, key_id: str) -> None:
        """Remove the client secret `key_id`. Graph answers 400 for a keyId it does not
        hold; that is raised as GraphRequestFailed for the caller to judge."""
        await self.post(
            f"applications/{segment(app_object_id)}/removePassword",
            {"keyId": key_id},
            idempotent=True,
        )
        log.info("graph.password_removed", app_object_id=app_object_id, key_id=key_id)

    # --- certificates (keyCredentials) ---------------------------------------------------

    async def list_key_credentials(self, app_object_id: str) -> list[KeyCredential]:
        """The application's certificates with their public `key` (base64 DER), which
        Graph returns only when the one application is read with `$select=keyCredentials`."""
        body = await self.get(
            f"applications/{segment(app_object_id)}", {"$select": "id,keyCredentials"}
        )
        return [KeyCredential.from_graph(k) for k in body.get("keyCredentials") or ()]

    async def add_key(
        self, app_object_id: str, certificate_der: bytes, display_name: str, proof: Secret
    ) -> KeyCredential:
        """Add the certificate (public part only) with `addKey`, proving possession of a
        current certificate's key with `proof` (see `keyshift.providers.entra.proof`).
        Not idempotent: look for `display_name` before calling again."""
        body = {
            "keyCredential": {
                "type": "AsymmetricX509Cert",
                "usage": "Verify",
                "key": base64.b64encode(certificate_der).decode("ascii"),
                "displayName": display_name,
            },
            "passwordCredential": None,
            "proof": proof.reveal(),
        }
        answer = await self.post(f"applications/{segment(app_object_id)}/addKey", body)
        if answer is None:
            raise PermanentError(f"Graph addKey on {app_object_id} answered no body")
        added = KeyCredential.from_graph(answer)
        log.info("graph.key_added", app_object_id=app_object_id, key_id=added.key_id)
        return added

    async def remove_key(self, app_object_id: str, key_id: str, proof: Secret) -> None:
        """Remove the certificate `key_id` with `removeKey`, proving possession of a current
        certificate's key with `proof`. Graph answers 404 for a keyId it does not hold;
        that is raised as GraphRequestFailed for the caller to judge."""
        await self.post(
            f"applications/{segment(app_object_id)}/removeKey",
            {"keyId": key_id, "proof": proof.reveal()},
            idempotent=True,
        )
        log.info("graph.key_removed", app_object_id=app_object_id, key_id=key_id)

    async def set_key_credentials(
        self, app_object_id: str, key_credentials: list[dict[str, Any]]
    ) -> None:
        """Replace the application's certificates with `key_credentials` (an update of the
        application: what is left out is removed). Each entry needs its `key`."""
        await self.patch(
            f"applications/{segment(app_object_id)}", {"keyCredentials": key_credentials}
        )
        log.info(
            "graph.key_credentials_set",
            app_object_id=app_object_id,
            key_ids=[k.get("keyId") for k in key_credentials],
        )

    # --- app management policies ------------------------------------------------------

    async def get_default_app_management_policy(self) -> AppManagementPolicy:
        """The tenant's default app management policy (it always exists; disabled unless an
        administrator enabled it). A 403 raises GraphRequestFailed naming Policy.Read.All."""
        where = "policies/defaultAppManagementPolicy"
        try:
            body = await self.get(where)
        except GraphRequestFailed as exc:
            if exc.status != 403:
                raise
            raise self._needing(exc, where, POLICY_PERMISSION) from exc
        return AppManagementPolicy.from_graph(body, tenant_default=True)

    async def list_app_management_policies(self, app_object_id: str) -> list[AppManagementPolicy]:
        """The app management policies assigned to the application (Graph allows one),
        which replace the tenant default for it. A 403 raises GraphRequestFailed naming
        Policy.Read.All."""
        where = f"applications/{segment(app_object_id)}/appManagementPolicies"
        try:
            return [
                AppManagementPolicy.from_graph(item, tenant_default=False)
                async for item in self.paged(where)
            ]
        except GraphRequestFailed as exc:
            if exc.status != 403:
                raise
            raise self._needing(exc, where, POLICY_PERMISSION) from exc

    # --- the sign-in log ---------------------------------------------------------------

    async def list_service_principal_sign_ins(
        self, app_id: str, since: datetime, *, page_size: int = SIGN_IN_PAGE_SIZE
    ) -> AsyncIterator[SignIn]:
        """Sign-ins of the application `app_id` as itself (client credentials: the event
        type `servicePrincipal`) created at or after `since`, newest first, every page.

        Read from `GET /beta/auditLogs/signIns`: v1.0 lists neither service principal
        sign-ins' credential keyId nor, without this filter, any but interactive user
        sign-ins. The keyId cannot be filtered on by Graph, so callers pick it out.
        A 403 raises GraphRequestFailed naming AuditLog.Read.All.
        """
        if self._beta is None:
            raise PermanentError(
                f"the Graph endpoint {self._base} does not end in /v1.0, so the beta sign-in "
                "log beside it cannot be found"
            )
        if not 1 <= page_size <= SIGN_IN_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {SIGN_IN_PAGE_SIZE}")
        params: dict[str, str | int] = {
            "$filter": f"appId eq {odata_literal(app_id)} and "
            "signInEventTypes/any(t: t eq 'servicePrincipal') and "
            f"createdDateTime ge {graph_time(since)}",
            "$top": page_size,
        }
        url = str(self._beta.join("auditLogs/signIns")) + encode_query(params)
        try:
            async for item in self._paged(url):
                yield SignIn.from_graph(item)
        except GraphRequestFailed as exc:
            if exc.status != 403:
                raise
            raise needing(exc, "/beta/auditLogs/signIns", SIGN_IN_PERMISSION) from exc
