// Live updates: a page whose content carries data-live-url polls it for JSON
// {regions: {element id: html}, next_ms, states?} and swaps each region whose HTML
// changed. The HTML is rendered (and escaped) by the server from the page's own
// templates. Polling pauses while the tab is hidden or when the user pauses it.
(function () {
  "use strict";

  var root = document.querySelector("[data-live-url]");
  if (!root || !window.fetch) return;
  var baseUrl = root.getAttribute("data-live-url");
  var lastHtml = {};
  var timer = null;
  var paused = false;
  var inFlight = false;

  var status = document.createElement("p");
  status.className = "fj-live-status";
  status.innerHTML = '<span class="fj-live-dot"></span> <span class="fj-live-text">live</span> ' +
    '<button type="button" class="fj-live-toggle">pause</button>';
  root.parentNode.insertBefore(status, root);
  var statusText = status.querySelector(".fj-live-text");
  var toggle = status.querySelector(".fj-live-toggle");

  function say(text, state) {
    statusText.textContent = text;
    status.setAttribute("data-state", state);
  }

  function url() {
    // The tree asks for the lines of the nodes on the page (opened ones included).
    var nodes = document.querySelectorAll("li.fj-node[data-job]");
    if (!nodes.length) return baseUrl;
    var pks = [];
    for (var i = 0; i < nodes.length && pks.length < 500; i++) {
      pks.push(nodes[i].getAttribute("data-job"));
    }
    return baseUrl + (baseUrl.indexOf("?") === -1 ? "?" : "&") + "jobs=" + pks.join(",");
  }

  // Keep what the user opened (folded traces, return values) across a swap.
  function openState(element) {
    var found = [];
    element.querySelectorAll("details").forEach(function (details, index) {
      if (details.open) found.push(index);
    });
    return found;
  }

  function restoreOpen(element, opened) {
    var all = element.querySelectorAll("details");
    opened.forEach(function (index) {
      if (all[index]) all[index].open = true;
    });
  }

  function apply(data) {
    var regions = data.regions || {};
    Object.keys(regions).forEach(function (id) {
      var element = document.getElementById(id);
      var html = regions[id];
      if (!element || lastHtml[id] === html) return;
      var opened = openState(element);
      element.innerHTML = html;
      restoreOpen(element, opened);
      lastHtml[id] = html;
    });
    var states = data.states || {};
    Object.keys(states).forEach(function (pk) {
      var node = document.querySelector('li.fj-node[data-job="' + pk + '"]');
      if (!node) return;
      var css = "fj-node-" + String(states[pk]).replace(/-/g, "");
      node.className = node.className.replace(/\bfj-node-[a-z]+\b/, css);
    });
  }

  function schedule(ms) {
    clearTimeout(timer);
    timer = setTimeout(poll, ms);
  }

  function poll() {
    if (paused || inFlight) return;
    if (document.hidden) {
      schedule(1000);
      return;
    }
    inFlight = true;
    fetch(url(), { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (data) {
        apply(data);
        document.dispatchEvent(new CustomEvent("fj:live-updated"));
        var now = new Date();
        say("live \u00b7 updated " + now.toLocaleTimeString(), "ok");
        root.setAttribute("data-live-updated", String(now.getTime()));
        schedule(data.next_ms || 3000);
      })
      .catch(function (error) {
        say("live updates failed (" + error.message + "); trying again", "error");
        schedule(10000);
      })
      .then(function () {
        inFlight = false;
      });
  }

  toggle.addEventListener("click", function () {
    paused = !paused;
    toggle.textContent = paused ? "resume" : "pause";
    if (paused) {
      clearTimeout(timer);
      say("live updates paused", "paused");
    } else {
      poll();
    }
  });

  schedule(1500);
})();
