"""The estate and its credentials: plan and apply an estate document, list and read the
credentials it declares, the blast radius of rotating one, and importing the value one
has now."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Body, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from keyshift.api import problems
from keyshift.api.auth import StoreDep, caller
from keyshift.api.routes.common import CredentialPageQuery, PathName, actor_of, v1_router
from keyshift.domain.clock import utcnow
from keyshift.domain.estate import Estate
from keyshift.domain.rbac import Permission
from keyshift.domain.secret import Secret
from keyshift.service import catalog, imports, overview, rotations
from keyshift.service import estate as estate_service
from keyshift.service import impact as impact_service
from keyshift.service.identities import Identity
from keyshift.service.imports import Imported
from keyshift.store.store import Store

router = v1_router()

ESTATE_BODY = Body(
    description="The estate document, as in the YAML file (see docs/estate-reference.md).",
    examples=[{"credentials": []}],
)


class ChangeOut(BaseModel):
    op: str
    """`+` added, `~` changed, `-` removed."""
    kind: str
    name: str
    detail: str


class EstateChanges(BaseModel):
    applied: bool
    changes: list[ChangeOut]
    warnings: list[str] = []
    """What was accepted but not as written (legacy fields renamed, manual-review actions),
    each `path: message`, as `keyshift plan` and `apply` print them."""
    frozen: list[estate_service.Frozen] = []
    """Each credential of the estate a freeze covers once it is applied, with the freeze
    and its reason (operators' freezes and the file's own `freeze:`)."""


def _changes(
    store: Store,
    estate: Estate,
    changes: list[estate_service.Change],
    *,
    applied: bool,
    warnings: list[estate_service.EstateWarning],
) -> EstateChanges:
    return EstateChanges(
        applied=applied,
        changes=[ChangeOut(op=c.op, kind=c.kind, name=c.name, detail=c.detail) for c in changes],
        warnings=[str(w) for w in warnings],
        frozen=estate_service.frozen(store, estate),
    )


def _parse(document: dict[str, Any]) -> tuple[Estate, list[estate_service.EstateWarning]]:
    """The estate document validated (EstateInvalid, 422, when it is not), with what was
    accepted but not as written."""
    warnings: list[estate_service.EstateWarning] = []
    return estate_service.parse_estate(document, warnings), warnings


@router.post("/estate/plan", tags=["estate"])
def plan_estate(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    document: Annotated[dict[str, Any], ESTATE_BODY],
) -> EstateChanges:
    """What applying this estate document would change. Changes nothing."""
    estate, warnings = _parse(document)
    return _changes(
        store, estate, estate_service.plan_estate(store, estate), applied=False, warnings=warnings
    )


@router.post("/estate/apply", tags=["estate"])
def apply_estate(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_WRITE)],
    document: Annotated[dict[str, Any], ESTATE_BODY],
) -> EstateChanges:
    """Validate the estate document and store it; a refused document changes nothing
    (422 `estate-invalid` listing every field problem)."""
    estate, warnings = _parse(document)
    applied = estate_service.apply_estate(store, estate, actor=actor_of(who))
    return _changes(store, estate, applied, applied=True, warnings=warnings)


@router.get("/credentials", tags=["credentials"])
def list_credentials(
    request: Request,
    response: Response,
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)],
    query: Annotated[CredentialPageQuery, Query()],
) -> list[rotations.StatusRow]:
    """One row per credential: lifecycle, current version id and fingerprint, expiry,
    last and next rotation. Only those of the `lifecycle`, `owner`, `environment` and
    `provider` given, whose name holds `q`, sorted by `sort` (`desc=true` reverses), as
    the dashboard lists them; every row matching, on one page.

    With `limit` (and then `cursor`), one page by name instead, read without loading the
    rest of the estate: the response's `Link: <…>; rel="next"` gives the next page's URL
    (absent on the last). Paged listings are by name, ascending."""
    if query.limit is None and query.cursor is None:
        rows = rotations.status_rows(store, now=utcnow())
        return catalog.listing(rows, query.criteria(page_size=None)).rows
    found = catalog.page_by_name(
        store,
        query.criteria(page_size=None),
        now=utcnow(),
        limit=query.limit or catalog.PAGE_SIZE,
        cursor=query.cursor,
    )
    if found.next_cursor is not None:
        following = request.url.include_query_params(cursor=found.next_cursor)
        response.headers["Link"] = f'<{following.path}?{following.query}>; rel="next"'
    return found.rows


@router.get("/overview", tags=["credentials"])
def get_overview(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)]
) -> overview.Overview:
    """Totals; credentials expiring within 7, 30 and 90 days across the managed ones and
    the discovered Entra ID inventory (which needs `entra:read` as well); expired, in
    grace, rotating, needing attention, awaiting approval; the most urgent. The numbers
    of the dashboard's first page."""
    return overview.overview(
        store, now=utcnow(), include_entra=Permission.ENTRA_READ in who.permissions
    )


@router.get("/credentials/{name}", tags=["credentials"])
def get_credential(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)], name: PathName
) -> rotations.CredentialDetail:
    """One credential with every version (by id and fingerprint)."""
    return rotations.credential_detail(store, name, now=utcnow())


@router.get("/credentials/{name}/impact", tags=["credentials"])
def credential_impact(
    store: StoreDep, who: Annotated[Identity, caller(Permission.CREDENTIALS_READ)], name: PathName
) -> list[impact_service.ImpactRow]:
    """The blast radius of rotating the credential: the issuer and every action in run
    order, with where each acts (host, agent, vault, namespace, path)."""
    return impact_service.impact(store, name)


class ImportIn(BaseModel):
    """The value the credential's issuer and consumers use now. It is stored encrypted and
    never answered, logged or audited."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    value: str = Field(min_length=1, max_length=16384)
    username: str | None = Field(default=None, min_length=1, max_length=200)
    """Which of two alternating users holds the value (postgres, redis); left out, the
    provider tries each."""
    kid: str | None = Field(default=None, min_length=1, max_length=200)
    """jwks_signing_key: the kid verifiers already know the imported key by; left out,
    its RFC 7638 thumbprint."""
    expires_at: AwareDatetime | None = None
    """When the value expires at the issuer; left out: the issuer's own expiry, else the
    policy's `max_lifetime` from now."""


@router.post(
    "/credentials/{name}/import",
    status_code=201,
    tags=["credentials"],
    responses=problems.responses("not-found", "conflict", "upstream-failed"),
)
async def import_credential(
    store: StoreDep,
    who: Annotated[Identity, caller(Permission.CREDENTIALS_IMPORT)],
    name: PathName,
    body: ImportIn,
) -> Imported:
    """Bring an existing secret under management without rotating it: the value is proven
    at the issuer (postgres, redis: it must authenticate) and stored as the credential's
    current version with `imported` provenance; no issuer or consumer changes. Refused
    (409) when the credential has a current version or a rotation under way. Audited
    `version.imported`."""
    return await imports.import_value(
        store,
        name,
        Secret(body.value),
        actor=actor_of(who),
        username=body.username,
        kid=body.kid,
        expires_at=body.expires_at,
    )
