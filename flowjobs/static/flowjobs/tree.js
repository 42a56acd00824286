// Flow tree: load a node's children when it is first opened, and "show more" pages
// in place. Without this script the same links open full pages.
(function () {
  "use strict";

  function fragmentUrl(url) {
    return url + (url.indexOf("?") === -1 ? "?" : "&") + "fragment=1";
  }

  function load(url) {
    return fetch(fragmentUrl(url), { credentials: "same-origin" }).then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.text();
    });
  }

  document.addEventListener("toggle", function (event) {
    var details = event.target;
    if (details.tagName !== "DETAILS" || !details.open) return;
    var url = details.getAttribute("data-children-url");
    if (!url || details.getAttribute("data-loaded")) return;
    details.setAttribute("data-loaded", "1");
    var list = details.querySelector(":scope > ul.fj-children");
    list.innerHTML = '<li class="fj-loading">Loading…</li>';
    load(url).then(function (html) {
      list.innerHTML = html;  // markup rendered (and escaped) by the server
    }).catch(function (error) {
      details.removeAttribute("data-loaded");
      list.innerHTML = '<li class="fj-loading"></li>';
      list.firstChild.textContent = "Could not load children (" + error.message + ")";
    });
  }, true);

  // A node's return value: shown in place on demand (inside a summary, so the click
  // must not also open or close the node). Without this script the link opens the job.
  document.addEventListener("click", function (event) {
    var toggle = event.target.closest("a.fj-value-toggle");
    if (!toggle) return;
    event.preventDefault();
    var value = toggle.nextElementSibling;
    if (value) value.hidden = !value.hidden;
  });

  document.addEventListener("click", function (event) {
    var link = event.target.closest("a[data-more]");
    if (!link) return;
    event.preventDefault();
    var item = link.parentElement;
    link.textContent = "Loading…";
    load(link.getAttribute("href")).then(function (html) {
      item.insertAdjacentHTML("afterend", html);
      item.remove();
    }).catch(function (error) {
      link.textContent = "Could not load more (" + error.message + ")";
    });
  });
})();
