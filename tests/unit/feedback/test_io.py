"""Imports (generate, TRL, Label Studio) and exports (trl, kto, sft, raw) with their lineage records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from feedback_helpers import generate_records, numbered, write_jsonl
from sqlalchemy import select

from alignloop.core.errors import DataError
from alignloop.feedback.io import export_file, export_preferences, import_file, import_records, iter_jsonl
from alignloop.feedback.store import (
    Export,
    ExportJudgment,
    Judgment,
    Labeler,
    Task,
    add_judgment,
    create_project,
    get_project,
)

DATA = Path(__file__).parent / "data"


def test_label_studio_import_gives_the_right_pairs(db, tmp_path):
    summary = import_file(db, "ls", DATA / "labelstudio_pairwise.json")
    assert summary["task_type"] == "pairwise"
    assert (summary["tasks"], summary["judgments"], summary["skipped"]) == (3, 5, {"cancelled_annotation": 1})
    with db.read() as s:
        names = set(s.scalars(select(Labeler.name)))
    assert {"labelstudio:7", "labelstudio:ana@example.com", "labelstudio:9"} <= names
    out = export_file(db, "ls", "trl", tmp_path / "pairs.jsonl")
    rows = list(iter_jsonl(tmp_path / "pairs.jsonl"))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ("What is the capital of France?", "Paris.", "Lyon, I think."),  # 2 of 3 said left
        ("Say something kind.", "You are doing great!", "Go away.")]
    assert [len(r["judgment_ids"]) for r in rows] == [3, 2]
    assert out["excluded"] == {"no_judgments": 1}  # task 103 has no annotations: reported, not hidden


def test_trl_roundtrip_and_conversational_format(db, tmp_path):
    prefs = [{"prompt": "hi", "chosen": "hello!", "rejected": "go away"},
             {"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}],
              "rejected": [{"role": "assistant", "content": "5"}]},
             {"chosen": [{"role": "user", "content": "capital of Peru?"}, {"role": "assistant", "content": "Lima"}],
              "rejected": [{"role": "user", "content": "capital of Peru?"}, {"role": "assistant", "content": "Cusco"}]}]
    path = write_jsonl(tmp_path / "prefs.jsonl", prefs)
    assert import_file(db, "trl", path, labeler="alice")["judgments"] == 3
    export_file(db, "trl", "trl", tmp_path / "out.jsonl")
    rows = list(iter_jsonl(tmp_path / "out.jsonl"))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows[:2]] == [
        (p["prompt"], p["chosen"], p["rejected"]) for p in prefs[:2]]
    assert rows[2]["prompt"] == [{"role": "user", "content": "capital of Peru?"}]  # implicit prompt split off
    assert rows[2]["chosen"] == [{"role": "assistant", "content": "Lima"}]


def test_import_errors_name_file_line_and_field(db, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"},
                                               {"prompt": "y", "chosen": "a", "rejected": 5}])
    with pytest.raises(DataError) as err:
        import_file(db, "e", bad)
    assert str(err.value).startswith(f"{bad}:2: field 'rejected'")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "x"\n')
    with pytest.raises(DataError, match=":1: malformed JSON"):
        import_file(db, "e", tmp_path / "broken.jsonl")
    with pytest.raises(DataError, match="not a record"):
        import_file(db, "e", write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello"}]))
    ranks = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "completions": ["a", "b"], "ranks": [1, 1]}])
    with pytest.raises(DataError, match="ranks"):
        import_file(db, "rk", ranks)
    with db.read() as s:
        assert s.scalar(select(Task.id)) is None


def _ranking_project(db):
    with db.write() as s:
        p = create_project(s, "rank", task_type="ranking", overlap=3)
        import_records(s, p, numbered(generate_records(2, 4)))
        tasks = list(s.scalars(select(Task).order_by(Task.id)))
        for i, who in enumerate(["h1", "h2", "h3"]):
            for t in tasks:
                ids = list(t.completion_ids)
                order = ids if i < 2 else [ids[1], ids[0], ids[2], ids[3]]
                add_judgment(s, t.id, who, ranking=order, kind="human",
                             rewrite="A much better answer." if (who == "h1" and t is tasks[0]) else None)
        return [list(t.completion_ids) for t in tasks]


def test_ranking_export_expands_pairs_grouped_per_prompt(db, tmp_path):
    _ranking_project(db)
    summary = export_file(db, "rank", "trl", tmp_path / "r.jsonl", method="bradley_terry")
    rows = list(iter_jsonl(tmp_path / "r.jsonl"))
    assert summary["rows"] == 12  # 2 prompts x C(4,2) pairs
    prompts = [r["prompt"][0]["content"] for r in rows]
    assert prompts == ["Question 0?"] * 6 + ["Question 1?"] * 6  # grouped per prompt
    first = rows[:6]
    assert first[0]["chosen"] == [{"role": "assistant", "content": "answer 0.0"}]
    assert first[0]["rejected"] == [{"role": "assistant", "content": "answer 0.1"}]
    assert len({r["id"] for r in rows}) == 12
    kto = export_file(db, "rank", "kto", tmp_path / "k.jsonl")
    krows = list(iter_jsonl(tmp_path / "k.jsonl"))
    assert kto["rows"] == 8 and sum(r["label"] for r in krows) == 4  # top half desirable
    sft = export_file(db, "rank", "sft", tmp_path / "s.jsonl")
    srows = list(iter_jsonl(tmp_path / "s.jsonl"))
    assert sft["rows"] == 1 and srows[0]["completion"] == [{"role": "assistant", "content": "A much better answer."}]


def test_exports_record_their_judgments(db, tmp_path):
    _ranking_project(db)
    out = export_file(db, "rank", "raw", tmp_path / "raw.jsonl")
    rows = list(iter_jsonl(tmp_path / "raw.jsonl"))
    with db.read() as s:
        all_ids = set(s.scalars(select(Judgment.id)))
        ex = s.get(Export, out["export_id"])
        linked = set(s.scalars(select(ExportJudgment.judgment_id).where(ExportJudgment.export_id == ex.id)))
    assert {r["judgment_ids"][0] for r in rows} == all_ids == linked
    import hashlib

    assert ex.sha256 == hashlib.sha256((tmp_path / "raw.jsonl").read_bytes()).hexdigest()
    assert ex.format == "raw" and ex.n_rows == 6
    assert rows[0]["labeler"] == "h1" and rows[0]["completions"][0]["model"] == "model-0"


def test_pairwise_consensus_methods_and_python_api(db):
    with db.write() as s:
        p = create_project(s, "pw", overlap=3)
        recs = generate_records(2)
        recs[1]["gold"] = {"choice": "B"}
        import_records(s, p, numbered(recs))
        t, gold = list(s.scalars(select(Task).order_by(Task.id)))
        # gold makes "expert" trusted ((1+1)/(1+2)) and the others not ((0+1)/(1+2))
        for task in (t, gold):  # both tasks: expert says B, x says A
            for who, c in [("expert", "B"), ("x", "A")]:
                add_judgment(s, task.id, who, c, kind="human")
        maj = export_preferences(s, get_project(s, "pw"), method="majority")
        wtd = export_preferences(s, get_project(s, "pw"), method="weighted")
    assert maj == []  # 1:1 on both tasks: no majority
    assert [r["chosen"][0]["content"] for r in wtd] == ["answer 0.1", "answer 1.1"]  # trust breaks the tie
    with db.read() as s:
        assert s.scalar(select(Export.id).where(Export.consensus == "weighted")) is not None


def test_generate_k4_in_pairwise_project_makes_every_pair(db, tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", generate_records(1, 4))
    import_file(db, "k4", path, task_type="pairwise")
    with db.read() as s:
        assert len(list(s.scalars(select(Task)))) == 6
    path2 = write_jsonl(tmp_path / "g2.jsonl", generate_records(1, 4, start=5))
    assert import_file(db, "k4r", path2)["task_type"] == "ranking"  # inferred from K > 2
    assert json.loads(json.dumps(import_file(db, "k4r", write_jsonl(tmp_path / "g3.jsonl",
                                                                     generate_records(1, 4, start=9)))))["tasks"] == 1


def test_stats_gold_accuracy_and_judge_vs_human(db):
    from alignloop.feedback.stats import project_stats

    with db.write() as s:
        p = create_project(s, "st", overlap=2)
        recs = generate_records(3)
        recs[2]["gold"] = {"choice": "A"}
        import_records(s, p, numbered(recs))
        t1, t2, gold = list(s.scalars(select(Task).order_by(Task.id)))
        for who, kind, answers in [("h1", "human", "AAA"), ("h2", "human", "ABB"), ("judge", "ai", "AAA")]:
            for t, c in zip((t1, t2, gold), answers):
                add_judgment(s, t.id, who, c, kind=kind)
        stats = project_stats(s, get_project(s, "st"))
    by_name = {row["name"]: row for row in stats["labelers"]}
    assert by_name["h1"]["gold"] == {"answered": 1, "correct": 1, "accuracy": 1.0}
    assert by_name["h2"]["gold"]["accuracy"] == 0.0
    assert stats["agreement"]["items"] == 3 and stats["agreement"]["percent_agreement"] == pytest.approx(1 / 3)
    jvh = stats["judge_vs_human"]
    assert jvh["items"] == 1 and jvh["human_ties_left_out"] == 2 and jvh["percent_agreement"] == 1.0
    assert stats["progress"]["complete"] == 2 and stats["progress"]["gold_tasks"] == 1
    json.dumps(stats)  # plain JSON all the way down


def test_hh_file_imports_with_the_pairs_the_trainers_read(db, tmp_path):
    """`label import` splits the implicit prompt with alignloop.data.readers, so an Anthropic HH file comes in as
    it is and gives the pairs `reward train` / `dpo` read from it (before, the studio refused it: 'prompt is
    required')."""
    import gzip
    import itertools

    from alignloop.data.readers import read_preferences

    src = Path(__file__).resolve().parents[3] / "data" / "hh-harmless" / "dev.jsonl.gz"
    with gzip.open(src, "rt", encoding="utf-8") as fh:
        lines = list(itertools.islice(fh, 4))
    hh = tmp_path / "hh.jsonl"
    hh.write_text("".join(lines))
    summary = import_file(db, "hh", hh, labeler="hh")
    assert (summary["task_type"], summary["tasks"], summary["judgments"]) == ("pairwise", 4, 4)
    export_file(db, "hh", "trl", tmp_path / "pairs.jsonl")
    rows = list(iter_jsonl(tmp_path / "pairs.jsonl"))
    want = read_preferences(hh)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        (p.prompt.messages, [{"role": "assistant", "content": p.chosen}],
         [{"role": "assistant", "content": p.rejected}]) for p in want]
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["prompt"][-1]["role"] == "user"


