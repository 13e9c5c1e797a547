// mmsearch web page: plain JavaScript, no build step, nothing fetched from the internet.
"use strict";
const API = "/api/v1";
const $ = (sel) => document.querySelector(sel);
const form = $("#search-form"), q = $("#q"), mode = $("#mode"), fileInput = $("#file");
const results = $("#results"), statusEl = $("#status"), viewer = $("#viewer");
const preview = $("#query-preview");
let queryImage = null;      // the Blob of the last image query
let current = null;         // the hit shown in the viewer

function setStatus(text, isError = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle("error", isError);
}

// Only the newest request may change the page: a slow answer to an earlier
// query (or to a mode switch) must not overwrite a newer result or error.
// Starting a request aborts the one in flight, which also spares the server.
let inflight = null;

function begin() {
  inflight?.abort();
  inflight = new AbortController();
  return inflight;
}

async function call(url, options = {}) {
  const ctl = begin();
  const res = await fetch(url, { ...options, signal: ctl.signal });
  if (res.status === 401) {  // not signed in (or the session expired)
    location.assign("/login");
    throw new DOMException("signing in", "AbortError");
  }
  const body = await res.json().catch(() => ({}));
  if (ctl.signal.aborted) throw new DOMException("superseded by a newer request", "AbortError");
  if (!res.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    throw new Error(detail || `HTTP ${res.status}`);
  }
  return body;
}

// Filters: the controls' values as query parameters, and the chips of what a search
// understood (from the controls, or read out of the query's words: "海边 2023年7月").
const CONTROLS = { after: "#f-after", before: "#f-before", place: "#f-place",
                   camera: "#f-camera", orientation: "#f-orientation" };

function filterParams() {
  const params = new URLSearchParams();
  for (const [name, sel] of Object.entries(CONTROLS)) {
    const value = $(sel).value.trim();
    if (value) params.set(name, value);
  }
  params.set("sort", $("#f-sort").value);
  if ($("#f-collapse").checked) params.set("collapse", "true");
  return params;
}

function renderChips(filters) {
  const chips = $("#chips");
  chips.replaceChildren();
  for (const { kind, text } of (filters && filters.understood) || []) {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.kind = kind;
    chip.textContent = `${kind}: ${text}`;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.title = "Remove this filter";
    remove.setAttribute("aria-label", `Remove ${kind} ${text}`);
    remove.textContent = "×";
    remove.addEventListener("click", () => removeFilter(kind, text));
    chip.append(remove);
    chips.append(chip);
  }
}

// A chip read out of the query's words goes with those words; one set by a control
// clears that control. Then the search runs again.
function removeFilter(kind, text) {
  if (q.value.includes(text)) q.value = q.value.replace(text, " ").replace(/\s+/g, " ").trim();
  else if (CONTROLS[kind]) $(CONTROLS[kind]).value = "";
  rerun();
}

function rerun() {
  const text = q.value.trim();
  const wantsImage = mode.value === "image2image" || mode.value === "image2text";
  if (wantsImage && queryImage) guard(searchImage(queryImage));
  else if (text) guard(searchText(text));
  else guard(browse());
}

function when(hit) {
  const date = hit.taken_at ? hit.taken_at.slice(0, 10) : "";
  const place = hit.place ? [hit.place.city, hit.place.country].filter(Boolean).join(", ") : "";
  return [date, place].filter(Boolean).join(" · ");
}

// The text with the spans [start, end) marked: built from text nodes and <mark>
// elements, never from HTML, so a photo's text cannot inject anything.
function highlighted(text, spans) {
  const out = document.createDocumentFragment();
  let at = 0;
  for (const { start, end } of [...spans].sort((a, b) => a.start - b.start)) {
    if (start < at) continue;
    out.append(text.slice(at, start));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(start, end);
    out.append(mark);
    at = end;
  }
  out.append(text.slice(at));
  return out;
}

// Where the query's words were found in a field of the hit (offsets into its value).
function spansIn(hit, field) {
  return ((hit.why && hit.why.matches) || []).filter((m) => m.field === field);
}

