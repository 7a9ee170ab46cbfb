"""The lead's tools (feedback.review): the kept figures, finding tasks, the review queue and decisions, a labeler's
history, activity over time and its charts; and their routes, for the project's lead or an admin only."""

from __future__ import annotations

import datetime as dt
import random
import re

import pytest
from fastapi.testclient import TestClient
from feedback_helpers import generate_records, numbered
from sqlalchemy import func, select

from alignloop.feedback import access, auth, review, search, tallies
from alignloop.feedback.api import create_app
from alignloop.feedback.io import export_rows, import_records
from alignloop.feedback.stats import project_stats
from alignloop.feedback.store import (
    Adjudication,
    Conflict,
    Invalid,
    Labeler,
    NotFound,
    Task,
    add_judgment,
    create_labeler,
    create_project,
    get_project,
)
from alignloop.feedback.web import charts

DAY0 = dt.datetime(2027, 3, 1, 9, 0)


def _tasks(s, project) -> list[Task]:
    return list(s.scalars(select(Task).where(Task.project_id == project.id).order_by(Task.id)))


def _judge(s, tasks, who: dict[str, str], kind: str = "human", when: dt.datetime | None = None) -> None:
    """who: labeler name -> one character per task ('.' for none, 's' for a skip)."""
    for name, answers in who.items():
        lab = s.scalar(select(Labeler).where(Labeler.name == name)) or create_labeler(s, name, kind=kind)
        for t, a in zip(tasks, answers):
            if a == "s":
                add_judgment(s, t.id, lab, skip_reason="unsure", now=when)
            elif a != ".":
                add_judgment(s, t.id, lab, {"g": "good", "b": "bad"}.get(a, a), now=when)


@pytest.fixture
def disputes(db):
    """Pairwise project 'p' (overlap 3): 6 regular tasks about animals or plants and 2 gold tasks (answer A)."""
    with db.write() as s:
        p = create_project(s, "p", overlap=3)
        recs = generate_records(6)
        for i, r in enumerate(recs):
            r["prompt"] = [{"role": "user", "content": f"Question {i} about {'cats' if i % 2 else 'ferns'}?"}]
        gold = generate_records(2, start=50)
        for g in gold:
            g["gold"] = {"choice": "A"}
        import_records(s, p, numbered(recs + gold))
        ts = _tasks(s, p)
        # tasks:        1    2    3    4    5    6    g7   g8
        _judge(s, ts, {"h1": "AAB.ABAA", "h2": "ABBAs.AB", "h3": "AAA..BBB"})
        _judge(s, ts, {"judge": "B......."}, kind="ai")
    return db


def ids(page) -> list[int]:
    return [t["task_id"] for t in page["tasks"]]


# --------------------------------------------------------------------------------------------------
# The kept figures
# --------------------------------------------------------------------------------------------------


