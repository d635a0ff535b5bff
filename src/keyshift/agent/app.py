"""The agent's HTTPS API: signed requests from keyshift, checked against the host's allow-list.

    GET  /v1/health           agent id and version (no authentication; if signed, the
                              signature is checked too)
    POST /v1/preflight        could a file write / recycle / reload run? changes nothing
    POST /v1/files/write      set keys of a file (the `file` target's writer)
    POST /v1/files/restore    write previous values back, or remove the keys (None)
    POST /v1/iis/recycle      appcmd recycle apppool /apppool.name:NAME
    POST /v1/systemd/reload   systemctl reload|restart UNIT

Every POST is authenticated by an HMAC-SHA256 signature (see `keyshift.targets.agent`):
a bad signature, a timestamp more than five minutes off, or a nonce already used is
answered 401 before anything is read or changed. Requests carry values; answers and
logs carry paths, keys, pool and unit names, exit codes, never a value.
"""

from __future__ import annotations

import hmac
import json
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from keyshift import __version__
from keyshift.agent.config import AgentConfig
from keyshift.agent.nonces import NONCE, NonceLog
from keyshift.domain.problems import config_errors
from keyshift.errors import PermanentError, TransientError
from keyshift.process import inherited_env, run_program
from keyshift.targets.agent import (
    MAX_CLOCK_SKEW,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
)
from keyshift.targets.file import FileFormat, KeyFile

log = structlog.get_logger("keyshift.agent")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

STDERR_LINE_LIMIT = 200
"""Characters of a failed command's last stderr line kept in its error."""
MAX_BODY = 1024 * 1024
"""Bytes a request body may have; read before the signature is checked, so it is capped."""


