"""`email`: one message per event over SMTP, with STARTTLS and authentication.

Behaviour of SMTP servers (RFC 5321, 3207, 4954) this follows: the client greets with
EHLO; with `starttls` (the default) it refuses to go on unless the server offers
STARTTLS, upgrades the connection (checking the server's certificate against the system
store or `ca_bundle`) and greets again; then it authenticates (AUTH, the password given
only as `password_from`) and sends. 4xx replies (421 service closing, 450/451/452 try
later) and a dropped connection are worth retrying; 5xx replies (535 authentication
refused, 550 mailbox unavailable, 554) and a certificate that does not verify are not.
`X-Keyshift-Delivery` carries the event's dedup key, and `Message-ID` is built from it,
so a repeat after a crash is the same message to mail filters.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from datetime import timedelta
from email.message import EmailMessage
from email.utils import formatdate
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from keyshift.context import PluginContext
from keyshift.domain.durations import Duration
from keyshift.errors import PermanentError, TransientError
from keyshift.notify.base import Message, Sent, plain_text, reveal_secret
from keyshift.sources import SecretRef


def _address(value: str) -> str:
    local, at, domain = value.rpartition("@")
    if not at or not local or ("." not in domain and domain != "localhost") or " " in value:
        raise ValueError(f"{value!r} is not an email address")
    return value


Address = Annotated[str, AfterValidator(_address)]


class EmailConfig(BaseModel):
    """An SMTP server and who receives the messages."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    host: str
    """The SMTP server (submission), e.g. `smtp.internal`."""
    port: int = Field(default=587, ge=1, le=65535)
    from_address: Address
    """The sender, e.g. `keyshift@example.com`."""
    to: list[Address] = Field(min_length=1)
    """Recipients of every message sent to this channel."""
    username: str | None = None
    password_from: SecretRef | None = None
    """`env:NAME` or `file:/path` holding the SMTP password (with `username`)."""
    starttls: bool = True
    """Upgrade to TLS before authenticating and sending, and refuse a server that does
    not offer it. Off only for a relay on this host that takes no password."""
    ca_bundle: str | None = None
    """PEM file of the CAs that sign the server's certificate (default: the system's)."""
    timeout: Duration = timedelta(seconds=30)
    """How long one delivery attempt may take."""
    subject_prefix: str = "[keyshift]"

    @model_validator(mode="after")
    def _coherent(self) -> EmailConfig:
        if (self.username is None) != (self.password_from is None):
            raise ValueError("set username and password_from together")
        if self.password_from is not None and not self.starttls:
            raise ValueError("a password is only sent after STARTTLS; keep starttls: true")
        return self


def email_of(message: Message, config: EmailConfig, dedup_key: str) -> EmailMessage:
    """The mail for an event: the title as subject, the message as plain text."""
    mail = EmailMessage()
    mail["Subject"] = f"{config.subject_prefix} {message.title}".strip()
    mail["From"] = config.from_address
    mail["To"] = ", ".join(config.to)
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = f"<{dedup_key}@keyshift>"
    mail["X-Keyshift-Event"] = message.kind
    mail["X-Keyshift-Delivery"] = dedup_key
    mail.set_content(plain_text(message, title=False))
    return mail


class EmailChannel:
    """Mails each event to the channel's recipients."""

    kind: ClassVar[str] = "email"
    Config: ClassVar[type[BaseModel]] = EmailConfig

    def __init__(self, config: EmailConfig, context: PluginContext) -> None:
        self.config = config
        self.context = context

    async def send(self, message: Message, *, dedup_key: str, thread: str | None) -> Sent:
        password = None
        if self.config.password_from is not None:
            password = reveal_secret(self.context, "password_from", self.config.password_from)
        mail = email_of(message, self.config, dedup_key)
        await asyncio.to_thread(self._deliver, mail, password)
        return Sent(f"accepted by {self.config.host} for {len(self.config.to)} recipient(s)")

    def _deliver(self, mail: EmailMessage, password: str | None) -> None:
        where = f"SMTP server {self.config.host}:{self.config.port}"
        try:
            with smtplib.SMTP(
                self.config.host, self.config.port, timeout=self.config.timeout.total_seconds()
            ) as smtp:
                smtp.ehlo()
                if self.config.starttls:
                    if not smtp.has_extn("starttls"):
                        raise PermanentError(f"{where} does not offer STARTTLS; not sent")
                    smtp.starttls(context=self._tls())
                    smtp.ehlo()
                if self.config.username is not None and password is not None:
                    smtp.login(self.config.username, password)
                smtp.send_message(mail)
        except smtplib.SMTPRecipientsRefused as exc:
            refused = ", ".join(f"{who} ({code})" for who, (code, _) in exc.recipients.items())
            raise PermanentError(f"{where} refused the recipients {refused}") from None
        except smtplib.SMTPResponseException as exc:
            raw = exc.smtp_error
            said = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw))[:80]
            reason = f"{where} answered {exc.smtp_code} {said}".strip()
            if 400 <= exc.smtp_code < 500:
                raise TransientError(reason) from None
            raise PermanentError(f"{reason}; not retried") from None
        except ssl.SSLError as exc:
            why = exc.reason or type(exc).__name__
            raise PermanentError(f"{where}: TLS failed ({why})") from None
        except smtplib.SMTPServerDisconnected:
            raise TransientError(f"{where} closed the connection") from None
        except smtplib.SMTPException as exc:  # e.g. AUTH not offered: retrying will not help
            raise PermanentError(f"{where}: {type(exc).__name__}") from None
        except OSError as exc:  # refused, unreachable, timed out (smtplib errors are OSErrors)
            raise TransientError(f"{where}: {type(exc).__name__}") from None

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_bundle)
