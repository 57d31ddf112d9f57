"""Sandbox generation: time and peak memory for 1,000 and 10,000 patients, side by side.

Enrollment density is the same for both sizes (about 27 patients a day), so a generator that
streams takes ten times as long for ten times the patients and about the same memory.

    python -m benchmarks sandbox              # 1,000 and 10,000 patients
    python -m benchmarks sandbox 500 5000     # other sizes
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from benchmarks._harness import Measurement, measure_python, print_table, ratio

DEFAULT_SIZES = (1_000, 10_000)
PATIENTS_PER_DAY = 27

CHILD = """
import json
from pathlib import Path
from cmohub.sandbox.generate import generate_program
s = generate_program(Path({out!r}), patients={n}, days={days}, seed=1)
size = sum(p.stat().st_size for p in s.out.rglob("*") if p.is_file())
print(json.dumps({{"readings": s.readings, "files": sum(s.files_by_source.values()),
                  "bytes": size, "faults": sum(s.faults_by_rule.values())}}))
"""


def measure(patients: int, workdir: Path) -> Measurement:
    out = workdir / f"sandbox-{patients}"
    days = max(1, patients // PATIENTS_PER_DAY)
    try:
        return measure_python(
            CHILD.format(out=str(out), n=patients, days=days), label=f"{patients} patients"
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    sizes = tuple(int(a) for a in (argv or [])) or DEFAULT_SIZES
    print("sandbox generation (fresh process per size; output deleted after measuring)")
    with tempfile.TemporaryDirectory(prefix="cmohub-bench-") as tmp:
        runs = [measure(n, Path(tmp)) for n in sizes]
    rows = []
    for n, m in zip(sizes, runs, strict=True):
        r = m.result
        rows.append(
            [
                f"{n:,}",
                f"{m.seconds:.1f}",
                f"{1000 * m.seconds / n:.2f}",
                f"{m.peak_rss_mib:.0f}",
                f"{r.get('readings', 0):,}",
                f"{r.get('bytes', 0) / 1e6:,.0f}",
                f"{r.get('files', 0):,}",
                r.get("faults", 0),
            ]
        )
    print_table(
        ["patients", "seconds", "ms/patient", "peak MiB", "readings", "MB out", "files", "faults"],
        rows,
    )
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]
        n_small, n_large = sizes[0], sizes[-1]
        per_patient = (large.seconds / n_large) / (small.seconds / n_small)
        print(
            f"time per patient {n_large:,} vs {n_small:,}: {per_patient:.2f}x "
            "(1.00x = linear scaling)"
        )
        print(
            f"peak memory {n_large:,} / {n_small:,}: "
            f"{ratio(large.peak_rss_mib, small.peak_rss_mib)} "
            f"(patients x{n_large / n_small:.0f}; ~1x = streaming)"
        )


if __name__ == "__main__":
    main()