// The text read off the photo, cut to about `room` characters around its first match.
function ocrLine(hit, room = 90) {
  const text = hit.ocr_text.replace(/\n/g, " ");
  const spans = spansIn(hit, "ocr_text");
  const from = spans.length ? Math.max(0, Math.min(...spans.map((m) => m.start)) - 30) : 0;
  const shown = text.slice(from, from + room);
  const line = document.createElement("div");
  line.className = "ocr";
  line.title = "Text in the photo";
  if (from > 0) line.append("…");
  line.append(highlighted(shown, spans.map((m) => ({ start: m.start - from, end: m.end - from }))
    .filter((m) => m.start >= 0 && m.end <= shown.length)));
  if (from + room < text.length) line.append("…");
  return line;
}

function card(hit) {
  const el = document.createElement("article");
  el.className = "card";
  el.dataset.id = hit.id;
  if (hit.why) el.dataset.matchedBy = hit.why.matched_by;
  const img = document.createElement("img");
  img.loading = "lazy";
  img.src = hit.thumbnail_url;
  img.alt = hit.description;
  const info = document.createElement("div");
  info.className = "info";
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  const label = document.createElement("div");
  label.className = "label";
  if (hit.label) label.append(highlighted(hit.label, spansIn(hit, "label")));
  else label.append(highlighted(hit.filename, spansIn(hit, "file_name")));
  const desc = document.createElement("div");
  desc.className = "desc";
  desc.append(highlighted(hit.description, spansIn(hit, "description")));
  const taken = document.createElement("div");
  taken.className = "when";
  taken.textContent = when(hit);
  info.append(score, label, desc);
  if (hit.ocr_text) info.append(ocrLine(hit));
  info.append(taken);
  if (hit.copies) {
    const copies = document.createElement("div");
    copies.className = "copies";
    copies.textContent = `+${hit.copies} duplicate${hit.copies > 1 ? "s" : ""}`;
    info.append(copies);
  }
  el.append(img, info);
  el.addEventListener("click", () => openViewer(hit));
  return el;
}

// Results past the point where relevance ends (the server's cutoff) wait behind a button.
function showMoreButton(more) {
  const button = document.createElement("button");
  button.type = "button";
  button.id = "show-more";
  button.textContent = `Show ${more.length} more`;
  button.title = "Results past the point where relevance ends";
  button.addEventListener("click", () => {
    button.replaceWith(...more.map(card));
    setStatus(`${results.querySelectorAll(".card").length} results`);
  });
  return button;
}

function render(data) {
  const textMode = data.mode === "text2text" || data.mode === "image2text";
  results.classList.toggle("text", textMode);
  renderChips(data.filters);
  results.replaceChildren();
  const more = data.more || [];
  if (!data.hits.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = more.length ? "Nothing clearly relevant." : "No results.";
    results.append(p);
  }
  results.append(...data.hits.map(card));
  if (more.length) results.append(showMoreButton(more));
  const hidden = more.length ? ` (${more.length} less relevant hidden)` : "";
  setStatus(`${data.hits.length} results${hidden} · ${data.mode || "browse, newest first"} · ${data.took_ms} ms`);
}

async function searchText(text) {
  if (mode.value === "image2image" || mode.value === "image2text") mode.value = "text2image";
  preview.hidden = true;
  setStatus("Searching…");
  const params = filterParams();
  params.set("q", text);
  params.set("mode", mode.value);
  params.set("k", "24");
  params.set("cutoff", "auto");
  render(await call(`${API}/search?${params}`));
}

async function browse() {
  preview.hidden = true;
  setStatus("Browsing…");
  const params = filterParams();
  params.set("k", "48");
  render(await call(`${API}/browse?${params}`));
}

