"""What every command shares: the consoles, one error line and an exit code, the
actor, where an answer comes from (the local store or `--server URL`), time formatting.

Commands import the store, the service layer and the client when they run, not at
start-up: `keyshift --help` and `--version` load none of them (a test holds it).

Exit codes: 0 success; 1 an operation failed or a rotation did not end healthy;
2 a refused estate file or bad option; 3 the audit chain (or an evidence bundle) does not
verify.
"""

from __future__ import annotations

import functools
import getpass
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from keyshift.cli.output import err
from keyshift.domain.states import WAITING_STATES, RotationState
from keyshift.errors import AuditChainBroken, EstateInvalid, KeyshiftError, ServerRefused

if TYPE_CHECKING:
    from keyshift.client import Client
    from keyshift.store.store import Store

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

HEALTHY = {RotationState.COMPLETED, *WAITING_STATES}
"""The states a rotation command exits 0 in (in both modes)."""


def actor() -> str:
    explicit = os.environ.get("KEYSHIFT_ACTOR")
    if explicit:
        return explicit
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


def exit_on_error(func: F) -> F:
    """Turn keyshift errors into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EstateInvalid as exc:
            for problem in exc.problems:
                err.print(f"error: {problem}", markup=False)
            raise typer.Exit(2) from None
        except AuditChainBroken as exc:
            err.print(f"audit chain BROKEN at {exc}", markup=False)
            raise typer.Exit(3) from None
        except ServerRefused as exc:
            # The server's refusal exits as the same error would locally: a refused estate
            # file 2 with one line per problem, everything else 1.
            if exc.code == ESTATE_INVALID and exc.problems:
                for path, message in exc.problems:
                    err.print(f"error: {path}: {message}", markup=False)
                raise typer.Exit(2) from None
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None
        except KeyshiftError as exc:
            err.print(f"error: {exc}", markup=False)
            raise typer.Exit(1) from None
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            # A bug or an unexpected library error: one line, no traceback (whose
            # frames could hold values), and the first line of the message only
            # (driver errors append statements and parameters below it).
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            err.print(f"error: internal error ({exc.__class__.__name__}): {first}", markup=False)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def bad_usage(message: str) -> NoReturn:
    """Refuse a bad option or argument: `error: message` on stderr and exit code 2."""
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(2) from None


@contextmanager
def open_store(env: dict[str, str] | None = None) -> Iterator[Store]:
    if env is None and os.environ.get(SERVER_ENV):
        refuse_embedded()
    from keyshift.store.store import Store

    store = Store.open(env if env is not None else dict(os.environ))
    try:
        yield store
    finally:
        store.close()


# Server mode (issue 7): `--server URL` / KEYSHIFT_SERVER, with KEYSHIFT_TOKEN ----------

SERVER_ENV = "KEYSHIFT_SERVER"

TOKEN_ENV = "KEYSHIFT_TOKEN"  # noqa: S105 (the variable's name, not a token)

SERVER_COMMANDS = (
    "alerts",
    "apply",
    "approvals",
    "approvals show",
    "approve",
    "audit export",
    "audit verify",
    "entra list",
    "entra report",
    "entra summary",
    "entra sync",
    "evidence",
    "foreign",
    "freeze",
    "freezes",
    "history",
    "impact",
    "import",
    "integrations test",
    "notifications",
    "notifications test",
    "plan",
    "preflight",
    "reject",
    "resume",
    "roles list",
    "rollback",
    "rotate",
    "show",
    "status",
    "tokens create",
    "tokens list",
    "tokens revoke",
    "unfreeze",
    "users add",
    "users disable",
    "users list",
    "versions",
)
"""The commands that can talk to a server (each has `--server`); the others run embedded
only, and refuse while KEYSHIFT_SERVER is set."""

ESTATE_INVALID = "estate-invalid"
"""The problem code of a refused estate document."""

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        show_envvar=True,
        help="Ask this keyshift server (e.g. https://keyshift.example:8080) instead of the "
        f"local store, with the API token in {TOKEN_ENV}.",
    ),
]


def client_of(server: str) -> Client:
    """A client of `server` with the token from KEYSHIFT_TOKEN (never a flag, so it stays
    out of shell history and process listings)."""
    from keyshift.client import Client

    return Client(server, os.environ.get(TOKEN_ENV) or None)


def answer(server: str | None, remote: Callable[[Client], T], local: Callable[[Store], T]) -> T:
    """A command's answer from the server (`remote`) when `server` is set, else from the
    local store (`local`): the one place that decides where it comes from."""
    if server:
        with client_of(server) as client:
            return remote(client)
    with open_store() as store:
        return local(store)


def refuse_embedded() -> NoReturn:
    """With KEYSHIFT_SERVER set, a command that cannot use the server would silently act
    on a local store instead; refuse rather than change the wrong estate."""
    raise KeyshiftError(
        f"{SERVER_ENV} is set, but this command runs only on the local store; unset "
        f"{SERVER_ENV} to run it here (server mode: {', '.join(SERVER_COMMANDS)})"
    )


def embedded_only() -> None:
    """For commands that open no store of the test's choosing (`serve`, `demo`)."""
    if os.environ.get(SERVER_ENV):
        refuse_embedded()
