"""The studio in real headless Chromium (Debian's package, driven by Playwright's Python API).

A labeler signs in, labels pairwise tasks by keyboard (one holds a <script> and an <img onerror> that must
stay inert text), skips one with a reason, ranks a K=4 task by keyboard, writes a better answer; the lead
sees agreement figures; an admin deactivates a labeler on the admin's pages and her open session stops working.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time

import pytest
from sqlalchemy import select

from alignloop.feedback import access
from alignloop.feedback.io import import_records
from alignloop.feedback.store import Database, Judgment, Labeler, Task, add_judgment, create_labeler, create_project

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("ALIGNLOOP_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
XSS = "<script>window.pwned = 1; alert('xss')</script><img src=x onerror=\"window.pwned = 2; alert('img')\">"
PASSWORD = "labeler password 1"


def _playwright():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"chromium not installed at {CHROMIUM} (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _playwright()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def _seed(db: Database) -> None:
    with db.write() as s:
        pairs = create_project(s, "pairs", overlap=3, content_warning="Some answers contain offensive text.",
                               guidelines="# Guidelines\nPrefer the **helpful, honest and harmless** answer.")
        recs = [{"id": f"q{i}", "prompt": [{"role": "user", "content": q}], "completions": list(c)}
                for i, (q, c) in enumerate([
                    ("How do I boil an egg?", ("Put it in boiling water for 8 minutes, then cool it in cold water.",
                                               "Eggs are a kind of food.")),
                    ("Translate 'thank you' to French.", ("Merci.", XSS)),
                    ("What is 12 x 12?", ("144", "124")),
                    ("Name a prime number above 10.", ("11", "12"))])]
        import_records(s, pairs, enumerate(recs, 1))
        # two earlier labelers and an AI judge, so the lead view has agreement figures
        tasks = list(s.scalars(select(Task).where(Task.project_id == pairs.id).order_by(Task.id)))
        for name, kind, choices in [("h1", "human", "AAAA"), ("h2", "human", "AABA"), ("judge", "ai", "AAAB")]:
            for t, c in zip(tasks, choices):
                add_judgment(s, t.id, name, c, kind=kind)
        rank = create_project(s, "rank", task_type="ranking", overlap=1)
        import_records(s, rank, [(1, {"id": "r1", "prompt": "Rank these summaries of the water cycle.",
                                      "completions": ["Water evaporates, condenses into clouds, and falls as rain.",
                                                      "Rain happens.", "The sun heats water; vapour rises, cools "
                                                      "into clouds and returns as precipitation.", "Clouds."]})])
        rw = create_project(s, "rewrite", task_type="rewrite", overlap=1)
        import_records(s, rw, [(1, {"id": "w1", "prompt": "Explain photosynthesis to a child.",
                                    "completions": ["Plants do chemistry."]})])
        ann = create_labeler(s, "ann", password=PASSWORD)
        for project in (pairs, rank, rw):  # labelers reach only the projects they are members of
            access.add_member(s, project, ann, "labeler", "test")
        create_labeler(s, "lead", role="admin", password=PASSWORD)
        dora = create_labeler(s, "dora", password=PASSWORD)  # offboarded by the admin's pages
        access.add_member(s, pairs, dora, "labeler", "test")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from alignloop.feedback.api import create_app

    db = Database(f"sqlite:///{tmp_path_factory.mktemp('browser') / 'labels.db'}")
    _seed(db)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(db), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)  # waiting for readiness, not timing
    yield f"http://127.0.0.1:{port}", db
    srv.should_exit = True
    thread.join(10)


def _login(browser, base, name):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    page.goto(f"{base}/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
    return ctx, page


def _next_task(page, key: str, modifiers: str = "") -> None:
    """Press the key that submits and wait until the next task (or the done screen) is loaded."""
    with page.expect_response(lambda r: "/next" in r.url):
        page.keyboard.press(modifiers + key)
    page.wait_for_function("document.getElementById('message').textContent !== 'Saving…'")


def test_labeler_flow_by_keyboard(browser, server, artifacts):
    base, db = server
    ctx, page = _login(browser, base, "ann")
    assert "pairs" in page.inner_text("main")
    with page.expect_response(lambda r: "/next" in r.url):  # 409: the warning is not accepted yet
        page.goto(f"{base}/p/pairs")
    page.wait_for_selector("#warning", state="visible")
    assert "offensive" in page.inner_text("#warning") and not page.is_visible("#task")
    with page.expect_response(lambda r: "/next" in r.url and r.status == 200):
        page.keyboard.press("Enter")  # accept the content warning (recorded by the server)
    assert not page.is_visible("#warning")

    saw_xss, shots = False, 0
    for step in range(4):
        texts = page.inner_text("#completions")
        if "<script>" in texts:
            saw_xss = True
            assert XSS in texts  # shown literally, as text
            assert page.locator("#completions img, #completions script").count() == 0
            page.screenshot(path=str(artifacts / "feedback-labeler-untrusted-text.png"), full_page=True)
        if step == 0:
            page.keyboard.press("1")
            page.keyboard.press("q")
            assert page.get_attribute("[data-choice=A]", "aria-pressed") == "true"
            assert page.get_attribute("[data-strength=much_better]", "aria-pressed") == "true"
            page.screenshot(path=str(artifacts / "feedback-labeler-pairwise.png"), full_page=True)
            shots += 1
            _next_task(page, "Enter")
        elif step == 1:
            page.keyboard.press("s")
            page.fill("#skip-reason", "I do not know French well enough")
            _next_task(page, "Enter")
        else:
            page.keyboard.press("2" if step == 2 else "4")
            _next_task(page, "Enter")
    assert saw_xss  # every task of the project passed through the page
    assert page.is_visible("#done")
    assert page.evaluate("window.pwned") is None and page.dialogs == []

    with db.read() as s:
        ann = s.scalar(select(Labeler).where(Labeler.name == "ann"))
        mine = list(s.scalars(select(Judgment).where(Judgment.labeler_id == ann.id).order_by(Judgment.id)))
    assert len(mine) == 4 and [j.skipped for j in mine] == [False, True, False, False]
    assert mine[0].strength == "much_better" and mine[3].choice == "both_bad"
    assert mine[1].skip_reason == "I do not know French well enough"

    # ranking K=4 by keyboard: pick the 4th answer and move it to the top
    with page.expect_response(lambda r: "/next" in r.url):
        page.goto(f"{base}/p/rank")
    cards = page.locator(".rank-item")
    assert cards.count() == 4
    before = [int(x) for x in cards.evaluate_all("els => els.map(e => e.dataset.completionId)")]
    page.keyboard.press("4")
    for _ in range(3):
        page.keyboard.press("ArrowUp")
    after = [int(x) for x in cards.evaluate_all("els => els.map(e => e.dataset.completionId)")]
    assert after == [before[3]] + before[:3]
    page.screenshot(path=str(artifacts / "feedback-labeler-ranking.png"), full_page=True)
    _next_task(page, "Enter")

    # write a better answer
    with page.expect_response(lambda r: "/next" in r.url):
        page.goto(f"{base}/p/rewrite")
    # the page focuses the text box when it renders the task, which may be just after the /next response arrives
    page.wait_for_function("document.activeElement && document.activeElement.id === 'rewrite'", timeout=10_000)
    assert page.evaluate("document.activeElement.id") == "rewrite"
    page.keyboard.type("Plants use sunlight, water and air to make their own food, and they give off oxygen.")
    page.screenshot(path=str(artifacts / "feedback-labeler-rewrite.png"), full_page=True)
    _next_task(page, "Enter", "Control+")
    with db.read() as s:
        rows = list(s.scalars(select(Judgment).where(Judgment.labeler_id == ann.id).order_by(Judgment.id)))
    assert rows[4].ranking == after
    assert rows[5].rewrite.startswith("Plants use sunlight")
    ctx.close()


def test_lead_sees_agreement(browser, server, artifacts):
    base, db = server
    from alignloop.feedback.stats import project_stats
    from alignloop.feedback.store import get_project

    ctx, page = _login(browser, base, "lead")
    page.goto(f"{base}/lead/pairs")
    with db.read() as s:
        stats = project_stats(s, get_project(s, "pairs"))
    shown = page.inner_text("[data-metric=percent_agreement]")
    assert shown == f"{stats['agreement']['percent_agreement']:.2f}"
    assert page.inner_text("[data-metric=krippendorff_alpha_nominal]") not in ("", "n/a")
    assert f"On {stats['judge_vs_human']['items']} items labelled by both" in page.inner_text("main")
    assert "h1" in page.inner_text("table.data")
    page.screenshot(path=str(artifacts / "feedback-lead.png"), full_page=True)
    # a labeler is refused the lead view
    ctx2, page2 = _login(browser, base, "ann")
    resp = page2.goto(f"{base}/lead/pairs")
    assert resp.status == 403
    ctx.close()
    ctx2.close()


def test_admin_deactivates_a_user_and_her_session_stops_working(browser, server, artifacts):
    base, db = server
    ctx_d, dora = _login(browser, base, "dora")
    assert "pairs" in dora.inner_text("main")
    assert dora.evaluate("fetch('/api/me').then(r => r.status)") == 200
    ctx_a, admin = _login(browser, base, "lead")  # (an admin)
    admin.click("header nav >> text=Users")
    admin.wait_for_url(f"{base}/admin/users")
    admin.click('tr[data-user="dora"] >> text=Manage')
    admin.wait_for_url(f"{base}/admin/users/dora")
    assert admin.inner_text("#status") == "active"
    admin.click("#deactivate")
    admin.wait_for_url(f"{base}/admin/users/dora?done=deactivated")
    assert admin.inner_text("#status") == "deactivated"
    assert "every session ended" in admin.inner_text("#done")
    admin.screenshot(path=str(artifacts / "feedback-admin-user.png"), full_page=True)
    # the page she has open can no longer act for her, and her next page is the sign-in page
    status = dora.evaluate("""fetch('/api/projects/pairs/next', {method: 'POST', headers: {'X-CSRF-Token':
        document.querySelector('meta[name=csrf-token]').content}}).then(r => r.status)""")
    assert status == 401
    dora.goto(f"{base}/")
    assert dora.url == f"{base}/login?next=/"
    dora.fill("input[name=name]", "dora")
    dora.fill("input[name=password]", PASSWORD)
    dora.click("button[type=submit]")
    dora.wait_for_url(re.compile(r".*/login\?error=wrong"))
    assert "do not match" in dora.inner_text("main")
    # the audit log shows who did it
    admin.goto(f"{base}/admin/audit?target=dora")
    rows = admin.inner_text("table.audit")
    assert "user.deactivate" in rows and "lead" in rows
    with db.read() as s:
        assert s.scalar(select(Labeler.active).where(Labeler.name == "dora")) is False
    ctx_a.close()
    ctx_d.close()
