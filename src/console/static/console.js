// The fleet console's only script of its own (htmx does the refreshing). Two jobs:
// 1. Sortable tables: a column header is a button; clicking it sorts the rows shown (by each
//    cell's data-sort, else its text), flips the order on a second click, says the order in
//    aria-sort, and keeps it across the overview's refreshes.
// 2. Relative times ("3 min ago") stay true while a page is open; the absolute UTC time is in
//    each <time>'s title.
// 3. Live refresh of the jobs list and a job's page (htmx polls; see [data-live]): held while
//    the switch is off (kept per browser), while any job is ticked, while the tab is hidden or
//    while focus is inside the refreshed region, so a refresh never undoes what you are doing.
// 4. Ticking: "Tick all shown" ticks every job of the table.
// 5. Dark or light: the header's switch overrides the system setting, kept per browser.
(function () {
  "use strict";

  function cellKey(row, col, numeric) {
    var cell = row.cells[col];
    if (!cell) return numeric ? -Infinity : "";
    var v = cell.getAttribute("data-sort");
    if (v === null) v = cell.textContent.trim();
    if (numeric) {
      var n = parseFloat(v);
      return isNaN(n) ? -Infinity : n;
    }
    return v.toLowerCase();
  }

  function sortTable(table, col, dir) {
    var th = table.tHead.rows[0].cells[col];
    if (!th) return;
    var numeric = th.hasAttribute("data-numeric");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellKey(a, col, numeric), y = cellKey(b, col, numeric);
      if (x < y) return dir === "ascending" ? -1 : 1;
      if (x > y) return dir === "ascending" ? 1 : -1;
      return 0;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) {
      c.removeAttribute("aria-sort");
    });
    th.setAttribute("aria-sort", dir);
  }

  function remembered(table) {
    try {
      return JSON.parse(sessionStorage.getItem("fleet-sort:" + table.id) || "null");
    } catch (e) {
      return null;
    }
  }

  function setUp(root) {
    root.querySelectorAll("table.sortable").forEach(function (table) {
      if (!table.tHead) return;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
        var button = th.querySelector("button.sort");
        if (!button || button.dataset.wired) return;
        button.dataset.wired = "1";
        button.addEventListener("click", function () {
          var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
          sortTable(table, col, dir);
          try {
            sessionStorage.setItem("fleet-sort:" + table.id, JSON.stringify({ col: col, dir: dir }));
          } catch (e) { /* private mode: sorting still works, it is just not kept */ }
        });
      });
      var s = remembered(table);
      if (s) sortTable(table, s.col, s.dir);
    });
  }

  function relative(then, now) {
    var secs = Math.round((now - then) / 1000);
    var n = Math.abs(secs);
    if (n < 5) return "just now";
    var amount = n < 60 ? n + " s"
      : n < 3600 ? Math.floor(n / 60) + " min"
      : n < 86400 ? Math.floor(n / 3600) + " h"
      : Math.floor(n / 86400) + " d";
    return secs > 0 ? amount + " ago" : "in " + amount;
  }

  function refreshTimes() {
    var now = Date.now();
    document.querySelectorAll("time[datetime]").forEach(function (t) {
      var then = Date.parse(t.getAttribute("datetime"));
      if (!isNaN(then)) t.textContent = relative(then, now);
    });
  }

  function liveOn() {
    try { return localStorage.getItem("fleet-live") !== "off"; } catch (e) { return true; }
  }

  function ticked() {
    return document.querySelectorAll("input.pick:checked").length;
  }

  function sayLive() {
    var state = document.getElementById("live-state");
    if (!state) return;
    var n = ticked();
    state.textContent = !liveOn() ? "paused" : n > 0 ? "paused while " + n + " job(s) are ticked" : "";
  }

  // Cancels a poll of a live region when it would get in the way.
  document.addEventListener("htmx:beforeRequest", function (e) {
    var el = e.detail.elt;
    if (!el || !el.hasAttribute || !el.hasAttribute("data-live")) return;
    if (!liveOn() || ticked() > 0 || document.hidden || el.contains(document.activeElement)) {
      e.preventDefault();
    }
  });

  document.addEventListener("change", function (e) {
    if (e.target && e.target.id === "live-toggle") {
      try { localStorage.setItem("fleet-live", e.target.checked ? "on" : "off"); } catch (err) { /* kept for this page only */ }
    }
    sayLive();
  });

  document.addEventListener("click", function (e) {
    var t = e.target;
    if (t && t.id === "pick-all") {
      var boxes = document.querySelectorAll("input.pick");
      var all = Array.prototype.every.call(boxes, function (b) { return b.checked; });
      boxes.forEach(function (b) { b.checked = !all; });
      t.textContent = all ? "Tick all shown" : "Untick all";
      sayLive();
    }
    if (t && t.id === "theme-toggle") {
      var theme = isDark() ? "light" : "dark";
      document.documentElement.setAttribute("data-theme", theme);
      try { localStorage.setItem("fleet-theme", theme); } catch (err) { /* this page only */ }
      labelTheme();
    }
  });

  function isDark() {
    var set = document.documentElement.getAttribute("data-theme");
    if (set) return set === "dark";
    return !!(window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches);
  }

  function labelTheme() {
    var b = document.getElementById("theme-toggle");
    if (!b) return;
    b.setAttribute("aria-pressed", isDark() ? "true" : "false");
    b.textContent = isDark() ? "Light mode" : "Dark mode";
  }

  // A kept choice applies before the page is shown (the script runs deferred, before
  // DOMContentLoaded); without one the system setting decides, through the style sheet.
  (function () {
    var kept = null;
    try { kept = localStorage.getItem("fleet-theme"); } catch (e) { /* none */ }
    if (kept === "dark" || kept === "light") document.documentElement.setAttribute("data-theme", kept);
  })();

  document.addEventListener("DOMContentLoaded", function () {
    setUp(document);
    setInterval(refreshTimes, 15000);
    var toggle = document.getElementById("live-toggle");
    if (toggle) toggle.checked = liveOn();
    sayLive();
    labelTheme();
  });
  document.addEventListener("htmx:afterSwap", function (e) { setUp(e.detail.target || document); });
  document.addEventListener("htmx:afterSettle", function () { setUp(document); });
})();
