"""The excursion decision packet: one self-contained HTML page per temperature excursion.

Quality, manufacturing and logistics must decide within minutes whether a patient's material
can still be used. The packet puts in front of them, without a login or a script:

* one sentence saying what happened, and two status chips (budget exceeded or not, open or
  closed);
* the temperature curve of the leg against the class limits (allowed range shaded green,
  the episode shaded red, departure and arrival marked, the axis in the origin's local time);
* the numbers: start and end (local and UTC), minutes outside, peak, budget used and left
  on the shipment, other episodes of the shipment, logger data gaps on the leg;
* the shipment, its legs (local departure and arrival times, dewar, logger) and the custody
  handoffs in time order with the offset each was recorded in, custody findings flagged;
* a decision record to print and sign.

Only COIs, shipment, batch and logger IDs appear — never a patient identifier. The page is
deterministic: the same episode, data and ``as_of`` give the same bytes (no clock is read).
:func:`packet_data` gathers what a packet shows from the staged tables; :func:`render_html`
renders it; :func:`render_packet` does both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import pyarrow as pa

from cmohub.coldchain.custody import CustodyLedger, Directory
from cmohub.coldchain.excursions import ExcursionReport
from cmohub.coldchain.gaps import find_logger_gaps
from cmohub.coldchain.readings import LegReadings
from cmohub.coldchain.units import offset_minutes
from cmohub.errors import InputError
from cmohub.identifiers import format_coi, parse_coi
from cmohub.publish.svg import Band, Marker, Series, Span, TimeChart, render_time_chart

if TYPE_CHECKING:
    from cmohub.pipelines.logistics import LogisticsTables

MATERIAL = {"starting_material": "starting material", "finished_product": "finished product"}


@dataclass(frozen=True)
class Row:
    cells: tuple[str, ...]
    flag: bool = False


@dataclass(frozen=True)
class PacketData:
    """Everything one packet shows, already formatted for people."""

    title: str
    summary: str
    exceeded: bool
    state: str
    facts: tuple[tuple[str, str], ...]
    budget_used: float | None
    budget: float | None
    chart_svg: str
    episodes: tuple[Row, ...]
    legs: tuple[Row, ...]
    custody: tuple[Row, ...]
    findings: tuple[str, ...]
    gaps: tuple[str, ...]
    as_of: str
    notes: tuple[str, ...] = field(default=())

    @property
    def bar(self) -> tuple[float, float | None]:
        """Budget bar: filled share (%) and, when exceeded, where the budget ends (%)."""
        if not self.budget or self.budget_used is None:
            return 0.0, None
        if self.budget_used <= self.budget:
            return 100.0 * self.budget_used / self.budget, None
        return 100.0, 100.0 * self.budget / self.budget_used


def _zone(name: str | None) -> tzinfo:
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def local(moment: datetime | None, zone: tzinfo) -> str:
    """``2026-01-25 22:02 (UTC+01:00)`` in ``zone``; ``—`` for no time."""
    if moment is None:
        return "—"
    value = moment.astimezone(zone)
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"{value:%Y-%m-%d %H:%M} (UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d})"


def utc(moment: datetime | None) -> str:
    return "—" if moment is None else f"{moment.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def local_and_utc(moment: datetime | None, zone: tzinfo) -> str:
    """Local time with its offset, and UTC beside it unless the two are the same."""
    if moment is None:
        return "—"
    offset = moment.astimezone(zone).utcoffset() or timedelta(0)
    return local(moment, zone) if not offset else f"{local(moment, zone)} · {utc(moment)}"


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    minutes = int((end - start).total_seconds() // 60)
    hours, rest = divmod(minutes, 60)
    return f"{hours} h {rest:02d} min" if hours else f"{rest} min"


def party(name: str | None, courier: str | None) -> str:
    """A party as people know it: a site's FIN, else (a party that is no site) the courier."""
    if not name:
        return "—"
    if name.startswith("urn:epc:id:pgln:"):
        return f"{courier} (courier)" if courier else name.removeprefix("urn:epc:id:pgln:")
    return name


