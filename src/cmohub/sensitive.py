"""Types that carry patient identifiers without letting them leak.

A :class:`Sensitive` value prints as ``<redacted>`` in ``repr``, ``str``, f-strings, logging,
tracebacks and pydantic dumps; the only way to read it is :meth:`Sensitive.reveal`, which is
easy to search for in review. Subject identities built from it live in :mod:`cmohub.identity`.

Pure module: no I/O, part of the functional core.
"""

from __future__ import annotations

from typing import Any, Generic, NoReturn, TypeVar

T = TypeVar("T")

REDACTED = "<redacted>"


class Sensitive(Generic[T]):
    """A value that must never be printed, logged or serialized by accident."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def reveal(self) -> T:
        """Return the wrapped value. Call only where the value is needed (vault, encryption)."""
        return self._value

    def __repr__(self) -> str:
        return f"Sensitive({REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, format_spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sensitive) and bool(self._value == other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> NoReturn:
        # Pickling would move the value across process boundaries (XCom, multiprocessing
        # queues) without anyone deciding to; refuse it.
        raise TypeError("Sensitive values cannot be pickled")

    def __getstate__(self) -> NoReturn:
        raise TypeError("Sensitive values cannot be pickled")


def redact_mapping(data: dict[str, Any], fields: frozenset[str]) -> dict[str, Any]:
    """Copy ``data`` with the values of ``fields`` (and any Sensitive value) replaced."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in fields or isinstance(value, Sensitive):
            out[key] = REDACTED
        elif isinstance(value, dict):
            out[key] = redact_mapping(value, fields)
        else:
            out[key] = value
    return out
