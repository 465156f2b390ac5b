// The mbt peer page: fills the shell from /api and /events. Hand-written, no
// build step. Every value goes into the page with textContent (never as HTML).
"use strict";
(function () {
  var state = { csrf: null, signedIn: false, group: null, events: null, retryTimer: null,
                lastDownloads: [] };
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) Object.keys(attrs).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (k === "onclick") e.addEventListener("click", attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { if (c) e.appendChild(c); });
    return e;
  }

  function size(n) {
    var units = [["GiB", 1 << 30], ["MiB", 1 << 20], ["KiB", 1 << 10]];
    for (var i = 0; i < units.length; i++) {
      if (n >= units[i][1]) return (n / units[i][1]).toFixed(1) + " " + units[i][0];
    }
    return n + " B";
  }
  function rate(bps) {
    if (bps >= 1e9) return (bps / 1e9).toFixed(1) + " GB/s";
    if (bps >= 1e6) return (bps / 1e6).toFixed(1) + " MB/s";
    if (bps >= 1e3) return (bps / 1e3).toFixed(1) + " kB/s";
    return bps + " B/s";
  }
  function eta(s) {
    if (s === null || s === undefined) return "-";
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function message(id, text, isError) {
    var m = $(id);
    m.textContent = text || "";
    m.className = "msg" + (isError ? " error" : "");
  }

  // -- network: every failure becomes a message, never a blank page --------
  function netError(text, retry) {
    $("net-error-text").textContent = text;
    $("net-error").hidden = false;
    $("net-retry").onclick = function () { $("net-error").hidden = true; retry(); };
  }
  function netOk() { $("net-error").hidden = true; }

  function call(method, name, body, query) {
    var url = "/api/" + name + (query ? "?" + new URLSearchParams(query).toString() : "");
    var opts = { method: method, credentials: "same-origin", headers: {} };
    if (method === "POST") {
      opts.headers["Content-Type"] = "application/json";
      opts.headers["X-CSRF-Token"] = state.csrf || "";
      opts.body = JSON.stringify(body || {});
    }
    return fetch(url, opts).then(function (r) {
      return r.text().then(function (t) {
        var data;
        try { data = JSON.parse(t); } catch (e) { data = { error: "the peer answered " + r.status }; }
        if (!r.ok) {
          var err = new Error(data.error || ("the peer answered " + r.status));
          err.status = r.status;
          throw err;
        }
        netOk();
        return data;
      });
    }, function () {
      var err = new Error("cannot reach this peer's web page (is the peer still running?)");
      err.network = true;
      throw err;
    });
  }

  // Actions: a message on success, the error in words on failure.
  function act(name, body, msgId, after, working) {
    message(msgId, working || "working\u2026", false);
    return call("POST", name, body).then(function (data) {
      message(msgId, data.message, false);
      if (after) after(data);
    }, function (err) {
      if (err.status === 401) { refreshState(); }
      if (err.status === 403 && !state.retried) {
        // Token out of date (the peer restarted): fetch a fresh one and try once more.
        state.retried = true;
        return refreshState().then(function () { return act(name, body, msgId, after, working); });
      }
      state.retried = false;
      message(msgId, "error: " + err.message, true);
    }).then(function () { state.retried = false; });
  }

  // -- session --------------------------------------------------------------
  function applyState(s) {
    state.csrf = s.csrf;
    state.signedIn = s.signed_in;
    $("who-text").textContent = s.signed_in
      ? "signed in as " + s.user + "; tracker " + s.tracker
      : "not signed in; tracker " + s.tracker;
    $("logout").hidden = !s.signed_in;
    $("signin").hidden = s.signed_in;
    $("app").hidden = !s.signed_in;
    if (s.signed_in) { loadGroups(); loadDownloads(); openEvents(); if (state.group) loadFiles(); }
    else closeEvents();
  }
  function refreshState() {
    return call("GET", "state").then(applyState, function (err) {
      netError("error: " + err.message, refreshState);
    });
  }

  // -- groups -----------------------------------------------------------------
  function loadGroups() {
    return call("GET", "groups").then(renderGroups, function (err) {
      if (err.network) netError("error: " + err.message, loadGroups);
      else message("groups-msg", "error: " + err.message, true);
    });
  }
  function renderGroups(data) {
    var body = $("group-table").tBodies[0];
    body.textContent = "";
    data.groups.forEach(function (g) {
      var buttons = [];
      if (g.relation === "owner" || g.relation === "member") {
        buttons.push(el("button", { type: "button", text: "Files", cls: "files-btn",
          onclick: function () { state.group = g.group; loadFiles(); } }));
        buttons.push(el("button", { type: "button", text: "Leave",
          onclick: function () { act("leave_group", { group: g.group }, "groups-msg", loadGroups); } }));
      } else if (g.relation === "pending") {
        buttons.push(el("button", { type: "button", text: "Withdraw",
          onclick: function () { act("leave_group", { group: g.group }, "groups-msg", loadGroups); } }));
      } else {
        buttons.push(el("button", { type: "button", text: "Join",
          onclick: function () { act("join_group", { group: g.group }, "groups-msg", loadGroups); } }));
        buttons.push(el("button", { type: "button", text: "Files", cls: "files-btn",
          onclick: function () { state.group = g.group; loadFiles(); } }));
      }
      body.appendChild(el("tr", { "data-group": g.group }, [
        el("td", { text: g.group }), el("td", { text: g.owner }),
        el("td", { text: String(g.members) }), el("td", { text: g.relation, cls: "rel " + g.relation }),
        el("td", null, buttons)]));
    });
    if (!data.groups.length) body.appendChild(el("tr", null, [el("td", { text: "(no groups)", colspan: "5" })]));
    var req = $("requests");
    req.textContent = "";
    Object.keys(data.requests).forEach(function (group) {
      data.requests[group].forEach(function (user) {
        req.appendChild(el("div", { cls: "request", "data-group": group, "data-user": user }, [
          el("span", { text: user + " asks to join " + group + " " }),
          el("button", { type: "button", text: "Accept", cls: "accept",
            onclick: function () { act("accept_request", { group: group, user: user }, "groups-msg", loadGroups); } }),
          el("button", { type: "button", text: "Reject", cls: "reject",
            onclick: function () { act("reject_request", { group: group, user: user }, "groups-msg", loadGroups); } })]));
      });
    });
  }

  // -- files ------------------------------------------------------------------
  function loadFiles() {
    var group = state.group;
    $("files").hidden = false;
    $("files-group").textContent = group;
    return call("GET", "files", null, { group: group }).then(renderFiles, function (err) {
      if (err.network) netError("error: " + err.message, loadFiles);
      $("file-table").tBodies[0].textContent = "";
      message("files-msg", "error: " + err.message, true);
    });
  }
  function renderFiles(data) {
    if (data.group !== state.group) return;
    var body = $("file-table").tBodies[0];
    var rows = document.createDocumentFragment();
    data.files.forEach(function (f) {
      var action = f.mine
        ? el("button", { type: "button", text: "Stop sharing",
            onclick: function () { act("stop_share", { group: data.group, name: f.name }, "files-msg", loadFiles); } })
        : el("button", { type: "button", text: "Download", cls: "download",
            onclick: function () {
              act("download_file", { group: data.group, name: f.name, dest: $("dest").value },
                  "files-msg", loadDownloads);
            } });
      rows.appendChild(el("tr", { "data-name": f.name }, [
        el("td", { text: f.name }), el("td", { text: size(f.size) }),
        el("td", { text: String(f.pieces) }), el("td", { text: String(f.peers) }), el("td", null, [action])]));
    });
    if (!data.files.length) rows.appendChild(el("tr", null, [el("td", { text: "(no files shared in " + data.group + ")", colspan: "5" })]));
    body.textContent = "";
    body.appendChild(rows);
  }

  // -- downloads --------------------------------------------------------------
  var COLORS = ["#2f7d32", "#1565c0", "#8e24aa", "#ef6c00", "#00838f", "#6d4c41", "#c2185b", "#558b2f"];
  function loadDownloads() {
    return call("GET", "downloads").then(function (d) { renderDownloads(d.downloads); }, function (err) {
      message("downloads-msg", "error: " + err.message, true);
    });
  }
  function drawMap(canvas, d) {
    var n = d.map.length, cols = Math.min(n, 64), rows = Math.ceil(n / cols) || 1;
    var cell = Math.max(3, Math.floor(512 / cols));
    canvas.width = cols * cell; canvas.height = Math.min(rows * cell, 160);
    var h = canvas.height / rows;
    var ctx = canvas.getContext("2d");
    for (var i = 0; i < n; i++) {
      var c = d.map.charAt(i), color = "#dddddd";
      if (c === "f") color = "#fbc02d";
      else if (c === "v") {
        var s = d.src.charAt(i);
        var k = s === "-" ? -1 : parseInt(s, 36);
        color = k < 0 ? "#9e9e9e" : COLORS[k % COLORS.length];
      }
      ctx.fillStyle = color;
      ctx.fillRect((i % cols) * cell, Math.floor(i / cols) * h, cell - 1, Math.max(1, h - 1));
    }
  }
  var downloadNodes = {};
  function downloadNode(d) {
    var n = downloadNodes[d.id];
    if (n) return n;
    n = { root: el("div", { cls: "download", "data-id": d.id }) };
    n.title = el("div", { cls: "title" }, [el("strong", { text: d.name }), el("span", { text: " in " + d.group })]);
    n.fill = el("div", { cls: "fill" });
    n.bar = el("div", { cls: "bar", role: "progressbar", "aria-valuemin": "0", "aria-valuemax": "100" }, [n.fill]);
    n.pct = el("span", { cls: "pct" });
    n.rate = el("span", { cls: "rate" });
    n.eta = el("span", { cls: "eta" });
    n.peers = el("span", { cls: "peers" });
    n.state = el("span", { cls: "state" });
    n.dest = el("div", { cls: "dest" });
    n.canvas = el("canvas", { cls: "map", width: "512", height: "8" });
    n.legend = el("div", { cls: "legend" });
    [n.title, n.bar, el("div", { cls: "facts" }, [n.pct, n.rate, n.eta, n.peers, n.state]),
     n.dest, n.canvas, n.legend].forEach(function (c) { n.root.appendChild(c); });
    downloadNodes[d.id] = n;
    return n;
  }
  function renderDownloads(list) {
    var box = $("download-list");
    var seen = {};
    list.forEach(function (d) {
      var n = downloadNode(d);
      seen[d.id] = true;
      n.root.className = "download state-" + d.state;
      n.fill.style.width = d.percent + "%";
      n.bar.setAttribute("aria-valuenow", String(d.percent));
      n.pct.textContent = d.percent.toFixed(1) + "%";
      n.rate.textContent = rate(d.rate);
      n.eta.textContent = "ETA " + eta(d.eta);
      n.peers.textContent = d.peers + (d.peers === 1 ? " peer" : " peers");
      n.state.textContent = "[" + d.state + "] " + d.state_word + (d.reason ? ": " + d.reason : "") +
          (d.note ? " (" + d.note + ")" : "");
      n.dest.textContent = "into " + d.dest;
      if (n.lastMap !== d.map + d.src) {
        n.lastMap = d.map + d.src;
        drawMap(n.canvas, d);
        n.legend.textContent = "";
        d.sources.forEach(function (addr, k) {
          var key = el("span", { cls: "key", text: "from " + addr });
          key.style.borderLeftColor = COLORS[k % COLORS.length];
          n.legend.appendChild(key);
        });
        n.legend.appendChild(el("span", { cls: "key inflight", text: "in flight" }));
        n.legend.appendChild(el("span", { cls: "key missing", text: "missing" }));
      }
      box.appendChild(n.root);      // keeps the order of the list
    });
    Object.keys(downloadNodes).forEach(function (id) {
      if (!seen[id]) { downloadNodes[id].root.remove(); delete downloadNodes[id]; }
    });
    var empty = box.querySelector(".empty");
    if (list.length && empty) empty.remove();
    if (!list.length && !empty) box.appendChild(el("p", { cls: "empty", text: "(no downloads)" }));
  }

  // -- live channel: server-sent events (the browser reconnects by itself) ----
  function openEvents() {
    if (state.events) return;
    var es = new EventSource("/events");
    state.events = es;
    es.addEventListener("downloads", function (e) {
      netOk();
      renderDownloads(JSON.parse(e.data));
    });
    es.addEventListener("notice", function (e) {
      addNotice(JSON.parse(e.data).text);
      loadGroups();
      if (state.group) loadFiles();
    });
    es.addEventListener("signout", function (e) {
      addNotice(JSON.parse(e.data).text);
      closeEvents();
      refreshState();
    });
    es.onerror = function () {
      if (es.readyState === EventSource.CLOSED) {
        // Refused (signed out or the peer restarted): ask once what happened.
        closeEvents();
        state.retryTimer = setTimeout(refreshState, 3000);
      } else {
        netError("live updates interrupted; reconnecting\u2026", function () { closeEvents(); refreshState(); });
      }
    };
  }
  function closeEvents() {
    if (state.events) { state.events.close(); state.events = null; }
    if (state.retryTimer) { clearTimeout(state.retryTimer); state.retryTimer = null; }
  }
  function addNotice(text) {
    var list = $("notice-list");
    list.insertBefore(el("li", { text: text }), list.firstChild);
    while (list.children.length > 8) list.removeChild(list.lastChild);
  }

  // -- forms ------------------------------------------------------------------
  function creds() { return { user: $("login-user").value, password: $("login-password").value }; }
  document.addEventListener("DOMContentLoaded", function () {
    $("login-form").addEventListener("submit", function (e) {
      e.preventDefault();
      act("login", creds(), "signin-msg", function (data) {
        $("login-password").value = "";
        applyState(data.state);
      });
    });
    $("create-user-button").addEventListener("click", function () {
      act("create_user", creds(), "signin-msg");
    });
    $("logout").addEventListener("click", function () {
      act("logout", {}, "signin-msg", function (data) { closeEvents(); applyState(data.state); });
    });
    $("group-form").addEventListener("submit", function (e) {
      e.preventDefault();
      act("create_group", { group: $("group-name").value }, "groups-msg", loadGroups);
    });
    $("join-group").addEventListener("click", function () {
      act("join_group", { group: $("group-name").value }, "groups-msg", loadGroups);
    });
    $("share-form").addEventListener("submit", function (e) {
      e.preventDefault();
      act("upload_file", { path: $("share-path").value, group: state.group }, "files-msg", loadFiles,
          "hashing " + $("share-path").value + "\u2026 (progress appears in the notices)");
    });
    $("refresh-groups").addEventListener("click", function () { message("groups-msg", ""); loadGroups(); });
    $("refresh-files").addEventListener("click", function () { message("files-msg", ""); loadFiles(); });
    $("clear-downloads").addEventListener("click", function () {
      act("clear_downloads", {}, "downloads-msg", loadDownloads);
    });
    $("dest-form").addEventListener("submit", function (e) { e.preventDefault(); });
    refreshState();
  });
})();
