"""The loop's records: where a stage's folder is, its log line, the learning curves over stages and seeds, and the
HTML report (shared by the simulated and the training mode)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from alignloop.core.files import write_json
from alignloop.evaluate.report import html_report, image, learning_curve_png, table_html
from alignloop.pipelines.config import LoopConfig


def log(msg: str) -> None:
    print(f"[loop {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stage_dir(out: Path, strategy: str, seed: int, n: int, n_seeds: int) -> Path:
    base = out / strategy if n_seeds == 1 else out / f"{strategy}_seed{seed}"
    return base / f"stage_{n}"


def write_stage_json(path: Path, data: Any) -> Path:
    """A stage's small JSON file (``labels.json``, ``metrics.json``, ``round.json``), written atomically."""
    return write_json(path, data, indent=1)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def curves_from(results: dict[str, Any], metric: str) -> tuple[dict[str, list[tuple[int, float]]],
                                                               dict[str, list[tuple[float, float]]]]:
    """Mean over seeds per stage, and a 95% normal band over seeds (when there are several)."""
    curves, bands = {}, {}
    for strategy, per_seed in results.items():
        by_n: dict[int, list[float]] = {}
        for ms in per_seed.values():
            for m in ms:  # a stage without the metric (stage 0 has no reward model) is left off that curve
                if metric in m:
                    by_n.setdefault(m["labels"], []).append(m[metric])
        ns = sorted(by_n)
        curves[strategy] = [(n, float(np.mean(by_n[n]))) for n in ns]
        if all(len(by_n[n]) > 1 for n in ns):
            bands[strategy] = [(float(np.mean(v) - 1.96 * np.std(v, ddof=1) / np.sqrt(len(v))),
                                float(np.mean(v) + 1.96 * np.std(v, ddof=1) / np.sqrt(len(v))))
                               for v in (by_n[n] for n in ns)]
    return curves, bands


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first label count at which ``curve`` reaches ``target`` (None if never)."""
    for n, v in sorted(curve):
        if v >= target - 1e-12:
            return n
    return None


def write_report(cfg: LoopConfig, results: dict[str, Any], metric: str = "dev_accuracy",
                 name: str = "report.html") -> Path:
    """``curve_<metric>.png``, ``curves.json`` (``curves_<metric>.json`` for a second report) and the HTML."""
    out = Path(cfg.output)
    curves, bands = curves_from(results, metric)
    png = learning_curve_png(curves, out / f"curve_{metric}.png", metric,
                             f"{metric} vs labels ({len(cfg.seeds)} seed{'s' * (len(cfg.seeds) > 1)})", bands or None)
    rows = []
    ns = sorted({n for c in curves.values() for n, _ in c})
    for n in ns:
        row: dict[str, Any] = {"labels": n}
        for s, c in curves.items():
            row[s] = dict(c).get(n)
        rows.append(row)
    summary: dict[str, Any] = {"metric": metric, "curves": curves}
    text = ""
    if "random" in curves and "uncertainty" in curves:
        final_random = curves["random"][-1][1]
        need = labels_to_reach(curves["uncertainty"], final_random)
        summary["uncertainty_labels_to_reach_random_final"] = need
        text = (f"<p>random reaches {final_random:.3f} at {curves['random'][-1][0]} labels; uncertainty "
                + (f"reaches it at {need} labels.</p>" if need else "does not reach it within these stages.</p>"))
    write_stage_json(out / ("curves.json" if name == "report.html" else f"curves_{metric}.json"), summary)
    return html_report(out / name, "alignloop loop: learning curves",
                       [("Learning curve", image(png) + text), ("Per stage", table_html(rows))])
