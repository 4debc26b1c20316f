// New project page: the language field matters only to span tagging (its texts are split into tokens with
// the language's rules), so it is shown only while "Span tagging" is the chosen task.
(function () {
  "use strict";
  var task = document.getElementById("id_task_type");
  var language = document.getElementById("language-field");
  if (!task || !language) return;
  function sync() { language.hidden = task.value !== "span"; }
  task.addEventListener("change", sync);
  sync();
})();
