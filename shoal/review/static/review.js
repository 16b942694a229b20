// Shoal review page: draws the session's state (GET api/state) over its frames and sends corrections
// (POST api/corrections). No library: the server does the work, this file only draws and asks.
"use strict";

const api = location.pathname.replace(/\/?$/, "/") + "api/";
const $ = (id) => document.getElementById(id);
const view = $("view"), ctx = view.getContext("2d");
const line = $("timeline"), tctx = line.getContext("2d");
const TRAIL = 30, ROW = 12, BAND = 10;

let state = null;          // the server's answer, replaced after every correction
let frame = 0;             // the frame shown
let selected = null;       // identity number (1..N) being corrected
let playing = false, moving = false;
let image = null, outlines = [];
let request = 0;           // only the newest frame request is drawn
let doubtIndex = -1;

function message(text) { $("message").textContent = text || ""; }

async function call(path, options) {
  const response = await fetch(api + path, options);
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.blob();
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

async function correct(op) {
  try {
    state = await call("corrections", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(op),
    });
    message("");
    render();
  } catch (error) {
    message(error.message);
  }
}

// ---- frames --------------------------------------------------------------------------------------

async function show(target) {
  frame = Math.max(0, Math.min(state.n_frames - 1, target | 0));
  $("frame").value = frame;
  $("from").placeholder = frame;
  const mine = ++request;
  try {
    const wanted = [call(`frames/${frame}.jpg`)];
    if ($("outlines").checked && state.outlines) wanted.push(call(`blobs/${frame}`));
    const [blob, polygons] = await Promise.all(wanted);
    const bitmap = await createImageBitmap(blob);
    if (mine !== request) return;
    image = bitmap;
    outlines = polygons || [];
    draw();
  } catch (error) {
    if (mine === request) message(error.message);
  }
}

function position(k, f) {
  const x = state.x[k][f], y = state.y[k][f];
  return x === null || y === null ? null : [x, y];
}

function draw() {
  if (image) ctx.drawImage(image, 0, 0);
  const radius = Math.max(3, state.body_length / 7);
  ctx.lineWidth = Math.max(1.5, state.body_length / 25);
  ctx.strokeStyle = "rgba(255, 212, 0, 0.95)";
  for (const polygon of outlines) {
    ctx.beginPath();
    polygon.forEach(([x, y], i) => (i ? ctx.lineTo(x + 0.5, y + 0.5) : ctx.moveTo(x + 0.5, y + 0.5)));
    ctx.closePath();
    ctx.stroke();
  }
  ctx.font = `${Math.max(12, radius * 2)}px sans-serif`;
  for (let k = 0; k < state.n_animals; k++) {
    const colour = state.colours[k];
    if ($("trail").checked) {
      ctx.strokeStyle = colour;
      ctx.beginPath();
      let open = false;
      for (let f = Math.max(0, frame - TRAIL); f <= frame; f++) {
        const p = position(k, f);
        if (!p) { open = false; continue; }
        if (open) ctx.lineTo(p[0], p[1]); else ctx.moveTo(p[0], p[1]);
        open = true;
      }
      ctx.stroke();
    }
    const p = position(k, frame);
    if (!p) continue;
    ctx.fillStyle = colour;
    ctx.beginPath();
    ctx.arc(p[0], p[1], k + 1 === selected ? radius * 1.6 : radius, 0, 2 * Math.PI);
    ctx.fill();
    if (state.certainty[k][frame] === null) {  // inside a crossing: interpolated, not seen
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    }
    ctx.fillText(state.labels[k], p[0] + radius * 1.4, p[1] - radius * 1.4);
  }
  drawTimeline();
  describeIdentities();
}

// ---- panels --------------------------------------------------------------------------------------

