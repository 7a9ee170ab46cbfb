"""Plots (matplotlib, Agg backend: no display needed) and one self-contained HTML report.

The report embeds its PNGs as data URIs, so the single file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from alignloop.core.files import atomic_path, write_text


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str | os.PathLike) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG (atomically) and free it."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def learning_curve_png(curves: dict[str, list[tuple[int, float]]], path: str | os.PathLike, metric: str,
                       title: str = "", bands: dict[str, list[tuple[float, float]]] | None = None) -> Path:
    """One line per method: metric vs number of labels (optional shaded interval per point)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, pts in curves.items():
        pts = sorted(pts)
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, marker="o", label=name)
        if bands and name in bands:
            lo, hi = zip(*bands[name])
            ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.set_xlabel("labels")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs labels")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(plt, fig, path)


def grouped_bars_png(groups: dict[str, dict[str, float]], path: str | os.PathLike, title: str = "") -> Path:
    """Bars per category (e.g. correct / incorrect / refusal) for each model side by side."""
    plt = _plt()
    models = list(groups)
    cats = list(next(iter(groups.values())).keys()) if groups else []
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    width = 0.8 / max(len(models), 1)
    for i, m in enumerate(models):
        xs = np.arange(len(cats)) + i * width
        vals = [groups[m][c] for c in cats]
        bars = ax.bar(xs, vals, width, label=m)
        ax.bar_label(bars, fmt="%g")
    ax.set_xticks(np.arange(len(cats)) + width * (len(models) - 1) / 2, cats)
    ax.set_title(title)
    ax.legend()
    return _save(plt, fig, path)


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


def table_html(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, max_chars: int = 300) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(columns or rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            if isinstance(v, float):
                v = f"{v:.4g}"
            s = str(v)
            s = s if len(s) <= max_chars else s[:max_chars] + "…"
            cls = f' class="{html.escape(s)}"' if s in ("correct", "incorrect", "refusal") else ""
            cells.append(f"<td{cls}>{html.escape(s)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 6px;
vertical-align:top;text-align:left}th{background:#f3f3f3}td.correct{background:#e3f6e3}td.incorrect{background:
#fbe4e4}td.refusal{background:#fff5d6}img{max-width:100%;margin:0.5em 0}.verdict{font-size:1.1em;padding:0.6em;
background:#eef3fb;border-left:4px solid #4a78c2}"""


def html_report(path: str | os.PathLike, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write a single-file HTML report; ``sections`` are (heading, HTML body) with images already embedded."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    parts.append("</body></html>")
    return write_text(path, "\n".join(parts))


def image(path: str | os.PathLike) -> str:
    return _img(Path(path))
