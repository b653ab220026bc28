// Job page: live progress while waiting; when done, the player and the transcript follow
// each other (click a segment to seek; the playing segment and word are highlighted).
(function () {
  "use strict";
  var status = document.getElementById("job-status");
  if (status) {
    var bar = document.getElementById("job-progress");
    var percent = document.getElementById("job-percent");
    var eta = document.getElementById("job-eta");
    var state = document.getElementById("job-state");
    var poll = function () {
      fetch(status.dataset.statusUrl, { headers: { Accept: "application/json" } })
        .then(function (response) { return response.json(); })
        .then(function (job) {
          var done = Math.round(job.progress * 100);
          bar.value = done;
          percent.textContent = done + " %";
          if (job.state === "queued") {
            state.textContent = "Waiting: number " + job.position + " in the queue.";
          } else if (job.state === "running") {
            state.textContent = "Transcribing…";
            eta.textContent = job.eta_seconds ? "about " + Math.ceil(job.eta_seconds) + " s left" : "";
          } else {
            // finished: show the full bar a moment, then let the server render the result
            setTimeout(function () { window.location.reload(); }, 400);
            return;
          }
          setTimeout(poll, 1000);
        })
        .catch(function () { setTimeout(poll, 3000); });
    };
    setTimeout(poll, 500);
  }

  var player = document.getElementById("player");
  var segments = Array.prototype.slice.call(document.querySelectorAll(".segment"));
  var words = Array.prototype.slice.call(document.querySelectorAll(".word"));
  if (player) {
    segments.forEach(function (segment) {
      segment.addEventListener("click", function () {
        player.currentTime = Number(segment.dataset.start);
        player.play().catch(function () {});
      });
    });
    var current = null;
    var currentWord = null;
    var within = function (node, time) {
      return time >= Number(node.dataset.start) && time < Number(node.dataset.end);
    };
    player.addEventListener("timeupdate", function () {
      var time = player.currentTime;
      var segment = segments.find(function (s) { return within(s, time); }) || null;
      if (segment !== current) {
        if (current) current.classList.remove("current");
        if (segment) {
          segment.classList.add("current");
          segment.scrollIntoView({ block: "nearest" });
        }
        current = segment;
      }
      var word = words.find(function (w) { return within(w, time); }) || null;
      if (word !== currentWord) {
        if (currentWord) currentWord.classList.remove("current");
        if (word) word.classList.add("current");
        currentWord = word;
      }
    });
  }

  var copy = document.getElementById("copy-text");
  if (copy && navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener("click", function () {
      var text = segments.map(function (s) { return s.querySelector(".text").textContent.trim(); }).join("\n");
      navigator.clipboard.writeText(text).then(function () {
        document.getElementById("copy-done").textContent = "Copied.";
      });
    });
  }
})();
