"""`Client`: the keyshift REST API over HTTP, for the CLI's `--server URL` mode.

Answers come back as the service layer's own view types (`StatusRow`,
`RotationSummary`, `ApprovalView`), so the CLI renders the same tables whether it
runs embedded or talks to a server. A problem-JSON answer becomes a `ServerRefused`
carrying the server's stable `code` and its `detail`; a server that cannot be reached
becomes `ServerUnreachable`. Both are `KeyshiftError`s, so the CLI prints one line.

The API token travels only in the `Authorization` header; it is never part of a
message, and responses never carry a secret value.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
from pydantic import TypeAdapter, ValidationError

from keyshift import __version__
from keyshift.errors import KeyshiftError
from keyshift.service.approvals import ApprovalView
from keyshift.service.rotations import RotationSummary, StatusRow

T = TypeVar("T")

TIMEOUT_SECONDS = 30.0
"""How long one request may take (connect, read) before the CLI gives up."""

PROBLEM_MEDIA_TYPE = "application/problem+json"


class ServerRefused(KeyshiftError):
    """The server answered with a problem document; `code` is its stable code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        self.status = status
        self.code = code
        self.detail = detail
        super().__init__(detail)


class ServerUnreachable(KeyshiftError):
    """No answer from the server (refused connection, name, TLS or timeout), or an
    answer that is not the keyshift API's."""


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

    # Use cases ------------------------------------------------------------------------

    def status_rows(self) -> list[StatusRow]:
        """`GET /v1/credentials`: one row per credential."""
        return self._get("/v1/credentials", list[StatusRow])

    def history_rows(self, credential: str) -> list[RotationSummary]:
        """`GET /v1/credentials/{name}/rotations`: every rotation, oldest first."""
        path = f"/v1/credentials/{quote(credential, safe='')}/rotations"
        return self._get(path, list[RotationSummary])

    def approval_requests(self, *, pending_only: bool = True) -> list[ApprovalView]:
        """`GET /v1/approvals`: pending requests (every request with `pending_only=False`)."""
        params = {} if pending_only else {"all": "true"}
        return self._get("/v1/approvals", list[ApprovalView], params=params)

    # Transport ------------------------------------------------------------------------

    def _get(self, path: str, shape: type[T], params: dict[str, str] | None = None) -> T:
        body = self._request("GET", path, params=params)
        try:
            return TypeAdapter(shape).validate_python(body)
        except ValidationError as exc:
            raise ServerUnreachable(
                f"{self.server}{path} answered with an unexpected document "
                f"({exc.error_count()} field problem(s)); is it a keyshift server of "
                f"version {__version__}?"
            ) from None

    def _request(self, method: str, path: str, *, params: dict[str, str] | None = None) -> Any:
        try:
            response = self._http.request(method, path, params=params)
        except httpx.HTTPError as exc:
            # The class and URL only: the request's headers (the token) are never shown.
            raise ServerUnreachable(
                f"cannot reach the keyshift server at {self.server} ({type(exc).__name__})"
            ) from None
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise ServerUnreachable(
                    f"{self.server}{path} did not answer JSON; is it a keyshift server?"
                ) from None
        raise _refusal(self.server, path, response)


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
    for item in problem.get("problems") or []:
        if isinstance(item, dict) and "path" in item and "message" in item:
            detail += f"; {item['path']}: {item['message']}"
    if code == "unauthenticated":
        detail += " (set KEYSHIFT_TOKEN to an API token for this server)"
    return ServerRefused(response.status_code, code, detail)
