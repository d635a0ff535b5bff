"""An ACME server that only rate limits: its directory and nonces are real RFC 8555, and
every signed request is answered `429 urn:ietf:params:acme:error:rateLimited` with the
Retry-After the test sets. pebble never rate limits, so this is how a client's handling
of a CA's limits is proven, through the real acme library."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.doubles.http import serving
from tests.doubles.tls import TlsFiles


@dataclass
class RateLimitingCa:
    retry_after: str = "30"
    """The Retry-After header of each refusal ("" for none)."""
    posts: list[str] = field(default_factory=list)
    """The path of every signed request received, in order."""
    url: str = ""


@contextmanager
def rate_limiting_ca(tls: TlsFiles) -> Iterator[RateLimitingCa]:
    """The double over TLS (the `tls` fixture's server certificate) on a free port."""
    ca = RateLimitingCa()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _nonce(self) -> None:
            nonce = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
            self.send_header("Replay-Nonce", nonce)

        def do_GET(self) -> None:
            body = json.dumps(
                {
                    "newNonce": f"{ca.url}/nonce",
                    "newAccount": f"{ca.url}/new-account",
                    "newOrder": f"{ca.url}/new-order",
                    "revokeCert": f"{ca.url}/revoke",
                    "keyChange": f"{ca.url}/key-change",
                    "meta": {},
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self._nonce()
            self.end_headers()

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            ca.posts.append(self.path)
            body = json.dumps(
                {
                    "type": "urn:ietf:params:acme:error:rateLimited",
                    "detail": "too many new registrations from this address",
                    "status": 429,
                }
            ).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/problem+json")
            if ca.retry_after:
                self.send_header("Retry-After", ca.retry_after)
            self._nonce()
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = tls.server_context().wrap_socket(server.socket, server_side=True)
    ca.url = f"https://127.0.0.1:{server.server_address[1]}"
    with serving(server):
        yield ca
