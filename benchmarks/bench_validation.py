"""Validation speed: the contract's rules through Great Expectations vs the same rules in pandas.

Temperature readings (``logistics.temperature_reading``) of N rows, one in a thousand broken,
are validated in one run two ways, each in a fresh child process: with
:func:`cmohub.contracts.validate.validate_table` (type reading, duplicate and key-conflict
detection, the GX suite, the split into valid and quarantined rows and the Arrow output) and
with the same rules hand-written in pandas. Reported: seconds (best of 3 up to 2M rows), the
ratio, and the extra peak memory: peak resident set during validation minus the resident set
just before it (freed pages returned to the OS first). Goals: ratio no worse than 5.5x at 10M
rows, under 2 GiB extra.

    python -m benchmarks validation            # 1M and 10M rows
    python -m benchmarks validation 200000     # other sizes
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._harness import print_table

FAULT_SHARE = 0.001  # one row in a thousand breaks one rule
DEFAULT_SIZES = (1_000_000, 10_000_000)
AS_OF = datetime(2026, 3, 2, tzinfo=UTC)


def make_readings(n: int, *, seed: int = 7) -> pd.DataFrame:
    """N synthetic logger readings in the staged form (lineage included), a few broken."""
    rng = np.random.default_rng(seed)
    loggers = np.array([f"LG-A9990-{i:05d}" for i in range(max(1, n // 1440))], dtype=object)
    logger = loggers[np.arange(n) // 1440 % len(loggers)]
    observed = pd.Timestamp("2026-03-01", tz="UTC") + pd.to_timedelta(np.arange(n) % 1440, "min")
    celsius = rng.normal(-185.0, 4.0, n).astype("float32")  # loggers report float32
    frame = pd.DataFrame(
        {
            "logger_id": pd.array(logger, dtype="str"),
            "shipment_id": pd.array(np.where(np.arange(n) % 2 == 0, "SHP-1", None), dtype="str"),
            "observed_at": observed,
            "celsius": celsius,
            "_feed": pd.array(["courier-loggers"] * n, dtype="str"),
            "_run_id": pd.array(["bench-run"] * n, dtype="str"),
            "_source_ref": pd.array([f"{'ab' * 32}#row={i}" for i in range(n)], dtype="str"),
        }
    )
    broken = rng.choice(n, size=max(1, int(n * FAULT_SHARE)), replace=False)
    frame.loc[broken[0::3], "celsius"] = 99.0
    frame.loc[broken[1::3], "logger_id"] = "bad id!"
    frame.loc[broken[2::3], "shipment_id"] = ""
    return frame


def validate_with_pandas(frame: pd.DataFrame) -> tuple[int, int]:
    """The temperature_reading contract's rules, hand-written; returns (valid, rejected)."""
    ident = r"^[A-Za-z0-9][A-Za-z0-9_.:/#-]*$"
    safe = r"^[A-Za-z0-9][A-Za-z0-9_.=:+-]*$"
    celsius = frame["celsius"].astype("float64")
    bad = np.zeros(len(frame), dtype=bool)
    for column, pattern, low, high in (
        ("logger_id", ident, 1, 80),
        ("shipment_id", ident, 1, 80),
        ("_feed", safe, 1, 120),
        ("_run_id", safe, 1, 200),
        ("_source_ref", r"^[0-9a-f]{64}#[!-~]+$", None, None),
    ):
        values = frame[column]
        present = values.notna()
        matches = values.str.contains(pattern, regex=True).fillna(True)
        bad |= (present & ~matches).to_numpy()
        if low is not None:
            length = values.str.len()
            bad |= (present & ((length < low) | (length > high))).to_numpy()
    for column in ("logger_id", "observed_at", "celsius", "_feed", "_run_id", "_source_ref"):
        bad |= frame[column].isna().to_numpy()
    bad |= ((celsius < -200.0) | (celsius > 60.0)).fillna(False).to_numpy()
    bad |= ~np.isfinite(celsius.to_numpy()) & celsius.notna().to_numpy()
    if not isinstance(frame["observed_at"].dtype, pd.DatetimeTZDtype):
        bad |= True
    duplicated = frame.duplicated(subset=["logger_id", "observed_at"], keep=False).to_numpy()
    bad |= duplicated
    _fresh = frame["observed_at"].max() >= AS_OF - pd.Timedelta(days=2)
    _rows = len(frame) > 0
    return int((~bad).sum()), int(bad.sum())


