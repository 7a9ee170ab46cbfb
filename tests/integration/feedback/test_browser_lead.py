"""The lead's tools and the leases in real headless Chromium (the fixtures and sign-in of test_browser.py).

A lead decides a disputed task in the review queue and takes the decision back, finds tasks with the filters
and pages through them, sees the charts; a labeler's page keeps the task's lease with its heartbeat and, when
the server refuses a late answer (409), keeps the typed rewrite instead of loading the next task. The server's
clock and the page's are both moved by the test: no sleeps. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time

import pytest
from sqlalchemy import func, select
from test_browser import PASSWORD, _login, browser  # noqa: F401  (the Chromium fixture and sign-in)

from alignloop.feedback import access, assign
from alignloop.feedback.io import import_records
from alignloop.feedback.store import (
    Adjudication,
    Assignment,
    Database,
    Labeler,
    Task,
    add_judgment,
    create_labeler,
    create_project,
    get_project,
    utcnow,
)

pytestmark = pytest.mark.browser


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now


def _seed(db: Database) -> None:
    with db.write() as s:
        p = create_project(s, "disputes", overlap=3)
        recs = [{"id": f"q{i}", "prompt": f"Question {i} about {'cats' if i % 2 else 'ferns'}?",
                 "completions": [f"answer {i}.0", f"answer {i}.1"]} for i in range(6)]
        recs += [{"id": f"g{i}", "prompt": f"Gold question {i}?", "completions": ["right", "wrong"],
                  "gold": {"choice": "A"}} for i in range(2)]
        import_records(s, p, enumerate(recs, 1))
        tasks = list(s.scalars(select(Task).where(Task.project_id == p.id).order_by(Task.id)))
        # tasks 1..6 and gold 7, 8: task 2 (A B A) and 3 (B B A) at 1/3, task 1 (A A A) agrees
        for name, answers in [("h1", "AAB.ABAA"), ("h2", "ABBAs.AB"), ("h3", "AAA..BBB")]:
            lab = create_labeler(s, name)
            for t, a in zip(tasks, answers):
                if a == "s":
                    add_judgment(s, t.id, lab, skip_reason="unsure")
                elif a != ".":
                    add_judgment(s, t.id, lab, a)
        add_judgment(s, tasks[0].id, "judge", "B", kind="ai")
        lena = create_labeler(s, "lena", role="lead", password=PASSWORD)
        access.add_member(s, p, lena, "lead", "test")
        late = create_project(s, "late", task_type="rewrite", overlap=1, lease_minutes=60)
        import_records(s, late, [(1, {"id": "w1", "prompt": "Explain tides to a child.",
                                      "completions": ["The moon does it."]})])
        for name in ("ann", "bob"):
            access.add_member(s, late, create_labeler(s, name, password=PASSWORD), "labeler", "test")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from alignloop.feedback.api import create_app

    db = Database(f"sqlite:///{tmp_path_factory.mktemp('browser-lead') / 'labels.db'}")
    _seed(db)
    app = create_app(db)
    clock = app.app.state.clock = Clock()  # (create_app wraps the FastAPI app in the size-limit middleware)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for readiness, not timing
    yield f"http://127.0.0.1:{port}", db, clock
    srv.should_exit = True
    thread.join(10)


def _task_ids(db: Database) -> list[int]:
    with db.read() as s:
        p = get_project(s, "disputes")
        return list(s.scalars(select(Task.id).where(Task.project_id == p.id).order_by(Task.id)))


def _rows(page) -> list[int]:
    return [int(x) for x in page.locator("#results tbody tr[data-task-id]").evaluate_all(
        "rows => rows.map(r => r.dataset.taskId)")]


def test_review_queue_decides_and_takes_back(browser, server, artifacts):  # noqa: F811
    base, db, _ = server
    t = _task_ids(db)
    ctx, page = _login(browser, base, "lena")
    page.goto(f"{base}/lead/disputes/review")
    items = page.locator(".review-item")
    assert [int(x) for x in items.evaluate_all("els => els.map(e => e.dataset.taskId)")] == [t[1], t[2], t[0]]
    first = items.nth(0)
    assert first.locator(".judgments tbody tr").count() == 3 and "Question 1 about cats?" in first.inner_text()
    page.screenshot(path=str(artifacts / "feedback-lead-review.png"), full_page=True)

    # task 2 (h1 A, h2 B, h3 A): the lead decides B, against the majority, with a note
    first.locator(".note").fill("B follows guideline 3")
    with page.expect_response(lambda r: r.url.endswith(f"/tasks/{t[1]}/adjudication") and r.request.method == "PUT") \
            as resp:
        first.get_by_role("button", name="B is better").click()
    assert resp.value.status == 200
    status = first.locator(".decision-status")
    status.filter(has_text="Decided").wait_for()
    assert status.inner_text() == "Decided: B by lena."
    assert first.locator(".consensus").inner_text() == "B" and "decided" in first.get_attribute("class")
    with db.read() as s:
        d = s.scalar(select(Adjudication))
        assert (d.task_id, d.choice, d.note, s.get(Labeler, d.labeler_id).name) == (
            t[1], "B", "B follows guideline 3", "lena")

    # the queue now waits on two tasks; the decided one is under "Decided"
    page.goto(f"{base}/lead/disputes/review")
    assert page.locator(".review-item").count() == 2
    page.get_by_role("link", name="Decided").click()
    page.wait_for_url("**status=decided")
    decided = page.locator(".review-item")
    assert decided.count() == 1 and decided.first.locator(".decision-status").inner_text() == "Decided: B by lena."
    with page.expect_response(lambda r: r.request.method == "DELETE") as resp:
        decided.first.get_by_role("button", name="Withdraw the decision").click()
    assert resp.value.status == 200
    status = decided.first.locator(".decision-status")
    status.filter(has_text="No decision").wait_for()
    assert status.inner_text() == "No decision: the consensus is the labelers' again (A)."
    with db.read() as s:
        assert s.scalar(select(func.count(Adjudication.id))) == 0

    # the overview draws its charts on the server; both load as images
    page.goto(f"{base}/lead/disputes")
    charts = page.locator("#charts img")
    assert charts.count() == 2
    page.wait_for_function("Array.from(document.querySelectorAll('#charts img')).every(i => i.complete)")
    assert charts.evaluate_all("imgs => imgs.map(i => i.naturalWidth)") == [640, 640]
    page.screenshot(path=str(artifacts / "feedback-lead-charts.png"), full_page=True)
    ctx.close()


def test_filters_find_tasks(browser, server, artifacts):  # noqa: F811
    base, db, _ = server
    t = _task_ids(db)
    ctx, page = _login(browser, base, "lena")
    page.goto(f"{base}/lead/disputes/tasks")
    assert _rows(page) == t
    page.fill("input[name=text]", "ferns")
    page.check("input[name=disputed]")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**disputed=true**")
    assert _rows(page) == [t[2], t[0]]  # lowest agreement first
    page.screenshot(path=str(artifacts / "feedback-lead-filters.png"), full_page=True)

    page.click("text=Clear")
    page.wait_for_url(f"{base}/lead/disputes/tasks")
    page.fill("input[name=labeler]", "h2")
    page.check("input[name=gold_failed]")
    page.click("#filters button[type=submit]")
    page.wait_for_url("**gold_failed=true**")
    assert _rows(page) == [t[7]]  # h2 answered B to gold task 8 (its answer is A)

    # pages of three follow each other without a gap
    page.goto(f"{base}/lead/disputes/tasks?limit=3")
    seen = _rows(page)
    while page.locator("a[rel=next]").count():
        page.click("a[rel=next]")
        page.wait_for_load_state()
        seen += _rows(page)
    assert seen == t
    ctx.close()


def test_a_refused_late_answer_keeps_the_typed_rewrite(browser, server, artifacts):  # noqa: F811
    base, db, clock = server
    ctx, page = _login(browser, base, "ann")
    page.clock.install()  # the page's timers: moved on below instead of waited for
    with page.expect_response(lambda r: "/next" in r.url and r.status == 200) as first:
        page.goto(f"{base}/p/late")
    task = first.value.json()
    assert task["heartbeat_seconds"] == 60
    page.locator("#rewrite").wait_for()
    page.fill("#rewrite", "The moon pulls the sea a little towards it, so the water rises and falls twice a day.")

    # while she writes, the page tells the server the task is still open: the lease runs from the beat
    clock.now += dt.timedelta(minutes=10)
    with page.expect_response(lambda r: r.url.endswith(f"/assignments/{task['assignment_id']}/heartbeat")) as beat:
        page.clock.fast_forward(60_000)
    assert beat.value.status == 200
    with db.read() as s:
        assert s.get(Assignment, task["assignment_id"]).last_seen_at == clock.now

    # she is gone too long: her lease runs out and bob answers the task (it needs one answer)
    clock.now += dt.timedelta(minutes=61)
    with db.write() as s:
        bob = s.scalar(select(Labeler).where(Labeler.name == "bob"))
        a = assign.next_assignment(s, get_project(s, "late"), bob, now=clock.now)
        assert a.task_id == task["task_id"]
        add_judgment(s, a.task_id, bob, rewrite="bob's answer", assignment=a)

    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.focus("#rewrite")
    with page.expect_response(lambda r: r.url.endswith("/judgment")) as refused:
        page.keyboard.press("Control+Enter")
    assert refused.value.status == 409
    page.locator("#stale-actions").wait_for()
    assert page.input_value("#rewrite").startswith("The moon pulls the sea")
    message = page.inner_text("#message")
    assert message.startswith("Your lease on this task expired and it has all its votes now; your answer was not "
                              "stored. Your answer is still on the page")
    assert page.is_visible("#task") and not page.is_visible("#done")
    assert not [u for u in requests if u.endswith("/next")]  # the next task was not loaded over her text
    page.screenshot(path=str(artifacts / "feedback-labeler-late-409.png"), full_page=True)

    # Enter does not send it again; N loads the next task (none is left for her)
    page.keyboard.press("Escape")  # out of the text box
    page.keyboard.press("Enter")
    with page.expect_response(lambda r: r.url.endswith("/next")):
        page.keyboard.press("n")
    page.locator("#done").wait_for()
    assert not [u for u in requests if u.endswith("/judgment")][1:]  # one submit only
    ctx.close()
