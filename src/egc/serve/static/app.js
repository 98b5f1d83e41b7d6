// egc serve: the page's only script (no framework, nothing loaded from elsewhere).
"use strict";
const $ = (id) => document.getElementById(id);
let INFO = null;

function show(el, on) { el.hidden = !on; }
function setError(id, msg) { const el = $(id); el.textContent = msg || ""; show(el, !!msg); }
function opt(sel, value, text) { const o = document.createElement("option"); o.value = value; o.textContent = text; sel.appendChild(o); }
function model() { return INFO.models.find((m) => m.id === $("model").value) || INFO.models[0]; }
async function errorOf(res) {
  try { const j = await res.json(); if (j && j.error) return j.error; } catch (e) { /* not JSON */ }
  return `the server answered ${res.status} ${res.statusText}`;
}

// ---- start-up ------------------------------------------------------------------------------
async function init() {
  try {
    const res = await fetch("/api/info");
    if (!res.ok) throw new Error(await errorOf(res));
    INFO = await res.json();
  } catch (e) { setError("page-error", `cannot reach the server: ${e.message}`); return; }
  for (const m of INFO.models) opt($("model"), m.id, m.id);
  for (const s of INFO.samplers) opt($("gen-sampler"), s, s);
  $("model").addEventListener("change", onModel);
  onModel();
  if (INFO.classifiers.length) {
    for (const c of INFO.classifiers) opt($("cag-classifier"), c.id, c.label);
    $("cag-classifier").addEventListener("change", onClassifier);
    onClassifier();
  } else {
    $("cag-status").textContent = "no classifier is available for CaG";
    $("cag-start").disabled = true;
  }
  health();
  setInterval(health, 3000);
}

async function health() {
  try {
    const h = await (await fetch("/api/health")).json();
    const m = model();
    $("server-status").textContent = `${m.device} · ${m.precision} · ` + (h.running ? `running: ${h.running}, waiting: ${h.waiting}` : "idle");
  } catch (e) { $("server-status").textContent = "server not answering"; }
}

function onModel() {
  const m = model();
  const sel = $("gen-class");
  sel.innerHTML = "";
  opt(sel, "none", "none (unconditional)");
  if (m.conditional) m.class_names.forEach((n, i) => opt(sel, String(i), `${i}: ${n}`));
  sel.disabled = !m.conditional;
  $("gen-guidance").value = m.guidance;  // the model's measured sampling defaults (the server adds its eta)
  if (m.sampler) $("gen-sampler").value = m.sampler;
  if (m.sample_steps) $("gen-steps").value = String(m.sample_steps);
  $("gen-cfg").value = m.cfg;
  $("gen-start").disabled = !m.can_generate;
  $("gen-status").textContent = m.can_generate ? "idle" : `model ${m.id} cannot generate`;
  $("reference").textContent = m.reference || "none";
  clearCanvas();
}

function onClassifier() {
  const c = INFO.classifiers.find((x) => x.id === $("cag-classifier").value);
  const cls = $("cag-class");
  cls.innerHTML = "";
  c.class_names.forEach((n, i) => opt(cls, String(i), `${i}: ${n}`));
  const size = $("cag-size");
  size.innerHTML = "";
  for (const s of c.sizes) opt(size, String(s), `${s}×${s}`);
  size.value = String(c.default_size);
  if (c.default_steps) $("cag-steps").value = String(c.default_steps);  // the classifier's measured default
}

// ---- 1. classify -----------------------------------------------------------------------------
const canvas = $("draw");
const ctx = canvas.getContext("2d");
let drawing = false, dirty = false, lastPt = null, lastFile = null;

