"""Small, deterministic SVG charts of time series (pure: values in, SVG text out).

Made for temperature curves against their limits, and reused by the nightly HTML report::

    chart = TimeChart(
        series=[Series("logger PLR-LG-000034", times, celsius)],
        bands=[Band(lower=2.0, upper=8.0, label="2-8C")],
        spans=[Span(start, end, "excursion 47 min")],
        markers=[Marker(departed, "departed A9995")],
        time_zone="Europe/Berlin",        # axis labels in local time (the zone's offset shown)
        y_label="°C",
    )
    svg = render_time_chart(chart)      # a complete <svg> element, same bytes for same input

* the allowed range (a :class:`Band`) is shaded, its limits drawn as dashed lines labelled
  with their values; a one-sided class (cryogenic: at most −150 °C) shades to the chart edge;
* :class:`Span` shades an interval (an excursion episode) across the plot;
* a series is drawn as a line that breaks where consecutive points are further apart than
  ``gap_minutes`` (a logger gap stays visible as a gap); long series are reduced to the
  first, lowest, highest and last point per pixel column (:func:`decimate`), which keeps
  every peak;
* axes get "nice" ticks: numbers at 1/2/5 × 10ⁿ steps, times at round local clock times.

Nothing here reads a clock or the environment; text is escaped; numbers are printed with
fixed precision, so the same chart gives the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from html import escape
from zoneinfo import ZoneInfo

PALETTE = ("#1f4e79", "#7a4f9e", "#2e7d32", "#8d6e63")
BAND_FILL = "#e6f4ea"
LIMIT_STROKE = "#2e7d32"
SPAN_FILL = "#fde2e1"
SPAN_STROKE = "#c62828"
AXIS = "#444444"
GRID = "#e0e0e0"
FONT = "font-family=\"system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif\""


@dataclass(frozen=True)
class Series:
    name: str
    x: Sequence[datetime]  # aware instants
    y: Sequence[float]
    color: str | None = None
    gap_minutes: float | None = 10.0  # break the line across longer gaps (None: never)


@dataclass(frozen=True)
class Band:
    """An allowed range: shaded, with its finite limits drawn as dashed lines."""

    lower: float | None
    upper: float | None
    label: str = ""


@dataclass(frozen=True)
class Span:
    """A shaded interval across the plot (an excursion episode); ``end`` None: still open."""

    start: datetime
    end: datetime | None
    label: str = ""


@dataclass(frozen=True)
class Marker:
    """A vertical line at an instant (departure, arrival, a custody handoff)."""

    at: datetime
    label: str = ""


@dataclass(frozen=True)
class TimeChart:
    series: Sequence[Series]
    bands: Sequence[Band] = ()
    spans: Sequence[Span] = ()
    markers: Sequence[Marker] = ()
    time_zone: str | tzinfo = "UTC"  # IANA name or tzinfo for the time axis labels
    title: str = ""
    y_label: str = ""
    width: int = 960
    height: int = 360
    x_range: tuple[datetime, datetime] | None = None
    y_range: tuple[float, float] | None = None
    description: str = ""  # <desc> for screen readers
    margins: tuple[int, int, int, int] = field(default=(28, 24, 54, 64))  # top right bottom left


# --- scales and ticks ----------------------------------------------------------------------------


def nice_step(span: float, target: int) -> float:
    """A step of 1, 2 or 5 × 10ⁿ that cuts ``span`` into about ``target`` parts."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def nice_ticks(low: float, high: float, target: int = 6) -> list[float]:
    step = nice_step(high - low, target)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


_TIME_STEPS = tuple(
    timedelta(minutes=m) for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)
)


def _zone(zone: str | tzinfo) -> tzinfo:
    return ZoneInfo(zone) if isinstance(zone, str) else zone


