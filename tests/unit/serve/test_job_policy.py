"""What a training job submitted over HTTP may say (``alignloop.serve.job_policy``): every field of every stage
config is classified, paths stay under the job's folder or a data root, ``python:`` rewards are the registered
ones only, the server owns output/db/resume, and the job's caches live in its own folder."""

import dataclasses
import os
from pathlib import Path

import pytest

from alignloop.core.paths import CACHE_ENV, cache_dir
from alignloop.registry.store import JobRow, ModelRow, Registry, utcnow
from alignloop.serve import job_policy
from alignloop.serve.job_policy import ALLOWED, FILES, MODELS, REFUSED, REWARDS, SETTINGS, JobPolicy
from alignloop.serve.jobs import STAGES, JobError, JobManager, config_class

ROWS = [{"prompt": "q", "completion": "a"}]


@pytest.fixture
def reg(tmp_path):
    r = Registry(f"sqlite:///{tmp_path / 'q.db'}")
    yield r
    r.dispose()


def _problems(jm: JobManager, stage: str, config: dict, **kw) -> list[str]:
    before, folders = jm.list(), sorted(jm.folder.glob("*"))
    with pytest.raises(JobError) as e:
        jm.submit(stage, config, **kw)
    assert jm.list() == before  # nothing half-made is left behind: no job,
    with jm.reg.read() as s:
        assert s.query(JobRow).count() == len(before)  # no row, even one the list would not show,
    assert sorted(jm.folder.glob("*")) == folders  # and no folder
    return e.value.problems


def test_every_field_of_every_job_stage_is_classified():
    """A field added to a stage later fails here until someone decides whether a job may set it."""
    stages = sorted(set(STAGES.values()))
    assert stages == ["dpo", "grpo", "ppo", "reward train", "rloo", "sft"]
    groups = [SETTINGS, FILES, MODELS, REWARDS, set(REFUSED)]
    for i, a in enumerate(groups):  # each field in exactly one group
        for b in groups[i + 1:]:
            assert not (a & b)
    unclassified = {}
    for stage in stages:
        names = {f.name for f in dataclasses.fields(config_class(stage))}
        missing = sorted(names - ALLOWED - set(REFUSED))
        if missing:
            unclassified[stage] = missing
    assert unclassified == {}, f"classify these fields in alignloop/serve/job_policy.py: {unclassified}"
    every = set().union(*({f.name for f in dataclasses.fields(config_class(s))} for s in stages))
    assert sorted((ALLOWED | set(REFUSED)) - every) == []  # no stale names in the lists either
    assert len(every) == 91


def test_a_new_field_is_refused_until_classified(reg, tmp_path, monkeypatch):
    jm = JobManager(reg, tmp_path / "jobs")
    monkeypatch.setattr(job_policy, "SETTINGS", SETTINGS - {"max_steps"})
    monkeypatch.setattr(job_policy, "ALLOWED", ALLOWED - {"max_steps"})
    assert _problems(jm, "sft", {"model": "tiny", "max_steps": 2}, data_records=ROWS) == [
        "max_steps: not a field a job may set over HTTP"]


def test_the_review_finding_is_refused_and_runs_nothing(reg, tmp_path):
    """POST /v1/jobs {"stage":"grpo","config":{"reward":["python:/path/evil.py:f"],"output":"/any/where"}}."""
    evil = tmp_path / "evil.py"
    marker = tmp_path / "ran"
    evil.write_text(f"open({str(marker)!r}, 'w').write('x')\ndef f(p, c, **r):\n    return 1.0\n")
    jm = JobManager(reg, tmp_path / "jobs")
    problems = _problems(jm, "grpo", {"model": "tiny", "reward": [f"python:{evil}:f"], "output": "/any/where"},
                         data_records=[{"prompt": "q"}])
    assert problems == [
        f"reward: python:{evil}:f is not a reward function this server runs for jobs "
        "(--reward-function: python:alignloop.rewards:financebench_numeric, "
        "python:alignloop.rewards:financebench_graded)",
        "output: a job may not set it: the server sets it (the job writes under its own folder; see the job's "
        "'output')"]
    assert not marker.exists()
    assert _problems(jm, "grpo", {"reward": ["python:os:system"], "db": "sqlite:////tmp/x.db", "resume": True},
                     data_records=[{"prompt": "q"}]) == [
        "reward: python:os:system is not a reward function this server runs for jobs "
        "(--reward-function: python:alignloop.rewards:financebench_numeric, "
        "python:alignloop.rewards:financebench_graded)",
        "db: a job may not set it: the server sets it (its own database)",
        "resume: a job may not set it: the server sets it when it re-queues an interrupted job"]


