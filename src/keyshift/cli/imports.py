"""`import`: bring an existing secret under management without rotating it. The value
comes on stdin or from `--from REF`, never as an argument (it would stay in the shell's
history and the process list); on the local store, or at a server with `--server`."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from keyshift.cli._common import ServerOption, actor, answer, bad_usage, exit_on_error
from keyshift.cli.output import out, when
from keyshift.domain.secret import Secret

if TYPE_CHECKING:
    from keyshift.service import imports
    from keyshift.store.store import Store


def _expires(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        bad_usage("--expires: give a UTC date or time (2027-03-31, 2027-03-31T18:00)")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _from_stdin() -> Secret:
    """The value on stdin, without the line ending a shell or `echo` adds; typed at a
    terminal, it is asked for without echoing it."""
    if sys.stdin.isatty():
        typed: str = typer.prompt("Value (not shown)", hide_input=True, default="")
        return Secret(typed)
    text = sys.stdin.read()
    return Secret(text.removesuffix("\n").removesuffix("\r"))


@exit_on_error
def import_(
    credential: Annotated[str, typer.Argument(help="The credential to import the value of.")],
    extra: Annotated[
        list[str] | None,
        typer.Argument(hidden=True, show_default=False, metavar=""),
    ] = None,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Read the value from env:NAME, file:/path or credential:NAME (local store "
            "only) instead of stdin.",
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(help="postgres/redis alternating_users: the user that holds the value."),
    ] = None,
    kid: Annotated[
        str | None,
        typer.Option(
            help="jwks_signing_key: the kid verifiers already know the key by (default: "
            "its RFC 7638 thumbprint)."
        ),
    ] = None,
    expires: Annotated[
        str | None,
        typer.Option(
            help="When the value expires at the issuer (UTC date or time); default: the "
            "issuer's own expiry, else the policy's max_lifetime from now."
        ),
    ] = None,
    server: ServerOption = None,
) -> None:
    """Store the value a credential uses now as its first version (provenance
    `imported`), so keyshift manages it without rotating it. The value is read from
    stdin (or --from), never from the command line. postgres and redis prove that it
    authenticates first; no issuer or consumer is changed. Refused when the credential
    already has a current version.

    A jwks_signing_key takes its PEM private key (--kid keeps the kid verifiers know); a
    certificate (x509_ca, acme, trust_bundle) its PEM private key with the certificate
    and its chain, one text (cat key.pem cert.pem chain.pem)."""
    if extra:
        # Refused without echoing it, as Click would ("unexpected extra argument ..."):
        # the value may have been typed here by mistake.
        bad_usage(
            "the value is never taken as an argument (it would stay in the shell history "
            "and the process list): pipe it on stdin or name it with --from"
        )
    import asyncio

    from keyshift.service import imports
    from keyshift.sources import read_source

    ends = _expires(expires)

    def value(store: Store | None) -> Secret:
        if from_ is None:
            read = _from_stdin()
        elif store is not None:
            read = imports.read_reference(store, from_, actor=actor())
        else:
            # At a server, `credential:` would name this machine's store, not the server's.
            read = read_source("--from", from_, dict(os.environ))
        if not read.reveal():
            bad_usage("the value is empty: pipe it on stdin or name it with --from")
        return read

    def local(store: Store) -> imports.Imported:
        return asyncio.run(
            imports.import_value(
                store,
                credential,
                value(store),
                actor=actor(),
                username=user,
                kid=kid,
                expires_at=ends,
            )
        )

    made = answer(
        server,
        lambda client: client.import_value(
            credential, value(None), username=user, kid=kid, expires_at=ends
        ),
        local,
    )
    expiry = f", expires {when(made.expires_at)}" if made.expires_at else ", no expiry"
    out.print(
        f"Imported {made.credential} as version {made.serial} ({made.version_id[:8]}, "
        f"fingerprint {made.fingerprint}{expiry}); {made.proof}. No issuer or consumer "
        "changed.",
        markup=False,
    )
