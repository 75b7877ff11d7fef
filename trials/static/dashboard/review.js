// MetTrack review forms: an override asks for confirmation naming the change before it is signed
// (the response it replaces, the reader's, and that the signature is the reader's). Delegated to the
// document, and loaded before viewer.js: the visit page replaces its forms after each edit, and the viewer's
// fetch() handler skips a submission this one cancelled.
(function () {
  "use strict";
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!form.matches || !form.matches("form[data-current-response]")) return;
    const chosen = form.querySelector("select[name=overall_response]");
    if (!chosen || !chosen.value) return;
    const current = form.getAttribute("data-current-response") || "none";
    const message = "Override the response " + current + " with " + chosen.value +
      ", signed by you? The AI's answer stays on record.";
    if (!window.confirm(message)) event.preventDefault();
  });
})();
