// MetTrack review forms: an override asks for confirmation naming the change before it is signed
// (the response it replaces, the reader's, and that the signature is the reader's).
(function () {
  "use strict";
  document.querySelectorAll("form[data-current-response]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      const chosen = form.querySelector("select[name=overall_response]");
      if (!chosen || !chosen.value) return;
      const current = form.getAttribute("data-current-response") || "none";
      const message = "Override the response " + current + " with " + chosen.value +
        ", signed by you? The AI's answer stays on record.";
      if (!window.confirm(message)) event.preventDefault();
    });
  });
})();
