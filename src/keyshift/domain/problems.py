"""Turning pydantic's validation errors into keyshift's: one `ConfigError` per problem,
with the field's path as the estate file spells it (`credentials[2].actions[0].config`).

Kept apart from the estate models so that what validates other files (the host agent's
agent.yaml) reports the same way without building the estate's models.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from keyshift.errors import ConfigError

if TYPE_CHECKING:
    from pydantic import ValidationError

_UNION_TAGS = frozenset({"named", "inline"})
"""Branch tags of tagged unions, which pydantic puts in error locations; not field names."""


def format_loc(loc: tuple[int | str, ...], prefix: str = "") -> str:
    """Render a pydantic location as `credentials[2].actions[0].config.file_format`."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _UNION_TAGS or part.startswith(
            ("function-after", "function-before", "function-wrap")
        ):
            continue
        else:
            out += f".{part}" if out else part
    return out


def _message(error: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        choices = re.findall(r"'([^']*)'", expected)
        return "must be one of " + ", ".join(choices) if choices else error["msg"]
    if kind == "string_pattern_mismatch":
        return "must use lowercase letters, digits, '.', '_' or '-' (max 128)"
    msg = str(error["msg"])
    for lead in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(lead)
    return msg[:1].lower() + msg[1:]


def config_errors(exc: ValidationError, prefix: str = "") -> list[ConfigError]:
    """One ConfigError per pydantic error, each with its full field path."""
    out: list[ConfigError] = []
    for error in exc.errors(include_url=False):
        out.append(ConfigError(format_loc(tuple(error["loc"]), prefix), _message(error)))
    return out