class Refused(Exception):
    """An answer other than 200: `status` and a message that names no value."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileRequest(_Body):
    path: str = Field(min_length=1)
    format: FileFormat
    create: bool = True
    values: dict[str, str | None] = Field(min_length=1)


class PoolRequest(_Body):
    app_pool: str = Field(min_length=1)


class UnitRequest(_Body):
    unit: str = Field(min_length=1)
    mode: Literal["reload", "restart"] = "reload"


class CheckRequest(_Body):
    kind: Literal["file", "iis", "systemd"]
    path: str | None = None
    format: FileFormat | None = None
    create: bool = True
    keys: list[str] = Field(default_factory=list)
    app_pool: str | None = None
    unit: str | None = None
    mode: Literal["reload", "restart"] = "reload"


class Agent:
    """The agent's decisions: who may ask (signature, clock, nonce) and what may be done
    (the allow-list). `now` returns Unix seconds; tests pass their own clock."""

    def __init__(
        self,
        config: AgentConfig,
        key: bytes,
        *,
        now: Callable[[], float] = time.time,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._key = key
        self._now = now
        self._env = inherited_env(env if env is not None else os.environ)
        self._roots = [Path(os.path.realpath(p)) for p in config.allowed_paths]
        nonce_file = Path(config.nonce_file) if config.nonce_file is not None else None
        self._nonces = NonceLog(nonce_file, now=now())

    # Authentication --------------------------------------------------------------------

    def authenticate(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> None:
        """Raise Refused(401) unless the request is signed with the shared key, timed within
        the allowed skew, and its nonce is new. A nonce is remembered only once the
        signature verified, for as long as its timestamp would be accepted."""
        timestamp = headers.get(TIMESTAMP_HEADER, "")
        nonce = headers.get(NONCE_HEADER, "")
        given = headers.get(SIGNATURE_HEADER, "")
        if not (timestamp.isdigit() and nonce and given):
            raise Refused(401, "the request is not signed")
        if not NONCE.fullmatch(nonce):
            raise Refused(401, "the request's nonce is malformed")
        now = self._now()
        skew = MAX_CLOCK_SKEW.total_seconds()
        if abs(now - int(timestamp)) > skew:
            raise Refused(401, "the request's timestamp is more than 5 minutes off")
        expected = signature(self._key, method, path, timestamp=timestamp, nonce=nonce, body=body)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise Refused(401, "the request's signature does not verify")
        if self._nonces.seen(nonce, now):
            raise Refused(401, "the request's nonce was used before")
        self._nonces.add(nonce, int(timestamp) + skew)

    # Allow-list -------------------------------------------------------------------------

    def allowed_file(self, path: str) -> str:
        """The real path of `path` (symlinks resolved) if it lies under allowed_paths."""
        if not Path(path).is_absolute():
            raise Refused(403, f"{path} is not an absolute path")
        real = Path(os.path.realpath(path))
        if not any(real.is_relative_to(root) for root in self._roots):
            raise Refused(403, f"{path} is outside the agent's allowed_paths")
        return str(real)

    def allowed_pool(self, app_pool: str) -> None:
        if app_pool not in self.config.iis.app_pools:
            raise Refused(403, f"app pool {app_pool} is not in the agent's iis.app_pools")

    def allowed_unit(self, unit: str) -> None:
        if unit not in self.config.systemd.units:
            raise Refused(403, f"unit {unit} is not in the agent's systemd.units")

    # Operations --------------------------------------------------------------------------

    def write(self, request: FileRequest, *, restore: bool) -> dict[str, Any]:
        """Set (or on restore, remove for None) the keys; the answer says which and whether
        the file changed or was created."""
        if not restore and any(v is None for v in request.values.values()):
            raise Refused(400, "values: a write gives every key a text (restore removes)")
        real = self.allowed_file(request.path)
        keyfile = _keyfile(real, request.format, list(request.values), create=request.create)
        existed = keyfile.exists()
        changed = _file_call(lambda: keyfile.apply(request.values))
        facts = {
            "path": request.path,
            "keys": list(request.values),
            "changed": changed,
            "created": changed and not existed,
        }
        if restore:
            facts["removed"] = [k for k, v in request.values.items() if v is None]
        log.info("file restored" if restore else "file written", **facts)
        return facts

    def check(self, request: CheckRequest) -> dict[str, Any]:
        """Whether the step could run now; `reason` says why not. Changes nothing."""
        try:
            if request.kind == "file":
                if request.path is None or request.format is None or not request.keys:
                    raise Refused(400, "a file check needs path, format and keys")
                real = self.allowed_file(request.path)
                keyfile = _keyfile(real, request.format, request.keys, create=request.create)
                _file_call(keyfile.check)
            elif request.kind == "iis":
                if request.app_pool is None:
                    raise Refused(400, "an iis check needs app_pool")
                self.allowed_pool(request.app_pool)
                _present(self.config.iis.appcmd)
            else:
                if request.unit is None:
                    raise Refused(400, "a systemd check needs unit")
                self.allowed_unit(request.unit)
                _present(self.config.systemd.systemctl)
        except Refused as exc:
            if exc.status == 400:
                raise
            return {"ready": False, "reason": exc.message}
        return {"ready": True}

    async def recycle(self, request: PoolRequest) -> dict[str, Any]:
        self.allowed_pool(request.app_pool)
        argv = [self.config.iis.appcmd, "recycle", "apppool", f"/apppool.name:{request.app_pool}"]
        facts = await self._run(argv, f"recycle of app pool {request.app_pool}")
        log.info("app pool recycled", app_pool=request.app_pool, **facts)
        return {"app_pool": request.app_pool, **facts}

    async def reload(self, request: UnitRequest) -> dict[str, Any]:
        self.allowed_unit(request.unit)
        argv = [self.config.systemd.systemctl, request.mode, request.unit]
        facts = await self._run(argv, f"{request.mode} of unit {request.unit}")
        log.info("unit reloaded", unit=request.unit, mode=request.mode, **facts)
        return {"unit": request.unit, "mode": request.mode, **facts}

    async def _run(self, argv: list[str], what: str) -> dict[str, Any]:
        """Run a command the allow-list admitted; a non-zero exit is refused (422) with the
        exit code and the last line of stderr."""
        try:
            ran = await run_program(
                argv, env=self._env, cwd=None, limit=self.config.command_timeout
            )
        except TransientError as exc:
            raise Refused(503, f"{what}: {exc}") from None
        except PermanentError as exc:
            raise Refused(422, f"{what}: {exc}") from None
        if ran.exit_code != 0:
            lines = ran.stderr_tail.strip().splitlines()
            last = lines[-1].strip()[:STDERR_LINE_LIMIT] if lines else ""
            log.warning("command failed", what=what, exit_code=ran.exit_code)
            raise Refused(422, f"{what} failed with {ran.how}" + (f": {last}" if last else ""))
        return {"exit_code": 0, "duration_ms": ran.duration_ms}


def _keyfile(path: str, file_format: str, keys: list[str], *, create: bool) -> KeyFile:
    return _file_call(lambda: KeyFile(path, file_format, keys, create=create))


def _file_call(call: Callable[[], T]) -> T:
    """Run a file operation; its refusals become answers (their texts name no value)."""
    try:
        return call()
    except TransientError as exc:
        raise Refused(503, str(exc)) from None
    except PermanentError as exc:
        raise Refused(422, str(exc)) from None


def _present(program: str) -> None:
    if shutil.which(program) is None:
        raise Refused(422, f"{program} is not an executable program on this host")


def _parse(model: type[M], body: bytes) -> M:
    """The request body as `model`; 400 naming the bad fields (never their values)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise Refused(400, "the body is not JSON") from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Refused(400, "; ".join(str(e) for e in config_errors(exc))) from None


