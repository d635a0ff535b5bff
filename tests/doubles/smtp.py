"""A real SMTP server for the email channel's tests: aiosmtpd on 127.0.0.1, speaking
STARTTLS with the test CA's certificate and requiring AUTH (LOGIN/PLAIN) after it.

Behaviour covered (RFC 5321, 3207, 4954, as aiosmtpd implements them): EHLO lists
STARTTLS before TLS and AUTH after it; MAIL is refused with 530 before STARTTLS and
before AUTH; a wrong password is 535. `fail(code, times)` answers the next DATA with a
scripted reply (e.g. 451 try later, 554 rejected).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.doubles.tls import TlsFiles
from tests.servers import free_port

USER = "keyshift-mailer"
PASSWORD = "smtp-password-not-in-any-output"


@dataclass
class MailServer:
    host: str = "127.0.0.1"
    port: int = 0
    messages: list[Message] = field(default_factory=list)
    """Every message accepted, parsed."""
    logins: list[str] = field(default_factory=list)
    failures: list[tuple[str, int]] = field(default_factory=list)

    def fail(self, reply: str, times: int = 1) -> None:
        self.failures.append((reply, times))

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.failures:
            reply, times = self.failures[0]
            if times <= 1:
                self.failures.pop(0)
            else:
                self.failures[0] = (reply, times - 1)
            return reply
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        if not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = data.login.decode() == USER and data.password.decode() == PASSWORD
        if ok:
            self.logins.append(data.login.decode())
        # handled=False: the server itself answers (535 on a failure).
        return AuthResult(success=ok, handled=False)

    def channel(self, tls: TlsFiles, **overrides: Any) -> dict[str, Any]:
        """An `email` channel of the estate that reaches this server."""
        return {
            "name": "ops-mail",
            "type": "email",
            "host": self.host,
            "port": self.port,
            "from_address": "keyshift@example.test",
            "to": ["oncall@example.test"],
            "username": USER,
            "password_from": "env:KS_TEST_SMTP_PASSWORD",
            "ca_bundle": str(tls.ca_path),
            **overrides,
        }


@pytest.fixture
def mail_server(tls: TlsFiles) -> Iterator[MailServer]:
    server = MailServer(port=free_port())
    controller = Controller(
        server,
        hostname=server.host,
        port=server.port,
        server_hostname="localhost",
        tls_context=tls.server_context(),
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=server.authenticate,
    )
    controller.start()
    try:
        yield server
    finally:
        controller.stop()
