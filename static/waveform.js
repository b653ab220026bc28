// A picture of the audio above the transcript: the loudness of the whole file (computed
// once on the server, a few hundred bytes a minute), the transcript's lines as bands (each
// speaker's turns in the speaker's colour), the line playing now stronger, and the current
// position. Click or drag to seek; with the keyboard it is a slider (← → 5 s, Page Up/Down
// 30 s, Home, End).
(function () {
  "use strict";
  var box = document.getElementById("waveform");
  var canvas = document.getElementById("waveform-canvas");
  if (!box || !canvas || !window.fetch) return;
  var player = document.getElementById("player");
  var STEP = 5;  // seconds an arrow key moves
  var PAGE = 30;
  var levels = null;
  var duration = 0;

  var clock = function (seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    var h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    var mm = h ? String(m).padStart(2, "0") : String(m);
    return (h ? h + ":" : "") + mm + ":" + String(s).padStart(2, "0");
  };
  var colour = function (name) {
    return getComputedStyle(box).getPropertyValue(name).trim() || "#888";
  };
  var lines = function () {
    return Array.prototype.map.call(document.querySelectorAll(".segment"), function (line) {
      var item = line.closest("li");
      var match = /speaker-(\d)/.exec(item ? item.className : "");
      return { start: Number(line.dataset.start), end: Number(line.dataset.end),
               colour: match ? "--speaker-" + match[1] : "--accent" };
    });
  };
  var now = function () { return player ? player.currentTime || 0 : 0; };

  var draw = function () {
    if (!levels) return;
    var ratio = window.devicePixelRatio || 1;
    var width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    var height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    var g = canvas.getContext("2d");
    g.clearRect(0, 0, width, height);
    var x = function (seconds) { return seconds / duration * width; };
    var time = now();
    // the lines: a band each, the one playing now stronger
    lines().forEach(function (line) {
      var playing = time >= line.start && time < line.end;
      g.globalAlpha = playing ? 0.5 : 0.2;
      g.fillStyle = colour(line.colour);
      g.fillRect(x(line.start), 0, Math.max(1, x(line.end) - x(line.start)), height);
    });
    // the loudness: one bar per pixel column, the loudest bin under it
    g.globalAlpha = 1;
    g.fillStyle = colour("--muted");
    var middle = height / 2;
    var columns = Math.min(width, levels.length);
    var step = width / columns;
    for (var c = 0; c < columns; c++) {
      var from = Math.floor(c * levels.length / columns);
      var to = Math.max(from + 1, Math.floor((c + 1) * levels.length / columns));
      var level = 0;
      for (var i = from; i < to; i++) level = Math.max(level, levels[i]);
      var half = Math.max(ratio / 2, level / 255 * (middle - ratio));
      g.fillRect(c * step, middle - half, Math.max(ratio, step - (step > 3 * ratio ? ratio : 0)), half * 2);
    }
    // where the player is
    g.fillStyle = colour("--accent");
    g.fillRect(Math.min(width - 2 * ratio, x(time)), 0, 2 * ratio, height);
    canvas.setAttribute("aria-valuenow", time.toFixed(1));
    canvas.setAttribute("aria-valuetext", clock(time) + " of " + clock(duration));
  };

  var seek = function (seconds) {
    if (!player) return;
    player.currentTime = Math.max(0, Math.min(duration, seconds));
    draw();
  };
  var seekAt = function (event) {
    var rect = canvas.getBoundingClientRect();
    seek((event.clientX - rect.left) / rect.width * duration);
  };
  var dragging = false;
  canvas.addEventListener("pointerdown", function (event) {
    if (!player) return;
    dragging = true;
    canvas.setPointerCapture(event.pointerId);
    seekAt(event);
  });
  canvas.addEventListener("pointermove", function (event) { if (dragging) seekAt(event); });
  canvas.addEventListener("pointerup", function () { dragging = false; });
  canvas.addEventListener("keydown", function (event) {
    var moves = { ArrowLeft: -STEP, ArrowRight: STEP, ArrowDown: -STEP, ArrowUp: STEP,
                  PageDown: -PAGE, PageUp: PAGE };
    if (event.key in moves) seek(now() + moves[event.key]);
    else if (event.key === "Home") seek(0);
    else if (event.key === "End") seek(duration);
    else if (event.key === " " && player) (player.paused ? player.play().catch(function () {}) : player.pause());
    else return;
    event.preventDefault();
  });

  var frame = null;
  var redraw = function () {
    if (frame === null) frame = requestAnimationFrame(function () { frame = null; draw(); });
  };
  if (player) {
    ["timeupdate", "seeked", "play", "pause"].forEach(function (name) { player.addEventListener(name, redraw); });
  }
  window.addEventListener("resize", redraw);
  document.addEventListener("transcript:replaced", redraw);
  if (window.matchMedia) window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redraw);

  fetch(box.dataset.envelopeUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then(function (response) { return response.ok ? response.json() : null; })
    .then(function (envelope) {
      if (!envelope || !envelope.bins) return;
      var raw = atob(envelope.levels);
      levels = new Uint8Array(raw.length);
      for (var i = 0; i < raw.length; i++) levels[i] = raw.charCodeAt(i);
      duration = envelope.duration;
      canvas.setAttribute("aria-valuemax", duration.toFixed(1));
      box.hidden = false;
      box.dataset.bins = String(levels.length);
      if (!player) canvas.removeAttribute("tabindex");
      draw();
    })
    .catch(function () { /* no picture: the transcript works without it */ });
})();
