// Lists of jobs (recent jobs, one upload's files): times in the browser's own time zone,
// and the state of unfinished jobs kept current. Without JavaScript the page shows UTC
// and refreshes itself.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var FINISHED = ["done", "failed", "cancelled"];

  document.querySelectorAll("time.local").forEach(function (time) {
    var when = new Date(time.dateTime);
    if (isNaN(when)) return;
    time.title = time.textContent;
    time.textContent = when.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  });

  function follow(badge) {
    fetch(badge.dataset.statusUrl, { headers: { Accept: "application/json" } })
      .then(function (response) { return response.json(); })
      .then(function (job) {
        badge.textContent = job.label;
        badge.className = "badge " + (job.cancelling ? "cancelling" : job.state);
        if (FINISHED.indexOf(job.state) < 0) setTimeout(function () { follow(badge); }, POLL_MS);
      })
      .catch(function () { setTimeout(function () { follow(badge); }, POLL_MS * 3); });
  }
  document.querySelectorAll(".badge[data-status-url]").forEach(function (badge) {
    setTimeout(function () { follow(badge); }, POLL_MS);
  });
})();