// While the server builds its frame proxy, jumps far away are slower: say so until it is done.
async function watchProxy(progress) {
  while (progress.running) {
    $("proxy").textContent = `· preparing fast scrubbing ${Math.floor(100 * progress.indexed / progress.n_frames)} %`;
    await new Promise((resolve) => setTimeout(resolve, 2000));
    try { progress = await call("progress"); } catch (error) { return; }
  }
  $("proxy").textContent = "";
}

function render() {
  document.title = `Shoal review — ${state.title}`;
  $("title").textContent = state.title;
  const estimate = state.estimated_accuracy;
  $("summary").textContent = `${state.n_animals} animals · ${state.n_frames} frames · estimated accuracy ` +
    (estimate === null || estimate === undefined ? "—" : estimate.toFixed(3)) +
    (state.warnings.length ? ` · ${state.warnings.length} warning(s)` : "");
  $("summary").title = state.warnings.join("\n");
  $("of").textContent = `/ ${state.n_frames - 1}`;
  $("frame").max = state.n_frames - 1;
  $("undo").disabled = !state.can_undo;
  $("redo").disabled = !state.can_redo;
  $("outlines").disabled = !state.outlines;

  const list = $("identities");
  if (list.children.length !== state.n_animals) {
    list.replaceChildren(...state.labels.map((label, k) => {
      const item = document.createElement("li");
      item.className = "identity";
      item.dataset.identity = String(k + 1);
      item.innerHTML = `<span class="swatch"></span><span class="label"></span><span class="where"></span>`;
      item.querySelector(".swatch").style.background = state.colours[k];
      item.querySelector(".label").textContent = `${k + 1}` + (label !== String(k + 1) ? ` (${label})` : "");
      item.addEventListener("click", () => select(k + 1));
      return item;
    }));
    $("other").replaceChildren(...state.labels.map((label, k) => new Option(`${k + 1}`, String(k + 1))));
  }
  const doubts = $("doubtful");
  doubts.replaceChildren(...state.doubtful.map((moment, i) => {
    const item = document.createElement("li");
    item.textContent = moment.text;
    item.title = `${moment.kind}, score ${moment.score.toFixed(2)}`;
    item.addEventListener("click", () => { doubtIndex = i; goToDoubt(); });
    return item;
  }));
  doubtIndex = -1;  // the list changed: "next doubtful" starts again from the most doubtful moment left
  $("doubt-count").textContent = `(${state.doubtful.length})`;
  $("history").replaceChildren(...state.corrections.map((entry) => {
    const item = document.createElement("li");
    item.textContent = describe(entry);
    return item;
  }));
  select(selected);
  show(frame);
}

function describe(entry) {
  const range = (s, e) => (e === null || e === undefined ? `from frame ${s} on` : `frames ${s}–${e - 1}`);
  switch (entry.op) {
    case "swap": return `swapped ${entry.a} ↔ ${entry.b}, ${range(entry.start, entry.end)}`;
    case "assign": return `fragment of ${entry.identity} given to ${entry.to}, ${range(entry.start, entry.end)}`;
    case "move": return `moved ${entry.identity} in frame ${entry.frame}`;
    case "delete": return `deleted ${entry.identity}, ${range(entry.start, entry.end)}`;
    case "check": return `checked ${range(entry.start, entry.end)}`;
    default: return entry.op;
  }
}

function describeIdentities() {
  for (const item of $("identities").children) {
    const k = Number(item.dataset.identity) - 1;
    const p = position(k, frame), c = state.certainty[k][frame];
    item.querySelector(".where").textContent = !p ? "unknown" :
      `${p[0].toFixed(0)}, ${p[1].toFixed(0)}` + (c === null ? " · crossing" : ` · ${c.toFixed(2)}`);
  }
}

