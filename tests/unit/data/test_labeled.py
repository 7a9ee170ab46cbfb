"""alignloop.data.labeled: labeling tools' exports as labeled tasks, exactly (the studio's tests check the import)."""

import json

import pytest
from testutil import write_jsonl

from alignloop.core.errors import DataError
from alignloop.data.labeled import detect_shape, labeled_from_text, read_labeled
from alignloop.data.records import Judgment, LabeledTask, Prompt


def test_the_shape_is_told_from_the_first_row():
    assert detect_shape({"id": 1, "data": {"prompt": "p"}, "annotations": []}) == "labelstudio"
    assert detect_shape({"id": "r", "fields": {"prompt": "p"}, "responses": {}}) == "argilla"
    assert detect_shape({"id": "r", "prompt": "p", "ranking.responses": []}) == "argilla"
    assert detect_shape({"id": "j1", "judgment_ids": [1], "task_id": 1, "labeler": "a", "completions": []}) == \
        "alignloop_raw"
    assert detect_shape({"prompt": "p", "chosen": "a", "rejected": "b"}) == "rows"


def test_a_label_studio_pairwise_task_exactly(tmp_path):
    export = [{"id": 7, "data": {"prompt": "Hi?", "answer1": "", "answer2": "Hello.", "lang": "en"},
               "annotations": [{"completed_by": {"id": 3, "email": "a@x.org"}, "lead_time": 2.25,
                                "created_at": "2026-11-30T09:00:00Z",
                                "result": [{"type": "pairwise", "value": {"selected": "right"}}]},
                               {"completed_by": 4, "was_cancelled": True, "result": []}],
               "predictions": [{"result": []}, {"result": []}], "drafts": []}]
    f = tmp_path / "ls.json"
    f.write_text(json.dumps(export))
    lf = read_labeled(f)
    assert (lf.shape, lf.rows, lf.skipped) == ("labelstudio", 1, {"cancelled_annotation": 1, "prediction": 2})
    assert lf.tasks == [LabeledTask(
        Prompt([{"role": "user", "content": "Hi?"}]), ["", "Hello."],
        [Judgment(labeler="labelstudio:a@x.org", choice="B", duration_ms=2250, created_at="2026-11-30T09:00:00Z",
                  where=f"{f}:1")],
        kind="pairwise", meta={"_where": f"{f}:1", "id": "labelstudio-7", "lang": "en"})]
    assert lf.tasks[0].prompt.as_given() == "Hi?"


def test_argilla_records_exactly():
    records = [{"id": "r1", "fields": {"prompt": "Q", "response_1": "a", "response_2": "b", "response_3": "c"},
                "metadata": {}, "suggestions": {}, "vectors": {"emb": [0.1, 0.2]},
                "responses": {"rank": [{"value": ["response_3", "response_1", "response_2"], "user_id": "u1"},
                                       {"value": ["response_1", "response_2", "response_3"], "user_id": "u2",
                                        "status": "draft"}],
                              "note": [{"value": "fine", "user_id": "u1"}]}}]
    lf = labeled_from_text(json.dumps(records), "records.json")
    assert (lf.shape, lf.skipped) == ("argilla", {"draft_response": 1, "unused_question:note": 1, "vector": 1})
    [task] = lf.tasks
    assert (task.prompt.as_given(), task.completions, task.kind) == ("Q", ["a", "b", "c"], "ranking")
    assert task.judgments == [Judgment(labeler="argilla:u1", ranking=[2, 0, 1], where="records.json:1")]


def test_argilla_ranking_that_misses_an_answer_names_the_field():
    records = [{"id": "r1", "fields": {"prompt": "Q", "a": "x", "b": "y", "c": "z"}, "suggestions": {},
                "responses": {"rank": [{"value": ["a", "b", "c"], "user_id": "u1"},
                                       {"value": ["a", "b"], "user_id": "u2"}]}}]
    with pytest.raises(DataError) as err:
        labeled_from_text(json.dumps(records), "r.json")
    assert str(err.value) == ("r.json:1: field 'responses.rank[1].value': must rank each of a, b, c once, best first; "
                              "got ['a', 'b']")


def test_trl_rows_keep_the_readers_pairs_and_generate_rows_their_candidates(tmp_path):
    f = write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": "p", "chosen": "a", "rejected": "", "margin": 0.5},
        {"id": "g1", "prompt": [{"role": "user", "content": "q"}], "completions": ["x", {"text": "y"}],
         "uncertainty": 0.3, "gold": {"choice": "B"}, "model": "m"}])
    lf = read_labeled(f)
    assert lf.shape == "generate+trl"
    pref, gen = lf.tasks
    assert (pref.completions, pref.judgments, pref.kind) == (["a", ""], [Judgment(choice="A", strength="better",
                                                                                  where=f"{f}:1")], "pairwise")
    assert (gen.prompt.as_given(), gen.completions, gen.gold, gen.kind, gen.judgments) == (
        [{"role": "user", "content": "q"}], ["x", "y"], {"choice": "B"}, None, [])
    assert {k: gen.meta[k] for k in ("id", "uncertainty", "model")} == {"id": "g1", "uncertainty": 0.3, "model": "m"}
    odd = read_labeled(write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b",
                                                               "margin": 0.3}]))
    assert (odd.tasks[0].judgments[0].strength, odd.tasks[0].meta["margin"]) == (None, 0.3)  # no strength says 0.3
