"""The demo's report: ``report.md`` (with ``report/*.png``), ``report.json`` and ``verdict.txt``.

Every figure comes from the stored answers, graded again with the current scorer (so a cached run's report
follows scorer fixes), all on the same held-out questions:

1. the verdict, generated from the figures (:func:`alignloop.evaluate.report.verdict`, each stage against stage 0,
   the SFT model alone), then one line per part of the chain (SFT, feedback + reward model + DPO, RL) saying what it
   changed against the part before, with its exact McNemar p and its minutes;
2. the learning curve: correct, incorrect, refusal (95% Wilson intervals), hallucination and llmware points (95%
   bootstrap interval) against labels, exact McNemar p of each stage vs stage 0;
3. what each part adds: the base model, + SFT (stage 0), + DPO and + RL (the last stage) on the same items;
4. training curves of every stage (loss, reward, KL of each trainer's ``metrics.jsonl``);
5. grades per context class and the answers' habits;
6. wall time of every step and stage, and the registered models.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

from alignloop.core.files import atomic_path, write_json, write_text
from alignloop.evaluate.metrics import bootstrap_ci, mcnemar_exact, rate_ci
from alignloop.evaluate.qa import IN_CONTEXT, answer_habits
from alignloop.evaluate.qa_run import qa_items, score_qa
from alignloop.evaluate.report import class_table, learning_curve_png, learning_curve_table, verdict
from alignloop.pipelines.config import DemoConfig
from alignloop.pipelines.loop_report import read_jsonl

KINDS = ("correct", "incorrect", "hallucination", "refusal")
#: what each trainer's metrics.jsonl calls its loss, its reward and its KL (the first key present is read)
CURVE_KEYS = {"loss": ("loss", "policy/loss", "head/train_loss"),
              "reward": ("objective/reward", "rewards/margins", "rewards/accuracy"), "kl": ("objective/kl",)}
TRAINERS = ("reward", "dpo", "grpo")


def graded_rows(records: Sequence[Any], folder: Path) -> list[dict[str, Any]]:
    """The answers of ``folder/submission.csv``, graded again by the QA scorer, in the test set's order."""
    with open(folder / "submission.csv", newline="") as fh:
        answers = {r["id"]: r["answer"] for r in csv.DictReader(fh)}
    rows, _ = score_qa(records, [answers[str(r.meta["id"])] for r in records])
    return rows


def policy_rows(records: Sequence[Any], folder: Path) -> list[dict[str, Any]] | None:
    """The stage's answers before its abstention declined any (``policy_answer`` in ``grades.jsonl``), graded, in
    the test set's order; None when the stage's model has no abstention."""
    path = folder / "grades.jsonl"
    graded = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())} if path.exists() else {}
    if not graded or any("policy_answer" not in r for r in graded.values()):
        return None
    rows, _ = score_qa(records, [graded[str(r.meta["id"])]["policy_answer"] for r in records])
    return rows


def flags(rows: Sequence[dict[str, Any]], kind: str) -> list[bool]:
    """Per item: is its grade ``kind`` (``hallucination`` is the fine grade, the others the coarse one)?"""
    return [r["fine_grade" if kind == "hallucination" else "grade"] == kind for r in rows]


