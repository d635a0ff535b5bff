"""The config of the `entra_client_secret` provider: which application's secrets rotate."""

from __future__ import annotations

from datetime import timedelta
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from keyshift.domain.durations import Duration, format_duration

MIN_SIGN_IN_LOOKBACK: Final = timedelta(minutes=5)
"""Microsoft's documented 99th-percentile delay before a sign-in appears in the log."""
MAX_SIGN_IN_LOOKBACK: Final = timedelta(days=7)
"""Sign-in logs are kept 7 days without a premium licence; longer reads add nothing."""


class EntraSecretConfig(BaseModel):
    """Which application's client secrets to rotate."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    integration: str
    """The `entra` integration (tenant and keyshift's identity) to use; may be left out when
    the estate declares exactly one."""
    app_id: str = Field(min_length=1)
    """The application (client) id, `appId`, of the app registration whose secrets rotate."""
    display_name_prefix: str = Field(default="keyshift", min_length=1)
    """Start of the display name of each secret keyshift adds; the rotation marker follows."""
    adopt_existing: Literal["keep", "retire"] = "keep"
    """What the first rotation does with client secrets the application already holds that
    keyshift did not add (display name not `<display_name_prefix> <marker>`): `keep` leaves
    them valid; `retire` treats them as the old version, so they are removed (by keyId)
    when the grace period ends, after the residual-use and approval gates like any old
    version. Secrets added by hand later are not touched; `keyshift entra report` lists them."""
    sign_in_lookback: Duration = timedelta(hours=2)
    """With a `residual_use` policy: how far back each check reads Entra ID's sign-in log
    for sign-ins with the old secret, on top of the policy's `check_every`. It must cover
    the log's delay (minutes) and, to see consumers that cache their token, the time
    between their sign-ins (about an hour). Between 5m and 7d; keyshift's identity needs
    AuditLog.Read.All."""

    @field_validator("sign_in_lookback")
    @classmethod
    def _lookback_in_range(cls, value: timedelta) -> timedelta:
        if not MIN_SIGN_IN_LOOKBACK <= value <= MAX_SIGN_IN_LOOKBACK:
            raise ValueError(
                f"must be between {format_duration(MIN_SIGN_IN_LOOKBACK)} (the sign-in log's "
                f"delay) and {format_duration(MAX_SIGN_IN_LOOKBACK)} (its shortest retention)"
            )
        return value
