"""The SDK against a real ``alignloop serve`` process: train a tiny model through the server, predict with it,
lineage names the labels; user feedback lands in the feedback store and in its export; and a server killed
with SIGKILL during a job leaves that job failed with a clear reason after the restart."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import alignloop
from alignloop import feedback_bridge

KEY = "sdk-key"
ADMIN_KEY = "sdk-admin-key"
#: who votes: the key (its SHA-256's first 10 hex digits), whatever `user` the request names
KEY_LABELER = "user:key-" + __import__("hashlib").sha256(KEY.encode()).hexdigest()[:10]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_server(tmp: Path, db: str, log_name: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "ALIGNLOOP_HOME": str(tmp / "home"), "PYTHONPATH": str(ROOT), "ALIGNLOOP_API_KEYS": KEY,
           "ALIGNLOOP_ADMIN_KEYS": ADMIN_KEY}
    log = open(tmp / log_name, "wb")
    proc = subprocess.Popen([sys.executable, "-m", "alignloop", "serve", "--model", "tiny", "--port", str(port),
                             "--db", db, "--jobs", "--allow-registry-models", "--jobs-folder", str(tmp / "jobs"),
                             "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(tmp))
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {(tmp / log_name).read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server_state(tmp_path_factory):
    """One server for the module (starting one costs seconds); the last test kills it and starts another."""
    tmp = tmp_path_factory.mktemp("sdk")
    db = f"sqlite:///{tmp / 'alignloop.db'}"
    proc, url = start_server(tmp, db, "server.log")
    state = {"tmp": tmp, "db": db, "url": url, "proc": proc}
    yield state
    stop(state["proc"])


@pytest.fixture
def served(server_state):
    return server_state["tmp"], server_state["db"], server_state["url"]


QA = [{"prompt": f"What is {i} plus {i}?", "completion": f"{2 * i}", "judgment_ids": [100 + i]} for i in range(4)]


def test_sdk_trains_predicts_and_lineage_names_the_labels(served):
    tmp, db, url = served
    client = alignloop.Client(url, api_key=KEY, admin_key=ADMIN_KEY)
    model_id = client.train(QA, initial_model_id="tiny", model_name="sum-v1", fine_tuning_type="sft", max_steps=2,
                     batch_size=2, timeout=300)
    assert model_id.startswith("m-")
    [job] = [j for j in client.jobs() if j["model_id"] == model_id]
    assert (job["status"], job["model_id"], job["stage"], job["attempts"]) == ("completed", model_id, "sft", 1)
    assert "saved" in client.job(job["id"]).logs()
    names = {m["id"]: m["name"] for m in client.models()}
    assert names[model_id] == "sum-v1" and "tiny" in names

    answer = client.predict(model_id, "What is 1 plus 1?", context="A sum.", max_tokens=4)
    assert isinstance(answer, str) and answer.id.startswith("pred-") and answer.model == model_id
    assert (answer.declined, answer.confidence) == (False, None)  # an SFT folder has no rule for declining
    same = client.load_model("sum-v1").predict("What is 1 plus 1?", context="A sum.", max_tokens=4)
    assert same == answer  # greedy: the same answer by id or by name

    lin = client.lineage(model_id)
    assert lin["judgment_ids"] == [100, 101, 102, 103] and lin["base_model"] == "tiny"
    assert [c["model_id"] for c in lin["chain"]] == [model_id]
    card = Path(lin["chain"][0]["path"], "README.md").read_text()  # the folder: in the lineage (admin key)
    assert "# sum-v1" in card and "Labels: 4 judgments" in card

    # an inference key cannot train (nor list jobs); the admin key can
    with pytest.raises(alignloop.client.ClientError) as e:
        alignloop.Client(url, api_key=KEY).train(QA, fine_tuning_type="sft", max_steps=1, wait=False)
    assert e.value.status == 403 and "training jobs need an admin key" in str(e.value)

    # bad jobs are refused with every problem listed
    with pytest.raises(alignloop.client.ClientError) as e:
        client.train(QA, fine_tuning_type="sft", max_steps=-1, batch_size=0, wait=False)
    assert (e.value.status == 422 and "max_steps: must be > 0" in str(e.value)
            and "batch_size: must be > 0" in str(e.value))


def test_feedback_from_use_lands_in_the_store_and_its_export(server_state):
    pytest.importorskip("alignloop.feedback.store")
    tmp, db, url = server_state["tmp"], server_state["db"], server_state["url"]
    client = alignloop.Client(url, api_key=KEY, admin_key=ADMIN_KEY)
    ans = client.predict("tiny", "Email me at bob@example.com: what is 2 plus 2?", max_tokens=3)
    fb = client.feedback(ans.id, thumbs="down", correction="4 (call 555-123-4567)", comment="wrong, see jo@x.org",
                         user="analyst-1")
    assert fb["project"] == "served" and fb["created"] is True
    with pytest.raises(alignloop.client.ClientError) as e:  # one verdict per key and answer, whatever the name
        client.feedback(ans.id, thumbs="up", user="analyst-2")
    assert e.value.status == 409

    a1 = client.predict("tiny", "Say hi", max_tokens=2, temperature=1.0)
    a2 = client.predict("tiny", "Say hi", max_tokens=2, temperature=1.0)
    pair = client.feedback(compare=(a1.id, a2.id), choice="B", user="analyst-1")
    assert pair["project"] == "served-pairwise"

    out = tmp / "served-sft.jsonl"
    summary = feedback_bridge.export(db, "served", "sft", str(out))
    [row] = [json.loads(x) for x in out.read_text().splitlines()]
    assert row["judgment_ids"] == [fb["judgment_id"]] and summary["rows"] == 1
    assert row["prompt"] == [{"role": "user", "content": "Email me at [EMAIL]: what is 2 plus 2?"}]
    assert row["completion"] == [{"role": "assistant", "content": "4 (call [PHONE])"}]
    raw = tmp / "served-raw.jsonl"
    feedback_bridge.export(db, "served", "raw", str(raw))
    [j] = [json.loads(x) for x in raw.read_text().splitlines()]
    assert (j["labeler"], j["labeler_kind"], j["choice"]) == (KEY_LABELER, "user", "bad")

    server_state["feedback_export"] = (out, fb["judgment_id"])


@pytest.mark.slow
def test_next_round_trains_on_the_feedback_export(server_state):
    """The loop closed: train on the export of user feedback; lineage names exactly those judgments."""
    if "feedback_export" not in server_state:
        pytest.skip("needs test_feedback_from_use_lands_in_the_store_and_its_export")
    out, judgment_id = server_state["feedback_export"]
    client = alignloop.Client(server_state["url"], api_key=KEY, admin_key=ADMIN_KEY)
    model_id = client.train(out, initial_model_id="tiny", fine_tuning_type="sft", max_steps=1, batch_size=1,
                            timeout=600)
    lin = client.lineage(model_id)
    assert lin["judgment_ids"] == [judgment_id] and lin["chain"][0]["labelers"] == {"user": 1}


def test_killed_server_leaves_the_job_failed_with_a_reason(server_state):
    tmp_path, db, url, proc = server_state["tmp"], server_state["db"], server_state["url"], server_state["proc"]
    client = alignloop.Client(url, api_key=KEY, admin_key=ADMIN_KEY)
    job = client.train(QA, initial_model_id="tiny", fine_tuning_type="sft", max_steps=100000, batch_size=2, wait=False)
    pid = None
    for _ in range(600):
        st = job.status()
        if st["status"] == "running":
            from alignloop.registry.store import JobRow, Registry

            with Registry(db).read() as s:
                pid = s.get(JobRow, job.id).pid
            if pid:
                break
        time.sleep(0.1)
    assert pid, "the job never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(100):  # the training process dies with its server (PR_SET_PDEATHSIG)
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"job process {pid} outlived its server")

    proc2, url2 = start_server(tmp_path, db, "second.log")
    server_state["proc"] = proc2
    st = alignloop.Client(url2, api_key=KEY, admin_key=ADMIN_KEY).job(job.id).status()
    assert st["status"] == "failed" and st["model_id"] is None
    assert st["error"].startswith("server restarted during the job")
    from alignloop.registry.store import Registry, RunRow

    with Registry(db).read() as s:  # the run the job had started is closed too
        runs = s.query(RunRow).filter(RunRow.job_id == job.id).all()
        assert all(r.status == "failed" for r in runs)
