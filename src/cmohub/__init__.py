"""cmohub: integration hub for cell and gene therapy programs."""

from __future__ import annotations

import functools


@functools.cache
def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("cmohub")
    except PackageNotFoundError:  # running from a source tree without installation
        return "0+unknown"


def __getattr__(name: str) -> str:
    # ``__version__`` is looked up in the installed distributions on first use, not on import:
    # every DAG file imports this package at parse time, and the lookup took about 1 ms of
    # an empty DAG file's 12-16 ms.
    if name == "__version__":
        return _installed_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
