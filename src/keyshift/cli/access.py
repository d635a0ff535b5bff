"""Who may call the API: `init`, `users`, `tokens` and `roles`."""

from __future__ import annotations

import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import typer

from keyshift.cli._common import (
    ServerOption,
    actor,
    answer,
    bad_usage,
    client_of,
    exit_on_error,
    open_store,
)
from keyshift.cli.output import Format, OutputOption, emit, err, new_table, out, when

if TYPE_CHECKING:
    from keyshift.service import identities

users_app = typer.Typer(
    help="Users and service accounts that may call the API.", no_args_is_help=True
)

tokens_app = typer.Typer(help="API tokens (stored hashed, shown once).", no_args_is_help=True)

roles_app = typer.Typer(help="The built-in roles and their permissions.", no_args_is_help=True)


def _lifetime(expires_in: str) -> timedelta | None:
    if expires_in == "never":
        return None
    from keyshift.domain.durations import parse_duration

    try:
        return parse_duration(expires_in)
    except ValueError as exc:
        bad_usage(f"--expires-in: {exc}")


def _print_token_once(issued: identities.IssuedToken) -> None:
    expires = when(issued.info.expires_at) if issued.info.expires_at else "never"
    err.print(
        f"API token {issued.info.prefix} for {issued.info.principal} (expires {expires}). "
        "It is shown once; store it now:",
        markup=False,
    )
    # The token alone on stdout, so `TOKEN=$(keyshift tokens create ...)` captures it.
    sys.stdout.write(issued.token.reveal() + "\n")


@exit_on_error
def init(
    name: Annotated[str, typer.Option(help="Name of the first admin user.")] = "admin",
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="Token lifetime, e.g. 90d, or never.")
    ] = "90d",
) -> None:
    """Create the first admin and print its API token once. Refused once an admin exists."""
    from keyshift.service import identities

    lifetime = _lifetime(expires_in)
    with open_store() as store:
        issued = identities.init_admin(store, name=name, actor=actor(), lifetime=lifetime)
    _print_token_once(issued)


@users_app.command("add")
@exit_on_error
def users_add(
    name: Annotated[str, typer.Argument(help="User or service account name.")],
    role: Annotated[list[str], typer.Option("--role", "-r", help="A built-in role (repeatable).")],
    service_account: Annotated[
        bool, typer.Option("--service-account", help="A service account, not a person.")
    ] = False,
    server: ServerOption = None,
) -> None:
    """Add a user (or service account) holding the given roles."""
    from keyshift.service import identities

    kind = "service_account" if service_account else "user"
    added = answer(
        server,
        lambda client: client.add_user(name, kind=kind, roles=role),
        lambda store: identities.add_principal(
            store, name=name, kind=kind, roles=role, actor=actor()
        ),
    )
    out.print(f"added {added.kind} {added.name} with roles {', '.join(added.roles)}")


@users_app.command("list")
@exit_on_error
def users_list(server: ServerOption = None, output: OutputOption = Format.TABLE) -> None:
    """Every user and service account with its roles."""
    from keyshift.service import identities

    found = answer(server, lambda client: client.users(), identities.list_principals)
    columns = ("name", "kind", "roles", "created", "created by", "disabled")
    rows = (
        (
            p.name,
            p.kind.replace("_", " "),
            ", ".join(p.roles),
            when(p.created_at),
            p.created_by,
            when(p.disabled_at) if p.disabled_at else "",
        )
        for p in found
    )
    title = f"Users and service accounts ({len(found)})"
    emit(output, found, lambda: out.print(new_table(title, columns, rows)))


@users_app.command("disable")
@exit_on_error
def users_disable(
    name: Annotated[str, typer.Argument(help="User or service account.")],
    server: ServerOption = None,
) -> None:
    """Disable a user or service account; its tokens stop working at once."""
    from keyshift.service import identities

    answer(
        server,
        lambda client: client.disable_user(name),
        lambda store: identities.disable_principal(store, name, actor=actor()),
    )
    out.print(f"disabled {name}")


@tokens_app.command("create")
@exit_on_error
def tokens_create(
    principal: Annotated[str, typer.Argument(help="User or service account.")],
    name: Annotated[str, typer.Option(help="What the token is for.")] = "api token",
    expires_in: Annotated[
        str, typer.Option("--expires-in", help="Lifetime, e.g. 90d, or never.")
    ] = "90d",
    server: ServerOption = None,
) -> None:
    """Create an API token and print it once (only its hash is stored)."""
    from keyshift.service import identities

    lifetime = _lifetime(expires_in)
    issued = answer(
        server,
        lambda client: client.create_token(principal, name=name, expires_in=expires_in),
        lambda store: identities.create_token(
            store, principal, name=name, lifetime=lifetime, actor=actor()
        ),
    )
    _print_token_once(issued)


@tokens_app.command("list")
@exit_on_error
def tokens_list(
    principal: Annotated[str | None, typer.Option(help="Only this principal's tokens.")] = None,
    server: ServerOption = None,
    output: OutputOption = Format.TABLE,
) -> None:
    """Every API token by id, with its state and dates (never the token)."""
    from keyshift.service import identities

    found = answer(
        server,
        lambda client: client.tokens(principal=principal),
        lambda store: identities.list_tokens(store, principal=principal),
    )
    columns = ("id", "principal", "name", "state", "created", "expires", "last used")
    rows = (
        (
            t.prefix,
            t.principal,
            t.name,
            t.state,
            when(t.created_at),
            when(t.expires_at) if t.expires_at else "never",
            when(t.last_used_at),
        )
        for t in found
    )
    title = f"API tokens ({len(found)})"
    emit(output, found, lambda: out.print(new_table(title, columns, rows, no_wrap=("id", "state"))))


@tokens_app.command("revoke")
@exit_on_error
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id or ks_<id>.")],
    server: ServerOption = None,
) -> None:
    """Revoke an API token; it stops working at once."""
    from keyshift.service import identities

    revoked = answer(
        server,
        lambda client: client.revoke_token(token_id),
        lambda store: identities.revoke_token(store, token_id, actor=actor()),
    )
    out.print(f"revoked {revoked.prefix} of {revoked.principal}")


@roles_app.command("list")
@exit_on_error
def roles_list(server: ServerOption = None, output: OutputOption = Format.TABLE) -> None:
    """The built-in roles and the permissions each grants (the server's, with --server)."""
    from keyshift.service import identities

    if server:
        with client_of(server) as client:
            found = client.roles()
    else:
        found = identities.roles()  # built in: no store to open
    rows = ((r.role, ", ".join(r.permissions), r.description) for r in found)
    emit(output, found, lambda: out.print(new_table("Roles", ("role", "permissions", "for"), rows)))