def figures(name: str, labels: int | None, rows: Sequence[dict[str, Any]],
            base_rows: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A model's figures on the held-out items: counts, rates with 95% intervals, llmware points and (against
    ``base_rows``, the same items) the exact McNemar tests of incorrect and of correct answers."""
    points = [float(r["points"]) for r in rows]
    lo, hi = bootstrap_ci(points)
    f: dict[str, Any] = {"name": name, "labels": labels, "n": len(rows), **{k: sum(flags(rows, k)) for k in KINDS},
                         "rates": {k: rate_ci(flags(rows, k)) for k in KINDS},
                         "points": points, "llmware_points": sum(points),
                         "llmware_points_ci95": [lo * len(points), hi * len(points)]}
    if base_rows is not None:
        for k in ("incorrect", "correct"):
            f[f"mcnemar_{k}_vs_base"] = mcnemar_exact(flags(rows, k), flags(base_rows, k))
    in_ctx = [r for r in rows if r.get("context_class") == IN_CONTEXT]  # the verdict's third target
    f["in_context"] = {"n": len(in_ctx), **{k: sum(flags(in_ctx, k)) for k in ("correct", "refusal")}}
    return f


def _p(test: dict[str, Any]) -> str:
    p = test["p_value"]
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def part_line(part: dict[str, Any], before: dict[str, Any]) -> str:
    """One part of the chain against the part before it, said plainly from the figures."""
    inc, cor = part["mcnemar_incorrect_vs_base"], part["mcnemar_correct_vs_base"]
    better = part["correct"] > before["correct"] or part["incorrect"] < before["incorrect"]
    worse = part["correct"] < before["correct"] or part["incorrect"] > before["incorrect"]
    significant = min(inc["p_value"], cor["p_value"]) < 0.05
    if significant:
        said = "a significant change" + (" for the better" if better and not worse else
                                          " for the worse" if worse and not better else "")
    elif better and not worse:
        said = "better on these items but within noise: not shown to help"
    else:
        said = "it did not help" + (" (fewer correct or more incorrect answers, within noise)" if worse else "")
    minutes = f"; {part['minutes']:.1f} min" if part.get("minutes") is not None else ""
    return (f"{part['name']} vs {before['name']}: correct {before['correct']} -> {part['correct']} ({_p(cor)}), "
            f"incorrect {before['incorrect']} -> {part['incorrect']} ({_p(inc)}), llmware points "
            f"{before['llmware_points']:+g} -> {part['llmware_points']:+g}{minutes}: {said}.")


def chain(cfg: DemoConfig, out: Path, records: Sequence[Any], steps: dict[str, Any], stages: list[dict[str, Any]],
          rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """What each part adds, on the same items: the base model, + SFT (stage 0), + DPO (the last stage's DPO model,
    ``ablation/dpo``) and + RL (the last stage's model), each with its McNemar tests against the part before and
    the minutes it cost (the feedback, i.e. sampling + judging + the reward model, is counted with the first
    preference step)."""
    last = stages[-1]
    sec = {k: float(v.get("seconds") or 0.0) for k, v in steps.items()}
    feedback = sec.get("judge", 0.0) + last.get("seconds_reward", 0.0)
    parts = [("base model (no training)", cfg.model, rows["base model"], None),
             ("+ SFT (stage 0)", stages[0]["policy"], rows[name_of(stages[0])], sec.get("sft"))]
    dpo, rl = last.get("dpo_policy"), last.get("seconds_grpo") is not None
    # with an abstention, the stage's own answers (its submission) come after declining: the policy's answers
    # before it are the RL (or DPO) part, and declining is a part of its own
    alone = policy_rows(records, Path(last["dir"])) if last.get("abstention") else None
    policy_alone = alone if alone is not None else rows[name_of(last)]
    if dpo and rl:
        rows["+ DPO"] = graded_rows(records, out / "ablation" / "dpo")
        parts.append((f"+ DPO ({last['labels']} labels)", dpo, rows["+ DPO"], feedback + last["seconds_dpo"]))
        parts.append(("+ RL (GRPO: graded rule + reward model)", last["policy"], policy_alone, last["seconds_grpo"]))
    elif dpo or rl:
        what = f"+ DPO ({last['labels']} labels)" if dpo else "+ RL (GRPO: graded rule + reward model)"
        parts.append((what, last["policy"], policy_alone,
                      feedback + last.get("seconds_dpo", 0.0) + last.get("seconds_grpo", 0.0)))
    if alone is not None:
        parts.append((f"+ declining when unsure (confidence below {last['abstention']['min_confidence']:g})",
                      last["policy"], rows[name_of(last)], None))
    out_parts = []
    for i, (name, model, r, seconds) in enumerate(parts):
        f = figures(name, None, r, parts[i - 1][2] if i else None)
        f.update({"model": str(model), "minutes": None if seconds is None else seconds / 60})
        out_parts.append(f)
    return out_parts


def name_of(stage: dict[str, Any]) -> str:
    return f"stage_{stage['labels']}"


def curve_rows(path: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of the loss, the reward and the KL in a trainer's ``metrics.jsonl`` (what it logs)."""
    series: dict[str, list[tuple[int, float]]] = {}
    rows = read_jsonl(path) if path.exists() else []
    for what, keys in CURVE_KEYS.items():
        key = next((k for k in keys if any(k in r for r in rows)), None)
        if key:
            series[what] = [(int(r.get("step", i)), float(r[key])) for i, r in enumerate(rows) if key in r]
            series[f"{what}_key"] = key  # type: ignore[assignment]
    # an RL step's reward sources (the rule, rm:), each source's mean at the last step that logged it
    parts = {k[len("objective/reward/"):]: float(r[k]) for r in rows for k in r if k.startswith("objective/reward/")}
    if parts:
        series["reward_parts"] = parts  # type: ignore[assignment]
    return series


def training_curves(out: Path, steps: dict[str, Any], stages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every trainer's curves: the shared SFT, then each stage's reward model, DPO and GRPO."""
    found = [("shared", "sft", out / "sft" / "metrics.jsonl", steps.get("sft", {}).get("seconds"))]
    for s in stages:
        found += [(name_of(s), t, Path(s["dir"]) / t / "metrics.jsonl", s.get(f"seconds_{t}")) for t in TRAINERS]
    curves = []
    for stage, trainer, path, seconds in found:
        if path.exists():
            curves.append({"stage": stage, "trainer": trainer, "seconds": seconds, **curve_rows(path)})
    return curves


def _first_last(c: dict[str, Any], what: str) -> str:
    pts = c.get(what)
    if not pts:
        return "–"
    return f"{pts[0][1]:.3g} -> {pts[-1][1]:.3g} ({c[what + '_key']})"


def training_table(curves: list[dict[str, Any]]) -> str:
    lines = ["| stage | trainer | steps logged | loss (first -> last) | reward | reward sources (last) | KL | "
             "seconds |", "|---|---|---:|---|---|---|---|---:|"]
    for c in curves:
        steps = max((len(c[w]) for w in CURVE_KEYS if c.get(w)), default=0)
        sources = ", ".join(f"{k} {v:.3g}" for k, v in c.get("reward_parts", {}).items()) or "–"
        lines.append(f"| {c['stage']} | {c['trainer']} | {steps} | {_first_last(c, 'loss')} | "
                     f"{_first_last(c, 'reward')} | {sources} | {_first_last(c, 'kl')} | {c['seconds'] or '–'} |")
    return "\n".join(lines) + "\n"


def training_png(curves: list[dict[str, Any]], path: Path) -> Path:
    """Loss, reward and KL against steps, one line per stage and trainer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=90)
    for ax, what in zip(axes, CURVE_KEYS):
        for c in curves:
            if c.get(what):
                xs, ys = zip(*c[what])
                ax.plot(xs, ys, marker="o", markersize=3, label=f"{c['stage']} {c['trainer']}")
        ax.set_title(what)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def learning_pngs(curve: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Rates against labels (95% Wilson bands) and llmware points against labels (95% bootstrap band)."""
    rates = {k: [(s["labels"], s["rates"][k]["rate"]) for s in curve] for k in KINDS}
    bands = {k: [tuple(s["rates"][k]["ci95"]) for s in curve] for k in KINDS}
    points = {"llmware points": [(s["labels"], s["llmware_points"]) for s in curve]}
    return [learning_curve_png(rates, folder / "learning_curve.png", "share of the held-out answers",
                               "Held-out answers vs labels (95% Wilson intervals)", bands),  # type: ignore[arg-type]
            learning_curve_png(points, folder / "llmware_points.png", "llmware points (total)",
                               "llmware points vs labels (95% bootstrap interval)",
                               {"llmware points": [tuple(s["llmware_points_ci95"]) for s in curve]})]


def _rate(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['k']}/{r['n']}" + ("" if lo is None else f" ({100 * lo:.0f}–{100 * hi:.0f}%)")


def parts_table(parts: list[dict[str, Any]]) -> str:
    lines = ["| part | model | correct | incorrect | hallucination | refusal | llmware points | p correct vs "
             "previous | p incorrect vs previous | minutes |", "|---|---|---|---|---|---|---|---:|---:|---:|"]
    for i, p in enumerate(parts):
        tests = [_p(p[f"mcnemar_{k}_vs_base"]) if i else "–" for k in ("correct", "incorrect")]
        cells = [p["name"], f"`{p['model']}`"] + [_rate(p["rates"][k]) for k in KINDS] + \
            [f"{p['llmware_points']:+g}"] + tests + ["–" if p["minutes"] is None else f"{p['minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def habits_table(habits: dict[str, dict[str, Any]]) -> str:
    def share(v: Any) -> str:
        return "–" if v is None else f"{100 * v:.0f}%"

    lines = ["| model | bare figure | mean length (words) | refusal | refusal where the answer is in the context |",
             "|---|---:|---:|---:|---:|"]
    for name, h in habits.items():
        length = "–" if h["mean_length_words"] is None else f"{h['mean_length_words']:.1f}"
        lines.append(f"| {name} | {share(h['bare_figure_share'])} | {length} | {share(h['refusal_rate'])} | "
                     f"{share(h['refusal_rate_in_context'])} |")
    return "\n".join(lines) + "\n"


def time_table(steps: dict[str, Any], stages: list[dict[str, Any]]) -> tuple[str, float]:
    """Wall time of the shared steps and of each stage (its trainers and its evaluation); the total in seconds."""
    lines = ["| step | seconds |", "|---|---:|"]
    total = 0.0
    for name in ("data", "base_eval", "sft", "judge"):
        s = float(steps.get(name, {}).get("seconds") or 0.0)
        total += s
        lines.append(f"| {name} (shared) | {s:.1f} |")
    for st in stages:
        parts = ", ".join(f"{t} {st[f'seconds_{t}']:.1f}" for t in TRAINERS if f"seconds_{t}" in st)
        lines.append(f"| {name_of(st)} ({parts + ', ' if parts else ''}evaluation {st['seconds_eval']:.1f}) | "
                     f"{st['seconds']:.1f} |")
        total += float(st["seconds"])
    abl = float(steps.get("ablation", {}).get("seconds") or 0.0)
    total += abl
    lines.append(f"| ablation: + DPO answers the held-out questions | {abl:.1f} |")
    lines.append(f"| **total of the steps** | **{total:.1f}** ({total / 60:.1f} min) |")
    return "\n".join(lines) + "\n", total


def registry_table(stages: list[dict[str, Any]], base: str) -> str:
    lines = ["| stage | labels | model | registry id | parent id | policy folder |", "|---|---:|---|---|---|---|"]
    for s in stages:
        lines.append(f"| {name_of(s)} | {s['labels']} | {s['model_name']} | {s.get('model_id') or '–'} | "
                     f"{s.get('parent_id') or '–'} | `{s['policy']}` |")
    return "\n".join(lines) + "\n\n" + final_model_line(stages[-1], base) + "\n"


def final_model(last: dict[str, Any]) -> str:
    """The folder that names the final stage's model: the demo's ``final`` link, else the stage's policy folder (a
    folder rather than the registry name: a name means the newest model of that name, another run's later)."""
    return last.get("final_link") or last["policy"]


def final_model_line(last: dict[str, Any], base: str) -> str:
    """Where the final stage's model is and how to evaluate it (with its rule for declining) on other questions."""
    ref = final_model(last)
    where = f"`{ref}`, a link to `{last['policy']}`" if ref != last["policy"] else f"`{ref}`"
    return (f"The final model: {where} (`{last['model_name']}` in the registry). On other questions (raw "
            f"FinanceBench rows or question/context/answer rows): `alignloop eval --model {ref} --compare {base} "
            f"--data FILE --output runs/eval`.")


def _public(f: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in f.items() if k != "points"}


def write_report(cfg: DemoConfig, out: Path, steps: dict[str, Any], stages: list[dict[str, Any]]) -> Path:
    """``report.md`` (figures in ``report/``), ``report.json`` and ``verdict.txt``; returns report.md's path."""
    records = qa_items(str(out / "data" / "test.jsonl"))
    rows = {"base model": graded_rows(records, out / "base_eval")}
    for s in stages:
        rows[name_of(s)] = graded_rows(records, Path(s["dir"]))
    # every stage is tested against the base model (no training) on the same items: the targets are
    # stated against it; "what each part adds" below compares each part with the one before it
    base = figures("base model", None, rows["base model"], rows["base model"])
    curve = [figures(name_of(s), s["labels"], rows[name_of(s)], rows["base model"]) for s in stages]
    parts = chain(cfg, out, records, steps, stages, rows)  # adds "+ DPO" to rows when it was evaluated
    said = verdict(curve, base)
    part_lines = [part_line(p, parts[i]) for i, p in enumerate(parts[1:])]
    text = said + "\n\nWhat each part adds, on the same held-out questions:\n" + \
        "\n".join(f"- {line}" for line in part_lines)
    what_if = stages[0].get("test_with_abstention")
    if what_if and len(stages) > 1 and stages[-1].get("abstention"):
        text += (f"\n- For comparison, the SFT model (stage 0) declining by the same rule, measured and not applied: "
                 f"{what_if['correct']} correct, {what_if['incorrect']} incorrect, {what_if['refusal']} refusals of "
                 f"{what_if['n']} (it answered {stages[0]['test_correct']} / {stages[0]['test_incorrect']} / "
                 f"{stages[0]['test_refusal']}).")
    write_text(out / "verdict.txt", text + "\n")
    figs = out / "report"
    learning_pngs(curve, figs)
    curves = training_curves(out, steps, stages)
    training_png(curves, figs / "training_curves.png")
    habits = {name: answer_habits([r["answer"] for r in rs], [r["grade"] for r in rs],
                                  [r["context_class"] for r in rs]) for name, rs in rows.items()}
    times, total = time_table(steps, stages)
    n = len(records)
    md = [f"# alignloop demo: the staged loop on {n} held-out FinanceBench questions\n",
          f"Model `{cfg.model}`; stages of {', '.join(str(s['labels']) for s in stages)} labels (a label: one judged "
          f"pair of answers to one training question); stage 0 is the SFT model alone.\n",
          "## Verdict\n", text + "\n",
          "## Learning curve\n", learning_curve_table(curve, base),
          "Hallucinations (a wrong answer with a figure found in neither the context nor the gold; counted in "
          "incorrect above): " + "; ".join(f"{c['name']} {_rate(c['rates']['hallucination'])}" for c in curve) + ".\n",
          "![rates vs labels](report/learning_curve.png)\n", "![llmware points vs labels](report/llmware_points.png)\n",
          "## What each part adds (the last stage's chain, same items)\n", parts_table(parts),
          "p: exact McNemar test against the part above on the same questions; minutes: the part's own wall time "
          "(the feedback, sampling + judging + the reward model, counted with the first preference step).\n",
          "## Training curves\n", training_table(curves), "![training curves](report/training_curves.png)\n",
          "## Grades per context class\n", class_table(rows),
          "in_context: the gold's figure or words are in the context the model saw; arithmetic: computed from "
          "context figures; missing: not there.\n",
          "## Habits\n", habits_table(habits),
          "## Wall time\n", times,
          "## Registered models\n", registry_table(stages, cfg.model)]
    path = write_text(out / "report.md", "\n".join(md))
    write_json(out / "report.json", {
        "verdict": said, "parts_said": part_lines, "n": n, "stages": [_public(c) for c in curve],
        "parts": [_public(p) for p in parts], "training": curves, "habits": habits, "seconds_total": total,
        "wall_time": {**{k: v.get("seconds") for k, v in steps.items()},
                      **{name_of(s): {k: v for k, v in s.items() if k.startswith("seconds")} for s in stages}},
        "registry": [{k: s.get(k) for k in ("labels", "model_name", "model_id", "parent_id", "policy")}
                     for s in stages],
        "final_model": final_model(stages[-1])})
    return path
