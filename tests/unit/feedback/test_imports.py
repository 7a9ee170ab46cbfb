"""Imports of the files teams already have (issue 20): Label Studio (pairwise and ranker templates), Argilla 2.x
records, every TRL format, alignloop's own exports (a round trip); what is skipped is counted by reason; an import
is checked whole before anything is written; batches map their ids right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from feedback_helpers import generate_records, numbered, write_jsonl
from sqlalchemy import func, select

from alignloop.core.errors import DataError
from alignloop.data.readers import read_preferences
from alignloop.feedback.io import export_file, import_file, import_records, iter_jsonl
from alignloop.feedback.store import (
    Completion,
    Database,
    GoldAnswer,
    Judgment,
    Labeler,
    Project,
    Prompt,
    Task,
    add_judgment,
    create_project,
)

REPO = Path(__file__).resolve().parents[3]
TABLES = (Project, Prompt, Completion, Task, GoldAnswer, Judgment, Labeler)


def counts(db) -> dict[str, int]:
    with db.read() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m)) for m in TABLES}


def judged(db, project: str) -> list[tuple]:
    """(prompt as stored, completion texts of the task, labeler, answer in texts) per judgment, in task order."""
    with db.read() as s:
        p = s.scalar(select(Project).where(Project.name == project))
        text = {c.id: c.text for c in s.scalars(select(Completion).join(Prompt).where(Prompt.project_id == p.id))}
        out = []
        for j, t, pr, lab in s.execute(select(Judgment, Task, Prompt, Labeler).join(Task, Task.id == Judgment.task_id)
                                       .join(Prompt, Prompt.id == Task.prompt_id)
                                       .join(Labeler, Labeler.id == Judgment.labeler_id)
                                       .where(Task.project_id == p.id).order_by(Task.seq, Labeler.name)).all():
            answer = j.choice if j.ranking is None else [text[c] for c in j.ranking]
            out.append((pr.prompt, [text[c] for c in t.completion_ids], lab.name, answer))
        return out


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1))
    return path


# --------------------------------------------------------------------------------------------------
# Label Studio: the pairwise template
# --------------------------------------------------------------------------------------------------


def _ls_pairwise_export(n: int = 32, empty: dict[int, str] | None = None) -> tuple[list[dict], list[tuple]]:
    """A Label Studio export of the issue's shape: n tasks with data.prompt/answer1/answer2 and one pairwise
    annotation each; in the tasks of ``empty`` one answer is the empty string and the labeler chose the other.
    Returns the export and the (prompt, chosen, rejected) each annotation says."""
    empty = empty or {}
    tasks, said = [], []
    for i in range(n):
        a1, a2 = f"Answer A to question {i}.", f"Answer B to question {i}."
        if empty.get(i) == "answer1":
            a1 = ""
        if empty.get(i) == "answer2":
            a2 = ""
        side = "right" if (a1 == "" or (i % 3 == 0 and a2 != "")) else "left"
        tasks.append({"id": 1000 + i, "data": {"prompt": f"Question {i}?", "answer1": a1, "answer2": a2},
                      "annotations": [{"id": 5000 + i, "completed_by": 7 + i % 2, "was_cancelled": False,
                                       "ground_truth": False, "lead_time": 12.5,
                                       "created_at": "2026-11-30T10:00:00.000000Z",
                                       "result": [{"from_name": "comparison", "to_name": "answer1,answer2",
                                                   "type": "pairwise", "value": {"selected": side}}]}],
                      "predictions": [], "project": 3})
        said.append((f"Question {i}?", a2, a1) if side == "right" else (f"Question {i}?", a1, a2))
    return tasks, said


def test_label_studio_pairwise_export_with_empty_answers_imports_and_its_trl_export_matches_every_annotation(
        db, tmp_path):
    """The issue's file: 32 tasks, one pairwise annotation each, two where one answer is empty and the labeler
    chose the other. Before, `label import` stopped at the first with "field 'data.answer1': is empty"."""
    export, said = _ls_pairwise_export(32, empty={5: "answer1", 21: "answer2"})
    path = write_json(tmp_path / "project-3-at-2026-11-30.json", export)
    summary = import_file(db, "ls", path)
    assert {k: summary[k] for k in ("format", "task_type", "records", "prompts", "tasks", "judgments", "skipped")} == {
        "format": "labelstudio", "task_type": "pairwise", "records": 32, "prompts": 32, "tasks": 32, "judgments": 32,
        "skipped": {}}
    out = export_file(db, "ls", "trl", tmp_path / "pairs.jsonl")
    rows = list(iter_jsonl(tmp_path / "pairs.jsonl"))
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == said
    assert ("Question 5?", "Answer B to question 5.", "") in said and ("Question 21?", "Answer A to question 21.",
                                                                       "") in said
    assert out["excluded"] == {}
    raw = export_file(db, "ls", "raw", tmp_path / "raw.jsonl")
    assert raw["rows"] == 32
    first = next(iter_jsonl(tmp_path / "raw.jsonl"))
    assert (first["labeler"], first["duration_ms"], first["created_at"]) == (
        "labelstudio:7", 12500, "2026-11-30T10:00:00Z")


LS_TEAM = [  # several annotators a task, a cancelled annotation, predictions, a comment beside the choice
    {"id": 1, "data": {"prompt": "Is the Earth flat?", "answer1": "No, it is round.", "answer2": "Yes.",
                       "source": "quiz"},
     "annotations": [
         {"id": 11, "completed_by": 7, "result": [{"type": "pairwise", "value": {"selected": "left"}}]},
         {"id": 12, "completed_by": {"id": 8, "email": "ana@example.com"},
          "result": [{"type": "pairwise", "value": {"selected": "left"}},
                     {"from_name": "why", "type": "textarea", "value": {"text": ["obvious"]}}]},
         {"id": 13, "completed_by": 9, "was_cancelled": True, "result": []}],
     "predictions": [{"model_version": "rm-1", "result": [{"type": "pairwise", "value": {"selected": "left"}}]}]},
    {"id": 2, "data": {"prompt": "Say something kind.", "answer1": "", "answer2": "You are doing great!"},
     "annotations": [
         {"id": 21, "completed_by": 7, "result": [{"type": "pairwise", "value": {"selected": "right"}}]},
         {"id": 22, "completed_by": 9, "result": [{"type": "pairwise", "value": {"selected": "left"}}]},
         {"id": 23, "completed_by": 10, "result": []}]},
    {"id": 3, "data": {"prompt": "2+2?", "answer1": "4", "answer2": "5"}, "annotations": []},
]


def test_label_studio_several_annotators_become_one_judgment_each_and_the_rest_is_counted(db, tmp_path):
    summary = import_file(db, "team", write_json(tmp_path / "team.json", LS_TEAM))
    assert (summary["tasks"], summary["judgments"]) == (3, 4)
    assert summary["skipped"] == {"annotation_without_choice": 1, "cancelled_annotation": 1, "prediction": 1,
                                  "unused_result:textarea": 1}
    assert judged(db, "team") == [
        ("Is the Earth flat?", ["No, it is round.", "Yes."], "labelstudio:7", "A"),
        ("Is the Earth flat?", ["No, it is round.", "Yes."], "labelstudio:ana@example.com", "A"),
        ("Say something kind.", ["", "You are doing great!"], "labelstudio:7", "B"),
        ("Say something kind.", ["", "You are doing great!"], "labelstudio:9", "A")]
    with db.read() as s:
        assert s.scalar(select(Prompt.extra).where(Prompt.external_id == "labelstudio-1")) == {"source": "quiz"}
    raw = list(iter_jsonl(export_file(db, "team", "raw", tmp_path / "raw.jsonl")["path"]))
    assert [(r["prompt"], r["labeler"], r["choice"]) for r in raw] == [(a[0], a[2], a[3]) for a in judged(db, "team")]


# --------------------------------------------------------------------------------------------------
# Label Studio: the ranker template
# --------------------------------------------------------------------------------------------------

LS_RANKER = [
    {"id": 41, "data": {"prompt": "What destroyed the library of Alexandria?",
                        "items": [{"id": "llm_1", "title": "LLM 1", "body": "Wars led to the library's ruin."},
                                  {"id": "llm_2", "title": "LLM 2", "body": "A slow decline over centuries."},
                                  {"id": "llm_3", "title": "LLM 3", "body": ""}]},
     "annotations": [
         {"id": 1, "completed_by": 1, "lead_time": 30,
          "result": [{"from_name": "rank", "to_name": "answers", "type": "ranker",
                      "value": {"ranker": {"rank": ["llm_2", "llm_1", "llm_3"]}}}]},
         {"id": 2, "completed_by": 2,
          "result": [{"from_name": "rank", "to_name": "answers", "type": "ranker",
                      "value": {"ranker": ["llm_2", "llm_3", "llm_1"]}}]},
         {"id": 3, "completed_by": 3, "was_cancelled": True, "result": []}]},
    {"id": 42, "data": {"prompt": "Name a prime.",
                        "items": [{"id": "a", "title": "small", "body": "2"}, {"id": "b", "title": "big", "body": "9"},
                                  {"id": "c", "title": "odd", "body": "7"}]},
     "annotations": [{"id": 4, "completed_by": 1,
                      "result": [{"type": "ranker", "value": {"ranker": {"rank": ["a", "c", "b"]}}}]}]},
]


def test_label_studio_ranker_export_imports_as_rankings(db, tmp_path):
    summary = import_file(db, "rk", write_json(tmp_path / "ranker.json", LS_RANKER))
    assert (summary["task_type"], summary["tasks"], summary["judgments"], summary["skipped"]) == (
        "ranking", 2, 3, {"cancelled_annotation": 1})
    texts = ["Wars led to the library's ruin.", "A slow decline over centuries.", ""]
    assert judged(db, "rk") == [
        ("What destroyed the library of Alexandria?", texts, "labelstudio:1", [texts[1], texts[0], texts[2]]),
        ("What destroyed the library of Alexandria?", texts, "labelstudio:2", [texts[1], texts[2], texts[0]]),
        ("Name a prime.", ["2", "9", "7"], "labelstudio:1", ["2", "7", "9"])]
    with db.read() as s:
        assert list(s.scalars(select(Completion.model).order_by(Completion.id)))[:3] == ["LLM 1", "LLM 2", "LLM 3"]
        assert s.scalar(select(Judgment.duration_ms).order_by(Judgment.id)) == 30_000
    export_file(db, "rk", "trl", tmp_path / "pairs.jsonl", method="bradley_terry")
    rows = [(r["prompt"], r["chosen"], r["rejected"]) for r in iter_jsonl(tmp_path / "pairs.jsonl")]
    assert rows[-3:] == [("Name a prime.", "2", "7"), ("Name a prime.", "2", "9"), ("Name a prime.", "7", "9")]


def test_label_studio_ranker_with_buckets_is_refused_naming_the_annotation(db, tmp_path):
    bucketed = json.loads(json.dumps(LS_RANKER))
    bucketed[1]["annotations"][0]["result"][0]["value"] = {"ranker": {"_": ["b"], "relevant": ["a", "c"]}}
    path = write_json(tmp_path / "buckets.json", bucketed)
    before = counts(db)
    with pytest.raises(DataError) as err:
        import_file(db, "rk", path)
    assert str(err.value).startswith(f"{path}:2: field 'annotations[0].result': value.ranker groups the items into "
                                     "buckets (_, relevant)")
    assert counts(db) == before


# --------------------------------------------------------------------------------------------------
# Argilla 2.x
# --------------------------------------------------------------------------------------------------

ANA, BEN = "0b7d6b62-1f9e-4c2a-8a0e-4f6f1a2b3c4d", "5e3c2a1b-7d8e-4f90-a1b2-c3d4e5f60718"
ARGILLA = [  # dataset.records.to_json(path): a ranking question over three answer fields and a rating question
    {"id": "r1", "fields": {"prompt": "Explain rain.", "response_1": "Water falls.",
                            "response_2": "Clouds condense water vapour into drops that fall.", "response_3": ""},
     "metadata": {"topic": "weather"},
     "suggestions": {"ranking": {"value": ["response_2", "response_1", "response_3"], "score": None,
                                 "agent": "rm-v1"}},
     "responses": {"ranking": [{"value": ["response_2", "response_1", "response_3"], "user_id": ANA},
                               {"value": ["response_2", "response_3", "response_1"], "user_id": BEN}],
                   "quality": [{"value": 4, "user_id": ANA}, {"value": 3, "user_id": BEN}]},
     "vectors": {}, "status": "completed", "_server_id": "9d3f0c6e-0000-4000-8000-000000000001"},
    {"id": "r2", "fields": {"prompt": "Name a colour.", "response_1": "Blue.", "response_2": "Seven.",
                            "response_3": "Red."},
     "metadata": {}, "suggestions": {},
     "responses": {"ranking": [{"value": [{"value": "response_3", "rank": 1}, {"value": "response_1", "rank": 2},
                                          {"value": "response_2", "rank": 3}], "user_id": ANA},
                               {"value": ["response_1", "response_3", "response_2"], "user_id": BEN,
                                "status": "discarded"}],
                   "quality": [{"value": 5, "user_id": ANA}]},
     "vectors": {}, "status": "completed", "_server_id": "9d3f0c6e-0000-4000-8000-000000000002"},
    {"id": "r3", "fields": {"prompt": "Say hi.", "response_1": "Hi!", "response_2": "Go away.", "response_3": "Hey."},
     "metadata": {}, "suggestions": {}, "responses": {}, "vectors": {}, "status": "pending",
     "_server_id": "9d3f0c6e-0000-4000-8000-000000000003"},
]


def test_argilla_records_import_with_one_judgment_per_user(db, tmp_path):
    summary = import_file(db, "arg", write_json(tmp_path / "records.json", ARGILLA))
    assert (summary["format"], summary["task_type"], summary["tasks"], summary["judgments"]) == (
        "argilla", "ranking", 3, 3)
    assert summary["skipped"] == {"discarded_response": 1, "suggestion": 1, "unused_question:quality": 3}
    rain = ["Water falls.", "Clouds condense water vapour into drops that fall.", ""]
    assert judged(db, "arg") == [
        ("Explain rain.", rain, f"argilla:{ANA}", [rain[1], rain[0], rain[2]]),
        ("Explain rain.", rain, f"argilla:{BEN}", [rain[1], rain[2], rain[0]]),
        ("Name a colour.", ["Blue.", "Seven.", "Red."], f"argilla:{ANA}", ["Red.", "Blue.", "Seven."])]
    with db.read() as s:
        assert s.scalar(select(Prompt.extra).where(Prompt.external_id == "argilla-r1")) == {
            "metadata": {"topic": "weather"}}
        assert s.scalar(select(func.count(Task.id)).where(Task.prompt_id == select(Prompt.id).where(
            Prompt.external_id == "argilla-r3").scalar_subquery())) == 1  # no responses yet: a task to label


def test_argilla_two_answers_make_pairwise_choices_and_ties(db, tmp_path):
    tie = [{"value": "a", "rank": 1}, {"value": "b", "rank": 1}]
    records = [{"id": f"p{i}", "fields": {"instruction": f"Q{i}", "a": f"first {i}", "b": f"second {i}"},
                "responses": {"pref": [{"value": value, "user_id": ANA}]}, "suggestions": {}}
               for i, value in enumerate([["b", "a"], ["a", "b"], tie])]
    summary = import_file(db, "arg2", write_json(tmp_path / "pairs.json", records))
    assert summary["task_type"] == "pairwise"
    assert [row[3] for row in judged(db, "arg2")] == ["B", "A", "tie"]


def test_argilla_flattened_export_is_refused_with_the_export_to_use(db, tmp_path):
    flat = [{"id": "r1", "prompt": "x", "response_1": "a", "ranking.responses": [["response_1"]],
             "ranking.responses.users": [ANA], "ranking.responses.status": ["submitted"]}]
    with pytest.raises(DataError, match="flattened with to_list\\(flatten=True\\).*to_json"):
        import_file(db, "flat", write_json(tmp_path / "flat.json", flat))


# --------------------------------------------------------------------------------------------------
# TRL: every format, read as the trainers read it
# --------------------------------------------------------------------------------------------------

U = {"role": "user", "content": "What is the capital of Peru?"}
TRL_PREFERENCES = {
    "standard, explicit prompt": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "standard, implicit prompt": {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    "conversational, explicit prompt": {"prompt": [U], "chosen": [{"role": "assistant", "content": "Lima."}],
                                        "rejected": [{"role": "assistant", "content": "Cusco."}]},
    "conversational, implicit prompt": {"chosen": [U, {"role": "assistant", "content": "Lima."}],
                                        "rejected": [U, {"role": "assistant", "content": "Cusco."}]},
    "HH transcripts": {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of Peru?\n\nAssistant: Lima.",
                       "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Capital of Peru?\n\nAssistant: "},
    "a tie and an empty answer": {"prompt": "Q", "chosen": "", "rejected": "b", "tie": True},
}


def test_every_trl_preference_format_gives_the_pairs_the_trainers_read(db, tmp_path):
    for n, (name, row) in enumerate(TRL_PREFERENCES.items()):
        src = write_jsonl(tmp_path / f"prefs{n}.jsonl", [row, {"prompt": "Second", "chosen": "c", "rejected": "d",
                                                               "strength": "much better"}])
        summary = import_file(db, f"trl{n}", src, labeler="team")
        assert (summary["format"], summary["task_type"], summary["tasks"], summary["judgments"]) == (
            "trl", "pairwise", 2, 2), name
        with db.read() as s:
            answers = [(j.choice, j.strength) for j in s.scalars(select(Judgment).join(Task).join(Project).where(
                Project.name == f"trl{n}").order_by(Judgment.id))]
        assert answers == [("tie" if row.get("tie") else "A", None), ("A", "much_better")], name
        export_file(db, f"trl{n}", "trl", tmp_path / f"out{n}.jsonl")
        got = [(p.prompt.messages, p.chosen, p.rejected) for p in read_preferences(tmp_path / f"out{n}.jsonl")]
        want = [(p.prompt.messages, p.chosen, p.rejected) for p in read_preferences(src)]
        assert got == (want if not row.get("tie") else want[1:]), name  # a tie gives no pair


def test_trl_rankings_and_unpaired_labels(db, tmp_path):
    ranks = write_jsonl(tmp_path / "ranks.jsonl", [
        {"prompt": "Pick a fruit", "completions": ["apple", "pear", ""], "ranks": [2, 1, 3]},
        {"prompt": [U], "completions": [[{"role": "assistant", "content": "Lima"}],
                                        [{"role": "assistant", "content": "Quito"}]], "ranks": [1, 2]}])
    assert import_file(db, "r", ranks, labeler="ann")["task_type"] == "ranking"
    assert judged(db, "r") == [("Pick a fruit", ["apple", "pear", ""], "ann", ["pear", "apple", ""]),
                               ([U], ["Lima", "Quito"], "ann", ["Lima", "Quito"])]
    kto = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "Q1", "completion": "good answer", "label": True},
                                               {"prompt": [U], "completion": [{"role": "assistant", "content": ""}],
                                                "label": False}])
    assert import_file(db, "k", kto, labeler="ann")["task_type"] == "binary"
    assert judged(db, "k") == [("Q1", ["good answer"], "ann", "good"), ([U], [""], "ann", "bad")]
    export_file(db, "k", "kto", tmp_path / "out.jsonl")
    assert [(r["completion"], r["label"]) for r in iter_jsonl(tmp_path / "out.jsonl")] == [
        ("good answer", True), ([{"role": "assistant", "content": ""}], False)]
    tied = write_jsonl(tmp_path / "tied.jsonl", [{"prompt": "p", "completions": ["a", "b", "c"], "ranks": [1, 1, 2]}])
    with pytest.raises(DataError, match=r"tied.jsonl:1: field 'ranks': must give each completion a distinct rank"):
        import_file(db, "t", tied)


def test_label_import_takes_the_hh_file_as_it_is_and_gives_the_pairs_reward_train_reads(tmp_path, capsys):
    """`alignloop label import` of data/hh-harmless/pairs.jsonl.gz (whole transcripts, 3 empty chosen answers):
    every pair, and exported they are what `reward train` reads from the original."""
    from alignloop.feedback.commands import LabelExportConfig, LabelImportConfig, run_export, run_import

    hh = REPO / "data" / "hh-harmless" / "pairs.jsonl.gz"
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    assert run_import(LabelImportConfig(file=str(hh), db=db, project="hh").validate()) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["tasks"] == 1812
    assert "imported 1812 tasks (1812 prompts, 1812 judgments) from a trl file into 'hh' (pairwise)" in captured.err
    assert run_export(LabelExportConfig(db=db, project="hh", format="trl", output=str(tmp_path / "hh.jsonl"))
                      .validate()) == 0
    got = [(p.prompt.messages, p.chosen, p.rejected) for p in read_preferences(tmp_path / "hh.jsonl")]
    want = [(p.prompt.messages, p.chosen, p.rejected) for p in read_preferences(hh)]
    assert len(got) == 1812 and got == want
    assert sum(c == "" for _, c, _ in got) == 3


# --------------------------------------------------------------------------------------------------
# alignloop's own exports: a round trip
# --------------------------------------------------------------------------------------------------


def _normalised_raw(path: Path) -> list[dict]:
    """A raw export without the ids one database gives: completions by text, sorted by prompt and labeler."""
    def by_text(text: dict, ids: list | None) -> list | None:
        return [text[i] for i in ids] if ids is not None else None

    def per(text: dict, d: dict | None) -> dict | None:
        return {text[int(k)]: v for k, v in d.items()} if d is not None else None

    out = []
    for r in iter_jsonl(path):
        text = {c["id"]: c["text"] for c in r["completions"]}
        gold = dict(r["gold"]) if r["gold"] else None
        if gold and "ranking" in gold:
            gold["ranking"] = by_text(text, gold["ranking"])
        out.append({**{k: v for k, v in r.items() if k not in ("id", "judgment_ids", "task_id", "completions")},
                    "completions": [(c["text"], c["model"]) for c in r["completions"]],
                    "ranking": by_text(text, r["ranking"]), "ratings": per(text, r["ratings"]),
                    "flags": per(text, r["flags"]), "display_order": by_text(text, r["display_order"]), "gold": gold})
    return sorted(out, key=lambda r: (r["prompt_id"], r["completions"], r["labeler"]))


def _two_answers(task_type: str, ids: list[int]) -> list[dict]:
    """A human's and a judge's answers to a task, using every field a judgment has."""
    if task_type == "pairwise":
        return [dict(choice="A", strength="better", flags={ids[1]: {"unsafe": True}}), dict(choice="tie")]
    if task_type == "ranking":
        return [dict(ranking=ids[::-1], rewrite="A better answer."), dict(ranking=ids)]
    if task_type == "rating":
        return [dict(ratings={c: {"helpfulness": n + 1} for n, c in enumerate(ids)}),
                dict(ratings={c: {"helpfulness": 5} for c in ids})]
    if task_type == "binary":
        return [dict(choice="good"), dict(choice="bad")]
    return [dict(rewrite="Shorter, please."), dict(skip_reason="I cannot judge this.")]


def test_a_raw_export_imports_back_as_the_same_judgments(db, tmp_path):
    for task_type, k in [("pairwise", 3), ("ranking", 3), ("rating", 2), ("binary", 2), ("rewrite", 1)]:
        with db.write() as s:
            p = create_project(s, f"src-{task_type}", task_type=task_type, criteria=["helpfulness"], overlap=2)
            recs = generate_records(3, k)
            recs[0]["context"] = "Some retrieved text."
            if task_type == "ranking":
                recs[2]["gold"] = {"ranking": [2, 0, 1]}
            import_records(s, p, numbered(recs))
            for t in s.scalars(select(Task).where(Task.project_id == p.id).order_by(Task.id)):
                answers = _two_answers(task_type, list(t.completion_ids))
                add_judgment(s, t.id, "ann", **answers[0], kind="human", duration_ms=1234)
                add_judgment(s, t.id, "judge:qwen", **answers[1], kind="ai")
        raw = tmp_path / f"raw-{task_type}.jsonl"
        export_file(db, f"src-{task_type}", "raw", raw)
        summary = import_file(db, f"copy-{task_type}", raw)
        assert (summary["format"], summary["task_type"]) == ("alignloop_raw", task_type)
        export_file(db, f"copy-{task_type}", "raw", tmp_path / "again.jsonl")
        before, after = _normalised_raw(raw), _normalised_raw(tmp_path / "again.jsonl")
        assert len(after) == len(before) > 0 and after == before, task_type
    with db.read() as s:
        assert s.scalar(select(Labeler.kind).where(Labeler.name == "judge:qwen")) == "ai"


def test_a_trl_export_imports_back_as_its_pairs(db, tmp_path):
    with db.write() as s:
        p = create_project(s, "src", overlap=1)
        import_records(s, p, numbered(generate_records(4)))
        for t in s.scalars(select(Task).order_by(Task.id)):
            add_judgment(s, t.id, "ann", "B" if t.id % 2 else "A", kind="human")
    export_file(db, "src", "trl", tmp_path / "a.jsonl")
    assert import_file(db, "copy", tmp_path / "a.jsonl", labeler="ann")["judgments"] == 4
    export_file(db, "copy", "trl", tmp_path / "b.jsonl")
    pairs = [[(r["prompt"], r["chosen"], r["rejected"]) for r in iter_jsonl(tmp_path / f)] for f in ("a.jsonl",
                                                                                                       "b.jsonl")]
    assert pairs[0] == pairs[1] and len(pairs[0]) == 4


# --------------------------------------------------------------------------------------------------
# All or nothing, checked before anything is written
# --------------------------------------------------------------------------------------------------


def test_a_bad_row_anywhere_leaves_the_database_as_it_was(db, tmp_path):
    import_file(db, "ls", write_json(tmp_path / "ok.json", LS_TEAM))
    before = counts(db)
    bad = json.loads(json.dumps(LS_TEAM))
    for t in bad:
        t["id"] += 100
    bad[2]["annotations"] = [{"completed_by": 4, "result": [{"type": "pairwise", "value": {"selected": "middle"}}]}]
    path = write_json(tmp_path / "bad.json", bad)
    with pytest.raises(DataError) as err:
        import_file(db, "ls", path)
    assert str(err.value) == (f"{path}:3: field 'annotations[0].result': value.selected must be 'left' or 'right', "
                              "got 'middle'")
    assert counts(db) == before
    dup = write_jsonl(tmp_path / "dup.jsonl", generate_records(2) + generate_records(1))
    with pytest.raises(DataError, match=r"dup.jsonl:3: field 'id': prompt id 'p0' appears twice in this file"):
        import_file(db, "gen", dup)
    assert counts(db) == before


def test_label_import_with_another_task_type_changes_nothing(tmp_path, capsys):
    """Before, `label import --task-type X` into a project of another type committed the rows and then said the
    type cannot change."""
    from alignloop.core.errors import AlignloopError
    from alignloop.feedback.commands import LabelImportConfig, run_import

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    first = write_jsonl(tmp_path / "a.jsonl", generate_records(2))
    assert run_import(LabelImportConfig(file=str(first), db=url, project="p").validate()) == 0
    db = Database(url)
    before = counts(db)
    more = write_jsonl(tmp_path / "b.jsonl", generate_records(3, start=10))
    with pytest.raises(AlignloopError, match="its task type cannot change") as err:
        run_import(LabelImportConfig(file=str(more), db=url, project="p", task_type="ranking", overlap=5).validate())
    assert counts(db) == before
    assert str(err.value) == "field 'task_type': project 'p' is pairwise; its task type cannot change (asked: ranking)"
    with db.read() as s:
        assert s.scalar(select(Project.overlap)) == 3  # the other settings were not applied either


def test_the_cli_shows_what_it_skipped_and_why(tmp_path, capsys):
    from alignloop.feedback.commands import LabelImportConfig, run_import

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    assert run_import(LabelImportConfig(file=str(write_json(tmp_path / "team.json", LS_TEAM)), db=url,
                                        project="team").validate()) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["skipped"] == {"annotation_without_choice": 1, "cancelled_annotation": 1,
                                              "prediction": 1, "unused_result:textarea": 1}
    assert ("imported 3 tasks (3 prompts, 4 judgments) from a labelstudio file into 'team' (pairwise); skipped 4: "
            "annotation_without_choice 1, cancelled_annotation 1, prediction 1, unused_result:textarea 1") in out.err
    assert "import: 100%" in out.err  # the progress bar


# --------------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_type", ["pairwise", "binary"])
def test_batched_inserts_give_every_task_its_own_completions(db, monkeypatch, task_type):
    """Batches of 7 records over 50 records of 3 completions (pairwise: 3 tasks each, one a pair; binary: 3): each
    task holds its own prompt's completions, in order, and the progress bar counts every task once."""
    from alignloop.feedback import io

    monkeypatch.setattr(io, "BATCH", 7)
    recs = generate_records(50, 3)
    ticks = []

    class Bar:
        def update(self, n):
            ticks.append(n)

        def close(self):
            ticks.append("closed")

    with db.write() as s:
        p = create_project(s, "b", task_type=task_type)
        summary = io.import_labeled(s, p, io.labeled_files.labeled_from_rows(numbered(recs), "mem"),
                                    progress=lambda total: ticks.append(total) or Bar())
        tasks = list(s.scalars(select(Task).where(Task.project_id == p.id).order_by(Task.seq)))
        text = {c.id: (c.prompt_id, c.text) for c in s.scalars(select(Completion))}
        prompts = {pr.id: pr.external_id for pr in s.scalars(select(Prompt))}
    assert summary["tasks"] == len(tasks) == 150
    assert ticks[0] == 150 and sum(ticks[1:-1]) == 150 and ticks[-1] == "closed" and len(ticks) == 2 + 8
    groups = [[0, 1], [0, 2], [1, 2]] if task_type == "pairwise" else [[0], [1], [2]]
    want = [(f"p{i}", [f"answer {i}.{c}" for c in g]) for i in range(50) for g in groups]
    got = [(prompts[text[t.completion_ids[0]][0]], [text[c][1] for c in t.completion_ids]) for t in tasks]
    assert got == want
    assert [t.seq for t in tasks] == list(range(1, 151))


