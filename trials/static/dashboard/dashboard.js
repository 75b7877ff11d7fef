// MetTrack dashboard: draw plotly figures from data-figure attributes, filter tables, upload a series
// and follow its processing job with a live progress bar. Vanilla JS, no external requests.
(function () {
  "use strict";

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  // Charts: each .chart element carries its figure as JSON (built server-side by trials/charts.py).
  if (window.Plotly) {
    document.querySelectorAll(".chart[data-figure]").forEach(function (el) {
      const text = el.getAttribute("data-figure");
      if (!text) { el.textContent = "No data."; return; }
      const fig = JSON.parse(text);
      window.Plotly.newPlot(el, fig.data, fig.layout, { responsive: true, displaylogo: false });
    });
  }

  // Table filter (trial home).
  document.querySelectorAll("input[data-filter-table]").forEach(function (input) {
    const table = document.getElementById(input.getAttribute("data-filter-table"));
    input.addEventListener("input", function () {
      const needle = input.value.trim().toLowerCase();
      table.querySelectorAll("tbody tr").forEach(function (tr) {
        tr.hidden = needle !== "" && !tr.textContent.toLowerCase().includes(needle);
      });
    });
  });

  // A progress bar only moves forward (a job's 0 % after the upload's 50 % must not send it back).
  function setBar(bar, pct) {
    const value = Math.max(Number(bar.value) || 0, Math.min(100, Math.round(pct)));
    bar.hidden = false;
    bar.value = value;
    bar.textContent = value + "%";
  }

  // Job progress polling: every job still queued or running is refreshed once a second.
  // The progress URL comes from the page (data-progress-url) or the upload's answer (job.progress_url).
  // ``offset``: the share of the bar already used by the upload itself (the job fills the rest).
  function pollJob(progressUrl, bar, stateEl, messageEl, offset, onDone) {
    fetch(progressUrl, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (job) {
        setBar(bar, offset + (job.progress_pct * (100 - offset)) / 100);
        if (stateEl) stateEl.textContent = job.state;
        if (messageEl) messageEl.textContent = job.state === "failed" ? job.error : (job.stage || job.message || "");
        if (job.state === "queued" || job.state === "running") {
          setTimeout(function () { pollJob(progressUrl, bar, stateEl, messageEl, offset, onDone); }, 1000);
        } else if (job.state === "succeeded") {
          setBar(bar, 100);
          if (messageEl) messageEl.textContent = "Done. Reload the page to see the new results.";
          if (onDone) onDone();
        }
      })
      .catch(function () { if (messageEl) messageEl.textContent = "Progress unavailable."; });
  }
  document.querySelectorAll(".job[data-job-id]").forEach(function (el) {
    const state = el.getAttribute("data-job-state");
    if (state === "queued" || state === "running") {
      pollJob(el.getAttribute("data-progress-url"), el.querySelector("progress"), el.querySelector(".job-state"),
        el.querySelector(".job-message"), 0, null);
    }
  });

  // Once a visit's job is done, its row of the timeline is fetched again and replaced in place, so the
  // new series, response and measurements show without reloading the page.
  function refreshVisitRow(row) {
    if (!row || !row.id) return;
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById(row.id);
        if (!fresh) return;
        row.replaceWith(fresh);
        fresh.querySelectorAll("form.upload").forEach(function (form) {
          wireUpload(form);
          const details = form.closest("details");
          if (details) details.open = true;
          setBar(form.querySelector(".upload-progress"), 100);
          form.querySelector(".upload-status").textContent = "Done: the visit's new results are shown.";
        });
      })
      .catch(function () { /* the "Done" message stays: a reload shows the results */ });
  }

  // Upload of a visit's series (the dashboard's upload view, same service as the API); the answer (202)
  // names the processing job, whose progress is then polled. The upload fills the first half of the bar.
  function wireUpload(form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const file = form.querySelector("input[type=file]").files[0];
      const status = form.querySelector(".upload-status");
      const bar = form.querySelector(".upload-progress");
      if (!file) { status.textContent = "Choose a file first."; return; }
      const data = new FormData();
      data.append("file", file);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.getAttribute("action"));
      xhr.setRequestHeader("X-CSRFToken", csrfToken());
      bar.value = 0;
      setBar(bar, 0);
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) { setBar(bar, (50 * e.loaded) / e.total); status.textContent = "Uploading…"; }
      };
      xhr.onload = function () {
        let body = {};
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = {}; }
        if (xhr.status === 202 || xhr.status === 201) {
          const job = body.job || body;
          setBar(bar, 50);
          status.textContent = "Uploaded; processing…";
          if (job && job.progress_url) {
            pollJob(job.progress_url, bar, null, status, 50, function () { refreshVisitRow(form.closest("tr")); });
          }
        } else {
          status.textContent = "Upload refused (" + xhr.status + "): " + (body.detail || xhr.statusText);
        }
      };
      xhr.onerror = function () { status.textContent = "Upload failed (network)."; };
      xhr.send(data);
    });
  }
  document.querySelectorAll("form.upload").forEach(wireUpload);
})();
