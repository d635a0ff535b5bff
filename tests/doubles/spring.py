"""A local HTTP double of a Spring Boot application's actuator with Spring Cloud's
`refresh` endpoint, driven through httpx by the `spring_refresh` target.

Documented behaviours it follows:

- Discovery page (https://docs.spring.io/spring-boot/reference/actuator/endpoints.html,
  "Hypermedia for Actuator Web Endpoints"; https://docs.spring.io/spring-boot/api/rest/actuator/index.html):
  `GET /actuator` answers `{"_links": {"self": {"href", "templated": false},
  "<endpoint id>": {"href", "templated"}, ...}}` listing only the exposed endpoints,
  with absolute hrefs built from the request's host.
- Exposure (same page, "Exposing Endpoints"): over HTTP only `health` is exposed
  by default; others need `management.endpoints.web.exposure.include`. A path of
  an endpoint that is not exposed answers 404 like any unknown path, with Spring's
  error body `{"timestamp", "status", "error", "path"}`.
- Refresh (https://docs.spring.io/spring-cloud-commons/reference/spring-cloud-commons/application-context-services.html,
  "Endpoints"): `POST /actuator/refresh` reloads the configuration and answers 200
  with a JSON array of the property keys that changed (`[]` when none). It is a
  write operation: a GET answers 405.
- Actuator answers carry `Content-Type: application/vnd.spring-boot.actuator.v3+json`.
- Spring Security (https://docs.spring.io/spring-security/reference/servlet/authentication/passwords/basic.html):
  without valid credentials 401 with `WWW-Authenticate: Basic realm="Realm"` (or
  `Bearer` for a resource server); authenticated without the needed role 403.

What it keeps: the property keys waiting to be reported by the next refresh, and
`requests`: method, path and the authorization scheme with whether it was
accepted, never a header value or a password.
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.doubles.http import NoDelayHandler

ACTUATOR_TYPE = "application/vnd.spring-boot.actuator.v3+json"


@dataclass(frozen=True)
class LoggedRequest:
    """One request the double received: no header values, no body."""

    method: str
    path: str
    auth_scheme: str | None
    """`Basic`, `Bearer`, another scheme's name, or None without an Authorization header."""
    authorized: bool


@dataclass
class Fault:
    """An answer forced onto the next matching request instead of the real one."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class SpringActuatorDouble:
    """`/actuator` discovery, `/actuator/health` and `POST /actuator/refresh` on 127.0.0.1.

    Use as a context manager; `base_url` is `http://127.0.0.1:PORT`. Switches:
    `exposed` (endpoint ids), `basic` / `bearer` (required credentials), `forbidden`
    (authenticated callers lack the role: 403), `faults` (answers forced on the next
    requests, in order), `changed_keys` (what the next refresh reports).
    """

    def __init__(self, *, base_path: str = "/actuator") -> None:
        self.base_path = base_path
        self.exposed: set[str] = {"health", "info", "refresh"}
        self.basic: tuple[str, str] | None = None
        self.bearer: str | None = None
        self.forbidden = False
        self.faults: list[Fault] = []
        self.changed_keys: list[str] = []
        self.refreshes = 0
        self.requests: list[LoggedRequest] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the double first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def refresh_url(self) -> str:
        return f"{self.base_url}{self.base_path}/refresh"

    def posts(self) -> list[LoggedRequest]:
        return [r for r in self.requests if r.method == "POST"]

    def __enter__(self) -> SpringActuatorDouble:
        double = self

        class Handler(NoDelayHandler):
            def do_GET(self) -> None:
                double._handle(self, "GET")

            def do_POST(self) -> None:
                double._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # --- request handling ---------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)  # the refresh endpoint takes no body
        path = handler.path.split("?", 1)[0]
        scheme, authorized = self._check_auth(handler.headers.get("Authorization"))
        with self._lock:
            self.requests.append(LoggedRequest(method, path, scheme, authorized))
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            time.sleep(fault.delay)
            self._send(handler, fault.status, self._error(fault.status, path), fault.headers)
            return
        if not authorized:
            challenge = "Bearer" if self.bearer is not None else 'Basic realm="Realm"'
            self._send(handler, 401, self._error(401, path), {"WWW-Authenticate": challenge})
            return
        if self.forbidden and path.startswith(self.base_path):
            self._send(handler, 403, self._error(403, path))
            return
        self._route(handler, method, path)

    def _route(self, handler: BaseHTTPRequestHandler, method: str, path: str) -> None:
        base = self.base_path
        if path in (base, base + "/") and method == "GET":
            self._send(handler, 200, self._discovery(handler))
        elif path == f"{base}/health" and "health" in self.exposed and method == "GET":
            self._send(handler, 200, {"status": "UP"})
        elif path == f"{base}/refresh" and "refresh" in self.exposed:
            if method != "POST":
                self._send(handler, 405, self._error(405, path))
                return
            with self._lock:
                changed, self.changed_keys = self.changed_keys, []
                self.refreshes += 1
            self._send(handler, 200, changed)
        else:
            self._send(handler, 404, self._error(404, path))

    def _check_auth(self, header: str | None) -> tuple[str | None, bool]:
        scheme, _, credentials = (header or "").partition(" ")
        name = scheme or None
        if self.basic is None and self.bearer is None:
            return name, True
        if self.bearer is not None and scheme == "Bearer":
            return name, hmac.compare_digest(credentials.encode(), self.bearer.encode())
        if self.basic is not None and scheme == "Basic":
            try:
                decoded = base64.b64decode(credentials, validate=True)
            except ValueError:
                return name, False
            expected = f"{self.basic[0]}:{self.basic[1]}".encode()
            return name, hmac.compare_digest(decoded, expected)
        return name, False

    def _discovery(self, handler: BaseHTTPRequestHandler) -> dict[str, Any]:
        root = f"http://{handler.headers.get('Host')}{self.base_path}"
        links: dict[str, Any] = {"self": {"href": root, "templated": False}}
        for endpoint in sorted(self.exposed):
            links[endpoint] = {"href": f"{root}/{endpoint}", "templated": False}
        return {"_links": links}

    def _error(self, status: int, path: str) -> dict[str, Any]:
        reasons = {
            401: "Unauthorized",
            403: "Forbidden",
            404: "Not Found",
            405: "Method Not Allowed",
            429: "Too Many Requests",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }
        return {
            "timestamp": datetime.now(UTC).isoformat(),
            "status": status,
            "error": reasons.get(status, "Error"),
            "path": path,
        }

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: object,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        content_type = ACTUATOR_TYPE if status < 400 else "application/json"
        handler.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


@contextmanager
def spring_actuator(**options: Any) -> Iterator[SpringActuatorDouble]:
    with SpringActuatorDouble(**options) as double:
        yield double
