"""What the ticketing doubles (`jira`, `servicenow`) share: a real local HTTP server
handing each request to the double, a record of every request, and scripted failures
(`fail(status, times, retry_after=...)` answers the next `times` requests with `status`,
before the credentials are even looked at, as a gateway's rate limit does)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit

from tests.doubles.http import NoDelayHandler, serving

Answer = tuple[int, dict[str, str], Any]
"""Status, headers and a JSON body (None for an empty one)."""


@dataclass(frozen=True)
class Request:
    """One request as the double received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    """By lower-case name."""
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Failure:
    status: int
    times: int
    retry_after: str | None


@dataclass
class Scripted:
    """The requests received and the failures still to answer with."""

    requests: list[Request] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def fail(self, status: int, times: int = 1, *, retry_after: float | None = None) -> None:
        after = None if retry_after is None else str(int(retry_after))
        self.failures.append(_Failure(status, times, after))

    def scripted(self) -> Answer | None:
        if not self.failures:
            return None
        failure = self.failures[0]
        failure.times -= 1
        if failure.times <= 0:
            self.failures.pop(0)
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
        return failure.status, headers, {"error": "scripted failure"}

    def texts(self) -> list[str]:
        """Every request's headers and body as one string each, to look for secrets."""
        return [f"{r.method} {r.path}?{r.query} {r.headers} {r.body}" for r in self.requests]


class _Double(Protocol):
    url: str
    requests: list[Request]
    lock: threading.Lock

    def answer(self, request: Request) -> Answer: ...


def serve(double: _Double) -> Iterator[Any]:
    """Run `double` on a free port of 127.0.0.1 until the generator is closed."""

    class Handler(NoDelayHandler):
        def _handle(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            parts = urlsplit(self.path)
            request = Request(
                self.command,
                parts.path,
                parts.query,
                {k.lower(): v for k, v in self.headers.items()},
                body.decode("utf-8", "replace"),
            )
            with double.lock:
                double.requests.append(request)
                status, headers, answer = double.answer(request)
            raw = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if raw:
                self.send_header("Content-Type", "application/json;charset=UTF-8")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    double.url = f"http://127.0.0.1:{server.server_address[1]}"
    with serving(server):
        yield double
