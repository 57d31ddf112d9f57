"""Measure a command or a function in a fresh child process: wall time and peak RSS.

Peak resident set size comes from ``os.wait4`` on the child, i.e. the kernel's ``ru_maxrss``
of that one process (and the children it waited for), so measurements do not bleed into
each other the way ``RUSAGE_CHILDREN`` totals would.
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


def measure_command(
    argv: Sequence[str],
    *,
    label: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Measurement:
    """Run ``argv``; its last stdout line, if JSON, becomes the measurement's ``result``."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        child = subprocess.Popen(
            list(argv), stdout=out, stderr=err, cwd=cwd or REPO, env=dict(env or os.environ)
        )
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if child.returncode != 0:
        raise RuntimeError(f"{label} failed ({child.returncode}):\n{stderr[-2000:]}")
    # ru_maxrss is in KiB on Linux, bytes on macOS.
    peak = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
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