def test_registered_reward_functions_are_accepted(reg, tmp_path):
    jm = JobManager(reg, tmp_path / "jobs")
    job = jm.submit("grpo", {"model": "tiny", "reward": ["python:alignloop.rewards:financebench_numeric:0.5"]},
                    data_records=[{"prompt": "q"}])
    assert reg_config(reg, job["id"])["reward"] == ["python:alignloop.rewards:financebench_numeric:0.5"]
    mine = JobManager(reg, tmp_path / "jobs2", policy=JobPolicy(reward_functions=["mypkg.rewards:length"]))
    job = mine.submit("rloo", {"model": "tiny", "reward": ["python:mypkg.rewards:length"]},
                      data_records=[{"prompt": "q"}])
    assert reg_config(reg, job["id"])["reward"] == ["python:mypkg.rewards:length"]
    assert _problems(mine, "rloo", {"reward": ["python:alignloop.rewards:financebench_numeric"]},
                     data_records=[{"prompt": "q"}]) == [
        "reward: python:alignloop.rewards:financebench_numeric is not a reward function this server runs for "
        "jobs (--reward-function: python:mypkg.rewards:length)"]


def reg_config(reg: Registry, job_id: int) -> dict:
    with reg.read() as s:
        return dict(s.get(JobRow, job_id).config)


def test_paths_stay_under_the_job_folder_or_a_data_root(reg, tmp_path):
    root = tmp_path / "shared"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "dev.jsonl").write_text('{"prompt": "q", "completion": "a"}\n')
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"prompt": "q", "completion": "a"}\n')
    (root / "link.jsonl").symlink_to(outside)
    jm = JobManager(reg, tmp_path / "jobs", policy=JobPolicy(roots=[root]))
    job_folder = (tmp_path / "jobs").resolve()
    msg = (f"is outside the job's folder and the server's data roots (--data-root: {root}); upload the data "
           "with the job, or ask the server's admin")
    assert _problems(jm, "sft", {"model": "tiny", "dev_data": str(outside)}, data_records=ROWS) == [
        f"dev_data: '{outside}' {msg}"]
    assert _problems(jm, "sft", {"model": "tiny", "dev_data": "../../secret.jsonl"}, data_records=ROWS) == [
        f"dev_data: '../../secret.jsonl' {msg}"]
    assert _problems(jm, "sft", {"model": "tiny", "dev_data": str(root / "link.jsonl")}, data_records=ROWS) == [
        f"dev_data: '{root / 'link.jsonl'}' {msg}"]  # a symbolic link out of the root
    assert _problems(jm, "sft", {"model": "tiny", "data": "~/x.jsonl"}) == [f"data: '~/x.jsonl' {msg}"]
    assert _problems(jm, "dpo", {"model": "/etc", "reference": "../other-job/output"}, data_records=ROWS) == [
        f"model: '/etc' {msg}", f"reference: '../other-job/output' {msg}"]
    assert _problems(jm, "sft", {"model": "tiny"}, data_records=ROWS, data_field="output") == [
        "data_field: 'output' is not a data file of the sft stage; one of data, dev_data"]

    job = jm.submit("sft", {"model": "tiny", "dev_data": str(root / "sub" / ".." / "sub" / "dev.jsonl")},
                    data_records=ROWS)
    cfg = reg_config(reg, job["id"])
    here = job_folder / f"job-{job['id']}"
    assert (cfg["dev_data"], cfg["data"], cfg["output"], cfg["db"]) == (
        str(root.resolve() / "sub" / "dev.jsonl"), str(here / "data.jsonl"), str(here / "output"), reg.url)


def test_model_aliases_registry_models_and_hub_ids_still_work(reg, tmp_path):
    with reg.write() as s:
        s.add(ModelRow(id="m-0123abcd", name="qa-v1", path=str(tmp_path / "runs" / "qa" / "final"), stage="sft",
                       created_at=utcnow()))
    jm = JobManager(reg, tmp_path / "jobs")
    ids = [jm.submit("sft", {"model": m}, data_records=ROWS)["id"]
           for m in ("tiny", "smollm2-135m-instruct", "m-0123abcd", "qa-v1", "HuggingFaceTB/SmolLM2-135M")]
    assert [reg_config(reg, i)["model"] for i in ids] == [
        "tiny", "smollm2-135m-instruct", str(tmp_path / "runs" / "qa" / "final"),
        str(tmp_path / "runs" / "qa" / "final"), "HuggingFaceTB/SmolLM2-135M"]
    job = jm.submit("reward", {"model": "all-minilm-l6-v2"}, data_records=[{"prompt": "p", "chosen": "a",
                                                                             "rejected": "b"}])
    assert reg_config(reg, job["id"])["model"] == "all-minilm-l6-v2"
    job = jm.submit("ppo", {"model": "tiny", "reward": ["rm:qa-v1:2"]}, data_records=[{"prompt": "q"}])
    assert reg_config(reg, job["id"])["reward"] == [f"rm:{tmp_path / 'runs' / 'qa' / 'final'}:2"]
    assert _problems(jm, "ppo", {"model": "tiny", "reward_model": "/srv/models/rm"},
                     data_records=[{"prompt": "q"}]) == [
        "reward_model: '/srv/models/rm' is outside the job's folder and the server's data roots (--data-root: "
        "none configured); upload the data with the job, or ask the server's admin"]


