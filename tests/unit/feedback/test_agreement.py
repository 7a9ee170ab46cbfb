"""Agreement and consensus against the reference libraries and hand-computed values."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import fleiss_kappa

from alignloop.feedback import agreement as agr
from alignloop.feedback import consensus as cons

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability": 4 observers x 12 units, None = missing
KRIPP = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def _units(matrix):
    return [(u, o, v) for o, row in enumerate(matrix) for u, v in enumerate(row) if v is not None]


def test_krippendorff_published_example():
    units = _units(KRIPP)
    assert agr.kripp_alpha(units, "nominal") == pytest.approx(0.743, abs=1e-3)
    assert agr.kripp_alpha(units, "interval", numeric=True) == pytest.approx(0.849, abs=1e-3)
    ref = np.array([[np.nan if v is None else v for v in row] for row in KRIPP], dtype=float)
    assert agr.kripp_alpha(units, "ordinal") == pytest.approx(
        krippendorff.alpha(reliability_data=ref, level_of_measurement="ordinal"), abs=1e-6)


def test_hand_computed_cohen_and_percent():
    # labeler x: A A B B, labeler y: A B B B -> p_o = 3/4, p_e = .5*.25 + .5*.75 = .5, kappa = .5
    units = [(i, "x", v) for i, v in enumerate("AABB")] + [(i, "y", v) for i, v in enumerate("ABBB")]
    assert agr.percent_agreement(units) == 0.75
    (pair,) = agr.cohen_pairs(units)
    assert pair["kappa"] == pytest.approx(0.5) and pair["items"] == 4
    # three labelers on one item, two agree: 1 agreeing pair of 3
    assert agr.percent_agreement([(0, "a", "A"), (0, "b", "A"), (0, "c", "B")]) == pytest.approx(1 / 3)


def test_fleiss_wikipedia_example():
    # Wikipedia's Fleiss' kappa example: 10 items, 14 raters, 5 categories, kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    units = []
    for item, counts in enumerate(table):
        raters = iter(range(14))
        for cat, n in enumerate(counts):
            units += [(item, next(raters), cat) for _ in range(n)]
    out = agr.fleiss(units)
    assert out["kappa"] == pytest.approx(0.210, abs=1e-3)
    assert out["items"] == 10 and out["labels_per_item"] == 14


@pytest.mark.parametrize("seed", range(5))
def test_random_data_matches_libraries(seed):
    """Random labels with missing values: each coefficient equals the library run on a matrix built here."""
    rng = random.Random(seed)
    labelers, items, cats = 5, 40, ["A", "B", "tie", "both_bad"]
    truth = [rng.choice(cats) for _ in range(items)]
    units = []
    for i in range(items):
        for lab in rng.sample(range(labelers), 3):  # 3 of 5 labelers per item, like overlap=3
            units.append((i, lab, truth[i] if rng.random() < 0.7 else rng.choice(cats)))
    got = agr.summary(units, "nominal")

    code = {c: k for k, c in enumerate(cats)}
    mat = np.full((labelers, items), np.nan)
    for i, lab, v in units:
        mat[lab, i] = code[v]
    assert got["krippendorff_alpha"]["nominal"] == pytest.approx(
        krippendorff.alpha(reliability_data=mat, level_of_measurement="nominal"), abs=1e-6)
    table = np.array([[sum(1 for (i2, _, v) in units if i2 == i and v == c) for c in cats] for i in range(items)])
    assert got["fleiss_kappa"]["kappa"] == pytest.approx(fleiss_kappa(table, method="fleiss"), abs=1e-6)
    kappas = []
    for a, b in itertools.combinations(range(labelers), 2):
        shared = [i for i in range(items) if not np.isnan(mat[a, i]) and not np.isnan(mat[b, i])]
        if len(shared) >= 2:
            kappas.append(cohen_kappa_score(mat[a, shared], mat[b, shared]))
    assert got["cohen_kappa_mean"] == pytest.approx(np.mean(kappas), abs=1e-6)
    per_item = []
    for i in range(items):
        vals = [v for (i2, _, v) in units if i2 == i]
        pairs = list(itertools.combinations(vals, 2))
        per_item.append(sum(x == y for x, y in pairs) / len(pairs))
    assert got["percent_agreement"] == pytest.approx(np.mean(per_item), abs=1e-6)


def test_ratings_ordinal_and_interval_match_library():
    rng = np.random.default_rng(3)
    mat = rng.integers(1, 6, size=(4, 30)).astype(float)
    mat[rng.random(mat.shape) < 0.2] = np.nan
    units = [(i, lab, int(mat[lab, i])) for lab in range(4) for i in range(30) if not np.isnan(mat[lab, i])]
    got = agr.summary(units, "rating")["krippendorff_alpha"]
    keep = (~np.isnan(mat)).sum(axis=0) >= 2
    ref = mat[:, keep]
    for level in ("ordinal", "interval"):
        assert got[level] == pytest.approx(krippendorff.alpha(reliability_data=ref, level_of_measurement=level,
                                                              value_domain=[1, 2, 3, 4, 5]), abs=1e-6)


def test_units_from_judgments_per_task_type():
    J = SimpleNamespace
    js = [J(task_id=1, labeler_id=1, choice=None, ranking=[10, 11, 12], ratings=None),
          J(task_id=1, labeler_id=2, choice=None, ranking=[11, 10, 12], ratings=None)]
    units, scale = agr.units_from_judgments(js, "ranking")
    assert scale == "ordinal"
    assert sorted(units) == sorted([((1, 10), 1, 1), ((1, 11), 1, 2), ((1, 12), 1, 3),
                                    ((1, 11), 2, 1), ((1, 10), 2, 2), ((1, 12), 2, 3)])
    rj = [J(task_id=5, labeler_id=1, ratings={"7": {"helpfulness": 4}}, choice=None, ranking=None)]
    assert agr.units_from_judgments(rj, "rating")[0] == [((5, 7, "helpfulness"), 1, 4)]


def test_undefined_values_are_none_not_nan():
    same = [(i, lab, "A") for i in range(3) for lab in range(2)]
    out = agr.summary(same, "nominal")
    assert out["percent_agreement"] == 1.0
    assert out["krippendorff_alpha"]["nominal"] is None and out["fleiss_kappa"]["kappa"] is None
    assert agr.summary([], "nominal")["percent_agreement"] is None


def test_judge_vs_human():
    J = SimpleNamespace
    js = []
    # 4 items; humans h1,h2 agree on items 0-2 and tie on item 3; the judge matches on items 0 and 1
    human = {0: ("A", "A"), 1: ("B", "B"), 2: ("A", "A"), 3: ("A", "B")}
    judge = {0: "A", 1: "B", 2: "B", 3: "A"}
    for i, (a, b) in human.items():
        js += [J(task_id=i, labeler_id="h1", choice=a), J(task_id=i, labeler_id="h2", choice=b),
               J(task_id=i, labeler_id="ai", choice=judge[i])]
    out = agr.judge_vs_human(js, {"h1": "human", "h2": "human", "ai": "ai"}, "pairwise")
    assert out["items"] == 3 and out["human_ties_left_out"] == 1
    assert out["percent_agreement"] == pytest.approx(2 / 3)
    assert out["cohen_kappa"] == pytest.approx(cohen_kappa_score(["A", "B", "B"], ["A", "B", "A"]))


# ---- consensus ----------------------------------------------------------------------------------


def test_vote_majority_weighted_and_ties():
    assert cons.vote(["A", "A", "B"]) == ("A", pytest.approx(2 / 3))
    assert cons.vote(["A", "B"])[0] is None  # a tie is no consensus, never a coin flip
    assert cons.vote(["A", "B", "B"], [0.9, 0.3, 0.3])[0] == "A"  # one trusted labeler outweighs two
    w = cons.trust_weights([SimpleNamespace(id=1, trust=None), SimpleNamespace(id=2, trust=0.2),
                            SimpleNamespace(id=3, trust=None)], {1: (9, 10)})
    assert w == {1: pytest.approx(10 / 12), 2: 0.2, 3: 1.0}


def test_bradley_terry_recovers_order_and_matches_closed_form():
    # two items, a beats b 3 times of 4: the MLE strength ratio is 3 (prior 0)
    p = cons.bradley_terry([["a", "b"]] * 3 + [["b", "a"]], prior=0.0, iters=500)
    assert p["a"] / p["b"] == pytest.approx(3.0, rel=1e-6)
    rankings = [["x", "y", "z", "w"], ["x", "z", "y", "w"], ["y", "x", "z", "w"]]
    assert cons.order_by_strength(cons.bradley_terry(rankings)) == ["x", "y", "z", "w"]


def test_ranked_pairs_condorcet_and_cycle():
    rankings = [["a", "b", "c"], ["b", "c", "a"], ["a", "c", "b"]]
    # a>b 2:1, a>c 2:1, b>c 2:1 -> a b c
    assert cons.ranked_pairs(rankings) == ["a", "b", "c"]
    # a Condorcet cycle with margins 3 (a>b), 2 (b>c) and 1 (c>a): lock a>b, b>c, skip c>a
    cyc = [["a", "b", "c"]] * 3 + [["b", "c", "a"]] * 2 + [["c", "a", "b"]] * 2
    assert cons.ranked_pairs(cyc) == ["a", "b", "c"]
    assert cons.ranked_pairs([["a", "b"], ["b", "a"]]) is None  # exact tie: undecided


def test_task_consensus_per_type():
    J = SimpleNamespace
    pair = [J(labeler_id=i, choice=c) for i, c in enumerate(["A", "A", "B"])]
    assert cons.task_consensus("pairwise", pair)["label"] == "A"
    ranks = [J(labeler_id=i, ranking=r) for i, r in enumerate([[1, 2, 3], [1, 3, 2], [2, 1, 3]])]
    out = cons.task_consensus("ranking", ranks, "bradley_terry")
    assert out["label"] == [1, 2, 3] and 0 < out["support"] <= 1
    rates = [J(labeler_id=i, ratings={"5": {"helpfulness": v}}) for i, v in enumerate([4, 2])]
    assert cons.task_consensus("rating", rates)["label"] == {"5": {"helpfulness": 3.0}}
