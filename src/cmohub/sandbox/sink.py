"""Streaming file output for the generator: many growing files, a bounded number of handles.

The generator appends records to thousands of per-day files while it walks patients in
order. :class:`TreeWriter` keeps only the most recently used handles open (reopening in
append mode when needed), writes each file's header on its first record and its footer
when the tree is closed, and remembers nothing else about a file than its record count.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cmohub.errors import ConfigError


@dataclass(slots=True)
class _FileState:
    records: int
    footer: bytes


class TreeWriter:
    """Append text to files under ``root``; relative paths use ``/``."""

    def __init__(self, root: Path, *, max_open: int = 64) -> None:
        self.root = root
        self.max_open = max_open
        self._open: OrderedDict[str, BinaryIO] = OrderedDict()
        self._files: dict[str, _FileState] = {}
        self._closed = False

    def _path(self, rel: str) -> Path:
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ConfigError("sandbox paths must stay inside the output folder", where=rel)
        return self.root / rel

    def _handle(self, rel: str, *, new: bool) -> BinaryIO:
        handle = self._open.get(rel)
        if handle is not None:
            self._open.move_to_end(rel)
            return handle
        if len(self._open) >= self.max_open:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        path = self._path(rel)
        if new:
            path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("wb" if new else "ab", buffering=1 << 16)
        self._open[rel] = handle
        return handle

    def append(
        self, rel: str, text: str, *, header: str = "", footer: str = "", separator: str = ""
    ) -> int:
        """Append one record to ``rel``; return its 1-based number within the file.

        ``header`` and ``footer`` are written once (first record, :meth:`close`);
        ``separator`` goes between records (``,`` for JSON arrays).
        """
        state = self._files.get(rel)
        if state is None:
            handle = self._handle(rel, new=True)
            state = _FileState(0, footer.encode())
            self._files[rel] = state
            if header:
                handle.write(header.encode())
        else:
            handle = self._handle(rel, new=False)
            if separator:
                handle.write(separator.encode())
        handle.write(text.encode())
        state.records += 1
        return state.records

    def write(self, rel: str, data: str | bytes) -> None:
        """Write a whole file at once (replacing it)."""
        if rel in self._open:
            self._open.pop(rel).close()
        path = self._path(rel)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        self._files[rel] = _FileState(1, b"")

    def records(self, rel: str) -> int:
        state = self._files.get(rel)
        return state.records if state else 0

    def paths(self) -> list[str]:
        """Every file written so far, sorted."""
        return sorted(self._files)

    def flush(self) -> None:
        """Close every handle and write pending footers (files stay appendable)."""
        for handle in self._open.values():
            handle.close()
        self._open.clear()

    def close(self) -> None:
        """Write every footer and close everything; the tree is complete afterwards."""
        if self._closed:
            return
        self.flush()
        for rel in sorted(self._files):
            footer = self._files[rel].footer
            if footer:
                with self._path(rel).open("ab") as handle:
                    handle.write(footer)
        self._closed = True