function clearCanvas() {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  dirty = false;
}
function pt(e) { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height]; }
canvas.addEventListener("pointerdown", (e) => { drawing = true; lastPt = pt(e); canvas.setPointerCapture(e.pointerId); stroke(e); });
canvas.addEventListener("pointermove", (e) => { if (drawing) stroke(e); });
canvas.addEventListener("pointerup", () => { if (drawing) { drawing = false; classifyCanvas("drawing.png"); } });
canvas.addEventListener("pointercancel", () => { drawing = false; });
function stroke(e) {
  const p = pt(e);
  ctx.strokeStyle = "#fff"; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.lineWidth = Number($("brush").value);
  ctx.beginPath(); ctx.moveTo(lastPt[0], lastPt[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
  lastPt = p; dirty = true;
}
$("clear").addEventListener("click", () => { clearCanvas(); show($("classify-result"), false); });

// The canvas scaled to the model's size (grey for a grey model) as a PNG file.
function canvasBlob() {
  const m = model();
  const small = document.createElement("canvas");
  small.width = m.size; small.height = m.size;
  const s = small.getContext("2d");
  s.imageSmoothingEnabled = true; s.imageSmoothingQuality = "high";
  s.drawImage(canvas, 0, 0, m.size, m.size);
  if (m.channels === 1) {
    const d = s.getImageData(0, 0, m.size, m.size);
    for (let i = 0; i < d.data.length; i += 4) {
      const g = Math.round(0.299 * d.data[i] + 0.587 * d.data[i + 1] + 0.114 * d.data[i + 2]);
      d.data[i] = d.data[i + 1] = d.data[i + 2] = g; d.data[i + 3] = 255;
    }
    s.putImageData(d, 0, 0);
  }
  return new Promise((resolve) => small.toBlob(resolve, "image/png"));
}
async function classifyCanvas(name) { await classify(await canvasBlob(), name); }

async function classify(blob, name) {
  const m = model();
  setError("classify-error", "");
  show($("fit"), false);
  let res;
  try {
    res = await fetch(`/api/classify?model=${encodeURIComponent(m.id)}&name=${encodeURIComponent(name)}`,
      { method: "POST", body: blob, headers: { "Content-Type": "application/octet-stream" } });
  } catch (e) { setError("classify-error", `cannot reach the server: ${e.message}`); return; }
  if (!res.ok) {
    const msg = await errorOf(res);
    setError("classify-error", msg);
    show($("classify-result"), false);
    // The server applies the model's own preprocessing to any readable image; the browser-side fit stays
    // on offer for an image it still refuses (a 422).
    show($("fit"), res.status === 422 && lastFile !== null && name === lastFile.name);
    return;
  }
  const r = await res.json();
  $("classified-name").textContent = r.image;
  $("classify-ms").textContent = `${r.ms} ms on the server` + (r.preprocessed && r.preprocessed.length ? ` · ${r.preprocessed.join(", ")}` : "");
  const top = $("top");
  top.innerHTML = "";
  for (const t of r.top) {
    const li = document.createElement("li");
    li.innerHTML = `<span class="name"></span><span><span class="bar"></span></span><span class="prob"></span>`;
    li.querySelector(".name").textContent = t.name;
    li.querySelector(".bar").style.display = "block";
    li.querySelector(".bar").style.width = `${Math.max(1, 100 * t.prob)}%`;
    li.querySelector(".prob").textContent = `${(100 * t.prob).toFixed(1)}%`;
    top.appendChild(li);
  }
  $("energy").textContent = r.energy === null ? "n/a" : r.energy.toFixed(3);
  if (r.percentile !== null) {
    $("energy-mark").style.left = `calc(${Math.min(100, r.percentile)}% - 1px)`;
    show($("energy-scale"), true);
    $("reading").textContent = `${r.percentile.toFixed(0)}th percentile of the reference energies: ${r.reading}`;
    $("reading").className = r.typical ? "typical" : "unusual";
  } else {
    show($("energy-scale"), false);
    $("reading").textContent = "no reference energies for this model";
  }
  $("reference").textContent = r.reference || "none";
  show($("classify-result"), true);
}

$("upload").addEventListener("change", () => {
  const f = $("upload").files[0];
  if (!f) return;
  lastFile = f;
  classify(f, f.name);
});

// Draw the last upload into the canvas (letterboxed), then classify the canvas.
$("fit").addEventListener("click", () => {
  if (!lastFile) return;
  const url = URL.createObjectURL(lastFile);
  const img = new Image();
  img.onload = () => {
    clearCanvas();
    const k = Math.min(canvas.width / img.width, canvas.height / img.height);
    const w = img.width * k, h = img.height * k;
    ctx.drawImage(img, (canvas.width - w) / 2, (canvas.height - h) / 2, w, h);
    URL.revokeObjectURL(url);
    classifyCanvas(`${lastFile.name} (fitted)`);
  };
  img.onerror = () => setError("classify-error", "this browser cannot read that image either");
  img.src = url;
});

// ---- 2 and 3. streamed jobs ----------------------------------------------------------------------
// POST the JSON, read the Server-Sent-Events answer; Cancel aborts the stream (the server then stops).
function jobUI(prefix) {
  return {
    start: $(`${prefix}-start`), cancel: $(`${prefix}-cancel`), status: $(`${prefix}-status`), progress: $(`${prefix}-progress`),
    frame: $(`${prefix}-frame`), final: $(`${prefix}-final`), download: $(`${prefix}-download`), err: `${prefix}-error`,
    controller: null, job: null,
  };
}
const UI = { gen: jobUI("gen"), cag: jobUI("cag") };

async function runJob(ui, url, body) {
  setError(ui.err, "");
  show(ui.final, false);
  ui.frame.dataset.frames = "0";
  ui.progress.value = 0;
  ui.status.textContent = "sending…";
  ui.controller = new AbortController();
  ui.start.disabled = true; ui.cancel.disabled = false;
  let finished = false;
  try {
    const res = await fetch(url, { method: "POST", body: JSON.stringify(body), headers: { "Content-Type": "application/json" }, signal: ui.controller.signal });
    if (!res.ok) { setError(ui.err, await errorOf(res)); ui.status.textContent = "refused"; finished = true; return; }
    const reader = res.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
        for (const line of chunk.split("\n")) if (line.startsWith("data: ")) finished = onEvent(ui, JSON.parse(line.slice(6))) || finished;
      }
    }
    if (!finished) { ui.status.textContent = "the server closed the stream"; }
  } catch (e) {
    if (e.name === "AbortError") ui.status.textContent = "cancelled";
    else { setError(ui.err, `connection lost: ${e.message}`); ui.status.textContent = "failed"; }
  } finally {
    ui.start.disabled = false; ui.cancel.disabled = true; ui.controller = null; ui.job = null;
  }
}

