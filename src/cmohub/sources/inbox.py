"""The local inbox: a CMO feed's exchange folder on this machine (the embedded default).

CMOs (or ``cmohub sandbox deliver``) drop files into ``CMOHUB_HOME/inbox/<feed folder>/``;
the hub only reads them, never moves or deletes them (what was delivered stays where the CMO
put it; the registry knows what was already received). Symbolic links are not followed out of
the folder, and paths are always relative to it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cmohub.errors import SourceError, SourceUnavailable
from cmohub.sources.delivery import RemoteFile


class InboxSource:
    """A :class:`~cmohub.sources.delivery.DeliverySource` over a local folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __repr__(self) -> str:
        return f"InboxSource({str(self.folder)!r})"

    def list_files(self) -> list[RemoteFile]:
        if not self.folder.exists():
            return []
        if not self.folder.is_dir():
            raise SourceError("the inbox is not a folder", code="SOURCE_INBOX_INVALID")
        files: list[RemoteFile] = []
        try:
            for dirpath, dirnames, filenames in os.walk(self.folder, followlinks=False):
                dirnames.sort()
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    stat = path.lstat()
                    if not path.is_file() or path.is_symlink():
                        continue
                    relative = path.relative_to(self.folder).as_posix()
                    files.append(RemoteFile(relative, stat.st_size, stat.st_mtime))
        except OSError as error:
            raise SourceUnavailable(
                f"cannot list the inbox ({error.strerror or type(error).__name__})",
                where=str(self.folder),
            ) from error
        return files

    def read(self, path: str, *, max_bytes: int) -> bytes:
        target = (self.folder / path).resolve()
        root = self.folder.resolve()
        if root not in target.parents:
            raise SourceError("a path outside the inbox was requested", code="SOURCE_PATH_INVALID")
        try:
            with target.open("rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as error:
            raise SourceUnavailable(
                f"cannot read a delivered file ({error.strerror or type(error).__name__})",
                where=path,
            ) from error
        if len(data) > max_bytes:
            raise SourceError(
                f"the file is larger than the limit of {max_bytes} bytes",
                code="FILE_TOO_LARGE",
                where=path,
            )
        return data

    def close(self) -> None:
        return None
