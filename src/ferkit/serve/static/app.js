// ferkit serve's page: plain JavaScript, no build step, no CDN.
// Photo mode: POST /v1/predict, draw boxes, labels and probability bars.
// Webcam mode: frames over the WebSocket /v1/stream, one in flight at a time; the server tracks the faces
// and smooths their probabilities; boxes, labels and the largest face's timeline are drawn here. A busy
// server answers a frame with {"type": "busy"}: the page waits and sends the next one.
// Video mode: POST /v1/jobs, poll the job, then download its CSV, per-track summary and timeline.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = { angry: "#dc2626", disgust: "#16a34a", disgusted: "#16a34a", fear: "#7c3aed", fearful: "#7c3aed",
                 happy: "#f59e0b", sad: "#2563eb", surprise: "#0891b2", surprised: "#0891b2", neutral: "#6b7280",
                 contempt: "#db2777" };
const SPARE = ["#b45309", "#0f766e", "#9333ea", "#be123c", "#4d7c0f", "#1e40af"];
let classes = [];
let token = sessionStorage.getItem("ferkit-token") || "";

function color(name) {
  if (COLORS[name]) return COLORS[name];
  const i = Math.max(0, classes.indexOf(name));
  return SPARE[i % SPARE.length];
}

function showError(text) {
  const el = $("error");
  el.textContent = text || "";
  el.hidden = !text;
}

function authHeaders() {
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...(options.headers || {}), ...authHeaders() } });
  let body = null;
  try { body = await res.json(); } catch (e) { body = { error: res.statusText }; }
  if (res.status === 401) {
    $("token-box").hidden = false;
  }
  if (!res.ok) throw new Error((body && body.error) || ("HTTP " + res.status));
  return body;
}

async function loadModel() {
  try {
    const info = await api("/v1/models");
    const m = info.models[0];
    classes = m.classes;
    $("model").textContent = `model: ${m.name} (${m.arch || m.backend}, ${m.classes.length} classes, ` +
      `${m.image_size} px)`;
    $("token-box").hidden = true;
    showError("");
  } catch (e) {
    $("model").textContent = "model: ?";
    showError(e.message);
  }
}

// ------------------------------------------------------------------ drawing
function barsHtml(probabilities) {
  const frag = document.createDocumentFragment();
  const names = classes.length ? classes : Object.keys(probabilities);
  for (const name of names) {
    const p = probabilities[name] || 0;
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.cls = name;
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = (100 * p).toFixed(1) + "%";
    fill.style.background = color(name);
    track.appendChild(fill);
    const num = document.createElement("span");
    num.className = "num";
    num.textContent = (100 * p).toFixed(0) + "%";
    row.append(label, track, num);
    frag.appendChild(row);
  }
  return frag;
}

function faceCard(title, label, confidence, probabilities) {
  const li = document.createElement("li");
  li.className = "face";
  const head = document.createElement("div");
  head.className = "title";
  const name = document.createElement("span");
  name.textContent = title;
  const lab = document.createElement("span");
  lab.className = "label";
  lab.textContent = `${label} ${(100 * confidence).toFixed(0)}%`;
  lab.style.color = color(label);
  head.append(name, lab);
  li.append(head, barsHtml(probabilities));
  return li;
}

function drawBox(ctx, box, text, col, scale) {
  const [x, y, w, h] = box.map((v) => v * scale);
  const lw = Math.max(2, Math.round(Math.min(ctx.canvas.width, ctx.canvas.height) / 200));
  ctx.lineWidth = lw + 2;             // a white halo keeps the box visible on any background
  ctx.strokeStyle = "rgba(255, 255, 255, 0.85)";
  ctx.strokeRect(x, y, w, h);
  ctx.lineWidth = lw;
  ctx.strokeStyle = col;
  ctx.strokeRect(x, y, w, h);
  const size = Math.max(13, Math.round(Math.min(ctx.canvas.width, ctx.canvas.height) / 28));
  ctx.font = `600 ${size}px system-ui, sans-serif`;
  const tw = ctx.measureText(text).width + 10;
  const ty = y - size - 8 >= 0 ? y - size - 8 : y + h;
  ctx.fillStyle = col;
  ctx.fillRect(x - lw / 2, ty, tw, size + 8);
  ctx.fillStyle = "#fff";
  ctx.fillText(text, x + 5 - lw / 2, ty + size + 1);
}