def time_ticks(
    start: datetime, end: datetime, zone: str | tzinfo = "UTC", target: int = 7
) -> list[datetime]:
    """Round local clock times (every 5, 15, 60 minutes, 6 hours, a day …) in [start, end]."""
    span = end - start
    step = next((s for s in _TIME_STEPS if span / s <= target), _TIME_STEPS[-1])
    tz = _zone(zone)
    local = start.astimezone(tz)
    minutes = int(step.total_seconds() // 60)
    if minutes >= 1440:
        base = local.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        elapsed = int(
            (local.replace(tzinfo=None) - midnight.replace(tzinfo=None)).total_seconds() // 60
        )
        base = midnight + timedelta(minutes=(elapsed // minutes) * minutes)
    ticks: list[datetime] = []
    wall = base.replace(tzinfo=None)
    while True:
        # Step on the wall clock: ticks stay on round local times across DST changes; a wall
        # time that does not exist (the hour skipped in spring) gets no tick.
        moment = wall.replace(tzinfo=tz)
        instant = moment.astimezone(UTC)
        if instant > end:
            break
        exists = instant.astimezone(tz).replace(tzinfo=None) == wall
        if exists and instant >= start and (not ticks or instant > ticks[-1]):
            ticks.append(instant)
        wall += step
    return ticks


def time_label(moment: datetime, zone: str | tzinfo, *, with_day: bool) -> str:
    local = moment.astimezone(_zone(zone))
    return f"{local:%d %b %H:%M}" if with_day else f"{local:%H:%M}"


def offset_label(moment: datetime, zone: str | tzinfo) -> str:
    """``UTC+01:00`` for the offset the zone has at ``moment``."""
    offset = moment.astimezone(_zone(zone)).utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def decimate(
    x: Sequence[datetime], y: Sequence[float], buckets: int
) -> tuple[list[datetime], list[float]]:
    """At most about 4 points per bucket (first, lowest, highest, last), in time order."""
    n = len(x)
    if n <= buckets * 4 or buckets <= 0:
        return list(x), list(y)
    out_x: list[datetime] = []
    out_y: list[float] = []
    size = n / buckets
    for b in range(buckets):
        lo, hi = int(b * size), min(n, int((b + 1) * size))
        if lo >= hi:
            continue
        segment = range(lo, hi)
        low = min(segment, key=lambda i: y[i])
        high = max(segment, key=lambda i: y[i])
        for i in sorted({lo, low, high, hi - 1}):
            out_x.append(x[i])
            out_y.append(y[i])
    return out_x, out_y


# --- rendering -----------------------------------------------------------------------------------


def _f(value: float) -> str:
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _number(value: float) -> str:
    text = f"{value:.10g}"
    return "0" if text == "-0" else text.replace("-", "−")


def render_time_chart(chart: TimeChart) -> str:
    """The chart as a standalone ``<svg>`` element (UTF-8 text)."""
    top, right, bottom, left = chart.margins
    width, height = chart.width, chart.height
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [t for s in chart.series for t in s.x]
    ys = [v for s in chart.series for v in s.y if math.isfinite(v)]
    if chart.x_range is not None:
        x0, x1 = chart.x_range
    elif xs:
        x0, x1 = min(xs), max(xs)
    else:
        x0 = x1 = datetime(1970, 1, 1, tzinfo=UTC)
    if x1 <= x0:
        x1 = x0 + timedelta(minutes=1)
    if chart.y_range is not None:
        y0, y1 = chart.y_range
    else:
        limits = [v for b in chart.bands for v in (b.lower, b.upper) if v is not None]
        candidates = ys + limits
        y0 = min(candidates) if candidates else 0.0
        y1 = max(candidates) if candidates else 1.0
        pad = max((y1 - y0) * 0.08, 0.5)
        y0, y1 = y0 - pad, y1 + pad
    if y1 <= y0:
        y1 = y0 + 1.0
    total = (x1 - x0).total_seconds()

    def px(moment: datetime) -> float:
        return left + (moment - x0).total_seconds() / total * plot_w

    def py(value: float) -> float:
        return top + (y1 - value) / (y1 - y0) * plot_h

    def clamp_y(value: float) -> float:
        return min(max(value, y0), y1)

    out: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" {FONT} font-size="12">'
    ]
    if chart.title:
        out.append(f"<title>{escape(chart.title)}</title>")
    if chart.description:
        out.append(f"<desc>{escape(chart.description)}</desc>")
    out.append(f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>')
    clip = f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>'
    out.append(f'<clipPath id="plot">{clip}</clipPath>')

    # Allowed range, shaded first so everything else lies on top.
    for band in chart.bands:
        upper = clamp_y(band.upper if band.upper is not None else y1)
        lower = clamp_y(band.lower if band.lower is not None else y0)
        out.append(
            f'<rect x="{left}" y="{_f(py(upper))}" width="{plot_w}" '
            f'height="{_f(py(lower) - py(upper))}" fill="{BAND_FILL}"/>'
        )
    # Grid and y axis.
    for tick in nice_ticks(y0, y1):
        y = _f(py(tick))
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{left - 8}" y="{y}" text-anchor="end" dominant-baseline="middle" '
            f'fill="{AXIS}">{escape(_number(tick))}</text>'
        )
    ticks = time_ticks(x0, x1, chart.time_zone)
    days = {t.astimezone(_zone(chart.time_zone)).date() for t in ticks}
    previous_day = None
    for moment in ticks:
        x = _f(px(moment))
        local_day = moment.astimezone(_zone(chart.time_zone)).date()
        with_day = len(days) > 1 and local_day != previous_day
        previous_day = local_day
        out.append(f'<line x1="{x}" x2="{x}" y1="{top}" y2="{top + plot_h}" stroke="{GRID}"/>')
        out.append(
            f'<text x="{x}" y="{top + plot_h + 18}" text-anchor="middle" fill="{AXIS}">'
            f"{escape(time_label(moment, chart.time_zone, with_day=with_day))}</text>"
        )
    # Episodes.
    for span in chart.spans:
        start = max(span.start, x0)
        end = min(span.end or x1, x1)
        if end < start:
            continue
        left_edge = px(start)
        w = max(px(end) - left_edge, 1.5)
        out.append(
            f'<rect x="{_f(left_edge)}" y="{top}" width="{_f(w)}" height="{plot_h}" '
            f'fill="{SPAN_FILL}" stroke="{SPAN_STROKE}" stroke-width="1" stroke-opacity="0.6"/>'
        )
        if span.label:
            out.append(
                f'<text x="{_f(left_edge + w / 2)}" y="{top + 14}" text-anchor="middle" '
                f'fill="{SPAN_STROKE}" font-weight="600">{escape(span.label)}</text>'
            )
    # Limits as dashed lines with their values.
    for band in chart.bands:
        for value, where in ((band.upper, "upper"), (band.lower, "lower")):
            if value is None or not (y0 <= value <= y1):
                continue
            y_limit = py(value)
            y = _f(y_limit)
            out.append(
                f'<line x1="{left}" x2="{left + plot_w}" y1="{y}" y2="{y}" stroke="{LIMIT_STROKE}" '
                f'stroke-width="1.5" stroke-dasharray="6 4"/>'
            )
            label = f"{where} limit {_number(value)}" + (
                f" {chart.y_label}" if chart.y_label else ""
            )
            dy = -5 if where == "upper" else 13
            out.append(
                f'<text x="{left + plot_w - 4}" y="{_f(y_limit + dy)}" text-anchor="end" '
                f'fill="{LIMIT_STROKE}">{escape(label)}</text>'
            )
    # Markers.
    for marker in chart.markers:
        if not (x0 <= marker.at <= x1):
            continue
        x = _f(px(marker.at))
        out.append(
            f'<line x1="{x}" x2="{x}" y1="{top}" y2="{top + plot_h}" stroke="{AXIS}" '
            f'stroke-width="1" stroke-dasharray="2 3"/>'
        )
        if marker.label:
            # Near an edge the label grows inwards, so it is never cut off by the chart's border.
            label_x = px(marker.at)
            third = (x1 - x0) / 3
            anchor = (
                "start"
                if marker.at <= x0 + third
                else "end"
                if marker.at >= x1 - third
                else "middle"
            )
            out.append(
                f'<text x="{_f(label_x)}" y="{top - 8}" text-anchor="{anchor}" fill="{AXIS}">'
                f"{escape(marker.label)}</text>"
            )
    # Series.
    for number, series in enumerate(chart.series):
        color = series.color or PALETTE[number % len(PALETTE)]
        xs_s, ys_s = decimate(series.x, series.y, plot_w)
        gap = timedelta(minutes=series.gap_minutes) if series.gap_minutes else None
        commands: list[str] = []
        previous: datetime | None = None
        for moment, value in zip(xs_s, ys_s, strict=True):
            if not math.isfinite(value):
                previous = None
                continue
            move = previous is None or (gap is not None and moment - previous > gap)
            commands.append(f"{'M' if move else 'L'}{_f(px(moment))},{_f(py(value))}")
            previous = moment
        if commands:
            out.append(
                f'<path d="{" ".join(commands)}" fill="none" stroke="{color}" stroke-width="1.6" '
                f'stroke-linejoin="round" clip-path="url(#plot)"/>'
            )
    # Frame and axis titles.
    out.append(
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
        f'stroke="{AXIS}"/>'
    )
    if chart.y_label:
        middle = _f(top + plot_h / 2)
        out.append(
            f'<text x="{left - 48}" y="{middle}" text-anchor="middle" fill="{AXIS}" '
            f'transform="rotate(-90 {left - 48} {middle})">{escape(chart.y_label)}</text>'
        )
    zone_name = chart.time_zone if isinstance(chart.time_zone, str) else str(chart.time_zone)
    out.append(
        f'<text x="{_f(left + plot_w / 2)}" y="{height - 10}" text-anchor="middle" fill="{AXIS}">'
        f"{escape(f'local time, {zone_name} ({offset_label(x0, chart.time_zone)})')}</text>"
    )
    if len(chart.series) > 1:
        for number, series in enumerate(chart.series):
            color = series.color or PALETTE[number % len(PALETTE)]
            out.append(
                f'<text x="{left + 8 + 160 * number}" y="{top + plot_h - 8}" fill="{color}">'
                f"■ {escape(series.name)}</text>"
            )
    out.append("</svg>")
    return "".join(out)


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    color: str | None = None
    note: str = ""  # shown after the value (e.g. "critical")


def render_bar_chart(
    bars: Sequence[Bar], *, width: int = 680, bar_height: int = 22, label_width: int | None = None
) -> str:
    """Horizontal bars with their labels and values (counts by rule, statuses); same bytes."""
    if not bars:
        return ""
    if label_width is None:  # room for the longest label at ~7 px per character of 12 px text
        label_width = min(width // 2, 16 + 7 * max(len(b.label) for b in bars))
    top = max(b.value for b in bars) or 1.0
    plot = width - label_width - 90
    height = len(bars) * (bar_height + 6) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" {FONT} font-size="12">'
    ]
    for index, bar in enumerate(bars):
        y = 4 + index * (bar_height + 6)
        length = max(1.0, plot * bar.value / top) if bar.value else 0.0
        color = bar.color or PALETTE[0]
        note = f" {escape(bar.note)}" if bar.note else ""
        parts.append(
            f'<text x="{label_width - 8}" y="{_f(y + bar_height * 0.7)}" text-anchor="end" '
            f'fill="{AXIS}">{escape(bar.label)}</text>'
            f'<rect x="{label_width}" y="{y}" width="{_f(length)}" height="{bar_height}" '
            f'fill="{color}"/>'
            f'<text x="{_f(label_width + length + 6)}" y="{_f(y + bar_height * 0.7)}" '
            f'fill="{AXIS}">{_number(bar.value)}{note}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