def test_a_judged_file_in_batches_puts_each_judgment_on_its_task(db, monkeypatch):
    from alignloop.feedback import io

    monkeypatch.setattr(io, "BATCH", 3)
    rows = [{"id": f"q{i}", "prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]
    with db.write() as s:
        import_records(s, create_project(s, "j"), numbered(rows), labeler="ann")
    assert judged(db, "j") == [(f"Q{i}", [f"good {i}", f"bad {i}"], "ann", "A") for i in range(10)]


def test_imported_judgments_count_in_the_leads_figures(db, tmp_path):
    """An import writes judgments in bulk, past queries.add_judgment: the tallies, gold misses and daily activity
    it keeps must still equal what the judgments say (tallies.recount), and a later submit adds to them."""
    from alignloop.feedback import tallies
    from alignloop.feedback.store import Project

    import_file(db, "team", write_json(tmp_path / "team.json", LS_TEAM))
    with db.read() as s:
        p = s.scalars(select(Project).where(Project.name == "team")).one()
        kept, counted = tallies.stored(s, p), tallies.recount(s, p)
    assert kept == counted
    # two tasks judged: "Is the Earth flat?" by 2 labelers who agree, "Say something kind." by 2 who disagree
    assert sorted(v[:3] for v in kept["tallies"].values()) == [(2, 0, 0.0), (2, 0, 1.0)]
    assert [sum(d[k] for d in kept["days"].values()) for k in ("judgments", "other_judgments", "compared",
                                                                 "agreeing")] == [4, 0, 2, 1]
