"""Locate the mappings/ and contracts/ shipped with this version of the package.

In a wheel they are package data under ``cmohub/_resources``; in a source checkout (editable
install, tests) they are the repository's top-level folders. Either way a deployed version
reads its own mappings and contracts.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from cmohub.errors import ConfigError

_KINDS = ("mappings", "contracts")


def resource_root(kind: str) -> Traversable:
    """The folder of shipped ``mappings`` or ``contracts``."""
    if kind not in _KINDS:
        raise ConfigError(f"unknown resource kind {kind!r}; expected one of {_KINDS}")
    packaged = files("cmohub") / "_resources" / kind
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / kind
    if checkout.is_dir():
        return checkout
    raise ConfigError(f"the {kind}/ folder is neither packaged nor in a source checkout")
