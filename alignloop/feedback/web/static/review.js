// The lead's decision buttons (review queue and task pages). The page is drawn on the server; this only sends
// a decision (PUT) or withdraws it (DELETE) and says what the server answered, always as text (textContent).
(function () {
  "use strict";

  function send(method, block, body) {
    var url = "/api/projects/" + encodeURIComponent(block.dataset.project) + "/tasks/" + block.dataset.task +
      "/adjudication";
    var headers = {"Accept": "application/json", "X-CSRF-Token": window.alignloop.csrf()};
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(url, {method: method, headers: headers, credentials: "same-origin",
                       body: body === undefined ? undefined : JSON.stringify(body)})
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (data) {
          if (!r.ok) throw new Error(data.detail && typeof data.detail === "string" ? data.detail :
                                     "the server answered " + r.status);
          return data;
        });
      });
  }

  function show(block, task, error) {
    var status = block.querySelector(".decision-status");
    var item = block.closest(".review-item");
    status.classList.toggle("error", !!error);
    if (error) { status.textContent = error; return; }
    var d = task.decision;
    status.textContent = d ? "Decided: " + task.consensus_text + (d.by ? " by " + d.by : "") + "." :
      "No decision: the consensus is the labelers' again (" + task.consensus_text + ").";
    block.querySelector("[data-withdraw]").hidden = !d;
    if (item) {
      item.classList.toggle("decided", !!d);
      var shown = item.querySelector(".consensus");
      if (shown) shown.textContent = task.consensus_text;
    }
  }

  document.addEventListener("click", function (e) {
    var b = e.target.closest("button");
    if (!b) return;
    var block = b.closest(".decide");
    if (!block) return;
    var request;
    if (b.dataset.decide) {
      var body = JSON.parse(b.dataset.decide);
      body.note = block.querySelector(".note").value;
      request = send("PUT", block, body);
    } else if (b.hasAttribute("data-withdraw")) {
      request = send("DELETE", block);
    } else {
      return;
    }
    b.disabled = true;
    request.then(function (task) { show(block, task); })
      .catch(function (err) { show(block, null, err.message); })
      .then(function () { b.disabled = false; });
  });
})();
