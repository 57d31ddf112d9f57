"""cmohub: integration hub for cell and gene therapy programs."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmohub")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"