def _minutes(value: float) -> str:
    whole = round(value)
    if abs(value - whole) < 1e-9:
        return f"{whole} min"
    return f"{value:.1f} min"


def _coi(text: str | None) -> str:
    if not text:
        return "—"
    try:
        return format_coi(parse_coi(text))
    except Exception:  # noqa: BLE001 - any malformed COI is shown as received
        return text


def _site(directory: Directory | None, fin: str | None) -> str:
    if fin is None:
        return "—"
    site = directory.sites.get(fin) if directory is not None else None
    return f"{fin} {site.name}" if site is not None and site.name else fin


def _site_zone(directory: Directory | None, fin: str | None) -> tzinfo:
    site = directory.sites.get(fin) if directory is not None and fin else None
    return _zone(site.time_zone if site is not None else None)


def _limits_text(lower: float | None, upper: float | None) -> str:
    if lower is not None and upper is not None:
        return f"{lower:g} to {upper:g} °C"
    if upper is not None:
        return f"at most {upper:g} °C"
    if lower is not None:
        return f"at least {lower:g} °C"
    return "—"


def _rows(table: pa.Table, **equal: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = table.to_pylist()
    return [r for r in rows if all(r.get(k) == v for k, v in equal.items())]


def packet_data(
    episode: Mapping[str, Any],
    *,
    report: ExcursionReport,
    tables: LogisticsTables,
    custody: CustodyLedger | None,
    directory: Directory | None,
    as_of: datetime,
) -> PacketData:
    """Gather and format what the packet of ``episode`` (a row of ``report.episodes``) shows."""
    sid, leg_no = episode["shipment_id"], episode["leg_no"]
    shipment = next(iter(_rows(tables.shipments, shipment_id=sid)), {})
    legs = sorted(_rows(tables.legs, shipment_id=sid), key=lambda r: r["leg_no"])
    leg = next((r for r in legs if r["leg_no"] == leg_no), None)
    if leg is None:
        raise InputError(f"shipment {sid} has no leg {leg_no}", code="PACKET_LEG_UNKNOWN")
    origin_zone = _site_zone(directory, leg["origin"])

    # The leg's readings, straight from the assigned readings of the report.
    lr = report.readings
    leg_ids = list(
        zip(lr.legs["shipment_id"].to_pylist(), lr.legs["leg_no"].to_pylist(), strict=True)
    )
    index = leg_ids.index((sid, leg_no))
    first, count = int(lr.first[index]), int(lr.count[index])
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    times = (
        [epoch + timedelta(microseconds=int(v)) for v in lr.at[first : first + count]]
        if count
        else []
    )
    values = [float(v) for v in lr.celsius[first : first + count]] if count else []

    lower, upper = episode["lower_celsius"], episode["upper_celsius"]
    leg_episodes = _rows(report.episodes, shipment_id=sid)
    spans = [
        Span(
            e["started_at"],
            e["ended_at"] or (e["last_outside_at"] if e["state"] == "closed" else None),
            _minutes(e["duration_minutes"]) + " outside",
        )
        for e in leg_episodes
        if e["leg_no"] == leg_no
    ]
    departed, arrived = leg["departed_at"], leg["arrived_at"]
    end = arrived or (times[-1] if times else departed + timedelta(hours=1))
    margin = (end - departed) * 0.02
    chart = TimeChart(
        series=[Series(f"logger {leg['logger_id']}", times, values)],
        bands=[Band(lower, upper, episode.get("class_code") or "")],
        spans=spans,
        markers=[
            Marker(departed, f"departed {leg['origin']}"),
            *([Marker(arrived, f"arrived {leg['destination']}")] if arrived else []),
        ],
        time_zone=origin_zone,
        title=f"Temperature on leg {leg_no} of {sid}",
        description=(
            f"Temperature readings of logger {leg['logger_id']} on leg {leg_no} of shipment "
            f"{sid} against the class limits {_limits_text(lower, upper)}."
        ),
        y_label="°C",
        width=1120,
        height=380,
        x_range=(departed - margin, end + margin),
    )

    budget = episode["budget_minutes"]
    used = float(episode["budget_minutes_used"])
    exceeded = budget is not None and used > budget
    direction = "above" if episode["direction"] == "above" else "below"
    limit = upper if direction == "above" else lower
    material = MATERIAL.get(str(episode.get("material")), str(episode.get("material")))
    over = f"{_minutes(used - budget)} over" if exceeded and budget is not None else ""
    summary = (
        f"The {material} of COI {_coi(episode['coi'])} ({episode['product_code']}) spent "
        f"{_minutes(episode['duration_minutes'])} {direction} {limit:g} °C (peak "
        f"{episode['peak_celsius']:g} °C) on leg {leg_no} ({_site(directory, leg['origin'])} → "
        f"{_site(directory, leg['destination'])}) of shipment {sid}"
        + (
            f" — {over} its {_minutes(budget)} excursion budget."
            if exceeded and budget is not None
            else (
                f" — within its {_minutes(budget)} excursion budget ({_minutes(budget - used)} "
                "left)."
                if budget is not None
                else "."
            )
        )
    )
    if episode["state"] == "open":
        summary += " The excursion is still open: readings have not come back into the class."

    gap_report = find_logger_gaps(lr)
    gaps = [
        f"{g['kind'].replace('_', ' ')} gap of {_minutes(g['gap_minutes'])}: "
        f"{local(g['gap_start'], origin_zone)} to {local(g['gap_end'], origin_zone)}"
        for g in _rows(gap_report.gaps, shipment_id=sid, leg_no=leg_no)
    ]
    ended = episode["ended_at"]
    end_text = (
        local(ended, origin_zone)
        if ended is not None
        else ("still outside at arrival" if episode["state"] == "closed" else "still open")
    )
    if budget is None:
        budget_text = "no budget in the product catalog"
    else:
        rest = f"{_minutes(used - budget)} over" if exceeded else f"{_minutes(budget - used)} left"
        budget_text = f"{_minutes(used)} used of {_minutes(budget)} — {rest}"
    route = f"{shipment.get('origin', '—')} → {shipment.get('destination', '—')}"
    facts = (
        ("COI", _coi(episode["coi"])),
        ("Product / material", f"{episode['product_code']} — {material}"),
        ("Temperature class", f"{episode.get('class_code')}: {_limits_text(lower, upper)}"),
        (
            f"Excursion start (time at {leg['origin']})",
            local_and_utc(episode["started_at"], origin_zone),
        ),
        ("Back in class", local_and_utc(ended, origin_zone) if ended is not None else end_text),
        (
            "Minutes outside",
            f"{_minutes(episode['duration_minutes'])} "
            f"({episode['readings_outside']} readings, one a minute)",
        ),
        ("Peak", f"{episode['peak_celsius']:g} °C ({direction} the class)"),
        ("Budget on this shipment", budget_text),
        ("Shipment", f"{sid} · courier {shipment.get('courier', '—')} · {route}"),
        (
            "Leg",
            f"{leg_no}: {_site(directory, leg['origin'])} → {_site(directory, leg['destination'])}",
        ),
        ("Dewar / logger", f"{leg['shipper_id']} / {leg['logger_id']} ({count} readings)"),
        (
            "Logger data",
            "complete (no gap over 10 min)" if not gaps else f"{len(gaps)} gap(s) on this leg",
        ),
    )

    episode_rows = tuple(
        Row(
            (
                str(e["leg_no"]),
                local(e["started_at"], _site_zone(directory, _leg_origin(legs, e["leg_no"]))),
                _minutes(e["duration_minutes"]),
                f"{e['peak_celsius']:g} °C",
                _minutes(e["budget_minutes_used"]),
                e["state"],
            ),
            flag=e["started_at"] == episode["started_at"] and e["leg_no"] == leg_no,
        )
        for e in leg_episodes
    )
    gap_legs = {(r["shipment_id"], r["leg_no"]): r for r in gap_report.legs.to_pylist()}
    leg_rows = tuple(
        Row(
            (
                str(r["leg_no"]),
                _site(directory, r["origin"]),
                _site(directory, r["destination"]),
                local(r["departed_at"], _site_zone(directory, r["origin"])),
                local(r["arrived_at"], _site_zone(directory, r["destination"])),
                duration(r["departed_at"], r["arrived_at"]),
                f"{r['shipper_id']} / {r['logger_id']}",
                str(_leg_count(lr, sid, r["leg_no"])),
                "yes" if (sid, r["leg_no"]) in gap_legs else "no",
            ),
            flag=r["leg_no"] == leg_no,
        )
        for r in legs
    )
    custody_rows: list[Row] = []
    finding_texts: list[str] = []
    notes: list[str] = []
    courier = shipment.get("courier")
    if custody is not None:
        steps, findings = custody.for_shipment(sid)
        flagged = {f["event_id"] for f in findings if f["rule"]}
        for step in steps:
            zone: tzinfo = UTC
            try:
                zone = timezone(timedelta(minutes=offset_minutes(step["event_time_zone_offset"])))
            except InputError:
                zone = UTC
            custody_rows.append(
                Row(
                    (
                        local(step["event_time"], zone),
                        f"{step['event_time'].astimezone(UTC):%m-%d %H:%M}",
                        str(step["leg_no"] or "—"),
                        step["biz_step"],
                        _site(directory, step["site"]) if step["site"] else "—",
                        (
                            f"{party(step['from_party'], courier)} → "
                            f"{party(step['to_party'], courier)}"
                        )
                        if step["handoff"]
                        else "",
                        party(step["possessor"], courier),
                    ),
                    flag=step["event_id"] in flagged,
                )
            )
        finding_texts = [
            f"{f['code']}{' (' + f['rule'] + ')' if f['rule'] else ''}: {f['detail']}"
            for f in findings
        ]
    else:
        notes.append(
            "Custody handoffs are not shown: no site directory with GS1 party identifiers is "
            "staged (master.site)."
        )
    return PacketData(
        title=f"Excursion on {sid}, leg {leg_no}",
        summary=summary,
        exceeded=exceeded,
        state=str(episode["state"]),
        facts=facts,
        budget_used=used,
        budget=budget,
        chart_svg=render_time_chart(chart),
        episodes=episode_rows,
        legs=leg_rows,
        custody=tuple(custody_rows),
        findings=tuple(finding_texts),
        gaps=tuple(gaps),
        as_of=utc(as_of),
        notes=tuple(notes),
    )


def _leg_origin(legs: Sequence[Mapping[str, Any]], leg_no: int) -> str | None:
    return next((str(r["origin"]) for r in legs if r["leg_no"] == leg_no), None)


def _leg_index(lr: LegReadings, shipment_id: str, leg_no: int) -> int | None:
    shipments = lr.legs["shipment_id"].to_pylist()
    legs = lr.legs["leg_no"].to_pylist()
    for index, key in enumerate(zip(shipments, legs, strict=True)):
        if key == (shipment_id, leg_no):
            return index
    return None


def _leg_count(lr: LegReadings, shipment_id: str, leg_no: int) -> int:
    index = _leg_index(lr, shipment_id, leg_no)
    return int(lr.count[index]) if index is not None else 0


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("cmohub.publish", "templates"),
    autoescape=True,
    keep_trailing_newline=True,
    undefined=jinja2.StrictUndefined,
)


def render_html(data: PacketData) -> str:
    """The packet as one self-contained HTML page (inline CSS and SVG, no script)."""
    return _ENV.get_template("packet.html.j2").render(p=data)


def render_packet(
    episode: Mapping[str, Any],
    *,
    report: ExcursionReport,
    tables: LogisticsTables,
    custody: CustodyLedger | None,
    directory: Directory | None,
    as_of: datetime,
) -> str:
    """Gather and render the packet of one episode (see :func:`packet_data`)."""
    return render_html(
        packet_data(
            episode,
            report=report,
            tables=tables,
            custody=custody,
            directory=directory,
            as_of=as_of,
        )
    )
