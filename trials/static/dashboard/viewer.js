// MetTrack visit viewer on Niivue (WebGL2): two panels, the visit and any earlier visit, each with its own
// window (its own 0.5-99.5 percentile range from the server), crosshairs kept on the same physical point
// (the earlier visit is served resampled onto this visit's grid when the two are registered),
// the lesion label map (opacity, toggle) and the stored LD (red) and perpendicular (orange) calipers.
// Review forms are posted with fetch(); the page's parts are then refreshed in place, so the slice, the
// windows, the zoom and the comparison stay as the reader left them.
(function () {
  "use strict";
  const dataEl = document.getElementById("viewer-data");
  const $ = function (id) { return document.getElementById(id); };
  let config = dataEl ? JSON.parse(dataEl.textContent) : null;
  const NV = window.niivue;
  const hasViewer = !!(config && config.main && NV && $("main-canvas"));

  const COLOURS = { target: [255, 212, 0], non_target: [0, 229, 255], new: [255, 64, 255], dropped: [158, 158, 158] };
  const PRESETS = ["robust", "full", "narrow", "bright"];
  const state = { vox: null, sliceType: 0, compareId: null, opacity: 0.5, overlay: true, lesion: -1, preset: 0, view: "" };
  const panels = { main: null, compare: null };  // {nv, data, prefix}

  function apply(affine, p) {
    return [0, 1, 2].map(function (r) {
      return affine[r][0] * p[0] + affine[r][1] * p[1] + affine[r][2] * p[2] + affine[r][3];
    });
  }
  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }
  function round2(x) { return Math.round(x * 100) / 100; }
  // Niivue's world space is RAS; the server's geometry is LPS (DICOM/ITK): flip x and y.
  function lpsToRas(p) { return [-p[0], -p[1], p[2]]; }

  function voxOf(panel) {
    const ras = panel.nv.frac2mm(panel.nv.scene.crosshairPos);
    const index = apply(panel.data.physical_to_index, lpsToRas([ras[0], ras[1], ras[2]]));
    return index.map(function (v, a) { return clamp(Math.round(v), 0, panel.data.size[a] - 1); });
  }
  function moveTo(panel, vox) {
    const ras = lpsToRas(apply(panel.data.index_to_physical, vox));
    panel.nv.scene.crosshairPos = panel.nv.mm2frac([ras[0], ras[1], ras[2]]);
  }

  function lesionLut(data) {
    const lut = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
    data.lesions.forEach(function (l) {
      const c = l.dropped ? COLOURS.dropped : (l.category === "new" ? COLOURS.new : (COLOURS[l.role] || COLOURS.non_target));
      lut.R.push(c[0]); lut.G.push(c[1]); lut.B.push(c[2]); lut.A.push(255); lut.I.push(l.value);
      lut.labels.push(l.label + (l.dropped ? " (dropped)" : ""));
    });
    return lut;
  }
  const CALIPER_LUT = { R: [0, 255, 255], G: [0, 59, 159], B: [0, 48, 10], A: [0, 255, 255], I: [0, 1, 2], labels: ["", "LD", "perpendicular"] };

  function windowOf(data, preset) {
    const lo = data.robust[0], hi = data.robust[1], span = hi - lo;
    if (preset === "full") return data.full;
    if (preset === "narrow") return [lo + span * 0.25, hi - span * 0.25];  // more contrast in the middle
    if (preset === "bright") return [lo + span * 0.5, hi];  // the upper half: enhancing tissue
    return data.robust;
  }
  function setWindow(panel, range) {
    if (!panel || !panel.nv.volumes.length) return;
    panel.nv.volumes[0].cal_min = range[0];
    panel.nv.volumes[0].cal_max = range[1];
    panel.nv.updateGLVolume();
    showStatus(panel);
  }

  // One loadVolumes() for the image and its two label maps: each separate addition would re-upload every
  // texture (seconds with a software renderer). The window (cal_min/cal_max) is the panel's own.
  async function loadPanel(panel, range) {
    const nv = panel.nv, data = panel.data;
    await nv.loadVolumes([
      { url: data.volume_url, name: "volume.nii", cal_min: range[0], cal_max: range[1] },
      { url: data.lesions_url, name: "lesions.nii.gz", opacity: state.overlay ? state.opacity : 0 },
      { url: data.calipers_url, name: "calipers.nii.gz", opacity: 1 }
    ]);
    nv.volumes[0].cal_min = range[0];
    nv.volumes[0].cal_max = range[1];
    nv.volumes[1].setColormapLabel(lesionLut(data));
    nv.volumes[2].setColormapLabel(CALIPER_LUT);
    nv.updateGLVolume();
  }
  async function reloadPanel(panel) {
    // After an edit: new label maps; the crosshair, window and zoom as they were.
    const nv = panel.nv, frac = nv.scene.crosshairPos.slice(), pan = nv.scene.pan2Dxyzmm.slice();
    await loadPanel(panel, [nv.volumes[0].cal_min, nv.volumes[0].cal_max]);
    nv.scene.crosshairPos = frac;
    nv.setPan2Dxyzmm(pan);
    nv.setSliceType(state.sliceType);
    showStatus(panel);
  }

  function newNiivue() {
    return new NV.Niivue({
      backColor: [0, 0, 0, 1], show3Dcrosshair: false, isRadiologicalConvention: true,
      isOrientationTextVisible: true, isForceMouseClickToVoxelCenters: true, isColorbar: false,
      crosshairColor: [0.2, 0.8, 0.2, 0.5], crosshairWidth: 0.5, dragAndDropEnabled: false,
      isNearestInterpolation: true, logLevel: "error", loadingText: "loading", sliceType: state.sliceType
    });
  }
  const attached = {};
  function attach(prefix) {
    // Shaders compile on attach: both panels start at once, the comparison's while the visit's loads.
    if (!attached[prefix]) {
      const nv = newNiivue();
      attached[prefix] = nv.attachToCanvas($(prefix + "-canvas")).then(function () { return nv; });
    }
    return attached[prefix];
  }

  async function openPanel(prefix, data, range) {
    const canvas = $(prefix + "-canvas");
    const old = panels[prefix];
    if (old && old.data.series_id === data.series_id) return old;
    canvas.removeAttribute("data-ready");
    const nv = await attach(prefix);
    const panel = { nv: nv, data: data, prefix: prefix };
    panels[prefix] = panel;
    await loadPanel(panel, range || windowOf(data, PRESETS[state.preset]));
    nv.setSliceType(state.sliceType);
    setMouseMode(panel, $("drag-select") ? $("drag-select").value : "crosshair");
    nv.onLocationChange = function () { onMoved(panel); };
    showStatus(panel);
    canvas.setAttribute("data-ready", "1");
    return panel;
  }

  function setMouseMode(panel, mode) {
    const D = NV.DRAG_MODE;
    const primary = { crosshair: D.crosshair, windowing: D.windowing, pan: D.pan, ruler: D.measurement }[mode] || D.crosshair;
    panel.nv.setMouseEventConfig({
      leftButton: { primary: primary, withShift: D.pan, withCtrl: D.crosshair },
      rightButton: D.windowing, centerButton: D.pan
    });
    panel.nv.opts.dragMode = primary === D.crosshair ? D.windowing : primary;  // wheel zooms in pan mode
  }

  let syncing = false;
  function onMoved(panel) {
    if (syncing) return;
    const other = panel.prefix === "main" ? panels.compare : panels.main;
    syncing = true;
    try {
      if (other && other.nv.volumes.length) {
        const ras = panel.nv.frac2mm(panel.nv.scene.crosshairPos);
        other.nv.scene.crosshairPos = other.nv.mm2frac([ras[0], ras[1], ras[2]]);
        other.nv.scene.pan2Dxyzmm = panel.nv.scene.pan2Dxyzmm.slice();
        other.nv.drawScene();
        showStatus(other);
      }
    } finally { syncing = false; }
    if (panels.main) state.vox = voxOf(panels.main);
    showStatus(panel);
    remember();
  }

  function showStatus(panel) {
    if (!panel || !panel.nv.volumes.length) return;
    const vox = voxOf(panel), vol = panel.nv.volumes[0];
    const canvas = $(panel.prefix + "-canvas");
    const here = panel.data.lesions.filter(function (l) { return l.k === vox[2]; }).map(function (l) { return l.label; });
    canvas.setAttribute("data-k", String(vox[2]));
    canvas.setAttribute("data-vox", vox.join(","));
    canvas.setAttribute("data-window", round2(vol.cal_min) + "," + round2(vol.cal_max));
    canvas.setAttribute("data-lesions", here.join(","));
    $(panel.prefix + "-status").textContent = panel.data.visit + " " + panel.data.date + " — axial slice " +
      (vox[2] + 1) + "/" + panel.data.size[2] + " — voxel " + vox.join(",") + " — window " +
      round2(vol.cal_min) + "–" + round2(vol.cal_max) + (here.length ? " — lesions on this slice: " + here.join(", ") : "");
    const low = $(panel.prefix + "-low"), high = $(panel.prefix + "-high");
    if (low && document.activeElement !== low) low.value = String(round2(vol.cal_min));
    if (high && document.activeElement !== high) high.value = String(round2(vol.cal_max));
  }

  // Clicks on the main panel in an editing mode fill the review forms with the voxel (or the lesion) under
  // it: read after Niivue handled the click (it moves the crosshair to the clicked voxel's centre).
  function clicked(panel) {
    const mode = $("click-mode") ? $("click-mode").value : "";
    if (!panel || !mode) return;
    const vox = voxOf(panel), value = Math.round(panel.nv.volumes.length > 1 ? labelAt(panel, vox) : 0);
    const lesion = panel.data.lesions.find(function (l) { return l.value === value; });
    const text = vox.join(",");
    const fill = function (id, v) { const el = $(id); if (el) { el.value = v; } };
    if (mode === "add") fill("add-seed", text);
    if (mode === "split-keep") { fill("split-keep", text); if (lesion) fill("split-lesion", String(lesion.lesion_id)); }
    if (mode === "split-new") fill("split-new", text);
    if ((mode === "merge-keep" || mode === "merge-absorb") && lesion) fill(mode, String(lesion.lesion_id));
    const say = $("click-result");
    if (say) say.textContent = "Clicked voxel " + text + (lesion ? " in " + lesion.label : "") + ".";
  }
  function labelAt(panel, vox) {
    // The label map is on the same grid as the image: read its voxel through physical space.
    const image = panel.nv.volumes[1];
    const ras = lpsToRas(apply(panel.data.index_to_physical, vox));
    const v = image.mm2vox([ras[0], ras[1], ras[2]]);
    return image.getValue(v[0], v[1], v[2]);
  }

  // The view lives in the address: a reload (or a form posted without this script) comes back to it.
  function remember() {
    const main = panels.main;
    if (!main || !state.vox) return;
    let view = "viewer-v" + state.vox.join(",") + "-t" + state.sliceType;
    const w = main.nv.volumes[0];
    view += "-m" + round2(w.cal_min) + "," + round2(w.cal_max);
    const cmp = panels.compare;
    if (cmp && state.compareId) {
      view += "-c" + state.compareId + "-p" + round2(cmp.nv.volumes[0].cal_min) + "," + round2(cmp.nv.volumes[0].cal_max);
    }
    if (window.history && window.history.replaceState) window.history.replaceState(null, "", "#" + view);
    state.view = view;
  }

  function setSliceType(type) {
    state.sliceType = type;
    [panels.main, panels.compare].forEach(function (p) { if (p) p.nv.setSliceType(type); });
    if ($("view-select")) $("view-select").value = String(type);
    remember();
  }
  function step(delta) {
    const main = panels.main;
    if (!main) return;
    const axis = state.sliceType === 1 ? [0, delta, 0] : (state.sliceType === 2 ? [delta, 0, 0] : [0, 0, delta]);
    main.nv.moveCrosshairInVox(axis[0], axis[1], axis[2]);  // calls onLocationChange -> sync, status
  }
  function jumpTo(index) {
    const main = panels.main;
    const lesions = main ? main.data.lesions.filter(function (l) { return l.vox; }) : [];
    if (!lesions.length) return false;
    state.lesion = (index + lesions.length) % lesions.length;
    const lesion = lesions[state.lesion];
    if ($("lesion-select")) $("lesion-select").value = lesion.label;
    moveTo(main, lesion.vox);
    main.nv.drawScene();
    onMoved(main);
    // The same lesion in the comparison visit: its own LD. A registered comparison shares the grid: the
    // synced crosshair already shows the same anatomy, so it stays there.
    const cmp = panels.compare, match = cmp && !cmp.data.registered && cmp.data.lesions.find(function (l) { return l.label === lesion.label && l.vox; });
    if (match) { moveTo(cmp, match.vox); cmp.nv.drawScene(); showStatus(cmp); }
    return true;
  }
  function jumpToLabel(label) {
    const lesions = panels.main ? panels.main.data.lesions.filter(function (l) { return l.vox; }) : [];
    const i = lesions.findIndex(function (l) { return l.label === label; });
    if (i >= 0) jumpTo(i);
    return i >= 0;
  }
  function setOverlay(on, opacity) {
    state.overlay = on; if (opacity !== undefined) state.opacity = opacity;
    [panels.main, panels.compare].forEach(function (p) {
      if (p && p.nv.volumes.length > 1) { p.nv.setOpacity(1, on ? state.opacity : 0); }
    });
    if ($("overlay-toggle")) $("overlay-toggle").checked = on;
    if ($("overlay-opacity")) $("overlay-opacity").value = String(state.opacity);
  }
  function applyPreset(i) {
    state.preset = (i + PRESETS.length) % PRESETS.length;
    if ($("preset-select")) $("preset-select").value = PRESETS[state.preset];
    [panels.main, panels.compare].forEach(function (p) { if (p) setWindow(p, windowOf(p.data, PRESETS[state.preset])); });
    remember();
  }
  function zoom(factor) {
    [panels.main, panels.compare].forEach(function (p) {
      if (!p) return;
      const pan = p.nv.scene.pan2Dxyzmm.slice();
      pan[3] = clamp(pan[3] * factor, 0.5, 8);
      p.nv.setPan2Dxyzmm(pan);
    });
  }

  async function showCompare(id, range) {
    const data = (config.compare || []).find(function (c) { return String(c.timepoint_id) === String(id); });
    const panelEl = $("compare-panel");
    state.compareId = data ? data.timepoint_id : null;
    if ($("compare-select")) $("compare-select").value = data ? String(data.timepoint_id) : "";
    if (!data) {
      if (panelEl) panelEl.hidden = true;
      panels.compare = null;
      remember();
      return;
    }
    if (panelEl) panelEl.hidden = false;
    $("compare-title").textContent = "Earlier visit: " + data.visit + " " + data.date;
    if ($("compare-note")) {
      $("compare-note").textContent = data.registration_note || "";
      $("compare-note").setAttribute("data-registered", data.registered ? "1" : "0");
    }
    const panel = await openPanel("compare", data, range);
    const lesion = state.lesion >= 0 && panels.main ? panels.main.data.lesions.filter(function (l) { return l.vox; })[state.lesion] : null;
    const match = lesion && !data.registered && data.lesions.find(function (l) { return l.label === lesion.label && l.vox; });
    if (match) { moveTo(panel, match.vox); panel.nv.drawScene(); showStatus(panel); }
    else if (panels.main) onMoved(panels.main);
    remember();
  }

  // --- review forms: fetch(), then refresh the page's parts (no reload) ---------------------------------
  function say(text, ok) {
    let list = document.querySelector("ul.messages.live");
    if (!list) {
      list = document.createElement("ul");
      list.className = "messages live";
      list.setAttribute("role", "status");
      list.setAttribute("aria-live", "polite");
      document.body.appendChild(list);
    }
    list.innerHTML = "";
    const item = document.createElement("li");
    item.className = ok ? "success" : "error";
    item.textContent = text;
    list.appendChild(item);
  }

  const PARTS = ["assessment", "review", "sign", "audit"];
  async function refreshParts() {
    const response = await fetch(window.location.pathname, { credentials: "same-origin", headers: { Accept: "text/html" } });
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    PARTS.forEach(function (id) {
      const fresh = doc.getElementById(id), old = $(id);
      if (fresh && old) old.replaceWith(document.importNode(fresh, true));
    });
    const freshData = doc.getElementById("viewer-data");
    if (freshData && hasViewer) {
      const next = JSON.parse(freshData.textContent);
      const main = panels.main, cmp = panels.compare;
      config = next;
      if (main && next.main) { main.data = next.main; await reloadPanel(main); fillLesions(); }
      const cmpData = cmp && (next.compare || []).find(function (c) { return c.timepoint_id === cmp.data.timepoint_id; });
      if (cmp && cmpData) { cmp.data = cmpData; await reloadPanel(cmp); }
    }
    bindTable();
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (event.defaultPrevented || !form.action || form.action.indexOf("/review/") < 0) return;
    event.preventDefault();
    remember();
    const button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    try {
      const body = new FormData(form);
      if (state.view) body.set("view", state.view);  // were the answer a redirect, it comes back here
      const response = await fetch(form.action, {
        method: "POST", body: body, credentials: "same-origin", headers: { Accept: "application/json" }
      });
      let answer;
      try { answer = await response.json(); } catch (e) { answer = { ok: false, message: "The server refused this (" + response.status + ")." }; }
      if (answer.ok && form.id === "paint-form" && panels.main) clearPaint();
      if (answer.ok) await refreshParts();
      say(answer.message, answer.ok);
    } catch (e) {
      say("The server could not be reached: " + e, false);
    } finally {
      if (button && document.body.contains(button)) button.disabled = false;
    }
  });

  // A lesion row (its name) opens the lesion in the viewer.
  function bindTable() {
    document.querySelectorAll("#lesion-table tbody tr[data-lesion]").forEach(function (row) {
      const head = row.querySelector("th");
      if (!head || head.querySelector("button") || !hasViewer) return;
      const lesion = panels.main && panels.main.data.lesions.find(function (l) { return l.label === row.dataset.lesion && l.vox; });
      if (!lesion) return;
      const button = document.createElement("button");
      button.type = "button"; button.className = "link-button"; button.textContent = head.textContent;
      button.setAttribute("aria-label", "Show " + head.textContent + " in the viewer (its LD slice)");
      button.addEventListener("click", function () { jumpToLabel(row.dataset.lesion); $("viewer-root").scrollIntoView(); });
      head.textContent = ""; head.appendChild(button);
    });
  }
  function fillLesions() {
    const select = $("lesion-select");
    if (!select || !panels.main) return;
    select.querySelectorAll("option[value]:not([value=''])").forEach(function (o) { o.remove(); });
    panels.main.data.lesions.filter(function (l) { return l.vox; }).forEach(function (l) {
      const opt = document.createElement("option");
      opt.value = l.label;
      opt.textContent = l.label + " (" + (l.category || l.role) + (l.stage === "small_lesions" ? ", small-lesion stage" : "") + ", slice " + (l.k + 1) + ")";
      select.appendChild(opt);
    });
  }

  if (config && config.main && !NV && $("main-status")) {
    $("main-status").textContent = "The viewer's library (Niivue) is missing from this installation: run make viewer.";
  }
  if (!hasViewer) return;

  // For the browser tests and the console: the panels, a draw-and-read of a panel's pixels (the WebGL
  // buffer is only readable right after a draw), and where a voxel lies on a panel's canvas (CSS pixels).
  window.MetTrackViewer = {
    panels: panels,
    pixels: function (prefix) {
      const p = panels[prefix];
      p.nv.drawScene();
      const canvas = p.nv.canvas, copy = document.createElement("canvas");
      copy.width = canvas.width; copy.height = canvas.height;
      const ctx = copy.getContext("2d");
      ctx.drawImage(canvas, 0, 0);
      return Array.from(ctx.getImageData(0, 0, copy.width, copy.height).data);
    },
    canvasPoint: function (prefix, vox) {
      const p = panels[prefix], ras = lpsToRas(apply(p.data.index_to_physical, vox));
      const pos = p.nv.frac2canvasPos(p.nv.mm2frac([ras[0], ras[1], ras[2]]));
      const scale = p.nv.canvas.clientWidth / p.nv.canvas.width;
      return [pos[0] * scale, pos[1] * scale];
    }
  };

  // --- painting a missed lesion: Niivue's pen on the visit's panel (an outline is filled when the pen lifts).
  // The drawing is Niivue's bitmap on its RAS voxel grid; each painted voxel goes through physical space to
  // the served (LPS) grid, and is posted as runs "i,j,k,n" along i with the grid's size (review verb "paint").
  function paintedRuns(panel) {
    const nv = panel.nv, bitmap = nv.drawBitmap, back = nv.volumes[0], size = panel.data.size;
    if (!bitmap || !back || !back.dimsRAS) return [];
    const nx = back.dimsRAS[1], ny = back.dimsRAS[2], voxels = [];
    for (let v = 0; v < bitmap.length; v++) {
      if (!bitmap[v]) continue;
      const x = v % nx, y = Math.floor(v / nx) % ny, z = Math.floor(v / (nx * ny));
      const mm = back.vox2mm([x, y, z], back.matRAS);
      const index = apply(panel.data.physical_to_index, lpsToRas([mm[0], mm[1], mm[2]])).map(Math.round);
      if (!index.some(function (c, a) { return c < 0 || c >= size[a]; })) voxels.push(index);
    }
    voxels.sort(function (a, b) { return a[2] - b[2] || a[1] - b[1] || a[0] - b[0]; });
    const runs = [];
    voxels.forEach(function (p) {
      const last = runs[runs.length - 1], sameRow = last && last[1] === p[1] && last[2] === p[2];
      if (sameRow && p[0] < last[0] + last[3]) return;  // the same voxel twice
      if (sameRow && p[0] === last[0] + last[3]) { last[3] += 1; } else { runs.push([p[0], p[1], p[2], 1]); }
    });
    return runs;
  }
  function paintCount() {
    const main = panels.main, el = $("paint-count");
    if (!main || !el) return;
    const bitmap = main.nv.drawBitmap;
    let n = 0;
    if (bitmap) { for (let v = 0; v < bitmap.length; v++) { if (bitmap[v]) n++; } }
    el.textContent = n ? n + " voxels painted." : "Nothing painted yet.";
  }
  function setPaint(on) {
    const main = panels.main;
    if (!main) return;
    if (on && !main.nv.drawBitmap) main.nv.createEmptyDrawing();
    main.nv.setDrawingEnabled(on);
    if (on) { main.nv.setPenValue(1, true); main.nv.setDrawOpacity(0.6); }
    main.nv.onDrawingChanged = paintCount;
    paintCount();
  }
  function clearPaint() {
    panels.main.nv.createEmptyDrawing();
    panels.main.nv.drawScene();
    paintCount();
  }
  // Capture phase: the runs are filled in before the page's submit handler posts the form.
  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (!form || form.id !== "paint-form" || !panels.main) return;
    form.querySelector("[name=size]").value = panels.main.data.size.join(",");
    form.querySelector("[name=runs]").value = paintedRuns(panels.main).map(function (r) { return r.join(","); }).join(";");
  }, true);
  document.addEventListener("click", function (event) {
    const id = event.target && event.target.id;
    if (!panels.main || (id !== "paint-undo" && id !== "paint-clear")) return;
    if (id === "paint-undo") { panels.main.nv.drawUndo(); paintCount(); } else { clearPaint(); }
  });

  // --- controls ------------------------------------------------------------------------------------------
  (config.compare || []).forEach(function (c) {
    const opt = document.createElement("option");
    opt.value = String(c.timepoint_id); opt.textContent = c.visit + " (" + c.date + ")";
    $("compare-select").appendChild(opt);
  });
  $("compare-select").addEventListener("change", function () { showCompare($("compare-select").value); });
  if ($("click-mode")) $("click-mode").addEventListener("change", function () { setPaint($("click-mode").value === "paint"); });
  $("view-select").addEventListener("change", function () { setSliceType(parseInt($("view-select").value, 10)); });
  $("preset-select").addEventListener("change", function () { applyPreset(PRESETS.indexOf($("preset-select").value)); });
  $("drag-select").addEventListener("change", function () {
    [panels.main, panels.compare].forEach(function (p) { if (p) setMouseMode(p, $("drag-select").value); });
  });
  $("overlay-toggle").addEventListener("change", function () { setOverlay($("overlay-toggle").checked); });
  $("overlay-opacity").addEventListener("input", function () { setOverlay(true, parseFloat($("overlay-opacity").value)); });
  $("lesion-select").addEventListener("change", function () { if ($("lesion-select").value) jumpToLabel($("lesion-select").value); });
  ["main", "compare"].forEach(function (prefix) {
    ["low", "high"].forEach(function (end) {
      $(prefix + "-" + end).addEventListener("change", function () {
        const p = panels[prefix], lo = parseFloat($(prefix + "-low").value), hi = parseFloat($(prefix + "-high").value);
        if (p && isFinite(lo) && isFinite(hi) && hi > lo) { setWindow(p, [lo, hi]); remember(); }
      });
    });
  });
  $("main-canvas").addEventListener("pointerup", function (e) {
    if (e.button === 0) setTimeout(function () { clicked(panels.main); }, 0);
  });
  ["main", "compare"].forEach(function (prefix) {
    // Window drags end with a mouse-up: keep the address (and the numbers) in step with the new window.
    // Zoom and pan (drag or wheel) follow in the other panel. (Niivue's broadcastTo() would sync them too,
    // but its sync also moved the clicked panel's crosshair back in the browser tests.)
    const follow = function () {
      setTimeout(function () {
        const p = panels[prefix], other = panels[prefix === "main" ? "compare" : "main"];
        if (!p) return;
        if (other && other.nv.volumes.length) {
          other.nv.scene.pan2Dxyzmm = p.nv.scene.pan2Dxyzmm.slice();
          other.nv.drawScene();
        }
        showStatus(p);
        remember();
      }, 0);
    };
    $(prefix + "-canvas").addEventListener("pointerup", follow);
    $(prefix + "-canvas").addEventListener("wheel", follow, { passive: true });
  });

  const help = $("viewer-help");
  $("help-button").addEventListener("click", function () { help.showModal(); });
  $("help-close").addEventListener("click", function () { help.close(); });

  const KEYS = {
    ArrowUp: function () { step(1); }, ArrowDown: function () { step(-1); },
    PageUp: function () { step(1); }, PageDown: function () { step(-1); },
    j: function () { jumpTo(state.lesion + 1); }, k: function () { jumpTo(state.lesion - 1); },
    1: function () { setSliceType(0); }, 2: function () { setSliceType(1); },
    3: function () { setSliceType(2); }, 4: function () { setSliceType(3); },
    o: function () { setOverlay(!state.overlay); },
    "[": function () { setOverlay(true, clamp(round2(state.opacity - 0.1), 0, 1)); },
    "]": function () { setOverlay(true, clamp(round2(state.opacity + 0.1), 0, 1)); },
    w: function () { applyPreset(state.preset + 1); }, r: function () { applyPreset(0); },
    "+": function () { zoom(1.25); }, "=": function () { zoom(1.25); }, "-": function () { zoom(0.8); },
    "?": function () { help.showModal(); }
  };
  // Keys belong to the viewer only while it (or a control inside it) has focus.
  $("viewer-root").addEventListener("keydown", function (e) {
    const tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || e.ctrlKey || e.metaKey || e.altKey) return;
    const action = KEYS[e.key];
    if (!action) return;
    action();
    e.preventDefault();
    e.stopPropagation();  // Niivue's own keys (e.g. arrows on its canvas) do not also run
  }, true);

  // #viewer-v<i,j,k>-t<layout>-m<low,high>-c<visit>-p<low,high> restores a view; #lesion-L<n> opens a lesion.
  const N = "(-?[0-9.]+)";
  const hash = window.location.hash.match(new RegExp("^#viewer-v(\\d+),(\\d+),(\\d+)(?:-t(\\d))?(?:-m" + N + "," + N +
    ")?(?:-c(\\d+)(?:-p" + N + "," + N + ")?)?$"));
  const lesionHash = window.location.hash.match(/^#lesion-(.+)$/);
  (async function start() {
    if (hash && hash[4]) state.sliceType = clamp(parseInt(hash[4], 10), 0, 3);
    $("view-select").value = String(state.sliceType);
    const mainRange = hash && hash[5] ? [parseFloat(hash[5]), parseFloat(hash[6])] : null;
    if ((config.compare || []).length) attach("compare");
    const main = await openPanel("main", config.main, mainRange);
    fillLesions();
    bindTable();
    const compares = config.compare || [];
    const cmpId = hash && hash[7] ? hash[7] : (compares.length ? compares[0].timepoint_id : "");
    await showCompare(cmpId, hash && hash[8] ? [parseFloat(hash[8]), parseFloat(hash[9])] : null);
    if (hash) {
      moveTo(main, [1, 2, 3].map(function (g, a) { return clamp(parseInt(hash[g], 10), 0, main.data.size[a] - 1); }));
      main.nv.drawScene();
      onMoved(main);
      $("viewer-root").scrollIntoView();
    } else if (!(lesionHash && jumpToLabel(lesionHash[1])) && !jumpTo(0)) {
      onMoved(main);
    }
    if (lesionHash) $("viewer-root").scrollIntoView();
    $("viewer-root").setAttribute("data-ready", "1");
  })().catch(function (error) {
    $("main-status").textContent = "The viewer could not start: " + error;
    console.error("viewer:", error);
  });
})();
