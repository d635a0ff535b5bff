"""Freezes: an operator's word that keyshift starts no rotation of some credentials for
a while (an incident, a change freeze, a migration). A freeze covers one credential,
one owner's, one environment's, or all of them; it holds until lifted or until its
`until` passes. It is declared by an operator (`keyshift freeze`, the API) or in the
estate file (`freeze:`). Plain values: the store keeps them (`FreezeRow`), governance
reads them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class FreezeScope(StrEnum):
    CREDENTIAL = "credential"
    OWNER = "owner"
    ENVIRONMENT = "environment"
    ALL = "all"


class FreezeSource(StrEnum):
    """Who declared a freeze: an operator (`keyshift freeze` on the local store, or the
    API and the CLI's `--server`), or the estate file's `freeze:` block, which `apply`
    starts, changes and lifts and nothing else does."""

    CLI = "cli"
    API = "api"
    ESTATE = "estate"


@dataclass(frozen=True)
class Freeze:
    id: str
    scope: FreezeScope
    value: str | None
    """The credential, owner or environment frozen; None for `all`."""
    reason: str
    until: datetime | None
    """When it lifts by itself; None: until an operator lifts it."""
    created_by: str
    created_at: datetime
    source: FreezeSource = FreezeSource.CLI
    """Where it was declared; an `estate` freeze is lifted by removing it from the file."""

    def covers(self, name: str, owner: str | None, environment: str | None) -> bool:
        match self.scope:
            case FreezeScope.ALL:
                return True
            case FreezeScope.CREDENTIAL:
                return self.value == name
            case FreezeScope.OWNER:
                return self.value == owner
            case FreezeScope.ENVIRONMENT:
                return self.value == environment

    @property
    def what(self) -> str:
        """`all credentials`, `credential billing-db`, `owner team-a`, `environment prod`."""
        return "all credentials" if self.scope == FreezeScope.ALL else f"{self.scope} {self.value}"

    def refusal(self) -> str:
        """Why a rotation is refused under this freeze, for governance's reasons."""
        until = f" until {self.until:%Y-%m-%d %H:%M}Z" if self.until else ""
        return f"frozen ({self.what}) by {self.created_by}{until}: {self.reason} [freeze {self.id}]"
