// The upload form: presets fill the expert fields' hints; several files are checked in the
// browser first (size, emptiness, text that is no media), then sent one by one with a
// progress bar, each becoming its own job. A refused file is explained next to the file
// field. Without JavaScript the form posts every file at once and the server answers alike.
(function () {
  "use strict";
  var HEAD_BYTES = 512;  // enough of a file's start to tell text from audio or video
  var form = document.getElementById("upload-form");
  if (!form) return;
  var input = document.getElementById("file");
  var drop = document.getElementById("drop-zone");
  var list = document.getElementById("file-list");
  var errors = document.getElementById("file-errors");
  var box = document.getElementById("upload-progress");
  var label = document.getElementById("upload-label");
  var bar = document.getElementById("upload-bar");
  var percent = document.getElementById("upload-percent");
  var submit = document.getElementById("submit");
  var maxBytes = Number(form.dataset.maxBytes);

  // --- presets: the expert fields show what the chosen quality will use ---------------
  var hints = { beamSize: "beam_size", patience: "patience", temperature: "temperature" };
  form.querySelectorAll("input[name=preset]").forEach(function (radio) {
    radio.addEventListener("change", function () {
      Object.keys(hints).forEach(function (key) {
        document.getElementById(hints[key]).placeholder = radio.dataset[key];
      });
    });
  });

  // --- messages next to the file field -------------------------------------------------
  function clearErrors() {
    errors.textContent = "";
    drop.classList.remove("invalid");
    input.removeAttribute("aria-invalid");
  }

  function addError(sentence, detail) {
    var item = document.createElement("div");
    item.className = "field-error";
    var text = document.createElement("p");
    text.textContent = sentence;
    item.appendChild(text);
    if (detail) {
      var more = document.createElement("details");
      var summary = document.createElement("summary");
      summary.textContent = "Details";
      var body = document.createElement("p");
      body.className = "detail";
      body.textContent = detail;
      more.appendChild(summary);
      more.appendChild(body);
      item.appendChild(more);
    }
    errors.appendChild(item);
    drop.classList.add("invalid");
    input.setAttribute("aria-invalid", "true");
  }

  function addNode(node) {
    errors.appendChild(document.importNode(node, true));
    drop.classList.add("invalid");
  }

  // a size as people read it: "512 bytes", "38 KB", "4.2 MB" (never "0.0 MB")
  function size(bytes) {
    if (bytes < 1024) return bytes + (bytes === 1 ? " byte" : " bytes");
    if (bytes < 1048576) return Math.round(bytes / 1024) + " KB";
    return (bytes / 1048576).toFixed(1) + " MB";
  }

  // --- checks in the browser, before anything is sent -----------------------------------
  function looksLikeText(bytes) {
    for (var i = 0; i < bytes.length; i++) {
      var b = bytes[i];
      if (b === 0 || (b < 32 && b !== 9 && b !== 10 && b !== 13 && b !== 12)) return false;
    }
    try {
      new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      return true;
    } catch (error) {
      return false;  // cut in the middle of a character, or binary: media, perhaps
    }
  }

  function check(file) {
    if (file.size === 0) return Promise.resolve(file.name + " is empty.");
    if (file.size > maxBytes) {
      return Promise.resolve(file.name + " is " + size(file.size) + "; this server accepts up to " +
        size(maxBytes) + " per file.");
    }
    return file.slice(0, HEAD_BYTES).arrayBuffer().then(function (head) {
      return looksLikeText(new Uint8Array(head)) ? file.name + " is not audio or video we can read." : null;
    }, function () { return null; });
  }

  function checkAll(files) {
    return Promise.all(files.map(check)).then(function (problems) {
      return files.filter(function (file, i) {
        if (problems[i]) {
          addError(problems[i]);
          markRefused(file);
        }
        return !problems[i];
      });
    });
  }

  // the chosen files, each with its size; one that is refused (here or by the server)
  // is marked in the list, so it can be told from those that were sent
  var listed = [];  // [file, its item]
  function showChosen(files) {
    list.textContent = "";
    listed = files.map(function (file) {
      var item = document.createElement("li");
      item.textContent = file.name + " (" + size(file.size) + ")";
      list.appendChild(item);
      return [file, item];
    });
    list.hidden = files.length === 0;
  }

  function markRefused(file) {
    listed.forEach(function (entry) {
      if (entry[0] !== file || entry[1].classList.contains("refused")) return;
      entry[1].classList.add("refused");
      var mark = document.createElement("strong");
      mark.className = "refused-mark";
      mark.textContent = " — not sent";
      entry[1].appendChild(mark);
    });
  }

  input.addEventListener("change", function () {
    clearErrors();
    var files = Array.prototype.slice.call(input.files);
    showChosen(files);
    checkAll(files);
  });

  ["dragover", "dragenter"].forEach(function (type) {
    drop.addEventListener(type, function (event) {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  });
  ["dragleave", "drop"].forEach(function (type) {
    drop.addEventListener(type, function () { drop.classList.remove("dragging"); });
  });
  // a dropped folder gives its files (and its folders' files), leaving out what is plainly
  // no media: hidden files, pictures, text
  function skipped(file) {
    return file.name.charAt(0) === "." || /^(image|text)\//.test(file.type);
  }

  function filesIn(entry) {
    if (entry.isFile) {
      return new Promise(function (resolve) { entry.file(resolve, function () { resolve(null); }); });
    }
    return new Promise(function (resolve) {
      var reader = entry.createReader();
      var found = [];
      var more = function () {  // readEntries gives a folder's entries a batch at a time
        reader.readEntries(function (batch) {
          if (!batch.length) return resolve(Promise.all(found).then(flatten));
          batch.forEach(function (child) { found.push(filesIn(child)); });
          more();
        }, function () { resolve([]); });
      };
      more();
    });
  }

  function flatten(lists) {
    return lists.reduce(function (all, item) { return all.concat(item || []); }, []);
  }

  function choose(files) {
    var chosen = new DataTransfer();
    files.forEach(function (file) { chosen.items.add(file); });
    input.files = chosen.files;
    input.dispatchEvent(new Event("change"));
  }

  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    var entries = Array.prototype.map.call(event.dataTransfer.items || [], function (item) {
      return item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    });
    if (entries.some(function (entry) { return entry && entry.isDirectory; })) {
      Promise.all(entries.filter(Boolean).map(filesIn)).then(flatten).then(function (files) {
        choose(files.filter(function (file) { return !skipped(file); }));
      });
    } else if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });

  // --- sending, one file per request ------------------------------------------------------
  function send(file, index, count) {
    return new Promise(function (resolve) {
      var data = new FormData(form);
      data.delete("file");
      data.append("file", file, file.name);
      var request = new XMLHttpRequest();
      request.open("POST", form.action);
      label.textContent = count > 1 ? "Uploading " + (index + 1) + " of " + count + ": " + file.name : "Uploading " + file.name;
      bar.value = 0;
      percent.textContent = "0 %";
      request.upload.addEventListener("progress", function (e) {
        if (!e.lengthComputable) return;
        var done = Math.round((e.loaded / e.total) * 100);
        bar.value = done;
        percent.textContent = done + " %";
      });
      request.addEventListener("load", function () {
        var job = /\/jobs\/([A-Za-z0-9_-]{22})$/.exec(new URL(request.responseURL).pathname);
        if (request.status < 400 && job) {
          resolve({ id: job[1], url: request.responseURL });
          return;
        }
        var page = new DOMParser().parseFromString(request.responseText, "text/html");
        var refusals = page.querySelectorAll("#file-errors .field-error");
        markRefused(file);
        if (refusals.length) {
          refusals.forEach(addNode);
        } else {
          var message = page.querySelector(".error");
          addError(file.name + ": " + (message ? message.textContent : "the upload failed (" + request.status + ")."));
        }
        resolve(null);
      });
      request.addEventListener("error", function () {
        addError(file.name + ": the connection broke during the upload; please try again.");
        markRefused(file);
        resolve(null);
      });
      request.send(data);
    });
  }

  function sendAll(files) {
    var jobs = [];
    return files.reduce(function (previous, file, index) {
      return previous.then(function () {
        return send(file, index, files.length).then(function (job) { if (job) jobs.push(job); });
      });
    }, Promise.resolve()).then(function () { return jobs; });
  }

  function batchUrl(jobs) {
    var query = jobs.map(function (job) { return "job=" + encodeURIComponent(job.id); }).join("&");
    return form.dataset.batchUrl + "?" + query;
  }

  function finish(jobs, refusedAny) {
    box.hidden = true;
    submit.disabled = false;
    if (!refusedAny && jobs.length === 1) return window.location.assign(jobs[0].url);
    if (!refusedAny && jobs.length > 1) return window.location.assign(batchUrl(jobs));
    if (jobs.length) {
      var note = document.createElement("p");
      note.className = "queued-note";
      var link = document.createElement("a");
      link.href = jobs.length === 1 ? jobs[0].url : batchUrl(jobs);
      link.textContent = jobs.length === 1 ? "Follow its job" : "See them together";
      note.appendChild(document.createTextNode((jobs.length === 1 ? "1 file was" : jobs.length + " files were") +
        " queued. "));
      note.appendChild(link);
      errors.appendChild(note);
    }
  }

  form.addEventListener("submit", function (event) {
    var files = Array.prototype.slice.call(input.files);
    if (!files.length) return;  // the browser's own "required" message
    event.preventDefault();
    clearErrors();
    submit.disabled = true;
    checkAll(files).then(function (good) {
      var refusedAny = good.length < files.length;
      if (!good.length) {
        submit.disabled = false;
        return;
      }
      box.hidden = false;
      return sendAll(good).then(function (jobs) {
        finish(jobs, refusedAny || jobs.length < good.length);
      });
    });
  });
})();
