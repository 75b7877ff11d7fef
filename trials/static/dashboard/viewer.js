// MetTrack slice viewer: server-rendered axial PNG slices with lesion contours, labels and LD calipers
// drawn on a canvas overlay; side-by-side comparison at the matched physical position.
// Keyboard: ArrowUp/ArrowDown (or PageUp/PageDown) change slice, j/k jump to the next/previous lesion.
(function () {
  "use strict";
  const dataEl = document.getElementById("viewer-data");
  if (!dataEl) return;
  const config = JSON.parse(dataEl.textContent);
  const main = config.main;
  if (!main) return;
  const compares = config.compare || {};
  const $ = function (id) { return document.getElementById(id); };
  const sliceInput = $("slice-input"), windowInput = $("window-input"), levelInput = $("level-input");
  const compareSelect = $("compare-select"), lesionSelect = $("lesion-select"), clickMode = $("click-mode");
  const state = { k: 0, lesion: -1, compareKey: "", window: main.window, level: main.level };

  function apply(affine, p) {
    return [0, 1, 2].map(function (r) {
      return affine[r][0] * p[0] + affine[r][1] * p[1] + affine[r][2] * p[2] + affine[r][3];
    });
  }
  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }

  function drawOverlay(canvas, panel, k, overlay) {
    const w = panel.size[0], h = panel.size[1];
    canvas.width = w * 4; canvas.height = h * 4;  // 4x supersampling keeps 1-voxel outlines crisp
    const ctx = canvas.getContext("2d");
    ctx.setTransform(4, 0, 0, 4, 0, 0);
    ctx.clearRect(0, 0, w, h);
    // The image is drawn with object-fit: contain; keep the canvas aspect identical via CSS sizing.
    const u = Math.max(w, h) / 64;  // overlay sizes scale with the matrix so they read the same at any size
    overlay.lesions.forEach(function (les) {
      const colour = les.dropped ? "#9e9e9e" : (les.role === "target" ? "#ffd400" : "#00e5ff");
      ctx.strokeStyle = colour; ctx.lineWidth = 0.35 * u;
      if (les.dropped) ctx.setLineDash([u, u]); else ctx.setLineDash([]);
      ctx.beginPath();
      let minX = Infinity, minY = Infinity;
      les.segments.forEach(function (s) {
        ctx.moveTo(s[0], s[1]); ctx.lineTo(s[2], s[3]);
        minX = Math.min(minX, s[0], s[2]); minY = Math.min(minY, s[1], s[3]);
      });
      ctx.stroke();
      ctx.setLineDash([]);
      ["caliper", "perpendicular"].forEach(function (key) {
        const c = les[key];
        if (!c) return;
        ctx.strokeStyle = key === "caliper" ? "#ff3b30" : "#ff9f0a"; ctx.lineWidth = 0.4 * u;
        ctx.beginPath(); ctx.moveTo(c[0][0], c[0][1]); ctx.lineTo(c[1][0], c[1][1]); ctx.stroke();
        [c[0], c[1]].forEach(function (p) { ctx.beginPath(); ctx.arc(p[0], p[1], 0.7 * u, 0, 2 * Math.PI); ctx.stroke(); });
        if (!isFinite(minX)) { minX = c[0][0]; minY = c[0][1]; }
      });
      if (isFinite(minX)) {
        ctx.font = "bold " + (4 * u) + "px system-ui, sans-serif";
        ctx.fillStyle = colour; ctx.strokeStyle = "#000"; ctx.lineWidth = 0.8 * u;
        const text = les.label + (les.dropped ? " (FP)" : "");
        const ty = Math.max(5 * u, minY - u);
        ctx.strokeText(text, minX, ty); ctx.fillText(text, minX, ty);
      }
    });
  }

  function render(prefix, panel, k) {
    const img = $(prefix + "-img"), canvas = $(prefix + "-canvas"), status = $(prefix + "-status");
    if (!panel) { img.removeAttribute("src"); canvas.width = canvas.width; status.textContent = ""; return; }
    k = clamp(k, 0, panel.size[2] - 1);
    const wl = "?window=" + encodeURIComponent(state.window) + "&level=" + encodeURIComponent(state.level);
    img.src = panel.slice_url.replace("{k}", k) + wl;
    img.alt = "Axial slice " + (k + 1) + " of " + panel.size[2] + ", " + panel.visit;
    fetch(panel.overlay_url.replace("{k}", k), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (overlay) {
        drawOverlay(canvas, panel, k, overlay);
        const names = overlay.lesions.map(function (l) { return l.label; }).join(", ");
        status.textContent = panel.visit + " " + panel.date + " — slice " + (k + 1) + "/" + panel.size[2] +
          (names ? " — lesions: " + names : "");
        canvas.setAttribute("data-k", String(k));
        canvas.setAttribute("data-lesions", names);
      });
  }

  function matchedSlice(panel) {
    // Same lesion label in the comparison visit when a lesion is selected, else the same physical point.
    if (state.lesion >= 0) {
      const label = main.lesions[state.lesion].label;
      const match = panel.lesions.find(function (l) { return l.label === label; });
      if (match) return match.k;
    }
    const centre = [main.size[0] / 2, main.size[1] / 2, state.k];
    return Math.round(apply(panel.physical_to_index, apply(main.index_to_physical, centre))[2]);
  }

  function update() {
    sliceInput.value = String(state.k);
    render("main", main, state.k);
    const panel = compares[state.compareKey];
    $("compare-title").textContent = panel ? "Comparison: " + panel.visit + " " + panel.date : "Comparison";
    render("compare", panel, panel ? matchedSlice(panel) : 0);
    // The view (slice, window/level, comparison) lives in the address and in every review form, so a
    // review action's answer brings the reader back to the same view.
    const round = function (x) { return Math.round(x * 100) / 100; };
    const view = "viewer-k" + state.k + "-w" + round(state.window) + "-l" + round(state.level) +
      (state.compareKey ? "-c" + state.compareKey : "");
    if (window.history && window.history.replaceState) window.history.replaceState(null, "", "#" + view);
    document.querySelectorAll("input[name=view]").forEach(function (input) { input.value = view; });
  }

  function setSlice(k) { state.k = clamp(k, 0, main.size[2] - 1); update(); }
  function setLesion(i) {
    if (!main.lesions.length) return;
    state.lesion = (i + main.lesions.length) % main.lesions.length;
    lesionSelect.value = String(state.lesion);
    state.k = main.lesions[state.lesion].k;
    update();
  }

  // Controls
  sliceInput.max = String(main.size[2] - 1);
  sliceInput.setAttribute("aria-valuetext", "slice");
  windowInput.value = main.window; levelInput.value = main.level;
  Object.keys(compares).forEach(function (key) {
    const opt = document.createElement("option");
    opt.value = key; opt.textContent = key + " (" + compares[key].visit + ")";
    compareSelect.appendChild(opt);
  });
  if (compares.previous) state.compareKey = "previous"; else if (compares.baseline) state.compareKey = "baseline";
  compareSelect.value = state.compareKey;
  main.lesions.forEach(function (l, i) {
    const opt = document.createElement("option");
    opt.value = String(i); opt.textContent = l.label + " (" + l.category + ", slice " + (l.k + 1) + ")";
    lesionSelect.appendChild(opt);
  });
  sliceInput.addEventListener("input", function () { setSlice(parseInt(sliceInput.value, 10)); });
  function wl() {
    const w = parseFloat(windowInput.value), l = parseFloat(levelInput.value);
    if (isFinite(w) && w > 0) state.window = w;
    if (isFinite(l)) state.level = l;
    update();
  }
  windowInput.addEventListener("change", wl); levelInput.addEventListener("change", wl);
  compareSelect.addEventListener("change", function () { state.compareKey = compareSelect.value; update(); });
  lesionSelect.addEventListener("change", function () {
    if (lesionSelect.value !== "") setLesion(parseInt(lesionSelect.value, 10));
  });

  // Keys belong to the viewer only while it (or a control inside it) has focus: elsewhere the arrows
  // scroll the page and j/k are ordinary keys.
  $("viewer-root").addEventListener("keydown", function (e) {
    const tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" && e.target.type !== "range" || tag === "TEXTAREA" || tag === "SELECT") return;
    if (e.key === "ArrowUp" || e.key === "PageUp") { setSlice(state.k + 1); e.preventDefault(); }
    else if (e.key === "ArrowDown" || e.key === "PageDown") { setSlice(state.k - 1); e.preventDefault(); }
    else if (e.key === "j") { setLesion(state.lesion + 1); e.preventDefault(); }
    else if (e.key === "k") { setLesion(state.lesion - 1); e.preventDefault(); }
  });
  $("viewer-root").addEventListener("wheel", function (e) {
    setSlice(state.k + (e.deltaY < 0 ? 1 : -1)); e.preventDefault();
  }, { passive: false });

  // Clicks give a voxel index for the add and split forms (the image is shown with object-fit: contain).
  $("main-canvas").addEventListener("click", function (e) {
    if (!clickMode || !clickMode.value) return;
    const rect = e.target.getBoundingClientRect();
    const scale = Math.min(rect.width / main.size[0], rect.height / main.size[1]);
    const offX = (rect.width - main.size[0] * scale) / 2, offY = (rect.height - main.size[1] * scale) / 2;
    const i = Math.floor((e.clientX - rect.left - offX) / scale), j = Math.floor((e.clientY - rect.top - offY) / scale);
    if (i < 0 || j < 0 || i >= main.size[0] || j >= main.size[1]) return;
    const value = i + "," + j + "," + state.k;
    const target = { add: "add-seed", "split-keep": "split-keep", "split-new": "split-new" }[clickMode.value];
    const input = $(target);
    if (input) { input.value = value; input.focus(); }
  });

  document.querySelectorAll("form[action*='/review/']").forEach(function (form) {
    const input = document.createElement("input");
    input.type = "hidden"; input.name = "view";
    form.appendChild(input);
  });

  // #viewer-k<slice>[-w<window>-l<level>][-c<comparison>] restores a view; #lesion-L<n> (links from the
  // lesion tables) opens that lesion.
  const hash = window.location.hash.match(/^#viewer-k(\d+)(?:-w([0-9.]+)-l(-?[0-9.]+))?(?:-c([a-z]+))?$/);
  if (hash && hash[2] && hash[3]) {
    const w = parseFloat(hash[2]), l = parseFloat(hash[3]);
    if (isFinite(w) && w > 0 && isFinite(l)) {
      state.window = w; state.level = l; windowInput.value = String(w); levelInput.value = String(l);
    }
  }
  if (hash && hash[4] && compares[hash[4]]) { state.compareKey = hash[4]; compareSelect.value = hash[4]; }
  const lesionHash = window.location.hash.match(/^#lesion-(.+)$/);
  const lesionIndex = lesionHash ? main.lesions.findIndex(function (l) { return l.label === lesionHash[1]; }) : -1;
  if (lesionIndex >= 0) {
    setLesion(lesionIndex);
    $("viewer-root").scrollIntoView();
  } else {
    state.k = hash ? clamp(parseInt(hash[1], 10), 0, main.size[2] - 1)
      : (main.lesions.length ? main.lesions[0].k : Math.floor(main.size[2] / 2));
    update();
    if (hash) $("viewer-root").scrollIntoView();
  }
})();