def test_kept_figures_equal_a_recount_after_random_judging(db):
    """Every kind of task, gold tasks, humans and an AI judge, skips, several days, in a random order: what
    add_judgment kept (tallies.record) equals the figures counted from the judgments alone."""
    rng = random.Random(7)
    with db.write() as s:
        projects = []
        for task_type, k in (("pairwise", 2), ("binary", 1), ("ranking", 3), ("rating", 2), ("rewrite", 1)):
            p = create_project(s, f"p-{task_type}", task_type=task_type, overlap=3, criteria=["helpfulness"])
            recs = generate_records(5, k=k)
            if task_type in ("pairwise", "binary", "ranking"):
                recs[0]["gold"] = {"choice": "A"} if task_type == "pairwise" else \
                    {"choice": "good"} if task_type == "binary" else {"ranking": [0, 1, 2]}
            import_records(s, p, numbered(recs))
            projects.append(p)
        labs = [create_labeler(s, f"h{i}") for i in range(4)] + [create_labeler(s, "judge", kind="ai")]
        moves = [(p, t, lab) for p in projects for t in _tasks(s, p) for lab in labs]
        rng.shuffle(moves)
        for i, (p, t, lab) in enumerate(moves):
            if rng.random() < 0.3:
                continue
            when = DAY0 + dt.timedelta(hours=7 * (i % 9))  # over three days
            ids_ = [int(c) for c in t.completion_ids]
            if rng.random() < 0.1:
                add_judgment(s, t.id, lab, skip_reason="no idea", now=when)
            elif p.task_type == "pairwise":
                add_judgment(s, t.id, lab, rng.choice("AAB"), now=when)
            elif p.task_type == "binary":
                add_judgment(s, t.id, lab, rng.choice(["good", "bad"]), now=when)
            elif p.task_type == "ranking":
                add_judgment(s, t.id, lab, ranking=rng.sample(ids_, len(ids_)), now=when)
            elif p.task_type == "rating":
                add_judgment(s, t.id, lab, ratings={str(c): {"helpfulness": rng.randint(1, 3)} for c in ids_},
                             now=when)
            else:
                add_judgment(s, t.id, lab, rewrite=f"better {i}", now=when)
    with db.read() as s:
        for p in projects:
            kept, counted = tallies.stored(s, p), tallies.recount(s, p)
            assert kept == counted, p.task_type
            assert kept["tallies"], p.task_type  # (something was judged in every project)
        # the figures are real figures: days were spread, gold tasks were missed, agreement was computed
        pair = tallies.stored(s, projects[0])
        assert len(pair["days"]) == 3 and pair["gold_misses"]
        assert any(v[2] is not None and 0 < v[2] < 1 for v in pair["tallies"].values())
        assert all(v[2] is None for v in tallies.stored(s, projects[4])["tallies"].values())  # free text


def test_task_agreement_is_the_share_of_agreeing_pairs(disputes):
    with disputes.read() as s:
        p = get_project(s, "p")
        kept = tallies.stored(s, p)
        ts = _tasks(s, p)
    # task 1: A A A + judge B -> 3 of 6 pairs agree; task 2: A B A -> 1 of 3; task 3: B B A -> 1 of 3
    # task 4: h2 alone -> None; task 5: h1 A, h2 skipped -> None with a skip; task 6: B B -> 1.0
    got = {t.id: kept["tallies"].get(t.id) for t in ts}
    assert [got[t.id] for t in ts[:6]] == [(4, 0, 0.5, 0), (3, 0, 0.333333, 0), (3, 0, 0.333333, 0),
                                           (1, 0, None, 0), (1, 1, None, 0), (2, 0, 1.0, 0)]
    # gold tasks (answer A): task 7: A A B -> h3 missed; task 8: A B B -> h2 and h3 missed
    assert got[ts[6].id][3] == 1 and got[ts[7].id][3] == 2
    names = {}
    with disputes.read() as s:
        names = {lab.id: lab.name for lab in s.scalars(select(Labeler))}
    assert sorted((t, names[lab]) for t, lab in kept["gold_misses"]) == [
        (ts[6].id, "h3"), (ts[7].id, "h2"), (ts[7].id, "h3")]


# --------------------------------------------------------------------------------------------------
# Finding tasks
# --------------------------------------------------------------------------------------------------


