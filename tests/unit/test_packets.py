"""Decision packets and their charts, and the alerts of an excursion as it unfolds.

An excursion seen on four consecutive syncs alerts exactly twice: when it opens and when it
closes. Its packet is one self-contained page (no script, nothing fetched), the same bytes
for the same data, and says what a quality person needs: the status, the numbers, the curve.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cmohub.contracts.arrow import rows_to_table
from cmohub.contracts.store import load_contract
from cmohub.identifiers import Coi
from cmohub.lake import Lake
from cmohub.notify import Alert
from cmohub.pipelines.context import RunContext
from cmohub.publish.svg import (
    Band,
    Series,
    Span,
    TimeChart,
    decimate,
    nice_ticks,
    render_time_chart,
    time_ticks,
)
from cmohub.settings import load_settings

T0 = datetime(2026, 3, 29, 0, 0, tzinfo=UTC)  # Berlin's clocks go forward at 01:00 UTC
COI = str(Coi("A9999", "26", "PKT001"))


# --- svg -----------------------------------------------------------------------------------------


def test_numeric_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(1.5, 11.9) == [2.0, 4.0, 6.0, 8.0, 10.0]
    assert nice_ticks(-183.0, -150.0) == [-180.0, -170.0, -160.0, -150.0]


def test_time_ticks_stay_on_round_local_clock_times_across_a_dst_change() -> None:
    ticks = time_ticks(T0, T0 + timedelta(hours=4), "Europe/Berlin")
    local = [t.astimezone(ZoneInfo("Europe/Berlin")).strftime("%H:%M") for t in ticks]
    assert local == ["01:00", "03:00", "04:00", "05:00", "06:00"]  # 02:00 never happened


def test_decimation_keeps_every_peak() -> None:
    times = [T0 + timedelta(minutes=m) for m in range(20_000)]
    values = [5.0] * 20_000
    values[12_345] = 13.3
    values[17_001] = -2.0
    x, y = decimate(times, values, 500)
    assert len(x) <= 4 * 500 and max(y) == 13.3 and min(y) == -2.0
    assert x == sorted(x)


def test_a_chart_is_deterministic_escaped_and_breaks_its_line_at_gaps() -> None:
    times = [T0 + timedelta(minutes=m) for m in (*range(0, 30), *range(60, 90))]
    chart = TimeChart(
        series=[Series("logger <1>", times, [5.0] * 30 + [9.0] * 30)],
        bands=[Band(2.0, 8.0, "2-8C")],
        spans=[Span(times[30], None, "open")],
        time_zone="Europe/Berlin",
        title="T <& co>",
        y_label="°C",
    )
    svg = render_time_chart(chart)
    assert svg == render_time_chart(chart)
    assert "<title>T &lt;&amp; co&gt;</title>" in svg and "<script" not in svg
    path = re.search(r'<path d="([^"]+)"', svg)
    assert path is not None and path.group(1).count("M") == 2  # the 30-minute gap stays a gap
    assert "upper limit 8 °C" in svg and "lower limit 2 °C" in svg
    assert "local time, Europe/Berlin (UTC+01:00)" in svg


# --- an excursion as it unfolds ------------------------------------------------------------------


class Recording:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.alerts.append(alert)


def stage(lake: Lake, dataset: str, run: str, rows: list[dict[str, Any]]) -> None:
    contract = load_contract(dataset)
    lineage = {"_feed": "test", "_run_id": run, "_source_ref": f"{'0' * 64}#row=1"}
    table = rows_to_table([{**lineage, **r} for r in rows], contract)
    target = lake.staged_dir(dataset, feed="test", day=T0.date(), run_id=run) / "part-0.parquet"
    lake.write_parquet(target, table)


def sync(lake: Lake, run: str, until_minute: int, *, arrived: bool) -> None:
    """What the syncs would have staged by ``until_minute``: the leg and its readings."""
    stage(
        lake,
        "logistics.shipment_leg",
        run,
        [
            {
                "shipment_id": "PKT1",
                "leg_no": 1,
                "origin": "A9995",
                "destination": "A9996",
                "shipper_id": "DS-1",
                "logger_id": "LG-1",
                "departed_at": T0,
                "arrived_at": T0 + timedelta(minutes=until_minute) if arrived else None,
                "max_silence_minutes": 720,
            }
        ],
    )
    stage(
        lake,
        "logistics.temperature_reading",
        run,
        [
            {
                "logger_id": "LG-1",
                "shipment_id": "PKT1",
                "observed_at": T0 + timedelta(minutes=m),
                "celsius": 10.5 if 60 <= m < 105 else 5.0,
            }
            for m in range(0, until_minute + 1)
        ],
    )


@pytest.fixture
def lake_home(tmp_path: Path) -> Path:
    lake = Lake(tmp_path / "lake")
    stage(
        lake,
        "logistics.shipment",
        "booking",
        [
            {
                "shipment_id": "PKT1",
                "coi": COI,
                "kind": "starting_material",
                "product_code": "SBX-CART-01",
                "origin": "A9995",
                "destination": "A9996",
                "courier": "POLAR",
                "booked_at": T0 - timedelta(days=1),
            }
        ],
    )
    return tmp_path


def watch(home: Path, minute: int, notifier: Recording) -> dict[str, Any]:
    from cmohub.pipelines.logistics import watch_excursions

    settings = load_settings(home=home, lake_url=str(home / "lake"))
    end = T0 + timedelta(minutes=minute)
    context = RunContext.for_interval(
        "logistics_sync",
        end - timedelta(minutes=15),
        end,
        run_id=f"run-{minute}",
        settings=settings,
    )
    return watch_excursions(context, notifier=notifier)


def test_an_excursion_alerts_when_it_opens_and_once_more_when_it_closes(lake_home: Path) -> None:
    lake = Lake(lake_home / "lake")
    notifier = Recording()
    sync(lake, "s80", 80, arrived=False)
    first = watch(lake_home, 80, notifier)
    assert (first["episodes"], first["open"], first["alerts_sent"]) == (1, 1, 1)
    sync(lake, "s95", 95, arrived=False)
    assert watch(lake_home, 95, notifier)["alerts_sent"] == 0  # still open: no new alert
    sync(lake, "s130", 130, arrived=True)
    closed = watch(lake_home, 130, notifier)
    assert (closed["open"], closed["alerts_sent"], closed["exceeded"]) == (0, 1, ["PKT1"])
    assert watch(lake_home, 145, notifier)["alerts_sent"] == 0
    assert [(a.state, a.severity) for a in notifier.alerts] == [
        ("open", "major"),  # 21 minutes outside of a 30-minute budget so far
        ("closed", "critical"),  # 45 minutes in the end: the budget is exceeded
    ]
    assert notifier.alerts[0].key == notifier.alerts[1].key == "excursion:PKT1:1:20260329T0100Z"
    assert "45 minutes outside" in notifier.alerts[1].body and COI in notifier.alerts[1].body
    (packet,) = closed["packets"]
    assert notifier.alerts[1].links == {"decision packet": packet}


def test_the_packet_is_self_contained_deterministic_and_says_what_matters(lake_home: Path) -> None:
    lake = Lake(lake_home / "lake")
    sync(lake, "s80", 80, arrived=False)
    result = watch(lake_home, 80, Recording())
    (name,) = result["packets"]
    page = (lake_home / "lake" / name).read_text(encoding="utf-8")
    assert "OPEN — still outside" in page and "WITHIN BUDGET" in page
    assert f"CH A9999 26 PKT001 {COI[-1]}" in page  # the COI as people read it
    assert "21 min" in page and "2 to 8 °C" in page and "9 min left" in page
    for fetching in ("<script", "<link", " src=", "@import", "url(http", "url(//"):
        assert fetching not in page
    again = watch(lake_home, 80, Recording())  # the same data and as-of: the same bytes
    assert again["packets"] == [name]
    assert (lake_home / "lake" / name).read_text(encoding="utf-8") == page


def test_an_excursion_table_row_of_the_pipeline_matches_the_packet_numbers(lake_home: Path) -> None:
    lake = Lake(lake_home / "lake")
    sync(lake, "s130", 130, arrived=True)
    watch(lake_home, 130, Recording())
    (path,) = (lake_home / "lake" / "reports" / "packets").glob("*.html")
    page = path.read_text(encoding="utf-8")
    assert "BUDGET EXCEEDED" in page and "45 min used of 30 min — 15 min over" in page
    assert "CLOSED" in page and "peak 10.5 °C" in page


# --- the command line ----------------------------------------------------------------------------


def run_cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from cmohub.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "CMOHUB_HOME": str(home), "CMOHUB_LAKE_URL": str(home / "lake")},
    )


def test_the_packet_command_writes_a_packet_or_says_in_one_line_why_not(lake_home: Path) -> None:
    sync(Lake(lake_home / "lake"), "s130", 130, arrived=True)
    out = lake_home / "packet.html"
    done = run_cli(
        lake_home,
        "logistics",
        "packet",
        "PKT1",
        "--out",
        str(out),
        "--as-of",
        "2026-03-29T03:00:00Z",
    )
    assert done.returncode == 0, done.stderr
    assert "BUDGET EXCEEDED" in out.read_text(encoding="utf-8")
    missing = run_cli(lake_home, "logistics", "packet", "PKT9", "--out", str(out))
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "error PACKET_NO_EXCURSION: no temperature excursion on shipment PKT9 in the staged data"
    )