// ------------------------------------------------------------------ photo mode
async function predictPhoto(file) {
  showError("");
  const canvas = $("photo-canvas");
  const list = $("photo-faces");
  list.replaceChildren();
  $("photo-status").textContent = "finding faces ...";
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  let result;
  try {
    result = await api("/v1/predict", { method: "POST", body: form });
  } catch (e) {
    $("photo-status").textContent = "";
    showError(e.message);
    return;
  }
  let bitmap;
  try {
    // the server applied the EXIF orientation; the browser does too (createImageBitmap's default)
    bitmap = await createImageBitmap(file);
  } catch (e) {
    showError("the browser cannot show this image, but the server read it: see the list");
  }
  if (bitmap) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(bitmap, 0, 0);
    const scale = bitmap.width / result.width;
    result.faces.forEach((f, i) => drawBox(ctx, f.box, `${i + 1} ${f.label}`, color(f.label), scale));
  }
  canvas.dataset.faces = String(result.faces.length);
  canvas.dataset.boxes = JSON.stringify(bitmap ? result.faces.map((f) => f.box.map((v) => v * canvas.width / result.width))
                                              : []);
  result.faces.forEach((f, i) => list.appendChild(faceCard(`face ${i + 1}`, f.label, f.confidence,
                                                           f.probabilities)));
  const t = result.timing_ms;
  $("photo-status").textContent = result.faces.length
    ? `${result.faces.length} face(s), ${result.width}x${result.height}, ${t.total.toFixed(0)} ms on the server`
    : `no face found in ${result.width}x${result.height} (frontal faces of at least a tenth of the image)`;
}

function setupPhoto() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => { if (e.target.files[0]) predictPhoto(e.target.files[0]); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) predictPhoto(f);
  });
}

// ------------------------------------------------------------------ webcam mode
const cam = { stream: null, ws: null, running: false, history: [], sent: 0, got: 0, t0: 0, lastSent: 0,
              latency: 0, grab: document.createElement("canvas") };
const WINDOW_S = 30;

// The server tracks the faces (IoU) and smooths each track's probabilities over the slider's seconds
// (the same code as for videos): every face comes with its track id, smoothed and raw probabilities.
function drawLive(result, now) {
  const overlay = $("overlay");
  const video = $("video");
  overlay.width = video.clientWidth;
  overlay.height = video.clientHeight;
  const ctx = overlay.getContext("2d");
  ctx.clearRect(0, 0, overlay.width, overlay.height);
  const scale = overlay.width / result.width;
  for (const f of result.faces) drawBox(ctx, f.box, `#${f.track} ${f.label}`, color(f.label), scale);
  const list = $("live-faces");
  list.replaceChildren();
  for (const f of result.faces) list.appendChild(faceCard(`face #${f.track}`, f.label, f.confidence, f.probabilities));
  // the timeline follows the largest face
  const main = result.faces.slice().sort((a, b) => b.box[2] * b.box[3] - a.box[2] * a.box[3])[0];
  cam.history.push({ t: now, probs: main ? main.probabilities : null });
  while (cam.history.length && now - cam.history[0].t > WINDOW_S * 1000) cam.history.shift();
  drawTimeline(now);
}

