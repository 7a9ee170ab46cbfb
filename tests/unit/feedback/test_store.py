"""Store, migrations and assignment, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from feedback_helpers import generate_records, numbered, write_jsonl
from sqlalchemy import func, select

from alignloop.core.errors import DataError
from alignloop.feedback import assign
from alignloop.feedback.io import import_file, import_records
from alignloop.feedback.store import (
    Assignment,
    Conflict,
    Invalid,
    Judgment,
    NotFound,
    Prompt,
    Task,
    add_judgment,
    create_labeler,
    create_project,
    get_project,
)


def _project(db, name="p", n=6, k=2, **settings):
    with db.write() as s:
        p = create_project(s, name, **settings)
        import_records(s, p, numbered(generate_records(n, k, with_uncertainty=True)))
        return p.id


def _labelers(db, n, prefix="lab"):
    with db.write() as s:
        return [create_labeler(s, f"{prefix}{i}").id for i in range(n)]


def test_migrations_match_models(db):
    """The schema Alembic builds is exactly what the models describe (no forgotten migration)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from alignloop.feedback.migrations import current, upgrade
    from alignloop.feedback.store import Base

    assert current(db.engine) == "0003"
    upgrade(db.engine)  # a second run is a no-op
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_judgment_rules_and_idempotency(db):
    _project(db, overlap=2)
    with db.write() as s:
        task = s.scalar(select(Task).order_by(Task.id))
        j, created = add_judgment(s, task.id, "judge:test", "A", strength="better", idempotency_key="k1")
        assert created and j.guideline_version == 1
        again, created2 = add_judgment(s, task.id, "judge:test", "A", idempotency_key="k1")
        assert again.id == j.id and not created2
        with pytest.raises(Conflict):  # one judgment per task and labeler
            add_judgment(s, task.id, "judge:test", "B")
        with pytest.raises(Invalid, match="choice"):
            add_judgment(s, task.id, "judge:other", "C")
        with pytest.raises(Invalid, match="strength"):
            add_judgment(s, task.id, "judge:other", "tie", strength="better")
        with pytest.raises(Invalid, match="ranking"):
            add_judgment(s, task.id, "judge:other", "A", ranking=[1, 2])
        with pytest.raises(Invalid, match="limit"):
            add_judgment(s, task.id, "judge:other", "A", rewrite="x" * 20_001)
        with pytest.raises(NotFound):
            add_judgment(s, 999_999, "judge:other", "A")
    with db.read() as s:
        assert s.scalar(select(func.count(Judgment.id))) == 1


def test_ranking_and_rating_validation(db):
    with db.write() as s:
        p = create_project(s, "r", task_type="ranking")
        import_records(s, p, numbered(generate_records(1, 4)))
        t = s.scalar(select(Task))
        ids = list(t.completion_ids)
        with pytest.raises(Invalid, match="ranking"):
            add_judgment(s, t.id, "j", ranking=ids[:3])
        j, _ = add_judgment(s, t.id, "j", ranking=list(reversed(ids)))
        assert j.ranking == list(reversed(ids))
        q = create_project(s, "rate", task_type="rating", criteria=["helpfulness", "honesty"], scale=5)
        import_records(s, q, numbered(generate_records(1, 2)))
        t2 = s.scalar(select(Task).where(Task.project_id == q.id))
        a, b = t2.completion_ids
        good = {str(a): {"helpfulness": 5, "honesty": 4}, str(b): {"helpfulness": 2, "honesty": 3}}
        with pytest.raises(Invalid, match="1 to 5"):
            add_judgment(s, t2.id, "j", ratings={**good, str(b): {"helpfulness": 9, "honesty": 3}})
        with pytest.raises(Invalid, match="every"):
            add_judgment(s, t2.id, "j", ratings={str(a): good[str(a)]})
        add_judgment(s, t2.id, "j", ratings=good, flags={str(b): {"unsafe": True}})


def test_import_is_all_or_nothing(db, tmp_path):
    records = generate_records(5)
    records[3]["completions"] = "not a list"
    path = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(DataError) as err:
        import_file(db, "proj", path)
    assert f"{path}:4:" in str(err.value) and "completions" in str(err.value)
    with db.read() as s:
        assert s.scalar(select(func.count(Prompt.id))) == 0  # not even the 3 good lines, not the project
    good = write_jsonl(tmp_path / "good.jsonl", generate_records(5))
    assert import_file(db, "proj", good)["tasks"] == 5
    with pytest.raises(DataError, match="already in project"):  # a re-import is refused, not doubled
        import_file(db, "proj", good)


