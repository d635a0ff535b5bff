"""Requests to Microsoft Graph over httpx: the bearer token, retries, paging and errors.

See `keyshift.providers.graph` for what holds; `GraphClient` (in `client`) builds the
endpoints keyshift calls on `GraphHttp`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import quote

import httpx
import structlog
from azure.core.exceptions import AzureError, ClientAuthenticationError

from keyshift import metrics
from keyshift.azure import DEFAULT_GRAPH_URL
from keyshift.context import PluginContext
from keyshift.errors import KeyshiftError, PermanentError, TransientError
from keyshift.pacing import Budget
from keyshift.tokens import Tokens

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

log = structlog.get_logger("keyshift.providers.graph")

GRAPH_SCOPE: Final = "https://graph.microsoft.com/.default"
NEEDED_PERMISSION: Final = (
    "the Graph application permission Application.ReadWrite.OwnedBy (with the keyshift "
    "identity as an owner of the application) or Application.ReadWrite.All"
)
RETRYABLE_STATUSES: Final = frozenset({429, 502, 503, 504})
# Statuses that mean Graph refused the request before running it: safe to repeat a POST.
NOT_EXECUTED_STATUSES: Final = frozenset({429, 503})
BACKOFF_BASE: Final = 1.0
BACKOFF_CAP: Final = 60.0
_AADSTS = re.compile(r"AADSTS\d+")

TokenSource = Callable[[], Awaitable[str]]
"""Returns a bearer token for Graph; called before every attempt (the source caches)."""

_random = secrets.SystemRandom()


def token_roles(token: str) -> list[str] | None:
    """The `roles` claim of a JWT access token (read, not verified: only to explain what
    the identity may do), or None if the token is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return [str(r) for r in roles] if isinstance(roles, list) else []


def azure_identity_token_source(
    credential: AsyncTokenCredential, scope: str = GRAPH_SCOPE
) -> TokenSource:
    """A token source from an `azure.identity.aio` credential. Entra ID refusing the
    credential raises `TokenRefused` (with the AADSTS code); an unreachable token
    endpoint raises TransientError."""

    async def token() -> str:
        try:
            access = await credential.get_token(scope)
        except AzureError as exc:  # ClientAuthenticationError is one
            raise _token_error(exc) from exc
        return access.token

    return token


def _token_error(exc: AzureError) -> KeyshiftError:
    """Entra ID refusing a credential as `TokenRefused` (with the AADSTS code); anything
    else (an unreachable token endpoint) as TransientError."""
    if isinstance(exc, ClientAuthenticationError):
        found = _AADSTS.search(str(exc.message or ""))
        code = found.group(0) if found else "unknown"
        return TokenRefused(
            f"Entra ID refused the client credential ({code}); check the client "
            "id, tenant and secret",
            code=code,
        )
    return TransientError(f"could not get a Graph token: {type(exc).__name__}")


class SharedTokenSource:
    """keyshift's own token source, kept in `tokens` across rotations (`keyshift.tokens`):
    the credential `open_credential` makes is built, and asked, only when no token is
    held. `forget` drops a token the API refused. `aclose` closes the credential."""

    def __init__(
        self,
        open_credential: Callable[[], AsyncTokenCredential],
        tokens: Tokens,
        key: Hashable,
        scope: str = GRAPH_SCOPE,
    ) -> None:
        self._open = open_credential
        self._tokens = tokens
        self._key = (key, scope)
        self._scope = scope
        self._credential: AsyncTokenCredential | None = None

    async def __call__(self) -> str:
        held = self._tokens.get(self._key)
        if held is not None:
            return held
        if self._credential is None:
            self._credential = self._open()
        try:
            access = await self._credential.get_token(self._scope)
        except AzureError as exc:  # ClientAuthenticationError is one
            raise _token_error(exc) from exc
        self._tokens.put(self._key, access.token, float(access.expires_on))
        return access.token

    def forget(self, token: str) -> None:
        self._tokens.forget(self._key, token)

    async def aclose(self) -> None:
        credential, self._credential = self._credential, None
        if credential is not None:
            await credential.close()