function drawTimeline(now) {
  const c = $("timeline");
  const ctx = c.getContext("2d");
  const W = c.width, H = c.height, pad = 24;
  ctx.clearRect(0, 0, W, H);
  ctx.strokeStyle = "#e5e7eb";
  ctx.fillStyle = "#9ca3af";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const v of [0, 0.5, 1]) {
    const y = H - pad - v * (H - 2 * pad);
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(W - 4, y); ctx.stroke();
    ctx.fillText(v.toFixed(1), 2, y + 4);
  }
  ctx.fillText(`-${WINDOW_S} s`, pad, H - 6);
  ctx.fillText("now", W - 28, H - 6);
  const x = (t) => pad + (W - pad - 4) * (1 - (now - t) / (WINDOW_S * 1000));
  ctx.lineWidth = 2;
  for (const name of classes) {
    ctx.strokeStyle = color(name);
    ctx.beginPath();
    let pen = false;
    for (const h of cam.history) {
      if (!h.probs) { pen = false; continue; }
      const y = H - pad - (h.probs[name] || 0) * (H - 2 * pad);
      if (pen) ctx.lineTo(x(h.t), y); else ctx.moveTo(x(h.t), y);
      pen = true;
    }
    ctx.stroke();
  }
}

function drawLegend() {
  const el = $("legend");
  el.replaceChildren();
  for (const name of classes) {
    const s = document.createElement("span");
    const i = document.createElement("i");
    i.style.background = color(name);
    s.append(i, document.createTextNode(name));
    el.appendChild(s);
  }
}

function sendFrame() {
  if (!cam.running || !cam.ws || cam.ws.readyState !== WebSocket.OPEN) return;
  const video = $("video");
  if (!video.videoWidth) { setTimeout(sendFrame, 50); return; }
  const scale = Math.min(1, 640 / video.videoWidth);
  const g = cam.grab;
  g.width = Math.round(video.videoWidth * scale);
  g.height = Math.round(video.videoHeight * scale);
  g.getContext("2d").drawImage(video, 0, 0, g.width, g.height);
  g.toBlob((blob) => {
    if (!blob || !cam.running || cam.ws.readyState !== WebSocket.OPEN) return;
    cam.lastSent = performance.now();
    cam.sent += 1;
    cam.ws.send(blob);
  }, "image/jpeg", 0.8);
}

async function startCam() {
  showError("");
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError("this browser gives no camera here (camera access needs the page on localhost, or served over TLS)");
    return;
  }
  try {
    cam.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 },
                                                                     height: { ideal: 480 } }, audio: false });
  } catch (e) {
    showError("no camera: " + e.message);
    return;
  }
  const video = $("video");
  video.srcObject = cam.stream;
  await video.play();
  if (!classes.length) await loadModel();
  drawLegend();
  cam.running = true;
  cam.history = []; cam.sent = 0; cam.got = 0; cam.t0 = performance.now();
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/v1/stream");
  cam.ws = ws;
  ws.onopen = () => {
    ws.send(JSON.stringify(token ? { token, smooth: smoothSeconds() } : { smooth: smoothSeconds() }));
    sendFrame();
  };
  ws.onmessage = (ev) => {
    let m;
    try { m = JSON.parse(ev.data); } catch (e) { return; }
    if (m.type === "faces") {
      const now = performance.now();
      cam.got += 1;
      cam.latency = now - cam.lastSent;
      drawLive(m, now);
      const fps = cam.got / Math.max(0.001, (now - cam.t0) / 1000);
      $("cam-status").textContent = `${cam.got} frames, ${fps.toFixed(1)} fps, ${cam.latency.toFixed(0)} ms per frame`;
      $("cam-status").dataset.frames = String(cam.got);
      sendFrame();
    } else if (m.type === "busy") {
      cam.busy = (cam.busy || 0) + 1;
      $("cam-status").dataset.busy = String(cam.busy);
      $("cam-status").textContent = `the server is busy; retrying (${cam.busy})`;
      setTimeout(sendFrame, 1000 * (m.retry_after || 1));
    } else if (m.type === "error") {
      if (m.status === 401) $("token-box").hidden = false;
      showError(m.error);
      setTimeout(sendFrame, 500);
    }
  };
  ws.onclose = (ev) => {
    if (cam.running && ev.code !== 1000) showError(`the stream closed (${ev.code}${ev.reason ? ": " + ev.reason : ""})`);
    stopCam();
  };
  $("cam-start").disabled = true;
  $("cam-stop").disabled = false;
}