def test_implicit_prompt_forms_the_studio_took_before_still_import(db, tmp_path):
    """Conversations whose answers are several messages (TRL's longest-shared-prefix rule) stay importable,
    though the trainers' reader takes only a single last answer."""
    u, a1, b1 = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                 {"role": "assistant", "content": "go away"})
    u2, a2 = {"role": "user", "content": "how are you?"}, {"role": "assistant", "content": "fine"}
    path = write_jsonl(tmp_path / "multi.jsonl", [{"chosen": [u, a1, u2, a2], "rejected": [u, b1]}])
    import_file(db, "multi", path, labeler="alice")
    export_file(db, "multi", "trl", tmp_path / "out.jsonl")
    [row] = iter_jsonl(tmp_path / "out.jsonl")
    assert (row["prompt"], row["chosen"], row["rejected"]) == ([u], [a1, u2, a2], [b1])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"chosen": [u, a1], "rejected": [u2, b1]}])
    with pytest.raises(DataError, match="field 'prompt': is missing and chosen/rejected share no leading turns"):
        import_file(db, "bad", bad)


def test_label_studio_tasks_as_jsonl_import_like_the_json_array(db, tmp_path):
    """One reader for files and uploads: a JSONL file of Label Studio tasks is recognised as the API's upload
    of the same lines always was."""
    tasks = json.loads((DATA / "labelstudio_pairwise.json").read_text())
    path = write_jsonl(tmp_path / "ls.jsonl", tasks)
    summary = import_file(db, "lsl", path)
    assert (summary["tasks"], summary["judgments"], summary["skipped"]) == (3, 5, {"cancelled_annotation": 1})


