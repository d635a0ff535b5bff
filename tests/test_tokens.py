"""keyshift.tokens: keyshift's own access tokens, kept across rotations."""

from __future__ import annotations

from keyshift.tokens import REFRESH_BEFORE_S, Tokens


def test_a_token_is_used_until_refresh_time_before_its_expiry_then_fetched_again() -> None:
    now = [1_000.0]
    tokens = Tokens(clock=lambda: now[0])
    assert tokens.get("me") is None
    tokens.put("me", "t1", expires_on=now[0] + 3600)
    assert tokens.get("me") == "t1"
    assert tokens.get("someone else") is None
    now[0] += 3600 - REFRESH_BEFORE_S - 1
    assert tokens.get("me") == "t1"
    now[0] += 1
    assert tokens.get("me") is None, "refreshed before it expires, as azure-identity does"


def test_forget_drops_only_the_token_that_was_refused() -> None:
    tokens = Tokens(clock=lambda: 0.0)
    tokens.put("me", "old", expires_on=3600)
    tokens.put("me", "new", expires_on=3600)  # another rotation signed in meanwhile
    tokens.forget("me", "old")
    assert tokens.get("me") == "new"
    tokens.forget("me", "new")
    assert tokens.get("me") is None
