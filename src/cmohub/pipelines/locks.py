"""Run locks: two runs of the same task and interval at once — one waits, then fails cleanly.

The embedded default locks with ``flock`` on a file under ``CMOHUB_HOME/locks``; the lock is
released by the kernel if the process dies, so a killed run never leaves a stale lock. (With
a distributed executor, point ``CMOHUB_HOME`` at shared storage or use one worker per feed
pool; DESIGN.md partitions work by feed and day so that different keys never contend.)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cmohub.errors import RunLocked


@contextmanager
def run_lock(home: Path, key: str, *, wait_seconds: float = 30.0) -> Iterator[None]:
    """Hold the lock named ``key`` (e.g. ``publish:2026-03-01``) for the duration of a block."""
    folder = home / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunLocked(
                        f"another run holds the lock after waiting {wait_seconds:.0f}s; "
                        "it will be retried",
                        where=key,
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {key}\n".encode())
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