def test_a_file_that_is_not_utf8_is_refused_naming_file_and_line(tmp_path):
    from alignloop.feedback.io import read_import

    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"prompt": "a", "completions": ["x", "y"]}\n{"prompt": "na\xefve", "completions": ["x", "y"]}\n')
    with pytest.raises(DataError) as err:
        read_import(bad)
    assert str(err.value) == f"{bad}:2: not valid UTF-8 (byte 0xef at column 15)"
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b'\xef\xbb\xbf{"prompt": "a", "completions": ["x", "y"]}\n')
    [task] = read_import(bom).tasks
    assert (task.prompt.as_given(), task.completions) == ("a", ["x", "y"])


def test_an_empty_answer_is_data_in_the_studio(db, tmp_path):
    """Label Studio holds tasks where one answer is empty and the labeler chose the other; preference files hold an
    empty chosen answer. Both import, and the export keeps the empty answer (issue 20)."""
    ls = [{"id": 1, "data": {"prompt": "Say something.", "answer1": "", "answer2": "Hello!"},
           "annotations": [{"completed_by": 3, "result": [{"type": "pairwise", "value": {"selected": "right"}}]}]},
          {"id": 2, "data": {"prompt": "Refuse politely.", "answer1": "", "answer2": "Sure, here it is."},
           "annotations": [{"completed_by": 3, "result": [{"type": "pairwise", "value": {"selected": "left"}}]}]}]
    (tmp_path / "ls.json").write_text(json.dumps(ls))
    assert import_file(db, "ls-empty", tmp_path / "ls.json")["judgments"] == 2
    export_file(db, "ls-empty", "trl", tmp_path / "out.jsonl")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in iter_jsonl(tmp_path / "out.jsonl")] == [
        ("Say something.", "Hello!", ""), ("Refuse politely.", "", "Sure, here it is.")]
    trl = write_jsonl(tmp_path / "trl.jsonl", [{"prompt": "Say nothing.", "chosen": "", "rejected": "No."}])
    assert import_file(db, "trl-empty", trl)["judgments"] == 1
    with pytest.raises(DataError, match="field 'prompt': empty text"):
        import_file(db, "e", write_jsonl(tmp_path / "p.jsonl", [{"prompt": " ", "chosen": "a", "rejected": ""}]))
