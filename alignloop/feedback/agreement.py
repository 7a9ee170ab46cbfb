"""Inter-labeler agreement, computed from raw judgments as (item, labeler, value) units.

An *item* is what two labelers can agree on: a pairwise task's choice, a binary task's good/bad, the rank a
labeler gave one completion of a ranking task, or one criterion's rating of one completion. Each labeler
contributes at most one value per item (the store guarantees one judgment per task and labeler).

The coefficients come from the reference libraries (scikit-learn ``cohen_kappa_score``, statsmodels
``fleiss_kappa``, ``krippendorff.alpha``); this module's job is to shape the data right for each of them:

* percent agreement: per item, the share of labeler pairs that agree, averaged over items with 2+ labels;
* Cohen's kappa: per pair of labelers on the items both labelled (unweighted for nominal values, linearly
  weighted for ordered ones), reported per pair and as the mean over pairs;
* Fleiss' kappa: needs the same number of labelers per item, so it uses the items that have the most common
  count (>= 2) of labels, and says how many items that was;
* Krippendorff's alpha: every item with 2+ labels, missing values allowed; nominal for choices, ordinal for
  ranks, ordinal and interval for ratings.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Any, Hashable, Iterable

import numpy as np

Unit = tuple[Hashable, Hashable, Any]  # (item, labeler, value)


def _by_item(units: Iterable[Unit]) -> dict[Hashable, dict[Hashable, Any]]:
    items: dict[Hashable, dict[Hashable, Any]] = defaultdict(dict)
    for item, labeler, value in units:
        if labeler in items[item]:
            raise ValueError(f"labeler {labeler!r} has two values for item {item!r}")
        items[item][labeler] = value
    return items


def _clean(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), 6)


def percent_agreement(units: Iterable[Unit]) -> float | None:
    per_item = []
    for values in _by_item(units).values():
        n = len(values)
        if n < 2:
            continue
        # agreeing pairs / all pairs, counted per value (a gold task can carry every labeler's answer: listing
        # its pairs would be quadratic in the team's size)
        per_item.append(sum(c * (c - 1) for c in Counter(values.values()).values()) / (n * (n - 1)))
    return _clean(float(np.mean(per_item))) if per_item else None


def cohen_pairs(units: Iterable[Unit], ordered: bool = False, min_shared: int = 2) -> list[dict]:
    """Cohen's kappa for every pair of labelers with at least ``min_shared`` items in common."""
    from sklearn.metrics import cohen_kappa_score

    by_labeler: dict[Hashable, dict[Hashable, Any]] = defaultdict(dict)
    for item, values in _by_item(units).items():
        for lab, v in values.items():
            by_labeler[lab][item] = v
    out = []
    for a, b in itertools.combinations(sorted(by_labeler, key=str), 2):
        shared = sorted(set(by_labeler[a]) & set(by_labeler[b]), key=str)
        if len(shared) < min_shared:
            continue
        ya = [by_labeler[a][i] for i in shared]
        yb = [by_labeler[b][i] for i in shared]
        if len(set(ya) | set(yb)) < 2:
            kappa = None  # both used one and the same value throughout: kappa is undefined (0/0)
        else:
            kappa = _clean(cohen_kappa_score(ya, yb, weights="linear" if ordered else None))
        out.append({"labelers": [a, b], "items": len(shared), "kappa": kappa})
    return out


def fleiss(units: Iterable[Unit]) -> dict:
    """Fleiss' kappa on the items that carry the most common number (>= 2) of labels."""
    from statsmodels.stats.inter_rater import fleiss_kappa

    items = {k: v for k, v in _by_item(units).items() if len(v) >= 2}
    if not items:
        return {"kappa": None, "items": 0, "labels_per_item": None}
    counts = Counter(len(v) for v in items.values())
    m = max(counts, key=lambda n: (counts[n], n))
    chosen = [list(v.values()) for v in items.values() if len(v) == m]
    categories = sorted({x for vals in chosen for x in vals}, key=str)
    table = np.array([[vals.count(c) for c in categories] for vals in chosen])
    kappa = None
    if len(categories) >= 2:
        with np.errstate(invalid="ignore", divide="ignore"):
            kappa = _clean(fleiss_kappa(table, method="fleiss"))
    return {"kappa": kappa, "items": len(chosen), "labels_per_item": m}


def reliability_matrix(units: Iterable[Unit], domain: list | None = None) -> tuple[np.ndarray, list]:
    """Labelers x items, NaN where a labeler did not label an item; values coded as their index in
    ``domain`` (sorted values by default) so ordinal distances follow the domain's order."""
    items = {k: v for k, v in _by_item(units).items() if len(v) >= 2}
    labelers = sorted({lab for v in items.values() for lab in v}, key=str)
    values = domain or sorted({x for v in items.values() for x in v.values()}, key=lambda x: (str(type(x)), x))
    code = {v: i for i, v in enumerate(values)}
    mat = np.full((len(labelers), len(items)), np.nan)
    for j, item_values in enumerate(items.values()):
        for i, lab in enumerate(labelers):
            if lab in item_values:
                mat[i, j] = code[item_values[lab]]
    return mat, values


