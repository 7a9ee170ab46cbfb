"""From several labelers' judgments of a task to one label, and how far each labeler can be trusted.

Methods (``method`` argument):

* ``majority``: the most frequent answer; a tie between the top answers gives no consensus (never a coin
  flip). For rankings it means ranked pairs, which is majority voting over every pair of completions.
* ``weighted``: each vote counts the labeler's trust: the admin's fixed ``trust`` if set, else their
  smoothed accuracy on gold tasks, (correct + 1) / (answered + 2), else 1. For rankings: trust-weighted
  Bradley-Terry.
* ``bradley_terry``: rankings only: every ranking becomes its pairwise wins; Bradley-Terry strengths are
  fitted by Hunter's MM algorithm (with a small prior so unbeaten items stay finite); order by strength.
* ``ranked_pairs``: rankings only: Tideman's method; lock pairwise majorities from strongest to weakest,
  skipping any that would make a cycle.
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from typing import Any, Hashable, Iterable, Sequence

METHODS = ("majority", "weighted", "bradley_terry", "ranked_pairs")


def vote(values: Sequence[Any], weights: Sequence[float] | None = None) -> tuple[Any | None, float]:
    """(winner or None on a tie, winner's share of the weight)."""
    if not values:
        return None, 0.0
    weights = list(weights) if weights is not None else [1.0] * len(values)
    tally: dict[Any, float] = defaultdict(float)
    for v, w in zip(values, weights):
        tally[v] += w
    ranked = sorted(tally.items(), key=lambda kv: -kv[1])
    if len(ranked) > 1 and abs(ranked[0][1] - ranked[1][1]) < 1e-12:
        return None, ranked[0][1] / sum(weights)
    return ranked[0][0], ranked[0][1] / sum(weights)


def _pair_wins(rankings: Sequence[Sequence[Hashable]], weights: Sequence[float] | None = None):
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    wins: dict[tuple[Hashable, Hashable], float] = defaultdict(float)
    for r, w in zip(rankings, weights):
        for i, j in itertools.combinations(range(len(r)), 2):
            wins[(r[i], r[j])] += w  # r[i] is ranked above r[j]
    return wins


def bradley_terry(rankings: Sequence[Sequence[Hashable]], weights: Sequence[float] | None = None,
                  prior: float = 0.1, iters: int = 200) -> dict[Hashable, float]:
    """Bradley-Terry strengths (summing to the number of items) from full rankings, by MM iterations
    (Hunter 2004). ``prior`` adds that many virtual wins each way between every pair: it keeps strengths
    finite when an item never loses, and shrinks towards equal strength when there is little data."""
    items = sorted({x for r in rankings for x in r}, key=str)
    if not items:
        return {}
    wins = _pair_wins(rankings, weights)
    for a, b in itertools.permutations(items, 2):
        wins[(a, b)] += prior
    p = {x: 1.0 for x in items}
    for _ in range(iters):
        new = {}
        for i in items:
            w_i = sum(wins[(i, j)] for j in items if j != i)
            denom = sum((wins[(i, j)] + wins[(j, i)]) / (p[i] + p[j]) for j in items if j != i)
            new[i] = w_i / denom if denom else p[i]
        scale = len(items) / sum(new.values())
        new = {k: v * scale for k, v in new.items()}
        done = max(abs(new[k] - p[k]) for k in items) < 1e-10
        p = new
        if done:
            break
    return p


def order_by_strength(strengths: dict[Hashable, float]) -> list[Hashable] | None:
    order = sorted(strengths, key=lambda k: (-strengths[k], str(k)))
    vals = [strengths[k] for k in order]
    if any(abs(a - b) < 1e-9 for a, b in zip(vals, vals[1:])):
        return None  # two completions equally strong: no consensus order
    return order


def ranked_pairs(rankings: Sequence[Sequence[Hashable]], weights: Sequence[float] | None = None
                 ) -> list[Hashable] | None:
    """Tideman's ranked pairs; None when an exact tie leaves the order undecided."""
    items = sorted({x for r in rankings for x in r}, key=str)
    wins = _pair_wins(rankings, weights)
    majorities = []
    for a, b in itertools.combinations(items, 2):
        if wins[(a, b)] > wins[(b, a)]:
            majorities.append((wins[(a, b)] - wins[(b, a)], a, b))
        elif wins[(b, a)] > wins[(a, b)]:
            majorities.append((wins[(b, a)] - wins[(a, b)], b, a))
    majorities.sort(key=lambda m: -m[0])
    locked: dict[Hashable, set] = {x: set() for x in items}

    def reaches(src: Hashable, dst: Hashable) -> bool:
        stack, seen = [src], set()
        while stack:
            n = stack.pop()
            if n == dst:
                return True
            if n not in seen:
                seen.add(n)
                stack.extend(locked[n])
        return False

    for _, a, b in majorities:
        if not reaches(b, a):
            locked[a].add(b)
    # the order is the locked graph's topological order; it is unique only if every pair is decided
    order = sorted(items, key=lambda x: -len({y for y in items if y != x and reaches(x, y)}))
    for a, b in zip(order, order[1:]):
        if not reaches(a, b):
            return None
    return order


def trust_weights(labelers: Iterable[Any], gold: dict[Hashable, tuple[int, int]]) -> dict[Hashable, float]:
    """labeler id -> vote weight; ``gold`` maps labeler id to (correct, answered) on gold tasks."""
    out = {}
    for lab in labelers:
        if getattr(lab, "trust", None) is not None:
            out[lab.id] = float(lab.trust)
        elif lab.id in gold:
            correct, answered = gold[lab.id]
            out[lab.id] = (correct + 1) / (answered + 2)
        else:
            out[lab.id] = 1.0
    return out


def task_consensus(task_type: str, judgments: Sequence[Any], method: str = "majority",
                   weights: dict[Hashable, float] | None = None, criteria: Sequence[str] = ()) -> dict:
    """One task's consensus from its non-skipped judgments: ``{"label", "support", "n"}`` where label is a
    choice (pairwise/binary), a list of completion ids best first (ranking), mean ratings per completion and
    criterion (rating), or None when the labelers tie."""
    if method not in METHODS:
        raise ValueError(f"method: '{method}' is not one of {', '.join(METHODS)}")
    w = [weights.get(j.labeler_id, 1.0) for j in judgments] if (weights and method == "weighted") else None
    n = len(judgments)
    if n == 0:
        return {"label": None, "support": 0.0, "n": 0}
    if task_type in ("pairwise", "binary"):
        if method in ("bradley_terry", "ranked_pairs"):
            method = "majority"  # a single pair: both reduce to the vote
        label, support = vote([j.choice for j in judgments], w)
        return {"label": label, "support": round(support, 4), "n": n}
    if task_type == "ranking":
        rankings = [j.ranking for j in judgments]
        if method in ("majority", "ranked_pairs"):
            order = ranked_pairs(rankings, w)
        else:
            order = order_by_strength(bradley_terry(rankings, w))
        support = None
        if order is not None:  # share of labelers' pairwise orderings the consensus keeps
            agree = total = 0
            for r in rankings:
                pos = {c: i for i, c in enumerate(r)}
                for a, b in itertools.combinations(order, 2):
                    agree += pos[a] < pos[b]
                    total += 1
            support = round(agree / total, 4) if total else 1.0
        return {"label": order, "support": support, "n": n}
    if task_type == "rating":
        sums: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        totals: dict[str, float] = defaultdict(float)
        for j, wt in zip(judgments, w or [1.0] * n):
            for cid, per in (j.ratings or {}).items():
                totals[cid] += wt
                for crit, v in per.items():
                    sums[cid][crit] += wt * v
        label = {cid: {c: round(v / totals[cid], 4) for c, v in per.items()} for cid, per in sums.items()}
        return {"label": label, "support": None, "n": n}
    return {"label": None, "support": None, "n": n}


def decided(task_type: str, decision: Any, n: int) -> dict:
    """The consensus of a task a lead decided (an adjudication, with a judgment's answer fields): the decision
    is the label whatever the method; ``n`` still counts the labelers' judgments, and the decision is no vote."""
    label = {"pairwise": decision.choice, "binary": decision.choice, "ranking": decision.ranking,
             "rating": decision.ratings}.get(task_type)
    return {"label": label, "support": None, "n": n, "adjudicated": True}


def gold_correct(task_type: str, judgment: Any, answer: dict) -> bool | None:
    """Whether a judgment matches a gold answer; None when the gold answer says nothing about this type."""
    if task_type in ("pairwise", "binary") and "choice" in answer:
        return judgment.choice == answer["choice"]
    if task_type == "ranking" and answer.get("ranking"):
        return bool(judgment.ranking) and judgment.ranking[0] == answer["ranking"][0]  # same best completion
    if task_type == "rating" and answer.get("ratings"):
        diffs = [abs(judgment.ratings[c][k] - v) for c, per in answer["ratings"].items() for k, v in per.items()
                 if judgment.ratings and c in judgment.ratings and k in judgment.ratings[c]]
        return bool(diffs) and sum(diffs) / len(diffs) <= 1.0  # within one Likert point on average
    return None


def agreement_with_consensus(task_type: str, by_task: dict[Hashable, list[Any]]) -> dict[Hashable, dict]:
    """Per labeler: how often they match the majority of the *other* labelers of the same task (leaving
    them out keeps a labeler from agreeing with themselves). Ties among the others are not counted."""
    if task_type not in ("pairwise", "binary", "ranking"):
        return {}
    stats: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])
    for judgments in by_task.values():
        for j in judgments:
            others = [o for o in judgments if o.labeler_id != j.labeler_id]
            if not others:
                continue
            if task_type == "ranking":
                label, _ = vote([o.ranking[0] for o in others])
                mine = j.ranking[0]
            else:
                label, _ = vote([o.choice for o in others])
                mine = j.choice
            if label is None:
                continue
            stats[j.labeler_id][0] += mine == label
            stats[j.labeler_id][1] += 1
    return {lab: {"matches": m, "compared": c, "rate": round(m / c, 4) if c else None}
            for lab, (m, c) in stats.items()}


def counts(values: Iterable[Any]) -> dict[str, int]:
    return {str(k): v for k, v in Counter(values).items()}
