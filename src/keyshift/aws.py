"""What every AWS plugin shares: where and as whom it calls AWS, its boto3 clients, and
how botocore's errors become keyshift's.

`AwsConnection` holds the region, an optional endpoint and the key references; the
plugins' config models extend it. `AwsClients` makes one boto3 Session per plugin
on first use and runs each (synchronous) call in a worker thread. botocore's own
retries are off (its sleeps would hold real time): a throttled or failed call is a
`TransientError` for the engine to retry on its clock, an access denial or a bad
request a `PermanentError`. Messages name the service, the action, the resource and
AWS's error code; a known secret is scrubbed from AWS's text as a second defence, and
botocore's DEBUG records of request and response bodies are dropped, since they carry
secret strings, plaintext data keys and ciphertext blobs.

boto3 is imported with this module, which only the AWS providers and targets import,
when their type is first used.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import boto3
import botocore.config
import botocore.exceptions
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.context import PluginContext
from keyshift.domain.location import http_url, url_origin
from keyshift.errors import ConfigError, PermanentError, TransientError, scrub
from keyshift.sources import SecretRef

__all__ = [
    "CLIENT_CONFIG",
    "TRANSIENT_CODES",
    "AwsClients",
    "AwsConnection",
    "Service",
    "error_of",
    "translated",
]

TRANSIENT_CODES: Final = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "SlowDown",
        "InternalServiceError",
        "InternalFailure",
        "InternalError",
        "KMSInternalException",
        "DependencyTimeoutException",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_DENIED_CODES: Final = frozenset({"AccessDeniedException", "AccessDenied", "UnauthorizedOperation"})
_MAX_MESSAGE: Final = 300
CLIENT_CONFIG: Final = botocore.config.Config(
    # One attempt per call: the engine retries TransientError on its own (fake-able) clock.
    retries={"total_max_attempts": 1, "mode": "standard"},
    connect_timeout=10,
    read_timeout=30,
)


@dataclass(frozen=True)
class Service:
    """An AWS service as messages name it (`Secrets Manager`) and as boto3 and IAM do
    (`secretsmanager`)."""

    title: str
    name: str


class AwsConnection(BaseModel):
    """Where an AWS plugin calls and with which identity."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    region: str = Field(pattern=r"^[a-z]{2}(-[a-z]+)+-\d+$")
    """AWS region, e.g. `eu-west-1`."""
    endpoint_url: str | None = None
    """Endpoint to use instead of the public one (a VPC endpoint, a test server).
    http:// or https://."""
    access_key_id_from: SecretRef | None = None
    """`env:NAME` or `file:/path` naming the access key id. Without it (and
    `secret_access_key_from`) boto3's standard credential chain applies."""
    secret_access_key_from: SecretRef | None = None
    """`env:NAME` or `file:/path` naming the secret access key; set with `access_key_id_from`."""

    @field_validator("endpoint_url")
    @classmethod
    def _http_endpoint(cls, url: str | None) -> str | None:
        if url is None:
            return None
        return http_url(url, credentials_message="endpoint_url must not carry credentials")

    @model_validator(mode="after")
    def _keys_in_pairs(self) -> AwsConnection:
        if (self.access_key_id_from is None) != (self.secret_access_key_from is None):
            raise ValueError("set access_key_id_from and secret_access_key_from together")
        return self

    def where(self) -> dict[str, str]:
        """The region and a non-default endpoint's origin, for `describe`."""
        where = {"region": self.region}
        if self.endpoint_url:
            where["endpoint"] = url_origin(self.endpoint_url)
        return where


