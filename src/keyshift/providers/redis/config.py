"""The config of the `redis` provider: which ACL users to rotate, and how."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from keyshift.providers.random import DEFAULT_ALPHABET, Alphabet


class RedisConfig(BaseModel):
    """Which ACL users to rotate, and how."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid", frozen=True)

    integration: str
    """The `redis` integration (admin connection) to use; may be left out when the estate
    declares exactly one."""
    strategy: Literal["dual_password", "alternating_users"] = "dual_password"
    """`dual_password` (one user, old and new password valid together) or
    `alternating_users` (two users take turns)."""
    user: str | None = None
    """dual_password: the ACL user whose passwords rotate. It must exist."""
    users: list[str] | None = None
    """alternating_users: the two ACL users, with the same permissions, that take turns."""
    password_length: int = Field(default=32, ge=16, le=128)
    """Length of generated passwords."""
    password_alphabet: Alphabet = DEFAULT_ALPHABET
    """Characters generated passwords are drawn from (at least 10 distinct)."""
    adopt_existing: Literal["keep", "retire"] = "keep"
    """dual_password: what the first rotation does with passwords the user already holds
    that keyshift did not add: `keep` leaves them valid (preflight says so); `retire`
    treats them as the old version, so they are removed (by hash) when the grace period
    ends, after the residual-use and approval gates like any old version. Passwords added
    by hand later are not touched. alternating_users needs neither: each user's
    passwords are reset when it takes its turn."""

    @field_validator("user")
    @classmethod
    def _user_name(cls, user: str | None) -> str | None:
        if user is not None:
            _check_username(user)
        return user

    @field_validator("users")
    @classmethod
    def _user_names(cls, users: list[str] | None) -> list[str] | None:
        for user in users or []:
            _check_username(user)
        return users

    @model_validator(mode="after")
    def _strategy_fields(self) -> RedisConfig:
        if self.strategy == "dual_password":
            if not self.user:
                raise ValueError("dual_password needs user (the ACL user whose passwords rotate)")
            if self.users:
                raise ValueError("users belongs to alternating_users; dual_password takes user")
        else:
            if not self.users or len(self.users) != 2 or self.users[0] == self.users[1]:
                raise ValueError("alternating_users needs users: [two distinct ACL users]")
            if self.user:
                raise ValueError("user belongs to dual_password; alternating_users takes users")
            if self.adopt_existing == "retire":
                raise ValueError(
                    "adopt_existing: retire belongs to dual_password; alternating_users "
                    "resets each user's passwords when it takes its turn"
                )
        if any(c.isspace() or not c.isprintable() for c in self.password_alphabet):
            raise ValueError("password_alphabet must hold printable characters without spaces")
        return self


def _check_username(user: str) -> None:
    if not user or any(c.isspace() or not c.isprintable() for c in user):
        raise ValueError(f"{user!r} is not an ACL user name (printable, no spaces)")
