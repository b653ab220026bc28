// The model menu and the language list (upload and live pages): while an English-only model
// is chosen to transcribe, the language list offers English alone (a translation runs on a
// multilingual model, so it offers every language). Without JavaScript every language is
// listed and the server refuses another language for an English-only model, saying why.
(function () {
  "use strict";
  var model = document.getElementById("model");
  var language = document.getElementById("language");
  if (!model || !language || !model.form) return;
  var form = model.form;
  var hint = document.getElementById("language-hint");
  var forced = false;  // English was chosen for the person, not by them

  function englishOnly() {
    var option = model.options[model.selectedIndex];
    var task = form.elements.task;
    var translating = task && task.value === "translate";
    return Boolean(option) && option.dataset.englishOnly === "true" && !translating;
  }

  function follow() {
    var only = englishOnly();
    Array.prototype.forEach.call(language.options, function (option) {
      var offered = !only || option.value === "en";
      option.disabled = !offered;
      option.hidden = !offered;
    });
    if (only && language.value !== "en") {
      language.value = "en";
      forced = true;
    } else if (!only && forced) {
      language.value = "auto";
      forced = false;
    }
    if (hint) hint.hidden = !only;
  }

  model.addEventListener("change", follow);
  language.addEventListener("change", function () { forced = false; });
  Array.prototype.forEach.call(form.querySelectorAll("input[name=task]"), function (radio) {
    radio.addEventListener("change", follow);
  });
  follow();
})();