def test_overlap_distinct_labelers_and_no_repeats(db):
    _project(db, overlap=2, n=3)
    labs = _labelers(db, 4)
    seen = Counter()
    for _round in range(4):
        for lab_id in labs:
            with db.write() as s:
                p = get_project(s, "p")
                from alignloop.feedback.store import Labeler

                lab = s.get(Labeler, lab_id)
                a = assign.next_assignment(s, p, lab)
                if a is None:
                    continue
                seen[(a.task_id, lab_id)] += 1
                add_judgment(s, a.task_id, lab, "A", assignment=a)
    assert all(v == 1 for v in seen.values())  # nobody sees a task twice
    per_task = Counter(t for t, _ in seen)
    assert sorted(per_task.values()) == [2, 2, 2]  # every task got exactly `overlap` labelers


def test_uncertainty_order_and_gold_rate(db):
    with db.write() as s:
        p = create_project(s, "al", overlap=1, order="uncertainty", gold_rate=0.25)
        recs = generate_records(8, with_uncertainty=True)
        gold = generate_records(2, start=100)
        for g in gold:
            g["gold"] = {"choice": "A"}
        import_records(s, p, numbered(recs + gold))
        lab = create_labeler(s, "solo")
        lab.gold_seed = "bravo"  # secret per labeler; fixed here so the draws are known
    got = []
    for _ in range(8):
        with db.write() as s:
            p = get_project(s, "al")
            a = assign.next_assignment(s, p, s.merge(lab))
            t = s.get(Task, a.task_id)
            got.append((t.is_gold, t.uncertainty))
            add_judgment(s, t.id, s.merge(lab), "A", assignment=a)
    gold_positions = [i for i, (g, _) in enumerate(got) if g]
    # random.Random(f"bravo:1:{n}").random() < 0.25 for n = 1, 5, 6, 10: gold at 1 and 5, then none left. (The
    # old fixed schedule put gold at 3 and 7 for everyone: every 1/rate-th task, easy to spot.)
    assert gold_positions == [1, 5]
    regular = [u for g, u in got if not g]
    assert regular == sorted(regular, reverse=True)  # least certain first


def test_gold_seed_is_made_per_labeler_and_secret(db):
    with db.write() as s:
        p = create_project(s, "g", overlap=2, gold_rate=0.5)
        recs = generate_records(2)
        recs[0]["gold"] = {"choice": "A"}
        import_records(s, p, numbered(recs))
        a, b = create_labeler(s, "a"), create_labeler(s, "b")
        assert a.gold_seed is None
    with db.write() as s:
        p = get_project(s, "g")
        assign.next_assignment(s, p, a)  # a labeler from a closed session, as the web app passes it
        assign.next_assignment(s, p, b)
    from alignloop.feedback.store import Labeler

    with db.read() as s:
        seeds = [s.get(Labeler, x.id).gold_seed for x in (a, b)]
    assert all(len(x) == 32 for x in seeds) and seeds[0] != seeds[1]


def test_skip_frees_the_place_and_expired_leases(db):
    _project(db, overlap=1, n=1)
    a_id, b_id = _labelers(db, 2)
    from alignloop.feedback.store import Labeler

    with db.write() as s:
        p = get_project(s, "p")
        a = assign.next_assignment(s, p, s.get(Labeler, a_id))
        assert assign.next_assignment(s, p, s.get(Labeler, b_id)) is None  # the only place is taken
        add_judgment(s, a.task_id, s.get(Labeler, a_id), skip_reason="not my field", assignment=a)
        b = assign.next_assignment(s, p, s.get(Labeler, b_id))
        assert b is not None and b.task_id == a.task_id  # the skip gave the place back
        assert assign.next_assignment(s, p, s.get(Labeler, a_id)) is None  # never the same task twice
        # an assignment older than the lease expires and frees its place
        import datetime as dt

        b.created_at = b.created_at - dt.timedelta(minutes=p.lease_minutes + 1)
        s.flush()
        assert assign.release_expired(s, p) == 1
        with pytest.raises(Conflict, match="expired"):
            add_judgment(s, b.task_id, s.get(Labeler, b_id), "A", assignment=s.get(Assignment, b.id))


def test_concurrent_labelers_never_share_a_place(db):
    """Many threads ask for work at once; the unique slot constraint keeps every task within overlap."""
    _project(db, overlap=2, n=10)
    labs = _labelers(db, 8)
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(labs))

    def worker(lab_id: int) -> None:
        from alignloop.feedback.store import Labeler

        try:
            barrier.wait()
            for _ in range(4):
                with db.write() as s:
                    p = get_project(s, "p")
                    lab = s.get(Labeler, lab_id)
                    a = assign.next_assignment(s, p, lab)
                    if a is None:
                        return
                    add_judgment(s, a.task_id, lab, "B", assignment=a)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in labs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with db.read() as s:
        rows = s.execute(select(Assignment.task_id, Assignment.labeler_id, Assignment.slot)).all()
        per_task = Counter(r.task_id for r in rows if r.slot is not None)
        assert max(per_task.values()) <= 2
        assert len({(r.task_id, r.labeler_id) for r in rows}) == len(rows)
        assert s.scalar(select(func.count(Judgment.id))) == 20  # 10 tasks x overlap 2, all handed out