// Sets of copies of one photo, side by side: the copy to keep first, then the others with
// their similarity to it (exact: the same bytes).
async function showDuplicates() {
  preview.hidden = true;
  setStatus("Looking for duplicates…");
  const data = await call(`${API}/duplicates`);
  renderChips(null);
  results.classList.remove("text");
  results.replaceChildren();
  for (const group of data.groups) {
    const box = document.createElement("section");
    box.className = "group";
    box.dataset.kind = group.kind;
    const title = document.createElement("h3");
    title.textContent = `${group.items.length} copies · ${group.kind}`;
    const members = document.createElement("div");
    members.className = "members";
    for (const item of group.items) {
      const figure = document.createElement("figure");
      figure.dataset.id = item.id;
      figure.dataset.kind = item.kind;
      const img = document.createElement("img");
      img.loading = "lazy";
      img.src = item.thumbnail_url;
      img.alt = item.filename;
      const caption = document.createElement("figcaption");
      const how = item.kind === "representative" ? "kept" : `${item.kind} ${item.similarity.toFixed(3)}`;
      caption.textContent = `${item.filename} · ${item.width}×${item.height} · ${how}`;
      figure.append(img, caption);
      members.append(figure);
    }
    box.append(title, members);
    results.append(box);
  }
  if (!data.groups.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "No duplicates found.";
    results.append(p);
  }
  setStatus(`${data.groups.length} sets of duplicates · ${data.duplicates} extra copies · ` +
            `${data.scanned} images compared`);
}

async function searchImage(blob) {
  queryImage = blob;
  if (mode.value === "text2image" || mode.value === "text2text") mode.value = "image2image";
  preview.hidden = false;
  preview.querySelector("img").src = URL.createObjectURL(blob);
  preview.querySelector("span").textContent = blob.name || "pasted image";
  setStatus("Searching…");
  const body = new FormData();
  body.append("file", blob, blob.name || "query.png");
  body.append("mode", mode.value);
  body.append("k", "24");
  const params = filterParams();
  params.set("cutoff", "auto");
  render(await call(`${API}/search/image?${params}`, { method: "POST", body }));
}

async function moreLikeThis(id) {
  viewer.close();
  preview.hidden = true;
  setStatus("Searching…");
  render(await call(`${API}/items/${encodeURIComponent(id)}/similar?k=24`));
}

function openViewer(hit) {
  current = hit;
  $("#viewer-img").src = hit.image_url;
  $("#viewer-img").alt = hit.description;
  $("#viewer-desc").textContent = hit.description;
  $("#viewer-extra").textContent =
    `${hit.label} · ${hit.keywords.join(", ")} · ${hit.width}×${hit.height} · ${hit.filename}`;
  viewer.showModal();
}

function guard(promise) {
  promise.catch((err) => { if (err.name !== "AbortError") setStatus(err.message, true); });
}

function complain(text) {
  begin();  // a search still in flight must not replace this message
  setStatus(text, true);
}

form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = q.value.trim();
  if (text) guard(searchText(text));
  else if (queryImage && (mode.value === "image2image" || mode.value === "image2text")) guard(searchImage(queryImage));
  else complain("Type a query, or choose, drop or paste an image (or Browse by filters).");
});
$("#filters").addEventListener("submit", (e) => { e.preventDefault(); rerun(); });
$("#filters").addEventListener("change", (e) => { if (e.target.id !== "f-place" && e.target.id !== "f-camera") rerun(); });
for (const sel of ["#f-place", "#f-camera"]) {
  $(sel).addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); rerun(); } });
}
$("#browse").addEventListener("click", () => guard(browse()));
$("#show-duplicates").addEventListener("click", () => guard(showDuplicates()));
mode.addEventListener("change", () => {
  const wantsImage = mode.value === "image2image" || mode.value === "image2text";
  if (wantsImage && queryImage) guard(searchImage(queryImage));
  else if (!wantsImage && q.value.trim()) guard(searchText(q.value.trim()));
});
fileInput.addEventListener("change", () => {
  if (fileInput.files.length) guard(searchImage(fileInput.files[0]));
});
$("#more-like-this").addEventListener("click", () => current && guard(moreLikeThis(current.id)));

const dropzone = $("#dropzone");
window.addEventListener("dragover", (e) => { e.preventDefault(); dropzone.hidden = false; });
dropzone.addEventListener("dragleave", () => { dropzone.hidden = true; });
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dropzone.hidden = true;
  const file = [...(e.dataTransfer?.files || [])].find((f) => f.type.startsWith("image/"));
  if (file) guard(searchImage(file));
});
window.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
  if (item) guard(searchImage(item.getAsFile()));
});

guard(call(`${API}/stats`).then((s) => setStatus(s.exists ? `${s.count} images indexed · ${s.embedder}` : "Nothing indexed yet: run `mmsearch index PATH`.")));