class TokenRefused(PermanentError):
    """Entra ID refused the client credential; `code` is the AADSTS code, e.g. AADSTS7000215."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


class GraphRequestFailed(PermanentError):
    """Graph answered with an error that retrying will not fix."""

    def __init__(
        self, message: str, *, status: int, code: str, graph_message: str, request_id: str | None
    ) -> None:
        self.status = status
        self.code = code
        self.graph_message = graph_message
        self.request_id = request_id
        super().__init__(message)


def _retry_after(response: httpx.Response) -> float | None:
    """The numeric `Retry-After` in seconds; an HTTP date or garbage counts as absent."""
    raw = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _error_fields(response: httpx.Response) -> tuple[str, str, str | None]:
    """(code, message, request id) of a Graph error body; tolerant of other bodies."""
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return f"HTTP{response.status_code}", response.reason_phrase, None
    inner = error.get("innerError") if isinstance(error.get("innerError"), dict) else {}
    request_id = inner.get("request-id") if isinstance(inner, dict) else None
    return (
        str(error.get("code") or f"HTTP{response.status_code}"),
        str(error.get("message") or ""),
        str(request_id) if request_id else None,
    )


def encode_query(params: Mapping[str, str | int] | None) -> str:
    """Query options keep their `$`; values are percent-encoded (spaces as %20)."""
    if not params:
        return ""
    return "?" + "&".join(
        f"{quote(k, safe='$')}={quote(str(v), safe='')}" for k, v in params.items()
    )


class GraphHttp:
    """Requests to Microsoft Graph: a bearer token on each attempt, retries with backoff
    within `max_retry_time`, paging through `@odata.nextLink` on the configured origin
    only, and Graph's errors as TransientError / GraphRequestFailed. `GraphClient` adds
    the endpoints keyshift calls.
    """

    def __init__(
        self,
        token_source: TokenSource,
        context: PluginContext,
        *,
        base_url: str = DEFAULT_GRAPH_URL,
        transport: httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        max_retry_time: float = 120.0,
        timeout: float = 30.0,
        page_size: int = 100,
        budget: Budget | None = None,
    ) -> None:
        if not 1 <= page_size <= 999:
            raise ValueError("page_size must be between 1 and 999")
        self._token_source = token_source
        self._context = context
        self._base = httpx.URL(base_url.rstrip("/") + "/")
        # The beta endpoint sits beside v1.0 in every cloud (graph.microsoft.us/beta, ...).
        path = self._base.path
        self._beta = (
            self._base.copy_with(path=path.removesuffix("v1.0/") + "beta/")
            if path.endswith("/v1.0/")
            else None
        )
        self._max_retry_time = max_retry_time
        self._page_size = page_size
        self._budget = budget
        self._http = httpx.AsyncClient(
            transport=transport, verify=verify, timeout=timeout, follow_redirects=False
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def token(self) -> str:
        """A bearer token from the token source, as the next request would send it (to
        read its claims, e.g. `token_roles`; never to log)."""
        return await self._token_source()

    # --- generic requests --------------------------------------------------------------

    async def get(self, path: str, params: Mapping[str, str | int] | None = None) -> dict[str, Any]:
        """GET `path` (relative to the base URL) and return the JSON object."""
        response = await self._request("GET", self._url(path) + encode_query(params))
        return _json_object(response)

    async def post(
        self, path: str, json: Mapping[str, Any] | None = None, *, idempotent: bool = False
    ) -> dict[str, Any] | None:
        """POST `json` to `path`; the JSON object answered, or None for 204.

        Unless `idempotent`, the request is repeated only when Graph did not run it.
        """
        response = await self._request("POST", self._url(path), json=json, idempotent=idempotent)
        if response.status_code == 204 or not response.content:
            return None
        return _json_object(response)

    async def patch(self, path: str, json: Mapping[str, Any]) -> None:
        """PATCH `json` to `path` (Graph answers 204). Repeated on throttling and outages:
        an update that sets the same properties again changes nothing more."""
        await self._request("PATCH", self._url(path), json=json, idempotent=True)

    async def paged(
        self, path: str, params: Mapping[str, str | int] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every item of a collection, following `@odata.nextLink` until it is absent."""
        async for item in self._paged(self._url(path) + encode_query(params)):
            yield item

    async def _paged(self, first: str) -> AsyncIterator[dict[str, Any]]:
        url: str | None = first
        while url is not None:
            body = _json_object(await self._request("GET", url))
            for item in body.get("value") or ():
                yield item
            next_link = body.get("@odata.nextLink")
            url = self._same_origin(next_link) if next_link else None

    # --- the retry loop ----------------------------------------------------------------

    def _url(self, path: str) -> str:
        return str(self._base.join(path.lstrip("/")))

    def _needing(self, exc: GraphRequestFailed, path: str, permission: str) -> GraphRequestFailed:
        return needing(exc, httpx.URL(self._url(path)).path, permission)

    def _same_origin(self, link: object) -> str:
        if not isinstance(link, str):
            raise PermanentError("Graph answered an @odata.nextLink that is not a string")
        url = httpx.URL(link)
        if (url.scheme, url.host, url.port) != (
            self._base.scheme,
            self._base.host,
            self._base.port,
        ):
            raise PermanentError(
                f"Graph answered an @odata.nextLink to another origin ({url.host}); not followed"
            )
        return link

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with equal jitter: half fixed, half random."""
        ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** (attempt - 1))
        return ceiling / 2 + _random.uniform(0, ceiling / 2)

    async def _request(
        self,
        method: str,
        url: str,
        *,
        json: Mapping[str, Any] | None = None,
        idempotent: bool = True,
    ) -> httpx.Response:
        where = httpx.URL(url).path
        started = self._context.now()
        attempt = 0
        bucket = self._budget.of(method) if self._budget is not None else None
        while True:
            attempt += 1
            token = await self._token_source()
            retry_after: float | None = None
            if bucket is not None:
                await bucket.take(self._context.sleep)
            try:
                response = await self._http.request(
                    method, url, json=json, headers={"Authorization": f"Bearer {token}"}
                )
            except httpx.TransportError as exc:
                # A refused connection never reached Graph; anything later may have.
                repeatable = idempotent or isinstance(exc, httpx.ConnectError)
                reason = type(exc).__name__
                if not repeatable:
                    raise TransientError(
                        f"Graph {method} {where}: {reason}; not repeated since Graph may "
                        "have run it"
                    ) from exc
            else:
                status = response.status_code
                if status < 400:
                    if bucket is not None:
                        bucket.succeeded()
                    return response
                code, message, request_id = _error_fields(response)
                if status == 401 and isinstance(self._token_source, SharedTokenSource):
                    self._token_source.forget(token)  # the next rotation signs in again
                if status not in RETRYABLE_STATUSES:
                    if status >= 500:
                        raise TransientError(f"Graph {method} {where}: {status} {code}")
                    raise _permanent(
                        method, where, status, code=code, message=message, request_id=request_id
                    )
                reason = f"{status} {code}"
                retry_after = _retry_after(response)
                if status == 429:
                    metrics.throttled("graph")
                if bucket is not None and status in NOT_EXECUTED_STATUSES:
                    bucket.throttled(retry_after)  # every caller slows down, not this one
                if not idempotent and status not in NOT_EXECUTED_STATUSES:
                    raise TransientError(
                        f"Graph {method} {where}: {reason}; not repeated since Graph may "
                        "have run it",
                        retry_after=retry_after,
                    )
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            elapsed = (self._context.now() - started).total_seconds()
            if elapsed + delay > self._max_retry_time:
                raise TransientError(
                    f"Graph {method} {where}: {reason} after {attempt} attempts in "
                    f"{elapsed:.0f}s; giving up for now",
                    retry_after=delay,
                )
            log.warning(
                "graph.retry",
                method=method,
                path=where,
                reason=reason,
                attempt=attempt,
                delay=round(delay, 3),
            )
            await self._context.sleep(delay)


def segment(value: str) -> str:
    """An id as one path segment, so a crafted id cannot reach another route."""
    if not value:
        raise ValueError("an object id must not be empty")
    return quote(value, safe="")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        raise PermanentError(
            f"Graph {response.request.method} {response.request.url.path} answered "
            f"{response.status_code} without JSON"
        ) from exc
    if not isinstance(body, dict):
        raise PermanentError(
            f"Graph {response.request.method} {response.request.url.path} answered "
            "JSON that is not an object"
        )
    return body


def needing(exc: GraphRequestFailed, where: str, permission: str) -> GraphRequestFailed:
    """A 403 of a read (GET `where`) that names the permission this read needs instead of
    the write permission; the same status, code and request id."""
    text = f"Graph GET {where}: 403 {exc.code}: {exc.graph_message} keyshift needs {permission}."
    if exc.request_id:
        text += f" (request-id {exc.request_id})"
    return GraphRequestFailed(
        text,
        status=exc.status,
        code=exc.code,
        graph_message=exc.graph_message,
        request_id=exc.request_id,
    )


def _permanent(
    method: str, where: str, status: int, *, code: str, message: str, request_id: str | None
) -> GraphRequestFailed:
    text = f"Graph {method} {where}: {status} {code}: {message}"
    if status == 403 and code == "Authorization_RequestDenied":
        text += f" keyshift needs {NEEDED_PERMISSION}."
    if request_id:
        text += f" (request-id {request_id})"
    return GraphRequestFailed(
        text, status=status, code=code, graph_message=message, request_id=request_id
    )
