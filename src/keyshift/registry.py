"""The registries of plugin types: a config `type` name to the class (or config model)
that serves it, each named as `"module:Class"` and imported the first time it is asked for.

Start-up imports no plugin module: `keyshift --version` or the host agent never loads
boto3, kubernetes or the Azure SDK, and an estate loads the modules of the types it
uses when it is validated or run. The names stay explicit, one dict per registry, as
design.md asks; the registry only defers the import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any, TypeVar

V = TypeVar("V")


class _Where(str):
    """A `"module:attribute"` not imported yet (a subclass, so a registered plain string
    value would never be mistaken for one)."""

    __slots__ = ()


def resolve(where: str) -> Any:
    """The object named by `"module:attribute"`, importing the module."""
    module, _, attribute = where.partition(":")
    return getattr(importlib.import_module(module), attribute)


class Registry(MutableMapping[str, V]):
    """Type name -> value, each given as `"module:attribute"` and imported on first use.

    Keys, `in` and `len` import nothing; looking a value up (`[]`, `.get`, `.items()`)
    imports its module once. A value set directly (a test's fake) is kept as it is.
    """

    def __init__(self, where: Mapping[str, str]) -> None:
        self._entries: dict[str, Any] = {kind: _Where(path) for kind, path in where.items()}

    def __getitem__(self, kind: str) -> V:
        value = self._entries[kind]
        if isinstance(value, _Where):
            value = self._entries[kind] = resolve(value)
        return value  # type: ignore[no-any-return]

    def __setitem__(self, kind: str, value: V) -> None:
        self._entries[kind] = value

    def __delitem__(self, kind: str) -> None:
        del self._entries[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, kind: object) -> bool:
        # A type name from a YAML file may be a list or a mapping: not a known type.
        return isinstance(kind, str) and kind in self._entries

    def where(self, kind: str) -> str:
        """The `"module:attribute"` that serves `kind`, without importing it."""
        value = self._entries[kind]
        if isinstance(value, _Where):
            return str(value)
        return f"{value.__module__}:{value.__qualname__}"

    def __repr__(self) -> str:
        paths = {kind: self.where(kind) for kind in self._entries}
        return f"Registry({paths!r})"


def lazy_exports(module: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that imports each public name of `where` on first
    access, so a package can re-export its plugin classes without importing them."""

    def __getattr__(name: str) -> Any:
        try:
            path = where[name]
        except KeyError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
        return resolve(path)

    return __getattr__