def kripp_alpha(units: Iterable[Unit], level: str = "nominal", numeric: bool = False) -> float | None:
    """Krippendorff's alpha. ``numeric`` keeps the values themselves (interval/ratio need real distances)."""
    import krippendorff

    units = list(units)
    if numeric:
        items = {k: v for k, v in _by_item(units).items() if len(v) >= 2}
        labelers = sorted({lab for v in items.values() for lab in v}, key=str)
        mat = np.array([[float(items[i][lab]) if lab in items[i] else np.nan for i in items] for lab in labelers])
        domain = sorted({float(x) for v in items.values() for x in v.values()})
    else:
        mat, domain = reliability_matrix(units)
        domain = list(range(len(domain)))
    if mat.size == 0 or len(domain) < 2:
        return None  # no item with two labels, or everyone gave the same value: alpha is undefined
    return _clean(krippendorff.alpha(reliability_data=mat, level_of_measurement=level,
                                     value_domain=domain if level != "nominal" else None))


def summary(units: Iterable[Unit], scale: str = "nominal") -> dict:
    """Every coefficient for one kind of item. ``scale``: nominal (choices), ordinal (ranks) or rating."""
    units = list(units)
    items = _by_item(units)
    multi = sum(1 for v in items.values() if len(v) >= 2)
    pairs = cohen_pairs(units, ordered=scale != "nominal")
    kappas = [p["kappa"] for p in pairs if p["kappa"] is not None]
    out: dict[str, Any] = {
        "items": len(items), "items_with_2plus": multi, "labels": len(units),
        "percent_agreement": percent_agreement(units),
        "cohen_kappa_mean": _clean(float(np.mean(kappas))) if kappas else None,
        "cohen_kappa_pairs": pairs,
        "fleiss_kappa": fleiss(units),
    }
    if scale == "nominal":
        out["krippendorff_alpha"] = {"nominal": kripp_alpha(units, "nominal")}
    elif scale == "ordinal":
        out["krippendorff_alpha"] = {"ordinal": kripp_alpha(units, "ordinal")}
    else:
        out["krippendorff_alpha"] = {"ordinal": kripp_alpha(units, "ordinal"),
                                     "interval": kripp_alpha(units, "interval", numeric=True)}
    return out


# --------------------------------------------------------------------------------------------------
# From judgments to units
# --------------------------------------------------------------------------------------------------


def units_from_judgments(judgments: Iterable[Any], task_type: str) -> tuple[list[Unit], str]:
    """(units, scale) for one project's non-skipped judgments. ``judgments`` need ``task_id``,
    ``labeler_id`` and the answer fields (store.Judgment rows or look-alikes)."""
    units: list[Unit] = []
    if task_type in ("pairwise", "binary"):
        units = [(j.task_id, j.labeler_id, j.choice) for j in judgments if j.choice is not None]
        return units, "nominal"
    if task_type == "ranking":
        for j in judgments:
            for pos, cid in enumerate(j.ranking or []):
                units.append(((j.task_id, cid), j.labeler_id, pos + 1))
        return units, "ordinal"
    if task_type == "rating":
        for j in judgments:
            for cid, per in (j.ratings or {}).items():
                for crit, v in per.items():
                    units.append(((j.task_id, int(cid), crit), j.labeler_id, v))
        return units, "rating"
    return [], "none"  # rewrite tasks: free text, nothing to agree on


def judge_vs_human(judgments: Iterable[Any], kinds: dict[Hashable, str], task_type: str) -> dict:
    """Agreement of AI judges with the human majority on items both labelled.

    Each AI labeler's value is compared with the majority of the human labels of the same item (items whose
    humans tie are left out and counted). Reported as percent agreement and Cohen's kappa, both per judge
    and overall."""
    from sklearn.metrics import cohen_kappa_score

    if task_type == "ranking":  # compare the completion each side put first
        units = [(j.task_id, j.labeler_id, j.ranking[0]) for j in judgments if j.ranking]
    elif task_type in ("pairwise", "binary"):
        units = [(j.task_id, j.labeler_id, j.choice) for j in judgments if j.choice is not None]
    else:
        return {"items": 0, "note": f"not computed for {task_type} tasks"}
    items = _by_item(units)
    pairs: dict[Hashable, list[tuple[Any, Any]]] = defaultdict(list)
    human_ties = 0
    for values in items.values():
        human = [v for lab, v in values.items() if kinds.get(lab) == "human"]
        ais = {lab: v for lab, v in values.items() if kinds.get(lab) == "ai"}
        if not human or not ais:
            continue
        top = Counter(human).most_common()
        if len(top) > 1 and top[0][1] == top[1][1]:
            human_ties += 1
            continue
        for lab, v in ais.items():
            pairs[lab].append((v, top[0][0]))

    def figures(p: list[tuple[Any, Any]]) -> dict:
        a, h = [x for x, _ in p], [y for _, y in p]
        kappa = _clean(cohen_kappa_score(a, h)) if len(set(a) | set(h)) >= 2 else None
        return {"items": len(p), "percent_agreement": _clean(sum(x == y for x, y in p) / len(p)) if p else None,
                "cohen_kappa": kappa}

    everything = [x for p in pairs.values() for x in p]
    return {**figures(everything), "human_ties_left_out": human_ties,
            "per_judge": {str(lab): figures(p) for lab, p in pairs.items()}}