function select(identity) {
  selected = identity && identity >= 1 && identity <= state.n_animals ? identity : null;
  for (const item of $("identities").children) {
    item.classList.toggle("selected", Number(item.dataset.identity) === selected);
  }
  $("selected-name").textContent = selected ? `identity ${selected}` : "(select an identity)";
  for (const id of ["swap", "assign", "move", "delete"]) $(id).disabled = !selected;
  if (selected && Number($("other").value) === selected) {
    $("other").value = String(selected % state.n_animals + 1);
  }
  if (image) draw();
}

// ---- timeline ------------------------------------------------------------------------------------

function certaintyColour(c) {
  const t = Math.max(0, Math.min(1, (c - 0.5) / 0.5));
  return `hsl(${Math.round(120 * t)}, 70%, 45%)`;
}

function drawTimeline() {
  const width = line.clientWidth;
  const height = BAND + ROW * state.n_animals;
  if (line.width !== width || line.height !== height) { line.width = width; line.height = height; }
  const sx = width / state.n_frames;
  tctx.clearRect(0, 0, width, height);
  tctx.fillStyle = "#1f6f6f";
  for (const [s, e] of state.checked) tctx.fillRect(s * sx, 0, Math.max(1, (e - s) * sx), BAND - 3);
  tctx.fillStyle = "#e8a33d";
  for (const m of state.doubtful) tctx.fillRect(m.start * sx, BAND - 3, Math.max(2, (m.end - m.start) * sx), 3);
  state.timeline.forEach((segments, k) => {
    const y = BAND + k * ROW;
    for (const segment of segments) {
      if (segment.kind === "gap") continue;
      tctx.fillStyle = segment.kind === "identified" ? certaintyColour(segment.certainty) : "#777";
      tctx.fillRect(segment.start * sx, y + 2, Math.max(1, (segment.end - segment.start) * sx), ROW - 4);
    }
    tctx.strokeStyle = "#5aa0ff";
    for (const [s, e] of state.corrected[k] || []) tctx.strokeRect(s * sx, y + 1, Math.max(1, (e - s) * sx), ROW - 2);
    tctx.fillStyle = state.colours[k];
    tctx.fillRect(0, y + 2, 3, ROW - 4);
  });
  tctx.fillStyle = "#fff";
  tctx.fillRect(frame * sx, 0, Math.max(1, sx), height);
}

line.addEventListener("click", (event) => {
  const box = line.getBoundingClientRect();
  const row = Math.floor((event.clientY - box.top - BAND) / ROW);
  if (row >= 0 && row < state.n_animals) select(row + 1);
  show(Math.floor((event.clientX - box.left) / box.width * state.n_frames));
});

// ---- corrections ---------------------------------------------------------------------------------

function range() {
  const start = $("from").value === "" ? frame : Number($("from").value);
  const end = $("to").value === "" ? null : Number($("to").value) + 1;  // the field is inclusive, as the history shows
  return { start, end };
}

function fragmentAt(k, f) {
  return (state.timeline[k] || []).find((s) => s.start <= f && f < s.end && s.kind !== "gap");
}

$("swap").addEventListener("click", () =>
  correct({ op: "swap", a: selected, b: Number($("other").value), ...range() }));
$("assign").addEventListener("click", () => {
  const segment = fragmentAt(selected - 1, frame);
  if (!segment) { message(`identity ${selected} has no fragment at frame ${frame}`); return; }
  correct({ op: "assign", identity: selected, to: Number($("other").value), start: segment.start, end: segment.end });
});
$("delete").addEventListener("click", () => correct({ op: "delete", identity: selected, start: frame, end: frame + 1 }));
$("check").addEventListener("click", () => {
  const { start, end } = range();
  correct({ op: "check", start, end: end === null ? state.n_frames : end });
});
$("move").addEventListener("click", () => {
  moving = !moving;
  $("move").classList.toggle("active", moving);
});
$("undo").addEventListener("click", () => correct({ op: "undo" }));
$("redo").addEventListener("click", () => correct({ op: "redo" }));

