// The live page: the microphone's sound, a tab's or screen's, or both mixed, is resampled to
// 16 kHz PCM16 by an AudioWorklet (live-worklet.js) and streamed in 0.25 s binary frames to
// the WebSocket /api/live (README, "The native protocol"). The server's answers become the
// captions: `partial` text is tentative (grey, replaced by the next), `committed` text is
// appended and never changes. Stop sends {"type": "stop"} and waits for `done`, which links
// to the finished job; a connection that drops first links to the job the server saved.
// Nothing is recorded here. Server text is only ever set as textContent.
(function () {
  "use strict";
  var WAITING_FRAMES = 40;      // 10 s of sound kept while the connection opens
  var FLUSH_WAIT_MS = 1000;     // for the worklet's last partial frame
  var DONE_WAIT_MS = 120000;    // for `done` after Stop, while the last words are decoded
  var CLOSE_WORDS = {
    1008: "The server refused the session.",
    1009: "A sound frame was too large for the server.",
    1011: "The server met an error.",
    1013: "The server has as many live sessions as it can take; try again later.",
  };

  var INSECURE_WORDS = "Browsers share a microphone or a tab only with pages served over " +
    "HTTPS (or from localhost): open this page at its https:// address.";

  var form = document.getElementById("live-form");
  if (!form) return;
  var startButton = document.getElementById("live-start");
  var stopButton = document.getElementById("live-stop");
  var sourceSelect = document.getElementById("source");
  var stateBox = document.getElementById("live-state");
  var stateText = document.getElementById("live-state-text");
  var languageBox = document.getElementById("live-language");
  var behindBox = document.getElementById("live-behind");
  var errorBox = document.getElementById("live-error");
  var resultBox = document.getElementById("live-result");
  var committedBox = document.getElementById("live-committed");
  var partialBox = document.getElementById("live-partial");
  var placeholder = document.getElementById("live-placeholder");
  var controls = form.querySelectorAll("select, input");

  var live = null;  // the running session: its streams, audio graph and socket

  function setState(name, words) {
    stateBox.className = "live-state " + name;
    stateText.textContent = words;
  }

  function showError(words) {
    errorBox.textContent = words;
    errorBox.hidden = !words;
  }

  // a sentence, then a link (href only from this origin), in the result box
  function showResult(words, href, linkText) {
    resultBox.textContent = "";
    resultBox.appendChild(document.createTextNode(words + (href ? " " : "")));
    if (href) {
      var link = document.createElement("a");
      link.href = href + "?mine=1";  // the job page lists it among this browser's jobs
      link.id = "live-job-link";
      link.textContent = linkText;
      resultBox.appendChild(link);
    }
    resultBox.hidden = false;
  }

  function sameOriginPath(url) {
    try {
      var parsed = new URL(String(url), window.location.href);
      return parsed.origin === window.location.origin ? parsed.pathname : null;
    } catch (error) {
      return null;
    }
  }

  function jobPath(id) {
    return form.dataset.jobsPath.replace(/\/$/, "") + "/" + encodeURIComponent(id);
  }

  function socketUrl() {
    var scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    var query = new URLSearchParams();
    query.set("model", form.elements.model.value);
    query.set("language", form.elements.language.value);
    query.set("task", form.elements.task.value);
    if (form.elements.diarize.checked) query.set("diarize", "true");
    return scheme + "//" + window.location.host + form.dataset.socketPath + "?" + query.toString();
  }

  // a `speaker` event names an ended utterance's voice: its pieces take the speaker's colour,
  // and a name goes before them where the voice changes
  var lastSpeaker = null;
  function labelSpeaker(message) {
    if (typeof message.utterance !== "number" || typeof message.speaker !== "string") return;
    var number = parseInt(message.speaker.replace(/^S/, ""), 10);
    if (!(number > 0)) return;
    var pieces = committedBox.querySelectorAll('.piece[data-utterance="' + message.utterance + '"]');
    if (!pieces.length) return;
    pieces.forEach(function (piece) {
      piece.classList.add("speaker-" + ((number - 1) % 8));
      piece.dataset.speaker = message.speaker;
    });
    if (message.speaker !== lastSpeaker) {
      var name = document.createElement("span");
      name.className = "live-speaker speaker-" + ((number - 1) % 8);
      name.textContent = (typeof message.name === "string" ? message.name : message.speaker) + ": ";
      committedBox.insertBefore(name, pieces[0]);
      pieces[0].textContent = pieces[0].textContent.replace(/^\s+/, "");
    }
    lastSpeaker = message.speaker;
  }

  function languageName(code) {
    var option = form.elements.language.querySelector('option[value="' + CSS.escape(code) + '"]');
    return option ? option.textContent : code;
  }

  function setRunning(running) {
    startButton.disabled = running;
    stopButton.disabled = !running;
    controls.forEach(function (control) { control.disabled = running; });
  }

  function clearCaptions() {
    committedBox.textContent = "";
    partialBox.textContent = "";
    lastSpeaker = null;
    placeholder.hidden = false;
    languageBox.hidden = true;
    languageBox.textContent = "";
    showBehind(0);
    showError("");
    resultBox.hidden = true;
    resultBox.textContent = "";
  }

  // --- capture ------------------------------------------------------------------------
  // the chosen sources as MediaStreams with audio; getDisplayMedia first, while the click
  // still counts as the person's gesture
  function capture(source) {
    var streams = [];
    var chain = Promise.resolve();
    if (source === "display" || source === "both") {
      chain = chain.then(function () {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getDisplayMedia) {
          throw new Error("This browser cannot share a tab's or screen's sound.");
        }
        return navigator.mediaDevices.getDisplayMedia({ audio: true, video: true });
      }).then(function (stream) {
        stream.getVideoTracks().forEach(function (track) { track.stop(); stream.removeTrack(track); });
        if (!stream.getAudioTracks().length) {
          throw new Error("The shared tab or screen has no sound: share it again and tick " +
                          "\"Share tab audio\" (or \"Share system audio\").");
        }
        streams.push(stream);
      });
    }
    if (source === "microphone" || source === "both") {
      chain = chain.then(function () {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
          throw new Error("This browser cannot use a microphone here.");
        }
        return navigator.mediaDevices.getUserMedia({
          audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false },
        });
      }).then(function (stream) { streams.push(stream); });
    }
    return chain.then(function () { return streams; }, function (error) {
      stopStreams(streams);
      throw error;
    });
  }

  function stopStreams(streams) {
    streams.forEach(function (stream) {
      stream.getTracks().forEach(function (track) { track.stop(); });
    });
  }

  function captureWords(error) {
    var name = error && error.name;
    if (name === "NotAllowedError") return "The browser was not allowed to use the sound source.";
    if (name === "NotFoundError") return "No microphone was found.";
    if (name === "NotReadableError") return "The sound source is in use by another program.";
    return (error && error.message) || String(error);
  }

  // --- the audio graph: sources -> worklet (16 kHz PCM16 frames) -> muted output ----------
  function buildGraph(session) {
    var AudioContextClass = window.AudioContext || window.webkitAudioContext;
    var context = new AudioContextClass();
    session.context = context;
    return context.audioWorklet.addModule(form.dataset.workletUrl).then(function () {
      var node = new AudioWorkletNode(context, "pcm16-frames", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
      });
      session.streams.forEach(function (stream) {
        context.createMediaStreamSource(stream).connect(node);
      });
      var mute = context.createGain();
      mute.gain.value = 0;  // the worklet runs as part of the graph; nothing is heard
      node.connect(mute).connect(context.destination);
      node.port.onmessage = function (event) { onWorkletMessage(session, event.data); };
      session.node = node;
      return context.resume();
    });
  }

  function onWorkletMessage(session, data) {
    if (data instanceof ArrayBuffer) {
      sendFrame(session, data);
    } else if (data && data.flushed && session.onFlushed) {
      session.onFlushed();
    }
  }

  function sendFrame(session, frame) {
    if (session.stopping && session.stopSent) return;
    if (session.ready && session.socket.readyState === WebSocket.OPEN) {
      sendSound(session, frame);
    } else if (!session.ready && session.waiting.length < WAITING_FRAMES) {
      session.waiting.push(frame);
    }
  }

  // a frame in pieces of at most the server's max_frame_bytes (an even number)
  function sendSound(session, frame) {
    var most = session.maxFrameBytes > 1 ? session.maxFrameBytes - (session.maxFrameBytes % 2) : frame.byteLength;
    if (frame.byteLength <= most) {
      session.socket.send(frame);
      return;
    }
    for (var at = 0; at < frame.byteLength; at += most) {
      session.socket.send(frame.slice(at, Math.min(frame.byteLength, at + most)));
    }
  }

  function releaseAudio(session) {
    if (session.released) return;
    session.released = true;
    if (session.node) {
      session.node.port.onmessage = null;
      session.node.disconnect();
    }
    if (session.context && session.context.state !== "closed") session.context.close();
    stopStreams(session.streams);
  }

  // --- the socket -----------------------------------------------------------------------
  function connect(session) {
    var socket = new WebSocket(socketUrl());
    socket.binaryType = "arraybuffer";
    session.socket = socket;
    socket.onmessage = function (event) {
      if (typeof event.data !== "string") return;
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (message && typeof message.type === "string") onEvent(session, message);
    };
    socket.onclose = function (event) { onClose(session, event); };
  }

  function onEvent(session, message) {
    switch (message.type) {
      case "ready":
        session.ready = true;
        session.id = String(message.session || "");
        session.maxFrameBytes = Number(message.max_frame_bytes) || 0;
        if (!session.stopping) setState("listening", "Listening");
        session.waiting.forEach(function (frame) { sendSound(session, frame); });
        session.waiting = [];
        if (session.stopping && session.flushed) sendStop(session);
        break;
      case "speech_started":
        if (!session.stopping) setState("speaking", "Hearing speech");
        break;
      case "speech_stopped":
        if (!session.stopping) setState("listening", "Listening");
        break;
      case "partial":
        partialBox.textContent = typeof message.text === "string" ? message.text : "";
        if (partialBox.textContent) placeholder.hidden = true;
        break;
      case "committed":
        if (typeof message.text === "string" && message.text) {
          var piece = document.createElement("span");
          piece.className = "piece";
          // each piece begins with its own space; the very first needs none
          piece.textContent = committedBox.childNodes.length ? message.text : message.text.replace(/^\s+/, "");
          if (typeof message.start === "number") piece.dataset.start = message.start;
          if (typeof message.end === "number") piece.dataset.end = message.end;
          if (typeof message.utterance === "number") piece.dataset.utterance = message.utterance;
          committedBox.appendChild(piece);
          placeholder.hidden = true;
        }
        break;
      case "speaker":
        labelSpeaker(message);
        break;
      case "language":
        if (typeof message.language === "string") {
          languageBox.textContent = "Language: " + languageName(message.language);
          languageBox.hidden = false;
        }
        break;
      case "behind":
        showBehind(Number(message.seconds) || 0);
        break;
      case "error":
        showError(errorWords(message));
        break;
      case "done":
        session.done = true;
        partialBox.textContent = "";
        showBehind(0);
        setState("done", "Finished");
        var path = typeof message.url === "string" && message.url ? sameOriginPath(message.url) : null;
        if (!path && typeof message.job === "string" && message.job) path = jobPath(message.job);
        if (path) {
          showResult("Saved as a job: the transcript, the recording and every download are there.",
                     path, "Open transcript");
        } else {  // the server kept nothing (no sound came, or keeping it failed)
          showResult("The session ended without a job: the server kept no sound of it.");
        }
        break;
      default:
        break;
    }
  }

  // the server cannot decode as fast as the speech comes: say how far behind the text is
  function showBehind(seconds) {
    behindBox.textContent = seconds > 0
      ? "Behind by " + Math.round(seconds) + " s: this server is decoding slower than you speak"
      : "";
    behindBox.hidden = !(seconds > 0);
  }

  function errorWords(message) {
    var words = typeof message.message === "string" && message.message
      ? message.message : "The server reported an error.";
    return typeof message.code === "string" && message.code ? words + " (" + message.code + ")" : words;
  }

  function onClose(session, event) {
    if (live === session) live = null;
    clearTimeout(session.doneTimer);
    releaseAudio(session);
    setRunning(false);
    if (session.done) return;
    partialBox.textContent = "";
    setState("stopped", "Disconnected");
    var words = CLOSE_WORDS[event.code];
    if (event.reason) words = (words ? words + " " : "") + event.reason;
    if (session.id) {
      if (words && errorBox.hidden) showError(words);
      showResult("The connection ended before the session finished. Everything said until " +
                 "then is saved as a job.", jobPath(session.id), "Open transcript");
    } else if (errorBox.hidden) {
      showError(words || "Could not connect to the live captions service.");
    }
  }

  // --- start and stop -------------------------------------------------------------------
  function start() {
    if (live) return;
    clearCaptions();
    if (!window.isSecureContext || !window.AudioWorkletNode) {
      showError(INSECURE_WORDS);
      return;
    }
    setRunning(true);
    setState("starting", "Starting…");
    var session = { streams: [], waiting: [], ready: false, stopping: false, done: false };
    live = session;
    capture(sourceSelect.value).then(function (streams) {
      session.streams = streams;
      if (live !== session) {  // stopped while the browser asked
        stopStreams(streams);
        return null;
      }
      // the person ends the sharing from the browser's own bar: that is Stop
      streams.forEach(function (stream) {
        stream.getAudioTracks().forEach(function (track) {
          track.addEventListener("ended", function () { stop(session); });
        });
      });
      connect(session);
      return buildGraph(session);
    }).catch(function (error) {
      if (session.socket) session.socket.onclose = null;
      if (session.socket) session.socket.close();
      releaseAudio(session);
      if (live === session) live = null;
      setRunning(false);
      setState("stopped", "Not started");
      showError(captureWords(error));
    });
  }

  function stop(session) {
    if (!session || session.stopping) return;
    session.stopping = true;
    stopButton.disabled = true;
    setState("stopping", "Finishing the last words…");
    var flushed = false;
    session.onFlushed = function () {
      if (flushed) return;
      flushed = true;
      session.flushed = true;
      releaseAudio(session);
      if (session.ready) sendStop(session);
    };
    if (session.node) {
      session.node.port.postMessage("flush");
      setTimeout(session.onFlushed, FLUSH_WAIT_MS);
    } else {
      session.onFlushed();
    }
    if (!session.socket) {  // the browser is still asking for the source
      if (live === session) live = null;
      setRunning(false);
      setState("stopped", "Not started");
    }
  }

  function sendStop(session) {
    if (session.stopSent || !session.socket || session.socket.readyState !== WebSocket.OPEN) return;
    session.stopSent = true;
    session.socket.send(JSON.stringify({ type: "stop" }));
    session.doneTimer = setTimeout(function () {
      if (!session.done) session.socket.close(1000, "no answer to stop");
    }, DONE_WAIT_MS);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    start();
  });
  stopButton.addEventListener("click", function () { stop(live); });
  if (!window.isSecureContext) showError(INSECURE_WORDS);
  // phones and some browsers cannot share a tab: only the microphone is offered there
  if (window.isSecureContext && !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia)) {
    sourceSelect.querySelectorAll('option[value="display"], option[value="both"]').forEach(function (option) {
      option.disabled = true;
    });
  }
}());