def test_filters(disputes):
    db = disputes
    with db.read() as s:
        p = get_project(s, "p")
        t = [x.id for x in _tasks(s, p)]

        def find(**kw):
            return ids(review.find_tasks(s, p, review.TaskFilter(**kw), limit=200))

        assert find() == t
        # by agreement: lowest first, then task order; tasks with fewer than two answers have none
        assert find(disputed=True) == [t[1], t[2], t[6], t[7], t[0]]
        assert find(disputed=True, gold=False) == [t[1], t[2], t[0]]
        assert find(min_agreement=0.5) == [t[0], t[5]]
        assert find(max_agreement=0.4) == [t[1], t[2], t[6], t[7]]
        assert find(min_agreement=0.34, max_agreement=0.99) == [t[0]]
        # by labeler (judged or skipped): h2 skipped task 5 and left task 6 alone
        assert find(labeler="h2") == [t[0], t[1], t[2], t[3], t[4], t[6], t[7]]
        assert find(labeler="judge") == [t[0]]
        assert find(labeler="h2", disputed=True) == [t[1], t[2], t[6], t[7], t[0]]
        # by gold failure, everyone's or one labeler's
        assert find(gold_failed=True) == [t[6], t[7]]
        assert find(gold_failed=True, labeler="h2") == [t[7]]
        assert find(gold_failed=True, labeler="h1") == []
        assert find(gold=True) == [t[6], t[7]]
        with pytest.raises(NotFound, match="no labeler named 'nobody'"):
            find(labeler="nobody")
        for bad, field in [({"min_agreement": 1.5}, "min_agreement"),
                           ({"min_agreement": 0.8, "max_agreement": 0.2}, "min_agreement"),
                           ({"text": "  !? "}, "text")]:
            with pytest.raises(Invalid, match=field):
                find(**bad)
    # by words (prefixes, every word, prompt or answers), once the index caught up
    with db.read() as s:
        p = get_project(s, "p")
    assert search.catch_up(db, p.id) == 0
    with db.read() as s:
        p = get_project(s, "p")

        def find(**kw):
            return ids(review.find_tasks(s, p, review.TaskFilter(**kw), limit=200))

        assert find(text="fern") == [t[0], t[2], t[4]]
        assert find(text="CATS question 3") == [t[3]]
        assert find(text="ferns answer") == [t[0], t[2], t[4]]  # "answer" is only in the answers
        assert find(text="ferns", disputed=True) == [t[2], t[0]]
        assert find(text="zebra") == []


def test_pages_follow_each_other_without_gaps(db):
    with db.write() as s:
        p = create_project(s, "big", overlap=2)
        import_records(s, p, numbered(generate_records(23)))
        ts = _tasks(s, p)
        rng = random.Random(3)
        _judge(s, ts, {"a": "".join(rng.choice("AB") for _ in ts), "b": "".join(rng.choice("AB") for _ in ts)})
    with db.read() as s:
        p = get_project(s, "big")
        for f in (review.TaskFilter(), review.TaskFilter(min_agreement=0.0)):
            whole = ids(review.find_tasks(s, p, f, limit=200))
            pages, after = [], None
            while True:
                page = review.find_tasks(s, p, f, limit=4, after=after)
                assert len(page["tasks"]) <= 4
                pages += ids(page)
                after = page["next"]
                if after is None:
                    break
            assert pages == whole and len(whole) == 23
        with pytest.raises(Invalid, match="after"):
            review.find_tasks(s, p, review.TaskFilter(min_agreement=0.0), after="12")
        with pytest.raises(Invalid, match="limit"):
            review.find_tasks(s, p, review.TaskFilter(), limit=201)


def test_search_index_catches_up_in_batches(db, monkeypatch):
    with db.write() as s:
        p = create_project(s, "s", overlap=1)
        import_records(s, p, numbered(generate_records(7)))
        pid = p.id
    monkeypatch.setattr(search, "BATCH", 3)
    ticks = iter(range(100))
    # a clock that says the budget (1 s) is spent after the first batch
    assert search.catch_up(db, pid, budget_s=1, clock=lambda: next(ticks)) == 4
    with db.read() as s:
        page = review.find_tasks(s, get_project(s, "s"), review.TaskFilter(text="question"), limit=50)
        assert len(page["tasks"]) == 3  # only what is indexed so far
    assert search.catch_up(db, pid) == 0
    with db.write() as s:  # an import later: the next search indexes it
        import_records(s, get_project(s, "s"), numbered(generate_records(2, start=40)))
    assert search.catch_up(db, pid) == 0
    with db.read() as s:
        p = get_project(s, "s")
        assert len(ids(review.find_tasks(s, p, review.TaskFilter(text="question"), limit=50))) == 9
        assert len(ids(review.find_tasks(s, p, review.TaskFilter(text="question 4"), limit=50))) == 3  # 4, 40, 41