function stopCam() {
  cam.running = false;
  if (cam.ws && cam.ws.readyState <= WebSocket.OPEN) cam.ws.close(1000);
  cam.ws = null;
  if (cam.stream) cam.stream.getTracks().forEach((t) => t.stop());
  cam.stream = null;
  $("cam-start").disabled = false;
  $("cam-stop").disabled = true;
}

// ------------------------------------------------------------------ video mode
const jobs = { job: null, downloads: [] };

async function uploadVideo(file) {
  showError("");
  $("video-downloads").hidden = true;
  $("video-timeline").hidden = true;
  $("video-status").textContent = `uploading ${file.name} ...`;
  let job;
  try {
    job = await api("/v1/jobs", { method: "POST", body: file,
                                  headers: { "Content-Type": file.type || "application/octet-stream" } });
  } catch (e) {
    $("video-status").textContent = "";
    showError(e.message);
    return;
  }
  jobs.job = job;
  while (job.state === "queued" || job.state === "running") {
    $("video-status").textContent = `job ${job.id}: ${job.state} ...`;
    await new Promise((ok) => setTimeout(ok, 500));
    try {
      job = await api(`/v1/jobs/${job.id}`);
    } catch (e) {
      showError(e.message);
      return;
    }
    jobs.job = job;
  }
  const status = $("video-status");
  status.dataset.state = job.state;
  if (job.state !== "done") {
    status.textContent = `job ${job.id} failed: ${job.error}`;
    return;
  }
  status.textContent = `${file.name}: ${job.frames} frames, ${job.faces} face rows, ${job.tracks} track(s); ` +
    `the files are kept until ${new Date(job.expires * 1000).toLocaleTimeString()}`;
  $("video-downloads").hidden = false;
  const blob = await fetchBlob(job.files.timeline_png);
  if (blob) {
    $("video-timeline").src = URL.createObjectURL(blob);
    $("video-timeline").hidden = false;
  }
}

async function fetchBlob(url) {
  const res = await fetch(url, { headers: authHeaders() });
  if (!res.ok) {
    let body = {};
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    showError(body.error || `HTTP ${res.status}`);
    return null;
  }
  return res.blob();
}

// the files need the token when the server has one, so they are fetched and saved from a blob
async function download(button) {
  if (!jobs.job || jobs.job.state !== "done") return;
  const name = button.dataset.file;
  const blob = await fetchBlob(`/v1/jobs/${jobs.job.id}/${name}`);
  if (!blob) return;
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  jobs.downloads.push({ name, size: blob.size, type: blob.type });
  button.dataset.bytes = String(blob.size);
}

// ------------------------------------------------------------------ wiring
function mode(name) {
  for (const m of ["photo", "cam", "video"]) {
    $(`${m}-mode`).hidden = m !== name;
    $(`tab-${m}`).classList.toggle("active", m === name);
  }
  if (name !== "cam") stopCam();
}

$("tab-photo").addEventListener("click", () => mode("photo"));
$("tab-cam").addEventListener("click", () => mode("cam"));
$("tab-video").addEventListener("click", () => mode("video"));
$("video-file").addEventListener("change", (e) => { if (e.target.files[0]) uploadVideo(e.target.files[0]); });
for (const b of document.querySelectorAll("#video-downloads button")) b.addEventListener("click", () => download(b));
$("cam-start").addEventListener("click", startCam);
$("cam-stop").addEventListener("click", stopCam);
function smoothSeconds() {
  return parseFloat($("smooth").value);
}
$("smooth").addEventListener("input", (e) => { $("smooth-value").textContent = e.target.value + " s"; });
$("smooth").addEventListener("change", () => {
  if (cam.ws && cam.ws.readyState === WebSocket.OPEN) cam.ws.send(JSON.stringify({ smooth: smoothSeconds() }));
});
$("token-save").addEventListener("click", () => {
  token = $("token").value.trim();
  sessionStorage.setItem("ferkit-token", token);
  loadModel();
});
setupPhoto();
loadModel();
