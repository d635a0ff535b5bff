"""Where a plugin acts, in words safe to show anyone: hosts, paths, names, never a value.

Plugins describe their own reach (`describe()` on each provider and target class)
for `keyshift impact` and approval requests. A URL in a config may carry a token
in its user:password, query or even its path (webhook URLs often do), so only
its scheme, host and port are shown.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def url_origin(url: str) -> str:
    """`scheme://host[:port]` of `url`: no user:password, path, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    origin = f"{parts.scheme}://{host}" if parts.scheme else host
    return f"{origin}:{port}" if port is not None else origin


def http_url(url: str, *, credentials_message: str) -> str:
    """`url` if it is an http:// or https:// URL with a host and no user:password.

    Raises ValueError (for pydantic validators); `credentials_message` is the error
    for a URL that carries user:password, so it can say where credentials go instead.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError("url must start with http:// or https://")
    import httpx  # noqa: PLC0415 (the host agent imports this module and makes no request)

    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise ValueError("url is not a valid URL") from None
    if not parsed.host:
        raise ValueError("url has no host")
    if parsed.userinfo:
        raise ValueError(credentials_message)
    return url


def this_host() -> str:
    """The host keyshift runs on: where actions without an agent act."""
    return socket.gethostname()