def test_search_finds_a_task_that_committed_late_on_postgresql(db, monkeypatch):
    """On PostgreSQL a task may commit after tasks of higher id were indexed (two imports at once): the quick
    check (above the highest indexed id) misses it, the full check (at most every FULL_CHECK_S) finds it."""
    if db.is_sqlite:
        pytest.skip("SQLite commits task ids in order")
    from sqlalchemy import text

    with db.write() as s:
        p = create_project(s, "late", overlap=1)
        import_records(s, p, numbered(generate_records(5)))
        pid, straggler = p.id, _tasks(s, p)[1].id
    assert search.catch_up(db, pid) == 0
    with db.write() as s:  # as if task 2 had committed after the others were indexed
        s.execute(text("DELETE FROM task_search WHERE task_id = :t"), {"t": straggler})

    def found():
        with db.read() as s:
            return ids(review.find_tasks(s, get_project(s, "late"), review.TaskFilter(text="question 1")))

    assert search.catch_up(db, pid) == 0 and found() == []  # within FULL_CHECK_S of the last full check
    monkeypatch.setattr(search, "FULL_CHECK_S", 0.0)
    assert search.catch_up(db, pid) == 0 and found() == [straggler]


def test_two_searches_indexing_the_same_tasks_at_once_on_postgresql(db):
    """Several server processes (``label serve --workers``), or two searches of one, may bring the index up to date
    at the same moment: the second waits for the first's rows and leaves them to it, instead of failing on the
    duplicate key (a 500 for the lead's search)."""
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time")
    import threading
    import time

    import psycopg

    with db.write() as s:
        p = create_project(s, "both", overlap=1)
        import_records(s, p, numbered(generate_records(4)))
        pid = p.id
    other = psycopg.connect(db.url.replace("postgresql+psycopg://", "postgresql://"))  # (its search_path too)
    try:  # the other search has written its rows and not committed yet
        other.execute("INSERT INTO task_search (task_id, project_id, doc) SELECT id, project_id, "
                      "to_tsvector('simple', 'question') FROM tasks WHERE project_id = %s", (pid,))
        result = {}
        worker = threading.Thread(target=lambda: result.update(left=search.catch_up(db, pid)))
        worker.start()
        time.sleep(1.0)  # this search now waits on the other's rows
        other.commit()
        worker.join(30)
    finally:
        other.close()
    assert result == {"left": 0}


# --------------------------------------------------------------------------------------------------
# Deciding
# --------------------------------------------------------------------------------------------------


def test_a_decision_is_the_consensus_but_no_vote(disputes):
    db = disputes
    with db.read() as s:
        p = get_project(s, "p")
        t = [x.id for x in _tasks(s, p)]
        before = project_stats(s, p)
        rows_before, _, summary_before = export_rows(s, p, "trl")
    with db.write() as s:
        p = get_project(s, "p")
        lead = create_labeler(s, "lee", role="lead")
        # task 2 (A B A) goes to B, against the majority; task 4 (one answer) gets a decision too
        review.adjudicate(s, p, t[1], lead, choice="B", note="B is the correct one", now=DAY0)
        review.adjudicate(s, p, t[3], lead, choice="tie")
    with db.read() as s:
        p = get_project(s, "p")
        after = project_stats(s, p)
        from alignloop.feedback.queries import ProjectData

        data = ProjectData(s, p)
        for method in ("majority", "weighted", "bradley_terry", "ranked_pairs"):
            c = data.consensus(method)
            assert c[t[1]] == {"label": "B", "support": None, "n": 3, "adjudicated": True}
            assert c[t[3]]["label"] == "tie"
        # no vote: agreement figures, labelers' records and gold accuracy are exactly as before
        assert after["agreement"] == before["agreement"]
        assert after["labelers"] == before["labelers"]
        assert [x["name"] for x in after["labelers"]] == ["h1", "h2", "h3", "judge"]  # (the lead is no labeler)
        assert tallies.stored(s, p) == tallies.recount(s, p)
        assert after["consensus"]["labels"] == {"A": 3, "B": 4, "tie": 1}
        assert before["consensus"]["labels"] == {"A": 5, "B": 3}
        # exports follow the decision: task 2's pair now prefers B; task 4 (a tie) yields no pair
        rows_after, _, summary_after = export_rows(s, p, "trl")
        def pair(rows):
            return [(r["chosen"], r["rejected"]) for r in rows if f"-t{t[1]}-" in r["id"]]

        assert len(pair(rows_before)) == 1 and pair(rows_after) == [pair(rows_before)[0][::-1]]
        assert len(rows_after) == len(rows_before) - 1
        assert summary_after["excluded"] == {**summary_before["excluded"], "no_trl_rows_for_label": 1}
        stored = s.scalar(select(Adjudication).where(Adjudication.task_id == t[1]))
        assert (stored.choice, stored.note, stored.created_at) == ("B", "B is the correct one", DAY0)
    # deciding again replaces; withdrawing gives the task back to the labelers
    with db.write() as s:
        p = get_project(s, "p")
        lead = s.scalar(select(Labeler).where(Labeler.name == "lee"))
        review.adjudicate(s, p, t[1], lead, choice="A")
        assert s.scalar(select(func.count(Adjudication.id))) == 2
        review.withdraw(s, p, t[1])
        review.withdraw(s, p, t[3])
        with pytest.raises(NotFound, match="has no decision"):
            review.withdraw(s, p, t[3])
    with db.read() as s:
        assert project_stats(s, get_project(s, "p"))["consensus"] == before["consensus"]