def test_job_caches_live_in_the_job_folder(reg, tmp_path, monkeypatch):
    """Tokenised data and reference log-probs are pickles loaded with torch.load(weights_only=False): a job
    writes its own, never into the caches other runs load."""
    job = JobRow(id=7, stage="sft", folder=str(tmp_path / "jobs" / "job-7"), model_name="v1")
    env = JobManager.env(job)
    assert (env[CACHE_ENV], env["ALIGNLOOP_JOB_ID"], env["ALIGNLOOP_MODEL_NAME"]) == (
        str(tmp_path / "jobs" / "job-7" / "cache"), "7", "v1")
    monkeypatch.setenv(CACHE_ENV, env[CACHE_ENV])
    assert cache_dir("tokens") == tmp_path / "jobs" / "job-7" / "cache" / "tokens"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_dir("reference") == Path(os.environ["ALIGNLOOP_HOME"]) / "cache" / "reference"


def test_a_refused_job_leaves_no_folder(reg, tmp_path):
    """Refused by the policy (before anything is written) or by the stage's own validation (after the uploaded
    data was written into the folder): either way the folder goes with the row."""
    jm = JobManager(reg, tmp_path / "jobs")
    assert _problems(jm, "sft", {"model": "tiny", "output": "/x"}, data_records=ROWS) == [
        "output: a job may not set it: the server sets it (the job writes under its own folder; see the job's "
        "'output')"]
    assert _problems(jm, "sft", {"model": "tiny", "max_steps": 0}, data_records=ROWS) == [
        "max_steps: must be > 0, got 0"]
    assert not (tmp_path / "jobs").exists() or list((tmp_path / "jobs").iterdir()) == []
    job = jm.submit("sft", {"model": "tiny"}, data_records=ROWS)  # a good job after refusals is whole
    assert sorted(p.name for p in Path(job["folder"]).iterdir()) == ["data.jsonl", "job.yaml"]
    kept = tmp_path / "jobs" / f"job-{job['id'] + 1}"  # the next job's folder, left by an older server:
    kept.mkdir(parents=True)
    (kept / "log.txt").write_text("old\n")
    _problems(jm, "sft", {"model": "tiny", "max_steps": 0}, data_records=ROWS)
    assert (kept / "log.txt").read_text() == "old\n"  # not this refusal's to remove


def test_split_password():
    from alignloop.core.db import split_password

    assert split_password("postgresql+psycopg://team:p%40ss@db.internal:5432/alignloop?options=-cx") == (
        "postgresql+psycopg://team@db.internal:5432/alignloop?options=-cx", "p@ss")
    assert split_password("postgresql+psycopg://team@db/alignloop") == ("postgresql+psycopg://team@db/alignloop", None)
    assert split_password("sqlite:////srv/alignloop.db") == ("sqlite:////srv/alignloop.db", None)
    assert split_password("not a url :: s3cret") == ("not a url :: s3cret", None)


@pytest.mark.postgres
def test_the_job_config_holds_no_database_password(tmp_path, monkeypatch):
    """job.yaml, the jobs row and the registered run name the database without its password; the job process
    gets it in $PGPASSWORD and connects with it (libpq reports the password a connection used)."""
    import uuid

    import yaml
    from feedback_fixtures import PG_BASE, _pg_exec, pg_unavailable

    if pg_unavailable():
        pytest.skip(pg_unavailable())
    schema = f"jobtest_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE SCHEMA "{schema}"')
    user_at = PG_BASE.split("://", 1)[1].split("@", 1)[0]
    url = PG_BASE.replace(f"://{user_at}@", f"://{user_at}:s3cret@") + f"?options=-csearch_path%3D{schema}"
    plain = url.replace(":s3cret@", "@")
    reg = Registry(url)
    try:
        jm = JobManager(reg, tmp_path / "jobs")
        job = jm.submit("sft", {"model": "tiny"}, data_records=ROWS)
        text = (Path(job["folder"]) / "job.yaml").read_text()
        assert "s3cret" not in text and yaml.safe_load(text)["db"] == plain
        with reg.read() as s:
            row = s.get(JobRow, job["id"])
            assert row.config["db"] == plain
        env = JobManager.env(row, jm._db_password)
        assert env["PGPASSWORD"] == "s3cret"

        # what the job process does: read its config, open the database, with the environment it is given
        cfg = config_class("sft").load(Path(job["folder"]) / "job.yaml")
        monkeypatch.setenv("PGPASSWORD", env["PGPASSWORD"])
        theirs = Registry(cfg.db)
        try:
            conn = theirs.engine.raw_connection()
            assert conn.driver_connection.info.password == "s3cret"
            conn.close()
            assert [j["id"] for j in JobManager(theirs, tmp_path / "jobs").list()] == [job["id"]]
        finally:
            theirs.dispose()
    finally:
        reg.dispose()
        _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')
