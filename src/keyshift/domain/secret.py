"""`Secret`: a value that must never be printed, logged or serialised by accident."""

from __future__ import annotations

import hmac
from typing import Final, NoReturn

_MASK: Final = "Secret('**********')"


class Secret:
    """Holds a secret value. `repr`, `str` and `format` are redacted; call `reveal()` to use it.

    Equality compares values in constant time so tests and idempotency checks can
    compare secrets without revealing them.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret holds a str")
        self._value = value

    def reveal(self) -> str:
        """The plain value. Call it only where the value is handed to its consumer."""
        return self._value

    def __repr__(self) -> str:
        return _MASK

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __reduce__(self) -> NoReturn:
        raise TypeError("a Secret is not picklable")
