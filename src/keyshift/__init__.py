"""keyshift: rotate non-human credentials without outages, with evidence an auditor accepts."""

from __future__ import annotations

# The one place the version is written: the build reads it (pyproject.toml's
# `tool.setuptools.dynamic`), and asking importlib.metadata instead would cost every
# start-up ~50 ms of scanning the installed distributions.
__version__ = "0.1.0"

__all__ = ["__version__"]
