"""Small charts drawn on the server as SVG text: no script, no library, nothing fetched at run time (the pages'
CSP allows neither). Each chart is a pure function of ``review.activity``'s days."""

from __future__ import annotations

from html import escape
from typing import Callable

WIDTH, HEIGHT = 640, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 26, 28
INK, MUTED, GRID = "#1f2937", "#6b7280", "#e5e7eb"
BAR, SKIP, LINE = "#2563eb", "#93c5fd", "#059669"


def _frame(title: str, desc: str, body: list[str], days: list[dict]) -> str:
    first, last = (days[0]["day"], days[-1]["day"]) if days else ("", "")
    bottom = HEIGHT - BOTTOM
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-labelledby="t d" font-family="system-ui, sans-serif" font-size="11">',
        f'<title id="t">{escape(title)}</title><desc id="d">{escape(desc)}</desc>',
        f'<text x="{LEFT}" y="16" fill="{INK}" font-size="13" font-weight="600">{escape(title)}</text>',
        *body,
        f'<line x1="{LEFT}" y1="{bottom}" x2="{WIDTH - RIGHT}" y2="{bottom}" stroke="{MUTED}"/>',
        f'<text x="{LEFT}" y="{HEIGHT - 10}" fill="{MUTED}">{escape(first)}</text>',
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 10}" fill="{MUTED}" text-anchor="end">{escape(last)}</text>',
        "</svg>"])


def _y(value: float, top: float) -> float:
    """Plot height for ``value`` on a 0..top scale."""
    span = HEIGHT - TOP - BOTTOM
    return round(HEIGHT - BOTTOM - (value / top) * span, 1) if top else HEIGHT - BOTTOM


def _gridline(value: float, top: float, label: str) -> str:
    y = _y(value, top)
    return (f'<line x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}" stroke="{GRID}"/>'
            f'<text x="{LEFT - 6}" y="{y + 4}" fill="{MUTED}" text-anchor="end">{escape(label)}</text>')


def throughput(days: list[dict]) -> str:
    """People's judgments per day (bars), with their skips stacked on top in a lighter shade."""
    top = max([d["judgments"] + d["skips"] for d in days] + [1])
    step = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    body = [_gridline(top, top, str(top)), _gridline(top / 2, top, f"{top / 2:g}")]
    for i, d in enumerate(days):
        x = round(LEFT + i * step + step * 0.15, 1)
        w = round(step * 0.7, 1)
        y_j, y_s = _y(d["judgments"], top), _y(d["judgments"] + d["skips"], top)
        label = escape(f'{d["day"]}: {d["judgments"]} judgments, {d["skips"]} skips')
        for kind, value, y, h, fill in (("judgments", d["judgments"], y_j, HEIGHT - BOTTOM - y_j, BAR),
                                        ("skips", d["skips"], y_s, y_j - y_s, SKIP)):
            if value:
                body.append(f'<rect class="{kind}" x="{x}" y="{y}" width="{w}" height="{round(h, 1)}" fill="{fill}" '
                            f'data-day="{d["day"]}" data-value="{value}"><title>{label}</title></rect>')
    total = sum(d["judgments"] for d in days)
    return _frame("Judgments per day (people)", f"{total} judgments by people over {len(days)} days", body, days)


def agreement(days: list[dict]) -> str:
    """Per day, how often people's answers agreed with earlier answers to the same task (0 to 1); a day with
    nothing to compare leaves a gap."""
    step = (WIDTH - LEFT - RIGHT) / max(len(days), 1)
    body = [_gridline(v, 1, f"{v:g}") for v in (0.5, 1.0)]
    points, run = [], []
    for i, d in enumerate(days):
        if d["agreement"] is None:
            if run:
                points.append(run)
            run = []
            continue
        x = round(LEFT + (i + 0.5) * step, 1)
        run.append((x, _y(d["agreement"], 1), d))
    if run:
        points.append(run)
    for run in points:
        if len(run) > 1:
            path = " ".join(f"{x},{y}" for x, y, _ in run)
            body.append(f'<polyline points="{path}" fill="none" stroke="{LINE}" stroke-width="2"/>')
        for x, y, d in run:
            label = f'{d["day"]}: {d["agreement"]:.2f} ({d["compared"]} comparisons)'
            body.append(f'<circle class="agreement" cx="{x}" cy="{y}" r="3" fill="{LINE}" data-day="{d["day"]}" '
                        f'data-value="{d["agreement"]}"><title>{escape(label)}</title></circle>')
    shown = sum(1 for d in days if d["agreement"] is not None)
    return _frame("Agreement among people per day", f"{shown} of {len(days)} days had answers to compare", body,
                  days)


CHARTS: dict[str, Callable[[list[dict]], str]] = {"throughput": throughput, "agreement": agreement}
