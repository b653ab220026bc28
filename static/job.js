// Job page. While it waits or runs: the state, a progress bar that moves smoothly to each
// reported fraction, a time left that counts down between reports, and Cancel that says
// "Cancelling…" at once. When done: the player and the transcript follow each other, the
// transcript can be searched and copied, and its lines are one tab stop (arrows move,
// Enter plays from a line, Space plays or pauses). Corrections: editor.js; the picture of
// the audio: waveform.js.
(function () {
  "use strict";
  var POLL_MS = 1000;
  var RETRY_MS = 3000;
  var TICK_MS = 250;
  var RELOAD_MS = 400;  // the final state stays a moment before the page shows the result
  var ALMOST_DONE_PERCENT = 95;  // below this, an estimate that ran out is not "almost done"

  function duration(seconds) {
    seconds = Math.max(0, Math.round(seconds));
    if (seconds >= 3600) {
      var minutes = Math.floor((seconds % 3600) / 60);
      return Math.floor(seconds / 3600) + " h" + (minutes ? " " + minutes + " min" : "");
    }
    if (seconds >= 60) return Math.floor(seconds / 60) + " min" + (seconds % 60 ? " " + (seconds % 60) + " s" : "");
    return seconds + " s";
  }

  // --- waiting and running -------------------------------------------------------------
  var status = document.getElementById("job-status");
  if (status) {
    var bar = document.getElementById("job-progress");
    var percent = document.getElementById("job-percent");
    var eta = document.getElementById("job-eta");
    var state = document.getElementById("job-state");
    var cancelForm = document.getElementById("cancel-form");
    var cancelButton = document.getElementById("cancel-button");
    var shown = bar.value;  // the percent on screen, eased toward the reported one
    var target = shown;
    var step = 0;  // per tick: the bar reaches a new report by the time the next one comes
    var deadline = null;  // when the current estimate says the job is done (ms)
    var queued = false;
    var cancelling = false;
    var finished = false;

    // the status repeats an estimate until the next progress report: only a new one
    // moves the deadline, so the time left keeps counting down in between
    var reportedEstimate = null;
    var setEstimate = function (seconds) {
      if (seconds === reportedEstimate) return;
      reportedEstimate = seconds;
      deadline = seconds ? Date.now() + seconds * 1000 : null;
    };
    setEstimate(Number(status.dataset.etaSeconds || status.dataset.waitSeconds) || null);

    var tick = function () {
      if (shown < target) {
        shown = Math.min(target, shown + step);
        bar.value = shown;
        percent.textContent = Math.floor(shown) + " %";
      }
      if (cancelling || finished) {
        eta.textContent = "";
      } else if (deadline !== null) {
        var left = (deadline - Date.now()) / 1000;
        // past the estimate: "Almost done" only where the bar says so
        eta.textContent = left >= 1 ? "About " + duration(left) + (queued ? " until it is done." : " left.")
          : shown >= ALMOST_DONE_PERCENT ? "Almost done…" : "Taking longer than estimated…";
      }
    };
    setInterval(tick, TICK_MS);

    var show = function (job) {
      queued = job.state === "queued";
      if (!cancelling || job.state !== "running") state.textContent = job.label;
      if (job.cancelling) cancelling = true;
      if (job.progress * 100 > target) {
        target = job.progress * 100;
        step = Math.max(0.1, (target - shown) * TICK_MS / POLL_MS);
      }
      if (queued) {
        setEstimate(job.wait_seconds);
        if (!job.wait_seconds) eta.textContent = "Starts when the jobs ahead of it are done.";
      } else if (job.eta_seconds) {
        setEstimate(job.eta_seconds);
      } else if (deadline === null) {
        eta.textContent = "Estimating the time left…";
      }
    };

    var poll = function () {
      fetch(status.dataset.statusUrl, { headers: { Accept: "application/json" } })
        .then(function (response) { return response.json(); })
        .then(function (job) {
          if (job.state === "running" || job.state === "queued") {
            show(job);
            setTimeout(poll, POLL_MS);
            return;
          }
          finished = true;
          state.textContent = job.label;
          if (job.state === "done") {
            target = shown = 100;
            bar.value = 100;
            percent.textContent = "100 %";
          }
          if (cancelButton) cancelButton.disabled = true;
          setTimeout(function () { window.location.reload(); }, RELOAD_MS);
        })
        .catch(function () { setTimeout(poll, RETRY_MS); });
    };
    setTimeout(poll, POLL_MS / 2);

    if (cancelForm) {
      cancelForm.addEventListener("submit", function (event) {
        event.preventDefault();
        cancelling = true;
        cancelButton.disabled = true;
        state.textContent = "Cancelling…";
        fetch(cancelForm.action, { method: "POST", body: new FormData(cancelForm), redirect: "manual" })
          .catch(function () {
            cancelling = false;
            cancelButton.disabled = false;
            state.textContent = "Cancel did not reach the server; please try again.";
          });
      });
    }
  }

  // --- the transcript ----------------------------------------------------------------
  // The lines may be replaced (editor.js saves a correction and puts the server's lines in
  // their place): it then sends "transcript:replaced", and the lines are taken up again.
  var player = document.getElementById("player");
  var list = document.getElementById("segments");
  var collect = function (selector) {
    return Array.prototype.slice.call(document.querySelectorAll(selector));
  };
  var segments = collect(".segment");
  var words = collect(".word");
  if (!segments.length) return;

  // one tab stop: the active line; arrows move it
  var active = segments[0];
  var activate = function (segment, focus) {
    if (segments.indexOf(active) >= 0) active.tabIndex = -1;
    segment.tabIndex = 0;
    active = segment;
    if (focus) {
      segment.focus();
      segment.scrollIntoView({ block: "nearest" });
    }
  };
  document.getElementById("segment-keys").hidden = !player;

  var playPause = function () {
    if (!player) return;
    if (player.paused) player.play().catch(function () {});
    else player.pause();
  };
  var MOVES = {
    ArrowDown: function (i) { return i + 1; },
    ArrowUp: function (i) { return i - 1; },
    Home: function () { return 0; },
    End: function () { return segments.length - 1; },
  };
  var bind = function (segment) {
    segment.tabIndex = -1;
    segment.addEventListener("focus", function () { activate(segment, false); });
    segment.addEventListener("keydown", function (event) {
      if (MOVES[event.key] && !event.altKey && !event.ctrlKey && !event.metaKey) {
        event.preventDefault();
        var next = MOVES[event.key](segments.indexOf(segment));
        activate(segments[Math.max(0, Math.min(segments.length - 1, next))], true);
      } else if (event.key === " ") {
        event.preventDefault();
        playPause();
      }
    });
    segment.addEventListener("keyup", function (event) {
      if (event.key === " ") event.preventDefault();  // no click: Space plays or pauses
    });
    segment.addEventListener("click", function () {
      if (!player) return;
      player.currentTime = Number(segment.dataset.start);
      player.play().catch(function () {});
    });
  };
  segments.forEach(bind);
  active.tabIndex = 0;

  var current = null;
  var currentWord = null;
  document.addEventListener("transcript:replaced", function (event) {
    segments = collect(".segment");
    words = collect(".word");
    segments.forEach(bind);
    current = currentWord = null;
    var at = Math.max(0, Math.min(segments.length - 1, event.detail ? event.detail.focus : 0));
    activate(segments[at], !(event.detail && event.detail.quiet));
    if (find.value) find.dispatchEvent(new Event("input"));
  });

  if (player) {
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
          if (!list.contains(document.activeElement)) activate(segment, false);
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

  // --- find a word, jump to it -------------------------------------------------------
  var tools = document.getElementById("transcript-tools");
  tools.hidden = false;
  var find = document.getElementById("find");
  var count = document.getElementById("find-count");
  var matches = [];
  var at = -1;
  var textOf = function (segment) { return segment.querySelector(".text").textContent.trim(); };
  find.addEventListener("input", function () {
    var query = find.value.trim().toLowerCase();
    matches = [];
    at = -1;
    segments.forEach(function (segment) {
      var hit = query !== "" && textOf(segment).toLowerCase().indexOf(query) >= 0;
      segment.classList.toggle("match", hit);
      segment.classList.remove("found");
      if (hit) matches.push(segment);
    });
    count.textContent = query === "" ? "" : matches.length === 0 ? "No line has it" :
      matches.length === 1 ? "1 line" : matches.length + " lines";
  });
  var jump = function () {
    if (!matches.length) return;
    if (at >= 0) matches[at].classList.remove("found");
    at = (at + 1) % matches.length;
    var segment = matches[at];
    segment.classList.add("found");
    activate(segment, false);
    segment.scrollIntoView({ block: "center" });
    count.textContent = (at + 1) + " of " + matches.length;
  };
  find.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      event.preventDefault();
      jump();
    }
  });
  document.getElementById("find-next").addEventListener("click", jump);

  // --- copy, with or without timestamps ------------------------------------------------
  var done = document.getElementById("copy-done");
  var copy = function (text) {
    navigator.clipboard.writeText(text).then(function () { done.textContent = "Copied."; },
      function () { done.textContent = "The browser did not allow copying."; });
  };
  if (!navigator.clipboard) {
    document.querySelector("#transcript-tools .copy").hidden = true;
  }
  document.getElementById("copy-text").addEventListener("click", function () {
    copy(segments.map(textOf).join("\n"));
  });
  document.getElementById("copy-timed").addEventListener("click", function () {
    copy(segments.map(function (s) { return "[" + s.querySelector("time").textContent + "] " + textOf(s); }).join("\n"));
  });
})();

// Renaming speakers: the names on the page follow the form while they are typed; "Save
// names" posts the form (which works without this script too) and every download uses them.
(function () {
  var inputs = document.querySelectorAll(".speakers input[name^='speaker-']");
  Array.prototype.forEach.call(inputs, function (input) {
    var id = input.name.slice("speaker-".length);
    input.addEventListener("input", function () {
      var labels = document.querySelectorAll(".speaker-name[data-speaker='" + id + "']");
      Array.prototype.forEach.call(labels, function (label) {
        label.textContent = input.value.trim() || input.defaultValue;
      });
    });
  });
})();