def validate_with_contract(frame: pd.DataFrame) -> tuple[int, int]:
    from cmohub.contracts.store import load_contract
    from cmohub.contracts.validate import validate_table

    contract = load_contract("logistics.temperature_reading")
    outcome = validate_table(frame, contract, run_id="bench-run", feed="bench", as_of=AS_OF)
    assert outcome.report.counts.balanced
    return outcome.report.counts.valid, outcome.report.counts.quarantined


def _status_bytes(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so the baseline is what is in use.

    Building the test data frees large temporaries; without this, later allocations reuse
    those still-resident pages and the validation's extra memory would look smaller.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def start_memory_window() -> int:
    """Reset the peak-RSS mark (Linux) and return the resident set size now."""
    release_free_memory()
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM, the peak resident set size
    except OSError:
        pass
    current = _status_bytes("VmRSS")
    return current if current is not None else peak_rss_bytes()


def peak_rss_bytes() -> int:
    peak = _status_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(kind: str, n: int) -> dict[str, Any]:
    """Run in a fresh process: build the data, then time the validation (best of a few runs
    up to 2M rows, one run above) and take the largest extra peak memory of the runs."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    if kind == "contract":
        import cmohub.contracts.gx  # noqa: F401 - import GX before the baseline is taken
    frame = make_readings(n)
    validate = validate_with_contract if kind == "contract" else validate_with_pandas
    best, extra = float("inf"), 0
    for _ in range(3 if n <= 2_000_000 else 1):
        baseline = start_memory_window()
        started = time.perf_counter()
        valid, rejected = validate(frame)
        best = min(best, time.perf_counter() - started)
        extra = max(extra, peak_rss_bytes() - baseline)
    return {"seconds": best, "extra_peak_bytes": extra, "valid": valid, "rejected": rejected}


def measure(kind: str, n: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_validation", "--child", kind, str(n)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "GX_ANALYTICS_ENABLED": "false"},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run(sizes: tuple[int, ...] = DEFAULT_SIZES) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        pandas_side = measure("pandas", n)
        contract_side = measure("contract", n)
        rows.append(
            {
                "rows": n,
                "pandas_s": pandas_side["seconds"],
                "contract_s": contract_side["seconds"],
                "ratio": contract_side["seconds"] / pandas_side["seconds"],
                "pandas_extra_mib": pandas_side["extra_peak_bytes"] / 2**20,
                "contract_extra_mib": contract_side["extra_peak_bytes"] / 2**20,
                "agree": (pandas_side["valid"], pandas_side["rejected"])
                == (contract_side["valid"], contract_side["rejected"]),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--child":
        print(json.dumps(_child(args[1], int(args[2]))))
        return
    sizes = tuple(int(a) for a in args) or DEFAULT_SIZES
    print(
        "validation of temperature readings (logistics.temperature_reading): the contract's "
        "rules through GX vs the same rules hand-written in pandas; extra = peak RSS during "
        "validation minus RSS before it"
    )
    print_table(
        ("rows", "pandas s", "contract s", "ratio", "pandas extra MiB", "contract extra MiB",
         "same split"),
        [
            (
                f"{row['rows']:,}",
                f"{row['pandas_s']:.2f}",
                f"{row['contract_s']:.2f}",
                f"{row['ratio']:.1f}x",
                f"{row['pandas_extra_mib']:.0f}",
                f"{row['contract_extra_mib']:.0f}",
                "yes" if row["agree"] else "NO",
            )
            for row in run(sizes)
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
