"""A fault-injecting HTTP proxy in front of moto's Secrets Manager and KMS, for tests that
drive the real boto3 client through keyshift's engine and need AWS to fail at a chosen call.

moto answers every call it implements correctly and has no switch to fail one; the
`aws_secretsmanager` target's own tests answer from inside botocore instead, which an
engine-built client does not allow. This proxy sits at the target's `endpoint_url`,
forwards each request to moto unchanged and, when told to, answers a named action the
way Secrets Manager fails instead of forwarding it.

Documented behaviours it follows:

- Secrets Manager speaks the AWS JSON 1.1 protocol
  (https://docs.aws.amazon.com/secretsmanager/latest/apireference/Welcome.html): every
  call is `POST /` with `X-Amz-Target: secretsmanager.<Action>` and a JSON body; an error
  is a JSON body `{"__type": "<code>", "message": "..."}` with the HTTP status of the code.
- Error codes and statuses (https://docs.aws.amazon.com/secretsmanager/latest/apireference/CommonErrors.html):
  `InternalServiceError` 500, `ThrottlingException` 400 (Secrets Manager sends no
  `Retry-After`), `AccessDeniedException` 400.
- A request that gets no answer: the proxy reads it and closes the connection, which
  botocore reports as a connection error (the target's read timeout is botocore's 30 s,
  too long for a test to wait out; a dropped connection takes the same code path).

KMS speaks the same protocol (`X-Amz-Target: TrentService.<Action>`,
https://docs.aws.amazon.com/kms/latest/APIReference/CommonErrors.html): `fail("ReEncrypt",
"ThrottlingException")` throttles a re-wrap, `KMSInternalException` (500) fails it as
KMS's own errors do. Other services (S3's REST calls) pass through; their action is the
HTTP method.

`requests` records each call's action and the status answered (0 for a dropped one),
never a header or a body: bodies carry `SecretString`.
"""

from __future__ import annotations

import http.client
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final
from urllib.parse import urlsplit

from tests.doubles.http import NoDelayHandler

TARGET_PREFIXES: Final = ("secretsmanager.", "TrentService.")
_HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}
)
ERRORS: Final[dict[str, int]] = {
    "InternalServiceError": 500,
    "ThrottlingException": 400,
    "AccessDeniedException": 400,
    "KMSInternalException": 500,
}
"""The error codes the proxy can answer with, and the HTTP status the services use."""
DROP: Final = "drop"
"""A fault that reads the request and closes the connection without an answer."""


@dataclass(frozen=True)
class LoggedCall:
    """One call the proxy saw: the action and the status answered; no header, no body."""

    action: str
    status: int
    forwarded: bool


@dataclass
class _Fault:
    action: str
    kind: str
    """An error code of ERRORS, or DROP."""


class MotoProxy:
    """Forwards to moto at `upstream`; `fail(action, kind, n)` answers the next `n` calls
    of `action` with the error `kind` (or drops them) instead. Use as a context manager;
    `endpoint` is what boto3 takes as `endpoint_url`."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError("upstream must be http://host:port")
        self._upstream = (parts.hostname, parts.port)
        self.requests: list[LoggedCall] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MotoProxy:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the moto proxy is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, action: str, kind: str, n: int = 1) -> None:
        """Answer the next `n` calls of `action` (e.g. `PutSecretValue`) with the error code
        `kind` (a key of ERRORS) or, for DROP, with no answer at all."""
        if kind != DROP and kind not in ERRORS:
            raise ValueError(f"unknown fault {kind}")
        with self._lock:
            self._faults.extend([_Fault(action, kind)] * n)

    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def calls(self, action: str | None = None) -> list[LoggedCall]:
        with self._lock:
            return [c for c in self.requests if action is None or c.action == action]

    # --- the proxy -----------------------------------------------------------------------

    def _take_fault(self, action: str) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.action == action:
                    return self._faults.pop(i)
        return None

    def _log(self, action: str, status: int, forwarded: bool) -> None:
        with self._lock:
            self.requests.append(LoggedCall(action, status, forwarded))

    def forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            payload = answer.read()
            kept = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP_BY_HOP]
            return answer.status, kept, payload
        finally:
            conn.close()


def _error_answer(code: str) -> tuple[int, list[tuple[str, str]], bytes]:
    body = {"__type": code, "message": f"{code} injected by the test proxy"}
    return (
        ERRORS[code],
        [("Content-Type", "application/x-amz-json-1.1"), ("x-amzn-ErrorType", code)],
        json.dumps(body).encode(),
    )


def _handler_for(proxy: MotoProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(NoDelayHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            target = self.headers.get("X-Amz-Target", "")
            json_call = target.startswith(TARGET_PREFIXES)
            action = target.split(".", 1)[-1] if json_call else self.command
            fault = proxy._take_fault(action)
            if fault is not None and fault.kind == DROP:
                proxy._log(action, 0, forwarded=False)
                self.close_connection = True
                return
            if fault is not None:
                status, headers, payload = _error_answer(fault.kind)
            else:
                forwarded = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                status, headers, payload = proxy.forward(self.command, self.path, forwarded, body)
            proxy._log(action, status, forwarded=fault is None)
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            # Quiet: the call log above is what tests assert on.
            return

    return Handler
