"""Mapping throughput: the cmo-acme-batches mapping against a plain loop over the same fields.

N synthetic rows in CMO Acme's batch CSV format (default 200,000) are read and mapped in the
same process, best of three:

* **plain loop** — ``csv.DictReader`` and a loop that reads the seven fields the mapping reads
  (no conversions): the floor any CSV mapping has to pay;
* **plain loop + conversions** — the same loop doing the same conversions by hand (COI and
  DIN check, ISO timestamps to UTC, the status table), for reference;
* **engine** — :func:`cmohub.mapping.read_records` + :func:`apply_mapping` with the shipped
  mapping (drift check, lineage, issues, pending identities).

Reported as rows per second and the engine's ratio to each loop.

    python -m benchmarks mapping             # 200,000 rows
    python -m benchmarks mapping 50000
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

from benchmarks._harness import print_table
from cmohub.identifiers import Coi, Din, parse_coi, parse_din
from cmohub.mapping import apply_mapping, compile_mapping, read_records
from cmohub.mapping.store import load_mapping

DEFAULT_ROWS = 200_000
FIELDS = (
    "Lot Number", "Chain of Identity", "Donation ID", "Product Code", "Start Time",
    "End Time", "Batch Status",
)  # fmt: skip
STATUS = {"In Process": "in_process", "Complete": "complete", "Aborted": "aborted"}


def make_csv(n: int) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(FIELDS)
    for i in range(n):
        coi = Coi(f"A999{i % 10}", "26", f"{i:06d}")
        din = Din(f"A999{i % 10}", "26", f"{i % 1_000_000:06d}")
        writer.writerow(
            (
                f"ACM-26-{i:06d}",
                str(coi),
                str(din),
                "SBX-CART-01",
                "2026-01-11T17:29:00-05:00",
                "2026-01-19T22:31:00-05:00" if i % 4 else "",
                "Complete" if i % 4 else "In Process",
            )
        )
    return out.getvalue().encode()


def plain_loop(data: bytes) -> int:
    rows = 0
    for record in csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")):
        _ = (
            record["Lot Number"],
            record["Chain of Identity"],
            record["Donation ID"],
            record["Product Code"],
            record["Start Time"],
            record["End Time"],
            record["Batch Status"],
        )
        rows += 1
    return rows


def _utc(text: str) -> datetime | None:
    return datetime.fromisoformat(text).astimezone(UTC) if text else None


def plain_loop_converting(data: bytes) -> int:
    rows = []
    for record in csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")):
        rows.append(
            {
                "batch_id": record["Lot Number"].strip(),
                "coi": str(parse_coi(record["Chain of Identity"])),
                "din": str(parse_din(record["Donation ID"])),
                "cmo": "A9996",
                "product_code": record["Product Code"].strip(),
                "started_at": _utc(record["Start Time"]),
                "completed_at": _utc(record["End Time"]),
                "status": STATUS[record["Batch Status"]],
            }
        )
    return len(rows)


def engine(data: bytes) -> int:
    spec = load_mapping("cmo-acme-batches")
    compiled = compile_mapping(spec)
    result = apply_mapping(
        compiled,
        read_records(spec.source, data),
        run_id="bench",
        source_sha256=hashlib.sha256(data).hexdigest(),
    )
    assert not result.rejected, result.issues[:3]
    return len(result.rows)


def best_rate(fn: Callable[[bytes], int], data: bytes, n: int, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        assert fn(data) == n
        best = min(best, time.perf_counter() - started)
    return n / best


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    n = int(args[0]) if args else DEFAULT_ROWS
    data = make_csv(n)
    plain = best_rate(plain_loop, data, n)
    converting = best_rate(plain_loop_converting, data, n)
    mapped = best_rate(engine, data, n)
    print(f"mapping throughput, cmo-acme-batches, {n:,} rows (best of 3)")
    print_table(
        ("reader", "rows/s", "engine is slower by"),
        [
            ("plain loop (reads the fields)", f"{plain:,.0f}", f"{plain / mapped:.1f}x"),
            ("plain loop + conversions", f"{converting:,.0f}", f"{converting / mapped:.1f}x"),
            ("mapping engine", f"{mapped:,.0f}", "-"),
        ],
    )


if __name__ == "__main__":
    main()
