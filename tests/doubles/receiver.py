"""A webhook receiver double: a real local HTTP server that records each POST, checks its
HMAC signature the way a receiver would, and answers from a script (status, headers,
delay)."""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.doubles.http import NoDelayHandler, serving


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_valid: bool | None
    status: int = 200
    """What the receiver answered."""


class Receiver:
    """A webhook receiver: records each request, checks its signature, answers from a script."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.requests: list[Received] = []
        self.signing_key: str | None = None
        self.lock = threading.Lock()
        receiver = self

        class Handler(NoDelayHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    answer = receiver.script.pop(0) if receiver.script else Answer()
                    receiver.requests.append(
                        Received(
                            self.path,
                            dict(self.headers),
                            body,
                            receiver.verify(self, body),
                            answer.status,
                        )
                    )
                time.sleep(answer.delay)
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output quiet

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/keyshift"

    def verify(self, handler: BaseHTTPRequestHandler, body: bytes) -> bool | None:
        """Recompute the HMAC the way a receiver would; None when there is no key."""
        if self.signing_key is None:
            return None
        timestamp = handler.headers.get("X-Keyshift-Timestamp", "")
        expected = hmac.new(
            self.signing_key.encode(), timestamp.encode() + b"." + body, hashlib.sha256
        ).hexdigest()
        given = handler.headers.get("X-Keyshift-Signature", "")
        return hmac.compare_digest(given, f"sha256={expected}")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    with serving(r.server):
        yield r