class AwsClients:
    """One plugin's boto3 clients, made (with their own Session) on first use."""

    def __init__(self, config: AwsConnection, context: PluginContext) -> None:
        self.config = config
        self.context = context
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def client(self, service: Service) -> Any:
        """The boto3 client of `service`. Raises ConfigError when a configured key
        reference cannot be read."""
        with self._lock:
            if service.name not in self._clients:
                if self._session is None:
                    self._session = self._new_session()
                self._clients[service.name] = self._session.client(
                    service.name, endpoint_url=self.config.endpoint_url, config=CLIENT_CONFIG
                )
            return self._clients[service.name]

    def _new_session(self) -> Any:
        config = self.config
        keys: dict[str, str] = {}
        if config.access_key_id_from and config.secret_access_key_from:
            key_id = self.context.secret("access_key_id_from", config.access_key_id_from)
            key = self.context.secret("secret_access_key_from", config.secret_access_key_from)
            keys = {"aws_access_key_id": key_id.reveal(), "aws_secret_access_key": key.reveal()}
        return boto3.session.Session(region_name=config.region, **keys)

    async def call(
        self,
        service: Service,
        action: str,
        subject: str,
        *,
        secrets: Sequence[str] = (),
        handled: Mapping[str, type[Exception]] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """One call (`action` as AWS names it, e.g. `ReEncrypt`) in a worker thread, its
        errors translated (see `translated`); `subject` names the resource in messages."""
        try:
            client = await asyncio.to_thread(self.client, service)
        except ConfigError as exc:
            raise PermanentError(f"AWS credentials for {subject}: {exc}") from None
        with translated(service, action, subject, secrets=secrets, handled=handled):
            method = getattr(client, _snake(action))
            answer: dict[str, Any] = await asyncio.to_thread(method, **params)
            return answer


@contextmanager
def translated(
    service: Service,
    action: str,
    subject: str,
    *,
    secrets: Sequence[str] = (),
    handled: Mapping[str, type[Exception]] | None = None,
) -> Iterator[None]:
    """botocore errors as keyshift errors naming the service, the action, `subject` and
    the AWS error code. An error code in `handled` raises its exception instead (one the
    caller expects and catches, such as "no such secret"). `secrets` are scrubbed from
    AWS's message."""
    try:
        yield
    except botocore.exceptions.ClientError as exc:
        code, status, message = error_of(exc.response)
        if handled and code in handled:
            raise handled[code] from None
        message = scrub(message, secrets)
        text = f"{service.title} {action} on {subject}: {code}" + (
            f" ({message})" if message else ""
        )
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            raise TransientError(text) from None
        if code in _DENIED_CODES or status == 403:
            raise PermanentError(
                f"access denied: the identity may not {service.name}:{action} on {subject} ({code})"
            ) from None
        raise PermanentError(text) from None
    except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
        # Only the class name: connection texts quote the endpoint URL.
        raise TransientError(
            f"{service.title} {action} on {subject}: {type(exc).__name__}"
        ) from None
    except botocore.exceptions.NoCredentialsError:
        raise PermanentError(
            f"no AWS credentials for {subject}: set access_key_id_from and "
            "secret_access_key_from, or provide them through the standard chain"
        ) from None
    except botocore.exceptions.BotoCoreError as exc:
        # Class name only: a parameter validation text may quote a parameter.
        raise PermanentError(
            f"{service.title} {action} on {subject}: {type(exc).__name__}"
        ) from None


def _snake(action: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", action).lower()


def error_of(response: Mapping[str, Any]) -> tuple[str, int, str]:
    """(code, HTTP status, message) of an AWS error answer.

    A code that is only a number means the body was not AWS's error shape (a proxy, a
    server answering otherwise, an S3 HEAD without a body): then the status stands for
    the code and the body, which may be anything, is not quoted.
    """
    error = response.get("Error") or {}
    status = int((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or "")
    if not code or code.isdigit():
        return f"HTTP {status}", status, ""
    return code, status, message[:_MAX_MESSAGE]


_PAYLOAD_WORDS: Final = (
    "SecretString",
    "SecretBinary",
    "Plaintext",
    "CiphertextBlob",
    "PutObject",
    "GetObject",
)
"""What marks a botocore DEBUG record that quotes a body: a secret value (Secrets
Manager), a plaintext data key or a ciphertext blob (KMS), an object's bytes (S3)."""


class _DropSecretPayloads(logging.Filter):
    """botocore logs whole request and response bodies at DEBUG. Those that may carry a
    value are dropped, so a debug log never holds one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot be formatted is dropped, not guessed at
            return False
        return not any(word in text for word in _PAYLOAD_WORDS)


_FILTER = _DropSecretPayloads()
for _name in ("botocore.endpoint", "botocore.parsers", "botocore.hooks", "botocore.auth"):
    logging.getLogger(_name).addFilter(_FILTER)