def test_what_takes_no_decision(disputes):
    db = disputes
    with db.write() as s:
        p = get_project(s, "p")
        t = [x.id for x in _tasks(s, p)]
        lead = create_labeler(s, "lee", role="lead")
        other = create_project(s, "other", task_type="rewrite", overlap=1)
        import_records(s, other, numbered(generate_records(2, k=1)))
        ot = _tasks(s, other)
        add_judgment(s, ot[0].id, "w", rewrite="better", kind="human")
        cases = [
            (lambda: review.adjudicate(s, p, t[6], lead, choice="A"), Conflict, "gold answer"),
            (lambda: review.adjudicate(s, p, t[0], lead, choice="C"), Invalid, "choice"),
            (lambda: review.adjudicate(s, p, t[0], lead, choice="A", ranking=[1, 2]), Invalid, "ranking"),
            (lambda: review.adjudicate(s, p, t[0], lead), Invalid, "choice"),
            (lambda: review.adjudicate(s, p, t[0], lead, choice="A", note="x" * 20_001), Invalid, "note"),
            (lambda: review.adjudicate(s, p, ot[0].id, lead, choice="A"), NotFound, "no task"),
            (lambda: review.adjudicate(s, other, ot[0].id, lead), Invalid, "rewrite"),
        ]
        for call, error, match in cases:
            with pytest.raises(error, match=match):
                call()
        # a task nobody answered (only a skip) has nothing to decide
        fresh = create_project(s, "fresh", overlap=1)
        import_records(s, fresh, numbered(generate_records(1)))
        ft = _tasks(s, fresh)[0]
        add_judgment(s, ft.id, "h1", skip_reason="no")
        with pytest.raises(Conflict, match="nobody has answered"):
            review.adjudicate(s, fresh, ft.id, lead, choice="A")
        assert s.scalar(select(func.count(Adjudication.id))) == 0


def test_review_queue(disputes):
    db = disputes
    with db.write() as s:
        p = get_project(s, "p")
        t = [x.id for x in _tasks(s, p)]
        page = review.review_queue(s, p)
        # disputed regular tasks, lowest agreement first (gold tasks have their answer)
        assert ids(page) == [t[1], t[2], t[0]] and page["status"] == "open"
        first = page["tasks"][0]
        assert [c["label"] for c in first["completions"]] == ["A", "B"]
        assert [(j["labeler"], j["answer_text"]) for j in first["judgments"]] == [("h1", "A"), ("h2", "B"), ("h3", "A")]
        assert first["consensus_text"] == "A" and first["decision"] is None and first["agreement"] == 0.333333
        assert all("model" not in c for c in first["completions"])  # the decision is blind to the models
        review.adjudicate(s, p, t[2], create_labeler(s, "lee", role="lead"), choice="A")
    with db.read() as s:
        p = get_project(s, "p")
        assert ids(review.review_queue(s, p)) == [t[1], t[0]]
        decided = review.review_queue(s, p, status="decided")
        assert ids(decided) == [t[2]] and decided["tasks"][0]["decision"]["by"] == "lee"
        assert decided["tasks"][0]["consensus_text"] == "A"
        assert ids(review.review_queue(s, p, max_agreement=0.4)) == [t[1]]
        with pytest.raises(Invalid, match="status"):
            review.review_queue(s, p, status="all")