function onEvent(ui, ev) {
  switch (ev.type) {
    case "accepted": ui.job = ev.job; ui.status.textContent = "accepted"; return false;
    case "queued": ui.status.textContent = ev.ahead > 0 ? `waiting: ${ev.ahead} job(s) ahead of this one` : "starting…"; return false;
    case "started": ui.status.textContent = "running…"; return false;
    case "status": ui.status.textContent = ev.message; return false;
    case "frame":
      ui.frame.src = ev.image;
      show(ui.frame, true);
      ui.frame.dataset.frames = String(Number(ui.frame.dataset.frames) + 1);
      ui.progress.value = ev.step / ev.total;
      ui.status.textContent = `step ${ev.step} / ${ev.total}`;
      return false;
    case "done": {
      ui.progress.value = 1;
      const extra = ev.self_target_prob !== undefined ? `, the classifier's own probability of the class ${(100 * ev.self_target_prob).toFixed(1)}%` : "";
      ui.status.textContent = `done in ${ev.seconds} s${ev.label ? ` (class ${ev.label})` : ""}${extra}`;
      ui.frame.src = ev.grid;
      ui.download.href = ev.grid;
      const box = ui.final.querySelector(".images");
      box.innerHTML = "";
      ev.images.forEach((src, i) => {
        const a = document.createElement("a"); a.href = src; a.download = `egc-${i}.png`; a.title = "download this image";
        const img = document.createElement("img"); img.src = src; img.alt = `image ${i}`;
        a.appendChild(img); box.appendChild(a);
      });
      show(ui.final, true);
      return true;
    }
    case "error": setError(ui.err, ev.error); ui.status.textContent = "failed"; return true;
    case "cancelled": ui.status.textContent = "cancelled"; return true;
    default: return false;
  }
}

function cancelJob(ui) {
  if (ui.job) fetch(`/api/jobs/${ui.job}/cancel`, { method: "POST" }).catch(() => {});
  if (ui.controller) ui.controller.abort();
}
UI.gen.cancel.addEventListener("click", () => cancelJob(UI.gen));
UI.cag.cancel.addEventListener("click", () => cancelJob(UI.cag));

function num(id) { const v = $(id).value; return v === "" ? null : Number(v); }
$("gen-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const m = model();
  runJob(UI.gen, "/api/generate", {
    model: m.id, class: $("gen-class").value, sampler: $("gen-sampler").value, steps: num("gen-steps"), n: num("gen-n"),
    guidance: num("gen-guidance"), cfg: num("gen-cfg"), seed: num("gen-seed"),
  });
});
$("cag-form").addEventListener("submit", (e) => {
  e.preventDefault();
  runJob(UI.cag, "/api/cag", {
    classifier: $("cag-classifier").value, class: $("cag-class").value, size: num("cag-size"), n: num("cag-n"),
    steps: num("cag-steps"), seed: num("cag-seed"),
  });
});

clearCanvas();
init();
