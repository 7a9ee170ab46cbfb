"""issue 18: a served trained stage answers ``/v1/predict`` as ``model.predict`` does, declining where unsure."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient
from serve_fixtures import ADMIN_KEY, LOCAL, serve_app

from alignloop.client import Client
from alignloop.data.readers import qa_prompt
from alignloop.generation.abstention import Abstention, confidence, write_abstention

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
DECLINE = "I cannot answer that from the context given."


@pytest.fixture(scope="module")
def stage_pool(tiny_path, tmp_path_factory):
    """The tiny model copied into a folder that carries a rule for declining, served as the default model."""
    from alignloop.serve.config import ServeConfig
    from alignloop.serve.pool import ModelPool

    folder = tmp_path_factory.mktemp("stage") / "final"
    shutil.copytree(tiny_path, folder)
    write_abstention(folder, Abstention(-1e9, DECLINE))
    pool = ModelPool(ServeConfig(model=str(folder), batch_wait_ms=0).validate(), None)
    yield pool
    pool.close()


def test_predict_declines_below_the_folders_threshold_with_the_librarys_confidence(stage_pool, tmp_path):
    lm = stage_pool.default
    assert lm.abstention == Abstention(-1e9, DECLINE)  # read from the folder's abstention.json
    client = TestClient(serve_app(tmp_path, stage_pool).app, base_url=LOCAL)
    body = {"question": "What was revenue in FY2022?", "context": "Revenue was $5 million.", "max_tokens": 4}

    first = client.post("/v1/predict", headers=ADMIN, json=body).json()
    assert first["declined"] is False and first["answer"] != DECLINE
    # the confidence is the library's: the mean log-probability per token of that answer given the same prompt
    [expected] = confidence(lm.model, lm.tokenizer, [qa_prompt(body["question"], body["context"])], [first["answer"]])
    assert first["confidence"] == pytest.approx(expected, abs=1e-5)
    try:
        lm.abstention = Abstention(first["confidence"] + 1e-3, DECLINE)  # just above this answer: declined
        second = client.post("/v1/predict", headers=ADMIN, json=body).json()
        assert (second["answer"], second["declined"]) == (DECLINE, True)
        assert second["confidence"] == pytest.approx(first["confidence"], abs=1e-5)
        sdk = Client(LOCAL)  # the SDK's answer carries the same two facts
        sdk.http = TestClient(client.app, base_url=LOCAL, headers=ADMIN)
        said = sdk.predict(lm.id, body["question"], context=body["context"], max_tokens=4)
        assert (str(said), said.declined, said.confidence) == (DECLINE, True, second["confidence"])
        lm.abstention = Abstention(first["confidence"] - 1e-3, DECLINE)  # just below: answered
        third = client.post("/v1/predict", headers=ADMIN, json=body).json()
        assert (third["answer"], third["declined"]) == (first["answer"], False)
    finally:
        lm.abstention = Abstention(-1e9, DECLINE)


def test_predict_without_a_rule_says_nothing_of_confidence(tiny_pool, tmp_path):
    client = TestClient(serve_app(tmp_path, tiny_pool).app, base_url=LOCAL)
    r = client.post("/v1/predict", headers=ADMIN, json={"question": "2+2?", "max_tokens": 2}).json()
    assert (r["declined"], r["confidence"]) == (False, None) and tiny_pool.default.abstention is None