# --------------------------------------------------------------------------------------------------
# A labeler's history, activity over time, charts
# --------------------------------------------------------------------------------------------------


def test_labeler_history(disputes):
    db = disputes
    with db.write() as s:
        p = get_project(s, "p")
        t = [x.id for x in _tasks(s, p)]
        review.adjudicate(s, p, t[2], create_labeler(s, "lee", role="lead"), choice="A")
    with db.read() as s:
        p = get_project(s, "p")
        h = review.labeler_history(s, p, "h2", limit=3)
        # h2: A B B A s . A B (tasks 1..8), newest first
        assert [j["task_id"] for j in h["judgments"]] == [t[7], t[6], t[4]]
        assert h["totals"]["judgments"] == 6 and h["totals"]["skips"] == 1
        assert h["totals"]["gold"] == {"answered": 2, "missed": 1, "accuracy": 0.5}
        g8, g7, skip = h["judgments"]
        assert (g8["gold_missed"], g7["gold_missed"], skip["gold_missed"]) == (True, False, None)
        assert skip["answer_text"] == "skipped: unsure" and skip["matches_others"] is None
        rest = review.labeler_history(s, p, "h2", limit=50, after=h["next"])
        assert [j["task_id"] for j in rest["judgments"]] == [t[3], t[2], t[1], t[0]] and rest["next"] is None
        by_task = {j["task_id"]: j for j in rest["judgments"]}
        # task 3: others h1 B, h3 A tie -> None; but the lead decided A, h2 said B
        assert by_task[t[2]]["matches_others"] is None and by_task[t[2]]["matches_decision"] is False
        assert by_task[t[1]]["matches_others"] is False  # B against A, A
        assert by_task[t[0]]["matches_others"] is True  # A with h1 A, h3 A and the judge's B
        assert by_task[t[3]]["matches_others"] is None  # nobody else
        with pytest.raises(NotFound):
            review.labeler_history(s, p, "nobody")


def test_activity_per_day(db):
    with db.write() as s:
        p = create_project(s, "a", overlap=3)
        import_records(s, p, numbered(generate_records(3)))
        ts = _tasks(s, p)
        _judge(s, ts, {"h1": "AAA"}, when=DAY0)
        _judge(s, ts, {"h2": "ABs"}, when=DAY0 + dt.timedelta(days=1))
        _judge(s, ts, {"judge": "BBB"}, kind="ai", when=DAY0 + dt.timedelta(days=1))
        _judge(s, ts, {"h3": "AB."}, when=DAY0 + dt.timedelta(days=3))
    with db.read() as s:
        days = review.activity(s, get_project(s, "a"), days=5, today=(DAY0 + dt.timedelta(days=3)).date())
    assert [d["day"] for d in days] == ["2027-02-28", "2027-03-01", "2027-03-02", "2027-03-03", "2027-03-04"]
    assert [(d["judgments"], d["skips"], d["other_judgments"]) for d in days] == [
        (0, 0, 0), (3, 0, 0), (2, 1, 3), (0, 0, 0), (2, 0, 0)]
    # day 2: h2's A agrees with h1's A, B does not: 1 of 2 (the judge is no person); day 4: h3's A with A, A and
    # B with A, B: 3 of 4
    assert [(d["compared"], d["agreement"]) for d in days] == [(0, None), (0, None), (2, 0.5), (0, None), (4, 0.75)]
    with db.read() as s:
        with pytest.raises(Invalid, match="days"):
            review.activity(s, get_project(s, "a"), days=0)