view.addEventListener("click", (event) => {
  const box = view.getBoundingClientRect();
  const x = (event.clientX - box.left) * view.width / box.width;
  const y = (event.clientY - box.top) * view.height / box.height;
  if (moving && selected) {
    moving = false;
    $("move").classList.remove("active");
    correct({ op: "move", identity: selected, frame, x, y });
    return;
  }
  let best = null, bestDistance = state.body_length;
  for (let k = 0; k < state.n_animals; k++) {
    const p = position(k, frame);
    if (p && Math.hypot(p[0] - x, p[1] - y) < bestDistance) { best = k + 1; bestDistance = Math.hypot(p[0] - x, p[1] - y); }
  }
  if (best) select(best);
});

// ---- playback and keys ---------------------------------------------------------------------------

function goToDoubt() {
  const moments = state.doubtful;
  if (!moments.length) { message("no doubtful moment left"); return; }
  doubtIndex = (doubtIndex + moments.length) % moments.length;
  const moment = moments[doubtIndex];
  [...$("doubtful").children].forEach((item, i) => item.classList.toggle("current", i === doubtIndex));
  $("doubtful").children[doubtIndex].scrollIntoView({ block: "nearest" });
  if (moment.identities.length) select(moment.identities[0]);
  // a jump starts at the last good frame: show where it lands, the first frame a swap must cover
  show(moment.kind === "jump" ? moment.end - 1 : moment.start);
}

async function play() {
  playing = !playing;
  $("play").textContent = playing ? "⏸" : "▶";
  while (playing && frame < state.n_frames - 1) {
    const started = performance.now();
    await show(frame + 1);
    const wait = 1000 / state.fps - (performance.now() - started);
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
  playing = false;
  $("play").textContent = "▶";
}

const step = (n) => () => show(frame + n);
$("back10").addEventListener("click", step(-10));
$("back1").addEventListener("click", step(-1));
$("fwd1").addEventListener("click", step(1));
$("fwd10").addEventListener("click", step(10));
$("play").addEventListener("click", play);
$("frame").addEventListener("change", () => show(Number($("frame").value)));
$("trail").addEventListener("change", draw);
$("outlines").addEventListener("change", () => show(frame));
$("next-doubt").addEventListener("click", () => { doubtIndex++; goToDoubt(); });
$("prev-doubt").addEventListener("click", () => { doubtIndex--; goToDoubt(); });

document.addEventListener("keydown", (event) => {
  if (event.target.matches("input, select") && event.key !== "Escape") return;
  const key = event.key, ctrl = event.ctrlKey || event.metaKey;
  const actions = {
    " ": play, ArrowRight: step(event.shiftKey ? 10 : 1), ArrowLeft: step(event.shiftKey ? -10 : -1),
    Home: () => show(0), End: () => show(state.n_frames - 1), g: () => $("frame").focus(),
    n: () => $("next-doubt").click(), p: () => $("prev-doubt").click(),
    t: () => { $("trail").checked = !$("trail").checked; draw(); },
    o: () => { $("outlines").checked = !$("outlines").checked; show(frame); },
    s: () => $("swap").click(), m: () => $("move").click(), Delete: () => $("delete").click(),
    c: () => $("check").click(), Escape: () => { moving = false; $("move").classList.remove("active"); view.focus(); },
  };
  let action = actions[key];
  if (ctrl && key.toLowerCase() === "z") action = event.shiftKey ? () => $("redo").click() : () => $("undo").click();
  else if (ctrl && key === "y") action = () => $("redo").click();
  else if (ctrl) action = null;
  else if (/^[1-9]$/.test(key)) action = () => select(Number(key));
  if (!action) return;
  event.preventDefault();
  action();
});

window.addEventListener("resize", () => state && drawTimeline());

(async () => {
  try {
    state = await call("state");
    view.width = state.width;
    view.height = state.height;
    render();
    watchProxy(state.frames);
  } catch (error) {
    message(`cannot load the session: ${error.message}`);
  }
})();
