"""Training jobs submitted to the server: the database is the queue, a worker thread runs one job at a time,
each in its own process (``python -m alignloop <stage> --config job.yaml``), with status, logs and cancel.

* Claiming a job is one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL (several servers may
  share the queue), ``BEGIN IMMEDIATE`` on SQLite (one server per database file runs jobs).
* The job process dies with the server (``PR_SET_PDEATHSIG``), so a killed server leaves no orphan training.
* On start, a job still marked ``running`` whose server process (``worker`` = host:pid) is gone is marked
  ``failed`` with the reason "server restarted during the job", or, with ``--resume-interrupted-jobs``,
  queued again with ``resume: true`` (every trainer supports ``--resume`` from its last checkpoint; jobs save a
  checkpoint every ``save_every`` steps, which the server sets to 50 when the job does not choose).
* What a job's config may say is ``job_policy``'s business (an allow-list per field, paths confined to the job's
  folder and the data roots, registered reward functions only); the job's caches live in its folder.
* A job's config (``job.yaml``, the ``jobs`` row, the run the trainer records) names the server's database without
  its password; the job process gets the password in ``$PGPASSWORD`` (libpq reads it when the URL has none).
* A refused job leaves nothing behind: no row, no folder.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from alignloop.core import files
from alignloop.core.config import ConfigError
from alignloop.core.db import split_password
from alignloop.core.paths import CACHE_ENV
from alignloop.pipelines import stages
from alignloop.registry.store import JobRow, Registry, RunRow, utcnow
from alignloop.serve.job_policy import FILES, JobPolicy
from alignloop.trainers.config import TrainOptions

TERMINAL = ("completed", "failed", "cancelled")
STAGES = {"sft": "sft", "dpo": "dpo", "reward": "reward train", "reward train": "reward train", "ppo": "ppo",
          "grpo": "grpo", "rloo": "rloo"}
RESTART_REASON = "server restarted during the job"


class JobError(ValueError):
    """A job request that cannot be accepted; ``problems`` lists every reason."""

    def __init__(self, problems: list[str], status: int = 422):
        self.problems, self.status = problems, status
        super().__init__("; ".join(problems))


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def config_class(stage: str) -> type:
    """The config class of a training stage named as a job names it (``sft``, ``reward``, ``reward train`` ...)."""
    try:
        cls = stages.config_class(STAGES.get(stage, stage))
    except ValueError:
        known = ", ".join(sorted(set(STAGES.values())))
        raise JobError([f"stage: '{stage}' is not a training stage; one of {known}"]) from None
    except (ImportError, AttributeError) as exc:
        raise JobError([f"stage: '{stage}' is not available in this installation ({exc})"], status=400) from None
    if not issubclass(cls, TrainOptions):
        raise JobError([f"stage: '{stage}' is not a training stage"])
    return cls


def job_dict(j: JobRow) -> dict:
    return {"id": j.id, "object": "training_job", "stage": j.stage, "status": j.status, "model_id": j.model_id,
            "model_name": j.model_name, "error": j.error, "cancel_requested": j.cancel_requested,
            "attempts": j.attempts, "folder": j.folder, "output": (j.config or {}).get("output"),
            "created_at": j.created_at.isoformat() + "Z" if j.created_at else None,
            "started_at": j.started_at.isoformat() + "Z" if j.started_at else None,
            "finished_at": j.finished_at.isoformat() + "Z" if j.finished_at else None}


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except OSError:
        pass
    os.setsid()  # own process group: cancel stops the whole job, not the server


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


class JobManager:
    def __init__(self, registry: Registry, folder: Path, poll_s: float = 0.25, resume_interrupted: bool = False,
                 policy: JobPolicy | None = None):
        self.reg, self.folder, self.poll_s = registry, Path(folder), poll_s
        #: the database as jobs name it (no password: job.yaml is a file others may read), and its password
        self.job_db, self._db_password = split_password(registry.url)
        self.policy = policy or JobPolicy(db=registry.url)
        self.resume_interrupted = resume_interrupted
        self.worker = worker_name()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    # ---- submitting and inspecting --------------------------------------------------------------
    def submit(self, stage: str, config: dict[str, Any], model_name: str | None = None,
               data_records: list[dict] | None = None, data_field: str | None = None) -> dict:
        """Check the config against the policy, write uploaded data into the job folder, validate the stage
        config and queue the job."""
        cls = config_class(stage)
        stage = " ".join(cls.command)
        config = dict(config or {})
        if data_field is not None and data_field not in FILES & _fields(cls):
            raise JobError([f"data_field: '{data_field}' is not a data file of the {stage} stage; one of "
                            f"{', '.join(sorted(FILES & _fields(cls)))}"])
        with self.reg.write() as s:
            job = JobRow(stage=stage, config={}, model_name=model_name, status="creating", folder="",
                         cancel_requested=False, attempts=0, created_at=utcnow())
            s.add(job)
            s.flush()
            job_id = job.id
        folder = self.folder / f"job-{job_id}"
        made = not folder.exists()  # a folder left by an older server is kept; one made here goes on refusal
        try:
            folder.mkdir(parents=True, exist_ok=True)
            config, problems = self.policy.vet(config, folder.resolve())
            if problems:
                raise JobError(problems)
            if data_records is not None:
                rl_prompts = "prompts" in _fields(cls) and stage in ("ppo", "grpo", "rloo")
                field = data_field or ("prompts" if rl_prompts else "data")
                files.write_jsonl(folder / "data.jsonl", data_records)
                config[field] = str(folder.resolve() / "data.jsonl")
            config["output"] = str(folder.resolve() / "output")
            config["db"] = self.job_db
            if "save_every" in _fields(cls):
                config.setdefault("save_every", 50)
            try:
                cfg = cls.from_dict(config, source=f"job {job_id} config").validate()
            except ConfigError as exc:
                raise JobError(exc.problems) from None
            cfg.save(folder, "job.yaml")
        except BaseException:
            with self.reg.write() as s:
                s.delete(s.get(JobRow, job_id))
            if made:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        with self.reg.write() as s:
            job = s.get(JobRow, job_id)
            job.config, job.folder, job.status = cfg.to_dict(), str(folder), "queued"
            out = job_dict(job)
        self._wake.set()
        return out

    def get(self, job_id: int) -> dict | None:
        with self.reg.read() as s:
            j = s.get(JobRow, job_id)
            return job_dict(j) if j is not None and j.status != "creating" else None

    def list(self, limit: int = 100) -> list[dict]:
        with self.reg.read() as s:
            return [job_dict(j) for j in s.scalars(select(JobRow).where(JobRow.status != "creating")
                                                   .order_by(JobRow.id.desc()).limit(limit))]

    def log(self, job_id: int, offset: int = 0) -> tuple[str, int] | None:
        job = self.get(job_id)
        if job is None:
            return None
        path = Path(job["folder"]) / "log.txt"
        if not path.exists():
            return "", offset
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(1 << 20)
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def cancel(self, job_id: int) -> dict | None:
        with self.reg.write() as s:
            j = s.get(JobRow, job_id)
            if j is None or j.status == "creating":
                return None
            if j.status == "queued":
                j.status, j.finished_at, j.error = "cancelled", utcnow(), "cancelled before it started"
            elif j.status == "running":
                j.cancel_requested = True
            return job_dict(j)

    # ---- recovery after a restart ---------------------------------------------------------------
    def recover(self) -> list[int]:
        """Jobs left ``running`` by a server process that is gone: failed (or re-queued with resume)."""
        host = socket.gethostname()
        touched = []
        with self.reg.write() as s:
            for j in s.scalars(select(JobRow).where(JobRow.status.in_(("running", "creating")))):
                w_host, _, w_pid = (j.worker or "").rpartition(":")
                if j.worker and w_host == host and w_pid.isdigit() and int(w_pid) != os.getpid() and _alive(int(w_pid)):
                    continue  # another live server on this host owns it
                if j.worker and w_host and w_host != host:
                    continue  # another machine's job (PostgreSQL queue): its server recovers it
                if j.pid and _alive(j.pid):
                    try:
                        os.killpg(j.pid, signal.SIGKILL)
                    except OSError:
                        pass
                touched.append(j.id)
                if j.status == "creating":
                    s.delete(j)
                    continue
                _mark_run_failed(s, j.id, RESTART_REASON)
                if self.resume_interrupted:
                    j.status, j.pid, j.worker = "queued", None, None
                    j.config = {**j.config, "resume": True}
                    j.error = f"{RESTART_REASON}; re-queued with resume"
                    files.write_text(Path(j.folder, "job.yaml"), yaml.safe_dump(j.config, sort_keys=False))
                else:
                    j.status, j.finished_at = "failed", utcnow()
                    j.error = f"{RESTART_REASON}; resubmit it, or start the server with --resume-interrupted-jobs"
        return touched

    # ---- the worker -----------------------------------------------------------------------------
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="alignloop-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _claim(self) -> JobRow | None:
        with self.reg.write() as s:
            q = select(JobRow).where(JobRow.status == "queued").order_by(JobRow.id).limit(1)
            if not self.reg.is_sqlite:
                q = q.with_for_update(skip_locked=True)
            j = s.scalars(q).first()
            if j is None:
                return None
            j.status, j.started_at, j.worker, j.attempts = "running", utcnow(), self.worker, (j.attempts or 0) + 1
            j.cancel_requested = False
            s.flush()
            s.expunge(j)
            return j

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self._claim()
            except Exception as exc:  # the database went away for a moment: try again later
                print(f"jobs: cannot read the queue: {exc}", file=sys.stderr, flush=True)
                job = None
            if job is None:
                self._wake.wait(self.poll_s)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:
                self._finish(job.id, "failed", f"the worker failed to run the job: {exc.__class__.__name__}: {exc}")

    @staticmethod
    def env(job: JobRow, db_password: str | None = None) -> dict[str, str]:
        """The job process's environment: the server's, with the job's id and model name, its caches in its own
        folder (tokenised data and reference log-probs are pickles loaded back with ``torch.load``: a job must
        never write into the caches other runs load), and the database password its config leaves out."""
        env = {**os.environ, "ALIGNLOOP_JOB_ID": str(job.id), "PYTHONUNBUFFERED": "1",
               CACHE_ENV: str(Path(job.folder) / "cache")}
        if job.model_name:
            env["ALIGNLOOP_MODEL_NAME"] = job.model_name
        if db_password is not None:
            env["PGPASSWORD"] = db_password
        return env

    def _run(self, job: JobRow) -> None:
        folder = Path(job.folder)
        log = open(folder / "log.txt", "ab")
        env = self.env(job, self._db_password)
        cmd = [sys.executable, "-m", "alignloop", *job.stage.split(), "--config", str(folder / "job.yaml")]
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                cwd=str(folder), preexec_fn=_die_with_parent)
        self._proc = proc
        with self.reg.write() as s:
            s.get(JobRow, job.id).pid = proc.pid
        cancelled = False
        while proc.poll() is None:
            time.sleep(self.poll_s)
            if self._stop.is_set():
                break
            try:
                with self.reg.read() as s:
                    cancelled = bool(s.get(JobRow, job.id).cancel_requested)
            except Exception:
                continue
            if cancelled:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
        if self._stop.is_set() and proc.poll() is None:
            proc.wait(timeout=30)
        rc = proc.wait()
        log.close()
        self._proc = None
        if cancelled:
            self._finish(job.id, "cancelled", "cancelled while running")
        elif self._stop.is_set() and rc != 0:
            self._finish(job.id, "failed", "the server shut down during the job; resubmit it")
        elif rc == 0:
            self._finish(job.id, "completed", None)
        else:
            tail = (folder / "log.txt").read_text(errors="replace").strip().splitlines()[-3:]
            self._finish(job.id, "failed", f"exit status {rc}: " + " | ".join(tail)[-1000:])

    def _finish(self, job_id: int, status: str, error: str | None) -> None:
        with self.reg.write() as s:
            j = s.get(JobRow, job_id)
            run = s.scalars(select(RunRow).where(RunRow.job_id == job_id).order_by(RunRow.started_at.desc())).first()
            j.status, j.error, j.finished_at = status, error, utcnow()
            j.model_id = run.model_id if run is not None else None
            if status == "completed" and j.model_id is None:
                j.status, j.error = "failed", "the job finished but registered no model (see its log)"
            if status != "completed":
                _mark_run_failed(s, job_id, error or status)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _mark_run_failed(s: Any, job_id: int, reason: str) -> None:
    for run in s.scalars(select(RunRow).where(RunRow.job_id == job_id, RunRow.status == "running")):
        run.status, run.error, run.finished_at = "failed", reason, utcnow()