def test_charts_are_plain_svg():
    days = [{"day": "2027-03-01", "judgments": 4, "skips": 1, "other_judgments": 0, "compared": 2, "agreement": 0.5},
            {"day": "2027-03-02", "judgments": 0, "skips": 0, "other_judgments": 0, "compared": 0, "agreement": None},
            {"day": "2027-03-03", "judgments": 2, "skips": 0, "other_judgments": 9, "compared": 4, "agreement": 1.0}]
    svg = charts.throughput(days)
    assert svg.startswith("<svg") and "<script" not in svg and "http://" not in svg.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    bars = re.findall(r'<rect class="(\w+)"[^>]*data-day="([\d-]+)" data-value="(\d+)"', svg)
    assert bars == [("judgments", "2027-03-01", "4"), ("skips", "2027-03-01", "1"), ("judgments", "2027-03-03", "2")]
    assert "6 judgments by people over 3 days" in svg
    svg = charts.agreement(days)
    assert re.findall(r'<circle class="agreement"[^>]*data-day="([\d-]+)" data-value="([\d.]+)"', svg) == [
        ("2027-03-01", "0.5"), ("2027-03-03", "1.0")]
    assert "<polyline" not in svg  # the day without comparisons is a gap, not a line through zero


# --------------------------------------------------------------------------------------------------
# Routes: for the project's lead or an admin
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def app(disputes):
    db = disputes
    with db.write() as s:
        p = get_project(s, "p")
        q = create_project(s, "q", overlap=1)
        tokens = {}
        for name, role, project, member_role in [("admin", "admin", None, None), ("lee", "lead", p, "lead"),
                                                 ("ann", "labeler", p, "labeler"), ("quinn", "lead", q, "lead")]:
            lab = create_labeler(s, name, role=role)
            tokens[name] = {"Authorization": f"Bearer {auth.new_token(s, lab)}"}
            if project is not None:
                access.add_member(s, project, lab, member_role, "test")
        tasks = [t.id for t in _tasks(s, p)]
    client = TestClient(create_app(db))
    client.tokens, client.tasks, client.db = tokens, tasks, db
    return client


def test_routes_are_for_the_lead_and_admins(app):
    t = app.tasks
    requests = [("GET", "/api/projects/p/tasks?disputed=true", None), ("GET", f"/api/projects/p/tasks/{t[1]}", None),
                ("GET", "/api/projects/p/review", None), ("GET", "/api/projects/p/labelers/h1/history", None),
                ("GET", "/api/projects/p/activity", None), ("GET", "/lead/p/tasks?text=ferns", None),
                ("GET", f"/lead/p/tasks/{t[1]}", None), ("GET", "/lead/p/review", None),
                ("GET", "/lead/p/labelers/h1", None), ("GET", "/lead/p/charts/throughput.svg", None),
                ("PUT", f"/api/projects/p/tasks/{t[1]}/adjudication", {"choice": "B"}),
                ("DELETE", f"/api/projects/p/tasks/{t[1]}/adjudication", None)]
    for who, status in (("ann", 403), ("quinn", 404), (None, 401), ("lee", 200), ("admin", 200)):
        for method, path, body in requests:
            r = app.request(method, path, json=body, headers=app.tokens.get(who, {}), follow_redirects=False)
            assert r.status_code == status, (who, method, path, r.status_code, r.text)
    with app.db.read() as s:
        assert s.scalar(select(func.count(Adjudication.id))) == 0  # refused requests changed nothing


