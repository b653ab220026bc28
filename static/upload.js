// Upload with a real progress bar (bytes sent), a size check before sending, drag and drop.
// Without JavaScript the form posts normally.
(function () {
  "use strict";
  var form = document.getElementById("upload-form");
  if (!form) return;
  var input = document.getElementById("file");
  var drop = document.getElementById("drop-zone");
  var box = document.getElementById("upload-progress");
  var bar = document.getElementById("upload-bar");
  var percent = document.getElementById("upload-percent");
  var errorBox = document.getElementById("upload-error");
  var maxBytes = Number(form.dataset.maxBytes);

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function tooLarge(file) {
    return file && file.size > maxBytes;
  }

  function megabytes(bytes) {
    return (bytes / 1048576).toFixed(1) + " MB";
  }

  input.addEventListener("change", function () {
    errorBox.hidden = true;
    var file = input.files[0];
    if (tooLarge(file)) {
      showError("“" + file.name + "” is " + megabytes(file.size) + "; this server accepts up to " +
        megabytes(maxBytes) + ".");
    }
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
  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      input.dispatchEvent(new Event("change"));
    }
  });

  form.addEventListener("submit", function (event) {
    var file = input.files[0];
    if (!file) return;  // the browser's own "required" message
    event.preventDefault();
    if (tooLarge(file)) {
      showError("“" + file.name + "” is " + megabytes(file.size) + "; this server accepts up to " +
        megabytes(maxBytes) + ".");
      return;
    }
    errorBox.hidden = true;
    box.hidden = false;
    form.querySelector("button[type=submit]").disabled = true;
    var request = new XMLHttpRequest();
    request.open("POST", form.action);
    request.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var done = Math.round((e.loaded / e.total) * 100);
      bar.value = done;
      percent.textContent = done + " %";
    });
    request.addEventListener("load", function () {
      if (request.status < 400) {
        window.location.assign(request.responseURL);  // the job page, after the 303
        return;
      }
      var page = new DOMParser().parseFromString(request.responseText, "text/html");
      var message = page.querySelector(".error");
      showError(message ? message.textContent : "The upload failed (" + request.status + ").");
      box.hidden = true;
      form.querySelector("button[type=submit]").disabled = false;
    });
    request.addEventListener("error", function () {
      showError("The connection broke during the upload; please try again.");
      box.hidden = true;
      form.querySelector("button[type=submit]").disabled = false;
    });
    request.send(new FormData(form));
  });
})();
