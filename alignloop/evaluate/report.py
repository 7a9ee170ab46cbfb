"""Plots (matplotlib, Agg backend: no display needed) and one self-contained HTML report.

The report embeds its PNGs as data URIs, so the single file can be mailed or attached to a ticket.
"""

from __future__ import annotations

import base64
import html
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from alignloop.core.files import atomic_path, write_text
from alignloop.evaluate.metrics import bootstrap_ci, proportion_ci
from alignloop.evaluate.qa import CONTEXT_CLASSES, coarse_grade


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


# --------------------------------------------------------------------------------------------------
# The staged loop on held-out questions: learning-curve table, classes table and a verdict from the figures
# --------------------------------------------------------------------------------------------------

ALPHA = 0.05  # significance level of the verdict's McNemar tests
TARGET_INCORRECT = 0.7  # the final stage's incorrect answers: at most this share of the base's
TARGET_IN_CONTEXT_REFUSAL = 0.25  # the final stage's refusals where the context holds the gold: at most this share
INTERVALS_NOTE = ("Counts: 95% Wilson interval of the rate. llmware points: total, with the 95% percentile "
                  "bootstrap interval of the total (2,000 resamples, seed 0). p: exact McNemar test against the "
                  "base on the same questions.")


def _stage_name(name: Any) -> str:
    """``stage_2`` → ``Stage 2``; any other name as given."""
    m = re.fullmatch(r"stage_(\d+)", str(name))
    return f"Stage {m.group(1)}" if m else str(name)