def test_api_decides_and_answers_bad_input(app):
    lee, t = app.tokens["lee"], app.tasks
    r = app.put(f"/api/projects/p/tasks/{t[1]}/adjudication", json={"choice": "B", "note": "see guideline 3"},
                headers=lee)
    assert r.status_code == 200
    body = r.json()
    assert body["consensus"] == {"label": "B", "support": None, "n": 3, "adjudicated": True}
    assert body["decision"]["by"] == "lee" and body["decision"]["note"] == "see guideline 3"
    assert app.get("/api/projects/p/review", headers=lee).json()["tasks"][0]["task_id"] == t[2]
    for path, body, status, field in [
            (f"/api/projects/p/tasks/{t[1]}/adjudication", {"choice": "Z"}, 422, "choice"),
            (f"/api/projects/p/tasks/{t[6]}/adjudication", {"choice": "A"}, 409, "task_id"),
            ("/api/projects/p/tasks/999999/adjudication", {"choice": "A"}, 404, "task_id")]:
        r = app.put(path, json=body, headers=lee)
        assert (r.status_code, r.json()["field"]) == (status, field), r.text
    for path, status, field in [("/api/projects/p/tasks?min_agreement=2", 422, "min_agreement"),
                                ("/api/projects/p/tasks?limit=0", 422, "limit"),
                                ("/api/projects/p/tasks?after=x", 422, "after"),
                                ("/api/projects/p/tasks?labeler=nobody", 404, "labeler"),
                                ("/api/projects/p/activity?days=1000", 422, "days"),
                                ("/lead/p/tasks?min_agreement=lots", 422, "min_agreement"),
                                ("/lead/p/charts/pie.svg", 404, "chart")]:
        r = app.get(path, headers=lee)
        assert (r.status_code, r.json()["field"]) == (status, field), (path, r.text)
    r = app.get("/api/projects/p/tasks?text=ferns&disputed=true", headers=lee)
    assert [x["task_id"] for x in r.json()["tasks"]] == [t[2], t[0]] and r.json()["search_pending"] == 0
    # the page's form sends its empty fields: they are no filter
    r = app.get("/lead/p/tasks?text=&labeler=&min_agreement=&max_agreement=&decided=", headers=lee)
    assert r.status_code == 200 and len(re.findall(r'<tr data-task-id="\d+">', r.text)) == 8
    r = app.get("/lead/p/charts/agreement.svg", headers=lee)
    assert r.headers["content-type"] == "image/svg+xml" and r.text.startswith("<svg")


def test_answers_to_one_task_at_once_are_all_counted(db):
    """Labelers submitting to the same task at the same moment (PostgreSQL runs them truly in parallel): none
    fails, and the task's tally counts every answer (each waits for the one before, then sees it)."""
    import threading

    with db.write() as s:
        p = create_project(s, "race", overlap=8)
        import_records(s, p, numbered(generate_records(1)))
        task_id = _tasks(s, p)[0].id
        labs = [create_labeler(s, f"r{i}").id for i in range(8)]
    barrier, errors = threading.Barrier(len(labs)), []

    def submit(lab_id: int) -> None:
        try:
            barrier.wait()  # (outside the transaction: on SQLite a writer holds the process's write lock)
            with db.write() as s:
                add_judgment(s, task_id, s.get(Labeler, lab_id), "A" if lab_id % 2 else "B")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(lab,)) for lab in labs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with db.read() as s:
        p = get_project(s, "race")
        assert tallies.stored(s, p) == tallies.recount(s, p)
        assert tallies.stored(s, p)["tallies"][task_id][:2] == (8, 0)


def test_decisions_and_withdrawals_are_in_the_audit_log(app):
    """A lead's decision changes the consensus the trainers read: who decided what on which task, and who took it
    back, are in the audit log (``alignloop label users audit``); a refused decision writes nothing."""
    from alignloop.feedback.accounts import audit_rows

    lee, t = app.tokens["lee"], app.tasks
    assert app.put(f"/api/projects/p/tasks/{t[1]}/adjudication", json={"choice": "B"}, headers=lee).status_code == 200
    assert app.put(f"/api/projects/p/tasks/{t[1]}/adjudication", json={"choice": "Z"}, headers=lee).status_code == 422
    assert app.delete(f"/api/projects/p/tasks/{t[1]}/adjudication", headers=lee).status_code == 200
    with app.db.read() as s:
        rows = [r for r in audit_rows(s) if r["action"].startswith("adjudication.")]
    assert [(r["action"], r["actor"], r["target"], r["ok"], r["detail"]) for r in rows] == [
        ("adjudication.withdraw", "lee", f"task:{t[1]}", True, {"project": "p"}),
        ("adjudication.set", "lee", f"task:{t[1]}", True, {"project": "p", "choice": "B"})]
    assert rows[0]["client"] == rows[1]["client"] == "testclient"
