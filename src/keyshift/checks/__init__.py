"""Checks: evidence about versions that no single issuer gives, e.g. a residual-use command."""

from __future__ import annotations

from keyshift.checks.command import UsageCommand, command_usage

__all__ = ["UsageCommand", "command_usage"]