async def _capped_body(request: Request) -> bytes:
    """The body, refused (413) past MAX_BODY bytes without reading the rest."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise Refused(413, f"the body is over {MAX_BODY} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY:
            raise Refused(413, f"the body is over {MAX_BODY} bytes")
    return bytes(body)


Handler = Callable[[Agent, bytes], Awaitable[dict[str, Any]]]


async def _preflight(agent: Agent, body: bytes) -> dict[str, Any]:
    return agent.check(_parse(CheckRequest, body))


async def _write(agent: Agent, body: bytes) -> dict[str, Any]:
    return agent.write(_parse(FileRequest, body), restore=False)


async def _restore(agent: Agent, body: bytes) -> dict[str, Any]:
    return agent.write(_parse(FileRequest, body), restore=True)


async def _recycle(agent: Agent, body: bytes) -> dict[str, Any]:
    return await agent.recycle(_parse(PoolRequest, body))


async def _reload(agent: Agent, body: bytes) -> dict[str, Any]:
    return await agent.reload(_parse(UnitRequest, body))


def create_agent_app(agent: Agent) -> Starlette:
    """The agent's routes over `agent`."""

    def signed(handler: Handler) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = await _capped_body(request)
                agent.authenticate(request.method, request.url.path, request.headers, body)
                answer = await handler(agent, body)
            except Refused as exc:
                log.info("request refused", path=request.url.path, status=exc.status)
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            return JSONResponse(answer)

        return endpoint

    async def health(request: Request) -> JSONResponse:
        answer: dict[str, Any] = {"agent_id": agent.config.agent_id, "version": __version__}
        if any(h in request.headers for h in (SIGNATURE_HEADER, TIMESTAMP_HEADER, NONCE_HEADER)):
            # A signed health check (`keyshift integrations test`) proves the shared key.
            try:
                agent.authenticate("GET", request.url.path, request.headers, b"")
            except Refused as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            answer["signed"] = True
        return JSONResponse(answer)

    routes = [
        Route("/v1/health", health, methods=["GET"]),
        Route("/v1/preflight", signed(_preflight), methods=["POST"]),
        Route("/v1/files/write", signed(_write), methods=["POST"]),
        Route("/v1/files/restore", signed(_restore), methods=["POST"]),
        Route("/v1/iis/recycle", signed(_recycle), methods=["POST"]),
        Route("/v1/systemd/reload", signed(_reload), methods=["POST"]),
    ]
    return Starlette(routes=routes)
