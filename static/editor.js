// Correcting the transcript, keyboard first. On a line (the transcript's one tab stop):
// E or F2 edits its text in place (Enter saves, Esc cancels, Shift+Enter splits the line at
// the cursor), M merges it with the next, [ ] move its start 0.1 s earlier or later, { }
// its end, S picks its speaker. The buttons above the transcript do the same for the line
// last chosen. Each change goes to the server at once; the server answers the lines as it
// kept them, which take the place of the old ones (job.js takes them up again), so the
// page never shows what was not saved. "Mark unsure words" highlights the words the model
// was least sure of, where a person looks first.
(function () {
  "use strict";
  var tools = document.getElementById("line-tools");
  var list = document.getElementById("segments");
  if (!tools || !list || !list.querySelector(".segment")) return;
  var NUDGE = 0.1;  // seconds a key moves a line's start or end
  var UNSURE_KEY = "whisper.markUnsure";
  var status = document.getElementById("edit-status");
  var speakerSelect = document.getElementById("line-speaker");
  var splitButton = document.getElementById("split-line");
  var editing = null;  // {index, box, button} while a line's text is being edited
  var saving = false;
  tools.hidden = false;
  document.getElementById("edit-keys").hidden = false;

  var lines = function () { return Array.prototype.slice.call(list.querySelectorAll(".segment")); };
  var activeIndex = function () {
    var all = lines();
    var index = all.indexOf(list.querySelector(".segment[tabindex='0']"));
    return index < 0 ? 0 : index;
  };
  var textOf = function (line) { return line.querySelector(".text").textContent.trim(); };
  var round = function (seconds) { return Math.round(seconds * 1000) / 1000; };

  var tell = function (words, failed) {
    status.textContent = words;
    status.classList.toggle("error", Boolean(failed));
  };
  var send = function (edits, focus) {
    if (saving) return Promise.resolve(false);
    saving = true;
    tell("Saving…");
    return fetch(tools.dataset.editsUrl, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": tools.dataset.csrf,
                 Accept: "application/json" },
      body: JSON.stringify({ edits: edits }),
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        if (!response.ok) {
          // the API's words name the edit ("edits[0].start: ..."); a person needs only the rest
          tell(answer.error ? answer.error.message.replace(/^edits\[\d+\][.\w]*: /, "") :
            "The change was not saved (" + response.status + "); reload the page and try again.", true);
          return false;
        }
        editing = null;
        splitButton.hidden = true;
        list.innerHTML = answer.html;
        document.dispatchEvent(new CustomEvent("transcript:replaced", { detail: { focus: focus } }));
        tell("Saved.");
        var edited = document.getElementById("edited");
        if (edited) edited.hidden = false;
        return true;
      });
    }).catch(function () {
      tell("The server could not be reached; the change was not saved.", true);
      return false;
    }).finally(function () { saving = false; });
  };

  // --- the text, in place ----------------------------------------------------------------
  var stopEditing = function (focusLine) {
    if (!editing) return;
    var was = editing;
    editing = null;
    was.box.remove();
    was.button.hidden = false;
    splitButton.hidden = true;
    if (focusLine) was.button.focus();
  };
  var startEditing = function (index) {
    stopEditing(false);
    var button = lines()[index];
    if (!button) return;
    var box = document.createElement("textarea");
    box.className = "line-editor";
    box.value = textOf(button);
    box.rows = Math.max(1, Math.ceil(box.value.length / 60));
    box.setAttribute("aria-label", "Text of the line at " + button.querySelector("time").textContent +
      " (Enter saves, Escape cancels, Shift+Enter splits at the cursor)");
    button.hidden = true;
    button.parentNode.insertBefore(box, button.nextSibling);
    editing = { index: index, box: box, button: button, original: box.value };
    splitButton.hidden = false;
    tell("");  // an earlier line's message is no longer about what is on screen
    box.focus();
    box.setSelectionRange(box.value.length, box.value.length);
    box.addEventListener("keydown", function (event) {
      if (event.key === "Escape") {
        event.preventDefault();
        stopEditing(true);
        tell("Not changed.");
      } else if (event.key === "Enter" && event.shiftKey) {
        event.preventDefault();
        splitHere();
      } else if (event.key === "Enter") {
        event.preventDefault();
        saveText();
      }
    });
  };
  var textEdits = function () {
    var text = editing.box.value.replace(/\s+/g, " ").trim();
    return text === editing.original ? [] : [{ op: "text", segment: editing.index, text: text }];
  };
  var saveText = function () {
    var edits = textEdits();
    if (!edits.length) {
      stopEditing(true);
      return;
    }
    send(edits, editing.index);
  };
  var splitHere = function () {
    var box = editing.box;
    // the cursor's place in the text as it will be saved (spaces squeezed, trimmed)
    var before = box.value.slice(0, box.selectionStart).replace(/\s+/g, " ").replace(/^\s+/, "");
    send(textEdits().concat([{ op: "split", segment: editing.index, at: before.length }]),
         editing.index + 1);
  };
  splitButton.addEventListener("mousedown", function (event) { event.preventDefault(); });  // keep the cursor
  splitButton.addEventListener("click", function () { if (editing) splitHere(); });

  // --- the line's other edits ----------------------------------------------------------
  var merge = function (index) { send([{ op: "merge", segment: index }], index); };
  var nudge = function (index, edge, by) {
    var line = lines()[index];
    var edit = { op: "retime", segment: index };
    edit[edge] = round(Number(line.dataset[edge]) + by);
    send([edit], index).then(function (saved) {
      if (saved) tell("Saved: " + edge + " at " + edit[edge].toFixed(1) + " s.");
    });
  };
  var showSpeaker = function () {
    if (!speakerSelect) return;
    var line = lines()[activeIndex()];
    var item = line && line.closest("li");
    if (item && item.dataset.speaker) speakerSelect.value = item.dataset.speaker;
  };

  var KEYS = {
    e: function (i) { startEditing(i); },
    F2: function (i) { startEditing(i); },
    m: function (i) { merge(i); },
    "[": function (i) { nudge(i, "start", -NUDGE); },
    "]": function (i) { nudge(i, "start", NUDGE); },
    "{": function (i) { nudge(i, "end", -NUDGE); },
    "}": function (i) { nudge(i, "end", NUDGE); },
    s: function () { if (speakerSelect) { showSpeaker(); speakerSelect.focus(); } },
  };
  list.addEventListener("keydown", function (event) {
    if (!event.target.classList.contains("segment") || event.ctrlKey || event.metaKey || event.altKey) return;
    var key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    if (event.key === "{" || event.key === "}") key = event.key;
    if (!KEYS[key]) return;
    event.preventDefault();
    KEYS[key](lines().indexOf(event.target));
  });
  list.addEventListener("focusin", showSpeaker);
  document.addEventListener("transcript:replaced", showSpeaker);
  showSpeaker();

  document.getElementById("edit-line").addEventListener("click", function () { startEditing(activeIndex()); });
  document.getElementById("merge-line").addEventListener("click", function () { merge(activeIndex()); });
  Array.prototype.forEach.call(tools.querySelectorAll("[data-nudge]"), function (button) {
    button.addEventListener("click", function () {
      nudge(activeIndex(), button.dataset.nudge, Number(button.dataset.by));
    });
  });
  if (speakerSelect) {
    speakerSelect.addEventListener("change", function () {
      send([{ op: "speaker", segment: activeIndex(), speaker: speakerSelect.value }], activeIndex());
    });
    speakerSelect.addEventListener("keydown", function (event) {
      if (event.key === "Escape") lines()[activeIndex()].focus();
    });
  }

  // --- unsure words ------------------------------------------------------------------------
  var unsure = document.getElementById("show-unsure");
  var markUnsure = function () {
    list.classList.toggle("mark-unsure", unsure.checked);
    try { localStorage.setItem(UNSURE_KEY, unsure.checked ? "1" : ""); } catch (e) { /* private mode */ }
  };
  try { unsure.checked = localStorage.getItem(UNSURE_KEY) === "1"; } catch (e) { /* private mode */ }
  unsure.addEventListener("change", markUnsure);
  unsure.closest("label").hidden = !list.querySelector(".word");  // no word timings: nothing to mark
  markUnsure();
})();
