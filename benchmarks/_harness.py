"""Measure a command or a function in a fresh child process: wall time and peak RSS.

Peak resident set size comes from ``os.wait4`` on the child, i.e. the kernel's ``ru_maxrss``
of that one process (and the children it waited for), so measurements do not bleed into
each other the way ``RUSAGE_CHILDREN`` totals would. The child is started by a small
launcher process, not by the benchmark itself: Linux counts the memory a process had when it
called exec in its ``ru_maxrss``, and a child forked (or vforked) straight from a benchmark
that has grown to hundreds of MiB would report at least that much, whatever it used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Measurement:
    label: str
    seconds: float
    peak_rss_mib: float
    result: Mapping[str, Any] = field(default_factory=dict)  # what the child printed (JSON)


# Started with ``python -S``: spawns the measured command, waits for it, and writes its own
# child's rusage, so the command's peak is not floored by the benchmark process's size.
LAUNCHER = """
import json, os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    json.dump({"maxrss": usage.ru_maxrss}, f)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure_command(
    argv: Sequence[str],
    *,
    label: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Measurement:
    """Run ``argv``; its last stdout line, if JSON, becomes the measurement's ``result``."""
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile(suffix=".json") as usage_file,
    ):
        started = time.perf_counter()
        child = subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, usage_file.name, *argv],
            stdout=out,
            stderr=err,
            cwd=cwd or REPO,
            env=dict(env or os.environ),
            check=False,
        )
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
        usage = json.loads(Path(usage_file.name).read_text() or "{}")
    if child.returncode != 0:
        raise RuntimeError(f"{label} failed ({child.returncode}):\n{stderr[-2000:]}")
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = usage["maxrss"] / (1024 * 1024 if sys.platform == "darwin" else 1024)
    result: dict[str, Any] = {}
    last = stdout.strip().splitlines()[-1:] if stdout.strip() else []
    if last:
        try:
            result = json.loads(last[0])
        except json.JSONDecodeError:
            result = {}
    return Measurement(label, seconds, peak, result)


def measure_python(code: str, *, label: str) -> Measurement:
    """Run ``code`` in a fresh interpreter (the benchmark's own imports count, as for a user)."""
    return measure_command([sys.executable, "-c", code], label=label)


def ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "n/a"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain text table, right-aligned, sized to its content."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for index, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * w for w in widths))
