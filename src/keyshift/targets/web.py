"""Pieces the HTTP targets share: URL checks, backoff with jitter, `Retry-After`, and
`UrlTarget`, the base of the targets that call one URL.

URLs in target configs may carry a token in their path or query, so nothing here
quotes a URL or a library's error text (which may) in a message.

httpx is imported where a request is made or a URL parsed, not with the module: the
host agent imports this module (through the signing rules of `keyshift.targets.agent`)
and makes no request, and stays small without it.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from keyshift.context import PluginContext
from keyshift.domain.location import url_origin
from keyshift.errors import PermanentError
from keyshift.targets.base import BaseTarget

if TYPE_CHECKING:
    import httpx

MAX_WAIT: Final = 300.0
"""Longest single wait between attempts; a longer Retry-After is left to the engine."""
_LOOPBACK_NAMES = frozenset({"localhost"})


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine (localhost or a loopback address)."""
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def backoff_wait(base: timedelta, retry: int, retry_after: float | None) -> float:
    """Seconds before retry number `retry` (0 for the first): `base * 2**retry` plus up
    to 25% jitter, or the server's Retry-After if that is longer."""
    wait = base.total_seconds() * 2.0**retry
    jittered = wait * (1 + random.uniform(0, 0.25))  # noqa: S311 - jitter, not cryptography
    return max(jittered, retry_after or 0.0)


def retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """A numeric Retry-After in seconds from an answer's headers (httpx's, or those another
    client library carries on its error); HTTP-date forms are ignored."""
    value = str((headers or {}).get("Retry-After", "")).strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def retryable(status: int) -> bool:
    """Answers worth trying again: 429 Too Many Requests and every 5xx."""
    return status == 429 or status >= 500


@dataclass(frozen=True)
class Outcome:
    """One attempt: the status (None without an answer), if it failed, why, and the answer."""

    status: int | None
    failure: str | None = None
    retry_after: float | None = None
    response: httpx.Response | None = None


async def attempt(
    request: Awaitable[httpx.Response],
    what: str,
    refusal: Callable[[httpx.Response], str | None] | None = None,
) -> Outcome:
    """One request, judged the way the HTTP targets judge it: a 2xx answer succeeds; no
    answer (connection error, timeout), 429 and 5xx are failures worth retrying. Raises
    PermanentError for what retrying will not change: a malformed answer, or any other
    status, with `refusal`'s text for a status it explains or else "`what` answered
    HTTP <status>; not retried".
    """
    import httpx  # noqa: PLC0415 (see the module docstring: the host agent loads none)

    try:
        response = await request
    except httpx.TransportError as exc:
        # Only the class name: library texts may quote the URL, which can carry a token.
        return Outcome(None, type(exc).__name__)
    except httpx.HTTPError as exc:
        # A malformed answer (bad encoding, say): the receiver, not the network, is at fault.
        failure = type(exc).__name__
    else:
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(status, response=response)
        if retryable(status):
            return Outcome(status, f"HTTP {status}", retry_after(response.headers), response)
        refused = refusal(response) if refusal is not None else None
        raise PermanentError(refused or f"{what} answered HTTP {status}; not retried")
    # Raised outside the handler so the library's error (which may quote the URL) is not
    # chained.
    raise PermanentError(f"{what}: {failure}")


class UrlConfig(Protocol):
    """A target config that names the one URL its target calls."""

    @property
    def url(self) -> str: ...


UrlConfigT = TypeVar("UrlConfigT", bound=UrlConfig)


class UrlTarget(BaseTarget[UrlConfigT]):
    """A target that calls the one URL of its config (`webhook`, `spring_refresh`,
    `http_check`). The URL may carry a token in its path or query, so the target is
    described by the URL's origin and its messages name only the host (`_host`)."""

    def __init__(self, config: UrlConfigT, context: PluginContext) -> None:
        super().__init__(config, context)
        import httpx  # noqa: PLC0415 (see the module docstring)

        self._host = httpx.URL(config.url).host

    @classmethod
    def describe(cls, config: UrlConfig) -> dict[str, str]:
        """The server it calls: scheme, host and port (a path or query may hold a token)."""
        return {"url": url_origin(config.url)}
