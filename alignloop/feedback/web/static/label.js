// The labeling page. Model output is untrusted: it is only ever put into the page with textContent,
// never innerHTML, so no markup or script in a completion can run (the CSP forbids inline scripts too).
(function () {
  "use strict";
  var root = document.getElementById("studio");
  var project = root.dataset.project;
  var state = null; // {task, choice, strength, order, selected, startedAt, key, stale}
  var busy = false;
  var beat = null; // the heartbeat timer: keeps the task's lease while the labeler has it open
  var lastActivity = Date.now();

  function $(id) { return document.getElementById(id); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function say(text, isError) {
    var m = $("message");
    m.textContent = text || "";
    m.className = "message" + (isError ? " error" : "");
  }
  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + Math.random().toString(36).slice(2);
  }

  function api(method, url, body, extraHeaders) {
    var headers = {"Accept": "application/json", "X-CSRF-Token": window.alignloop.csrf()};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    for (var k in (extraHeaders || {})) headers[k] = extraHeaders[k];
    return fetch(url, {method: method, headers: headers, credentials: "same-origin",
                       body: body === undefined ? undefined : JSON.stringify(body)})
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (data) {
          if (!r.ok) {
            var e = new Error(data.detail || ("request failed: " + r.status));
            e.status = r.status; e.field = data.field;
            throw e;
          }
          return data;
        });
      });
  }

  // ---- rendering ------------------------------------------------------------------------------
  function renderMessages(container, value) {
    container.textContent = "";
    if (typeof value === "string") {
      var d = el("div", "msg");
      d.appendChild(el("span", "role", "user"));
      d.appendChild(el("div", "content", value));
      container.appendChild(d);
      return;
    }
    (value || []).forEach(function (m) {
      var d = el("div", "msg");
      d.appendChild(el("span", "role", m.role));
      d.appendChild(el("div", "content", m.content));
      container.appendChild(d);
    });
  }
  function answerText(value) {
    if (typeof value === "string") return value;
    return (value || []).map(function (m) { return m.content; }).join("\n\n");
  }
  function contextText(ctx) {
    if (ctx === null || ctx === undefined) return null;
    if (typeof ctx === "string") return ctx;
    return JSON.stringify(ctx, null, 2);
  }

  function render(task, progress) {
    state = {task: task, choice: null, strength: null, selected: null, startedAt: Date.now(), key: newKey(),
             order: task.completions.map(function (c) { return c.id; })};
    showProgress(progress);
    var ctx = contextText(task.context);
    $("context-block").hidden = ctx === null;
    $("context").textContent = ctx || "";
    renderMessages($("prompt"), task.prompt);
    var t = task.task_type;
    $("pairwise-controls").hidden = t !== "pairwise";
    $("binary-controls").hidden = t !== "binary";
    $("rewrite-block").hidden = t !== "rewrite";
    $("rewrite").value = "";
    $("skip-block").hidden = true;
    $("skip-reason").value = "";
    var instruction = {
      pairwise: "Which answer is better? Press 1 for A, 2 for B, 3 for a tie, 4 if both are bad.",
      ranking: "Rank the answers from best (top) to worst: drag them, or press a number to pick one and move it with ↑ ↓.",
      rating: "Rate each answer on every criterion (1 = poor, " + task.scale + " = excellent) and tick any flags that apply.",
      rewrite: "Write a better answer than the ones shown.",
      binary: "Is this answer good? Press 1 for good, 2 for bad."
    }[t];
    $("instruction").textContent = instruction;
    renderCompletions();
    updateButtons();
    say("");
    $("stale-actions").hidden = true;
    $("submit").disabled = false;
    startHeartbeat(task);
    if (t === "rewrite") $("rewrite").focus();
    else document.activeElement && document.activeElement.blur();
  }

  function showProgress(p) {
    if (p) $("progress").textContent = "You have done " + p.done + " · " + p.available + " waiting";
  }

  function completionById(id) {
    return state.task.completions.filter(function (c) { return c.id === id; })[0];
  }

  function renderCompletions() {
    var box = $("completions");
    var t = state.task.task_type;
    box.textContent = "";
    box.className = (t === "pairwise") ? "side" : "list";
    if (t === "ranking") return renderRanking(box);
    state.task.completions.forEach(function (c) {
      var card = el("article", "completion");
      card.dataset.completionId = c.id;
      var h = el("h3");
      h.appendChild(el("span", "letter", c.label));
      h.appendChild(el("span", null, state.task.completions.length > 1 ? "Answer " + c.label : "Answer"));
      card.appendChild(h);
      card.appendChild(el("div", "text", answerText(c.text)));
      if (t === "rating") card.appendChild(ratingControls(c));
      if (t === "pairwise" && state.choice === c.label) card.classList.add("chosen");
      box.appendChild(card);
    });
  }

  function ratingControls(c) {
    var wrap = el("div", "rating");
    state.task.criteria.forEach(function (crit) {
      var row = el("div", "rating-row");
      row.appendChild(el("span", "crit", crit.replace(/_/g, " ")));
      for (var v = 1; v <= state.task.scale; v++) {
        var lab = el("label");
        var input = el("input");
        input.type = "radio";
        input.name = "rate-" + c.id + "-" + crit;
        input.value = String(v);
        input.dataset.completionId = c.id;
        input.dataset.criterion = crit;
        lab.appendChild(input);
        lab.appendChild(document.createTextNode(String(v)));
        row.appendChild(lab);
      }
      wrap.appendChild(row);
    });
    if (state.task.flags && state.task.flags.length) {
      var flags = el("div", "flag-row");
      state.task.flags.forEach(function (f) {
        var lab = el("label");
        var input = el("input");
        input.type = "checkbox";
        input.dataset.completionId = c.id;
        input.dataset.flag = f;
        lab.appendChild(input);
        lab.appendChild(document.createTextNode(f.replace(/_/g, " ")));
        flags.appendChild(lab);
      });
      wrap.appendChild(flags);
    }
    return wrap;
  }

  function renderRanking(box) {
    state.order.forEach(function (id, i) {
      var c = completionById(id);
      var card = el("article", "completion rank-item");
      card.draggable = true;
      card.tabIndex = 0;
      card.dataset.completionId = id;
      if (state.selected === id) card.classList.add("selected");
      card.appendChild(el("div", "rank", "#" + (i + 1)));
      var body = el("div");
      var h = el("h3");
      h.appendChild(el("span", "letter", c.label));
      h.appendChild(el("span", null, "Answer " + c.label));
      body.appendChild(h);
      body.appendChild(el("div", "text", answerText(c.text)));
      card.appendChild(body);
      card.addEventListener("click", function () { state.selected = id; renderCompletions(); });
      card.addEventListener("dragstart", function (e) {
        e.dataTransfer.setData("text/plain", String(id));
        card.classList.add("dragging");
      });
      card.addEventListener("dragend", function () { card.classList.remove("dragging"); });
      card.addEventListener("dragover", function (e) { e.preventDefault(); });
      card.addEventListener("drop", function (e) {
        e.preventDefault();
        var moved = parseInt(e.dataTransfer.getData("text/plain"), 10);
        var from = state.order.indexOf(moved), to = state.order.indexOf(id);
        if (from < 0 || to < 0 || from === to) return;
        state.order.splice(from, 1);
        state.order.splice(to, 0, moved);
        state.selected = moved;
        renderCompletions();
      });
      box.appendChild(card);
    });
  }

  function updateButtons() {
    document.querySelectorAll("[data-choice]").forEach(function (b) {
      b.setAttribute("aria-pressed", String(b.dataset.choice === state.choice));
    });
    var strengthOk = state.choice === "A" || state.choice === "B";
    document.querySelectorAll("[data-strength]").forEach(function (b) {
      b.disabled = !strengthOk;
      b.setAttribute("aria-pressed", String(strengthOk && b.dataset.strength === state.strength));
    });
    document.querySelectorAll(".completion[data-completion-id]").forEach(function (card) {
      var c = completionById(parseInt(card.dataset.completionId, 10));
      card.classList.toggle("chosen", state.task.task_type === "pairwise" && c && c.label === state.choice);
    });
  }

  // ---- actions --------------------------------------------------------------------------------
  function choose(choice) {
    state.choice = choice;
    if (choice !== "A" && choice !== "B") state.strength = null;
    else if (!state.strength) state.strength = "better";
    updateButtons();
  }

  function moveSelected(delta) {
    if (state.selected === null) return;
    var i = state.order.indexOf(state.selected), j = i + delta;
    if (j < 0 || j >= state.order.length) return;
    state.order.splice(i, 1);
    state.order.splice(j, 0, state.selected);
    renderCompletions();
  }

  function collect() {
    var t = state.task.task_type, body = {};
    if (t === "pairwise" || t === "binary") {
      if (!state.choice) throw new Error(t === "pairwise" ? "Pick A, B, tie or both bad first (1-4)." : "Pick good or bad first (1-2).");
      body.choice = state.choice;
      if (t === "pairwise" && state.strength && (state.choice === "A" || state.choice === "B")) body.strength = state.strength;
    }
    if (t === "ranking") body.ranking = state.order.slice();
    if (t === "rating") {
      var ratings = {}, flags = {};
      state.task.completions.forEach(function (c) { ratings[c.id] = {}; flags[c.id] = {}; });
      document.querySelectorAll('input[type="radio"]:checked').forEach(function (i) {
        ratings[i.dataset.completionId][i.dataset.criterion] = parseInt(i.value, 10);
      });
      var missing = state.task.completions.some(function (c) {
        return Object.keys(ratings[c.id]).length < state.task.criteria.length;
      });
      if (missing) throw new Error("Rate every answer on every criterion first.");
      document.querySelectorAll('input[type="checkbox"][data-flag]').forEach(function (i) {
        flags[i.dataset.completionId][i.dataset.flag] = i.checked;
      });
      body.ratings = ratings;
      body.flags = flags;
    }
    var rewrite = $("rewrite").value;
    if (rewrite.trim()) body.rewrite = rewrite;
    else if (t === "rewrite") throw new Error("Write your better answer first.");
    return body;
  }

  // ---- the lease ------------------------------------------------------------------------------
  // While the task is open and the labeler has used the page within the lease, tell the server now and then, so
  // a slow but present labeler keeps the task. Someone who walked away stops sending, and after one more lease
  // the task goes to someone else.
  ["keydown", "pointerdown", "pointermove", "input", "scroll", "wheel"].forEach(function (name) {
    document.addEventListener(name, function () { lastActivity = Date.now(); }, {passive: true, capture: true});
  });
  function stopHeartbeat() { if (beat !== null) { clearInterval(beat); beat = null; } }
  function startHeartbeat(task) {
    stopHeartbeat();
    if (!task.heartbeat_seconds) return;
    beat = setInterval(function () {
      if (!state || state.stale || state.task.assignment_id !== task.assignment_id) return;
      if (Date.now() - lastActivity > task.lease_minutes * 60000) return; // away: let the lease run out
      api("POST", "/api/assignments/" + task.assignment_id + "/heartbeat").catch(function (e) {
        if (e.status === 409) {
          stopHeartbeat();
          say("Your hold on this task ran out while you were away. You can still submit: your answer is kept if " +
              "the task still needs it.", true);
        }
      });
    }, task.heartbeat_seconds * 1000);
  }

  // The server refused the answer (409: the task got all its votes while the lease was expired, or the
  // assignment is no longer open; 404: it is gone). Nothing was stored: keep everything typed on the page and
  // let the labeler copy it before they move on.
  function keepAfterRefusal(message) {
    message = message.replace(/^[a-z_]+: /, ""); // the server names the field first ("assignment_id: ...")
    message = message.charAt(0).toUpperCase() + message.slice(1) + (/[.!?]$/.test(message) ? "" : ".");
    state.stale = true;
    stopHeartbeat();
    if ($("rewrite").value.trim()) $("rewrite-block").hidden = false;
    $("submit").disabled = true;
    $("stale-actions").hidden = false;
    say(message + " Your answer is still on the page: copy what you want to keep, then load the next task (N).",
        true);
  }

  function send(body) {
    if (busy) return;
    if (state.stale) { say("This task can no longer take an answer: load the next task (N).", true); return; }
    busy = true;
    body.duration_ms = Date.now() - state.startedAt;
    say("Saving…");
    // the same key on a retry makes the server store the judgment once
    var url = "/api/assignments/" + state.task.assignment_id + "/judgment";
    api("POST", url, body, {"Idempotency-Key": state.key})
      .then(function () { say("Saved."); return loadNext(); })
      .catch(function (e) { if (e.status === 409 || e.status === 404) keepAfterRefusal(e.message); else say(e.message, true); })
      .then(function () { busy = false; });
  }

  function submit() {
    try { send(collect()); } catch (e) { say(e.message, true); }
  }

  function openSkip() { $("skip-block").hidden = false; $("skip-reason").focus(); }
  function closeSkip() { $("skip-block").hidden = true; document.activeElement.blur(); }
  function confirmSkip() {
    var reason = $("skip-reason").value.trim();
    if (!reason) { say("Say briefly why you skip (it helps the project lead).", true); return; }
    send({skip_reason: reason});
  }
  function toggleRewrite() {
    var b = $("rewrite-block");
    if (state.task.task_type === "rewrite") { $("rewrite").focus(); return; }
    b.hidden = !b.hidden;
    if (!b.hidden) $("rewrite").focus();
  }
  function acceptWarning() {
    // the server records the acceptance and hands out tasks only after it
    var url = "/api/projects/" + encodeURIComponent(project) + "/accept-warning";
    return api("POST", url).then(function () {
      $("warning").hidden = true;
      return loadNext();
    }).catch(function (e) { say(e.message, true); });
  }
  function toggleHelp() { $("help").hidden = !$("help").hidden; }

  function showWarning() {
    // the project's content warning, before anything of a task is shown
    return api("GET", "/api/projects/" + encodeURIComponent(project)).then(function (p) {
      $("warning-text").textContent = p.content_warning;
      $("warning").hidden = false;
      $("task").hidden = true;
      $("done").hidden = true;
    });
  }

  function loadNext() {
    // POST: handing out a task creates an assignment
    return api("POST", "/api/projects/" + encodeURIComponent(project) + "/next").then(function (data) {
      if (data.done) {
        state = null;
        stopHeartbeat();
        showProgress(data.progress);
        $("task").hidden = true;
        $("done").hidden = false;
        return;
      }
      $("task").hidden = false;
      $("done").hidden = true;
      render(data, data.progress);
    }).catch(function (e) {
      if (e.status === 409 && e.field === "content_warning") return showWarning();
      say(e.message, true);
    });
  }

  // ---- keyboard -------------------------------------------------------------------------------
  document.addEventListener("keydown", function (e) {
    if (!$("warning").hidden) {
      if (e.key === "Enter") { e.preventDefault(); acceptWarning(); }
      return;
    }
    var typing = /^(TEXTAREA|INPUT|SELECT)$/.test(e.target.tagName);
    if (e.key === "Escape") {
      if (!$("help").hidden) { $("help").hidden = true; return; }
      if (!$("skip-block").hidden) { closeSkip(); return; }
      if (typing) { e.target.blur(); return; }
    }
    if (typing) {
      if (e.target.id === "skip-reason" && e.key === "Enter") { e.preventDefault(); confirmSkip(); }
      else if (e.target.id === "rewrite" && e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "?") { toggleHelp(); return; }
    if (!state) return;
    if (state.stale) {
      if (e.key.toLowerCase() === "n") { e.preventDefault(); loadNext(); }
      return;
    }
    var t = state.task.task_type, k = e.key.toLowerCase();
    if (t === "pairwise" && /^[1-4]$/.test(k)) { choose(["A", "B", "tie", "both_bad"][+k - 1]); e.preventDefault(); return; }
    if (t === "binary" && /^[12]$/.test(k)) { choose(["good", "bad"][+k - 1]); e.preventDefault(); return; }
    if (t === "pairwise" && (k === "q" || k === "w" || k === "e") && (state.choice === "A" || state.choice === "B")) {
      state.strength = {q: "much_better", w: "better", e: "slightly_better"}[k]; updateButtons(); return;
    }
    if (t === "ranking" && /^[1-9]$/.test(k) && +k <= state.order.length) {
      state.selected = state.order[+k - 1]; renderCompletions(); e.preventDefault(); return;
    }
    if (t === "ranking" && (e.key === "ArrowUp" || e.key === "ArrowDown")) {
      e.preventDefault(); moveSelected(e.key === "ArrowUp" ? -1 : 1); return;
    }
    if (e.key === "Enter") { e.preventDefault(); submit(); return; }
    if (k === "s") { e.preventDefault(); openSkip(); return; }
    if (k === "r") { e.preventDefault(); toggleRewrite(); return; }
    if (k === "g") { window.open("/p/" + encodeURIComponent(project) + "/guidelines", "_blank", "noopener"); return; }
  });

  // ---- clicks ---------------------------------------------------------------------------------
  document.addEventListener("click", function (e) {
    var b = e.target.closest("button");
    if (!b || !state && !b.dataset.action) return;
    if (b.dataset.choice) choose(b.dataset.choice);
    else if (b.dataset.strength && state) { state.strength = b.dataset.strength; updateButtons(); }
    else if (b.dataset.action === "submit") submit();
    else if (b.dataset.action === "skip") openSkip();
    else if (b.dataset.action === "confirm-skip") confirmSkip();
    else if (b.dataset.action === "cancel-skip") closeSkip();
    else if (b.dataset.action === "toggle-rewrite") toggleRewrite();
    else if (b.dataset.action === "help") toggleHelp();
    else if (b.dataset.action === "accept-warning") acceptWarning();
    else if (b.dataset.action === "next") loadNext();
  });

  loadNext();
})();
