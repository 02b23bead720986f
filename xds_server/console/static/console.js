// APG mesh console: keeps parts of a page fresh. Every page reads fully without it.
// <main data-live="events">: the main part is fetched again (?fragment=main) after mesh
// events; "poll": every few seconds; "feed": events are added to the list as they come.
(function () {
  "use strict";
  var main = document.getElementById("main");
  if (!main || !main.dataset.live) { return; }
  var mode = main.dataset.live;
  var busy = false, again = false, timer = null;

  function editing() {
    // A form the person has started to change is not replaced under them.
    var forms = main.querySelectorAll("form[data-keep]");
    for (var i = 0; i < forms.length; i++) {
      if (forms[i].dataset.dirty === "1") { return true; }
    }
    return false;
  }

  function refresh() {
    if (busy) { again = true; return; }
    if (editing()) { return; }
    busy = true;
    var u = new URL(window.location.href);
    u.searchParams.set("fragment", "main");
    fetch(u.toString(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401 || r.redirected) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined && !editing()) {
          var focused = document.activeElement && document.activeElement.id;
          main.innerHTML = html;
          track();
          if (focused) { var el = document.getElementById(focused); if (el) { el.focus(); } }
        }
      })
      .catch(function () {})
      .finally(function () { busy = false; if (again) { again = false; soon(); } });
  }

  function soon() {
    if (timer) { return; }
    timer = setTimeout(function () { timer = null; refresh(); }, 300);
  }

  function track() {
    var forms = main.querySelectorAll("form[data-keep]");
    for (var i = 0; i < forms.length; i++) {
      forms[i].addEventListener("input", function (e) { e.currentTarget.dataset.dirty = "1"; });
    }
  }

  function feed() {
    var list = document.getElementById("event-rows");
    var filter = document.getElementById("event-text");
    var source = new EventSource("/events/stream" + window.location.search);
    // The server answers once it is subscribed: from "open" on, no event is missed.
    source.onopen = function () { main.dataset.feed = "open"; };
    source.onmessage = function (m) {
      var e; try { e = JSON.parse(m.data); } catch (err) { return; }
      if (!list) { return; }
      var tr = document.createElement("tr");
      [e.time, e.type, e.subject, e.detail].forEach(function (v) {
        var td = document.createElement("td"); td.textContent = v || ""; tr.appendChild(td);
      });
      list.insertBefore(tr, list.firstChild);
      while (list.children.length > 500) { list.removeChild(list.lastChild); }
      apply();
    };
    function apply() {
      var q = filter ? filter.value.toLowerCase() : "";
      for (var i = 0; i < list.children.length; i++) {
        var row = list.children[i];
        row.hidden = q !== "" && row.textContent.toLowerCase().indexOf(q) < 0;
      }
    }
    if (filter) { filter.addEventListener("input", apply); filter.hidden = false; }
    var label = document.getElementById("event-text-label");
    if (label) { label.hidden = false; }
  }

  track();
  if (mode === "events") {
    var source = new EventSource("/events/stream?live=page");
    source.onopen = function () { main.dataset.feed = "open"; };
    source.onmessage = soon;
  } else if (mode === "poll") {
    setInterval(refresh, 3000);
  } else if (mode === "feed") {
    feed();
  }
})();
