// Lists of jobs (recent jobs, one upload's files): times in the browser's own time zone,
// and the state of unfinished jobs kept current (one upload's page is reloaded when one
// of them finishes). Without JavaScript the page shows UTC
// and refreshes itself.
(function () {
  "use strict";
  var POLL_MS = 2000;
  var FINISHED = ["done", "failed", "cancelled"];
  var RELOAD_MS = 400;
  // one upload's page: a job that finishes changes its heading and what "Download all"
  // holds, which the server renders
  var batchHeading = document.getElementById("batch-heading");

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
        else if (batchHeading) setTimeout(function () { window.location.reload(); }, RELOAD_MS);
      })
      .catch(function () { setTimeout(function () { follow(badge); }, POLL_MS * 3); });
  }
  document.querySelectorAll(".badge[data-status-url]").forEach(function (badge) {
    setTimeout(function () { follow(badge); }, POLL_MS);
  });
})();