def _with_labels(stage: dict) -> str:
    labels = stage.get("labels")
    if labels is None:
        return _stage_name(stage.get("name", "base"))
    return f"{_stage_name(stage.get('name', 'base'))} ({labels} label{'' if labels == 1 else 's'})"


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def _p_eq(p: float | None) -> str:
    text = _p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _test(stage: dict, key: str) -> float:
    try:
        return float(stage[key]["p_value"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"stage {stage.get('name')!r} needs {key!r} with a 'p_value' (mcnemar_exact)") from exc


def _counts(stage: dict, base: dict) -> None:
    for key in ("correct", "incorrect", "refusal", "n"):
        if not isinstance(stage.get(key), int):
            raise ValueError(f"stage {stage.get('name')!r} needs an integer {key!r}")
    if stage["n"] != base["n"]:
        raise ValueError(f"stage {stage.get('name')!r} has {stage['n']} items, the base {base['n']}: a paired "
                         "comparison needs the same questions")


def _clause(now: int, before: int, n: int, p: float, noun: str, fewer_is_better: bool) -> str:
    """How one count moved against the base, said plainly: better and significant, else within noise."""
    goal, done, worse = ("reduce", "reduced", "increased") if fewer_is_better else ("raise", "raised", "lowered")
    figures = f"({now} vs {before} of {n}, {_p_eq(p)}"
    better = now < before if fewer_is_better else now > before
    if p < ALPHA:
        return f"{done if better else worse} {noun} {figures}: significant)"
    return f"did not {'measurably ' if better else ''}{goal} {noun} {figures}: within noise)"


def verdict(stages: Sequence[dict], base: dict) -> str:
    """A plain-English verdict from the figures alone (deterministic): one line on the base, one per stage saying
    whether it reduced incorrect answers and raised correct ones against the base (exact McNemar p of each stage's
    ``mcnemar_incorrect_vs_base`` / ``mcnemar_correct_vs_base``; "significant" at p < :data:`ALPHA`, else "within
    noise" — fewer errors that are not significant are not called a reduction), then whether the final stage (the
    last given) meets the targets (incorrect at most :data:`TARGET_INCORRECT` x the base's, correct at least the
    base's, and, where the stages carry ``in_context`` counts ``{n, correct, refusal}``, on the questions whose
    context holds the gold: correct at least the base's and refusals at most :data:`TARGET_IN_CONTEXT_REFUSAL`)
    and what that is worth. Each stage and ``base`` hold ``name``, ``labels``, ``correct``,
    ``incorrect``, ``refusal`` and ``n``; a stage named like the base is the base itself and is not compared."""
    _counts(base, base)
    rest = [s for s in stages if s.get("name") != base.get("name")]
    if not rest:
        raise ValueError("verdict needs at least one stage besides the base")
    n = base["n"]
    named = "" if base.get("name", "base") == "base" else f" {_with_labels(base)}:"
    lines = [f"Base:{named} {base['correct']} correct, {base['incorrect']} incorrect, "
             f"{base['refusal']} refused of {n}."]
    for s in rest:
        _counts(s, base)
        inc = _clause(s["incorrect"], base["incorrect"], n, _test(s, "mcnemar_incorrect_vs_base"),
                      "incorrect answers", True)
        cor = _clause(s["correct"], base["correct"], n, _test(s, "mcnemar_correct_vs_base"), "correct answers", False)
        lines.append(f"{_with_labels(s)} {inc} and {cor}.")
    final = rest[-1]
    cap = round(TARGET_INCORRECT * base["incorrect"], 1)
    inc_ok = final["incorrect"] * 10 <= round(TARGET_INCORRECT * 10) * base["incorrect"]
    cor_ok = final["correct"] >= base["correct"]
    targets = [("incorrect", inc_ok), ("correct", cor_ok)]
    said = (f"Targets for the final stage, {_with_labels(final)}: incorrect at most {TARGET_INCORRECT:g}x the "
            f"base's ({final['incorrect']} vs at most {cap:g}): {'met' if inc_ok else 'not met'}; correct at "
            f"least the base's ({final['correct']} vs {base['correct']}): {'met' if cor_ok else 'not met'}")
    ctx = final.get("in_context"), base.get("in_context")
    if all(isinstance(c, dict) and c.get("n") for c in ctx):  # the questions whose context holds the gold
        (f_ctx, b_ctx), limit = ctx, TARGET_IN_CONTEXT_REFUSAL
        ctx_ok = f_ctx["correct"] >= b_ctx["correct"] and f_ctx["refusal"] <= limit * f_ctx["n"]
        targets.append(("in-context", ctx_ok))
        said += (f"; on the {f_ctx['n']} questions whose context holds the gold, correct at least the base's "
                 f"({f_ctx['correct']} vs {b_ctx['correct']}) and refusals at most {100 * limit:g}% "
                 f"({f_ctx['refusal']} of {f_ctx['n']}): {'met' if ctx_ok else 'not met'}")
    lines.append(said + ".")
    p_inc = _test(final, "mcnemar_incorrect_vs_base")
    missed = [t for t, ok in targets if not ok]
    if missed:
        lines.append(f"Verdict: the final stage misses the {' and '.join(missed)} target"
                     f"{'s' if len(missed) > 1 else ''}: the loop is not shown to make the model better.")
    elif p_inc < ALPHA:
        p_cor = _test(final, "mcnemar_correct_vs_base")
        gain = "" if p_cor < ALPHA else f" (its gain in correct answers is within noise, {_p_eq(p_cor)})"
        lines.append(f"Verdict: the final stage meets the targets and its drop in incorrect answers is significant "
                     f"({_p_eq(p_inc)}){gain}: the loop made the model measurably better on questions it never saw "
                     "(what each part adds says which step earned it).")
    else:
        lines.append(f"Verdict: the final stage meets the targets, but its drop in incorrect answers is within "
                     f"noise ({_p_eq(p_inc)}): on {n} questions that is not yet evidence that the loop helped.")
    return "\n".join(lines)


def _count_cell(k: int, n: int) -> str:
    lo, hi = proportion_ci(k, n)
    if lo is None:
        return f"{k}/{n}"
    return f"{k}/{n} ({100 * lo:.0f}–{100 * hi:.0f}%)"


def _points_cell(stage: dict) -> str:
    points = stage.get("points")
    if points:
        lo, hi = bootstrap_ci(points)
        m = len(points)
        return f"{sum(points):g} ({lo * m:.1f} to {hi * m:.1f})"
    return f"{stage['llmware_points']:g}" if stage.get("llmware_points") is not None else "–"


def learning_curve_table(stages: Sequence[dict], base: dict) -> str:
    """A markdown table, the base first and then each stage: labels, correct, incorrect and refusal counts with
    the 95% Wilson interval of their rate, llmware points (the total with its 95% bootstrap interval when the
    stage holds per-item ``points``, else its ``llmware_points`` total, else "–") and the exact McNemar p of
    incorrect and of correct answers against the base; :data:`INTERVALS_NOTE` below it."""
    lines = ["| stage | labels | correct | incorrect | refusal | llmware points | p incorrect vs base | "
             "p correct vs base |", "|---|---:|---|---|---|---|---:|---:|"]
    rows = [base] + [s for s in stages if s.get("name") != base.get("name")]
    for s in rows:
        _counts(s, base)
        is_base = s is base
        p_inc = "–" if is_base else _p(_test(s, "mcnemar_incorrect_vs_base"))
        p_cor = "–" if is_base else _p(_test(s, "mcnemar_correct_vs_base"))
        name = _stage_name(s.get("name", "base")) + (" (base)" if is_base else "")
        labels = "–" if s.get("labels") is None else str(s["labels"])
        cells = [name, labels] + [_count_cell(s[k], s["n"]) for k in ("correct", "incorrect",
                                                                                          "refusal")]
        lines.append("| " + " | ".join(cells + [_points_cell(s), p_inc, p_cor]) + " |")
    return "\n".join(lines) + "\n\n" + INTERVALS_NOTE + "\n"


def class_table(rows_by_stage: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """A markdown table per stage and context class (:data:`CONTEXT_CLASSES`, in that order, every class listed):
    items, correct, incorrect and refusal. ``rows_by_stage`` maps a stage's name to its per-item rows (as
    :func:`alignloop.evaluate.qa_run.score_qa` gives them: ``context_class`` and ``grade``, a fine grade is
    counted coarse)."""
    lines = ["| stage | class | n | correct | incorrect | refusal |", "|---|---|---:|---:|---:|---:|"]
    for name, rows in rows_by_stage.items():
        counts = {c: Counter() for c in CONTEXT_CLASSES}
        for i, r in enumerate(rows):
            cls = r.get("context_class")
            if cls not in counts:
                raise ValueError(f"class_table: row {i} of {name!r} has context_class {cls!r} "
                                 f"(expected one of {CONTEXT_CLASSES})")
            counts[cls][coarse_grade(r.get("grade"))] += 1
            counts[cls]["n"] += 1
        for cls in CONTEXT_CLASSES:
            c = counts[cls]
            lines.append(f"| {_stage_name(name)} | {cls} | {c['n']} | {c['correct']} | {c['incorrect']} | "
                         f"{c['refusal']} |")
    return "\n".join(lines) + "\n"
