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

function render(data) {
  const textMode = data.mode === "text2text" || data.mode === "image2text";
  results.classList.toggle("text", textMode);
  results.replaceChildren();
  if (!data.hits.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "No results.";
    results.append(p);
  }
  for (const hit of data.hits) {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.id = hit.id;
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
    label.textContent = hit.label || hit.filename;
    const desc = document.createElement("div");
    desc.className = "desc";
    desc.textContent = hit.description;
    info.append(score, label, desc);
    card.append(img, info);
    card.addEventListener("click", () => openViewer(hit));
    results.append(card);
  }
  setStatus(`${data.hits.length} results · ${data.mode} · ${data.took_ms} ms`);
}

async function searchText(text) {
  if (mode.value === "image2image" || mode.value === "image2text") mode.value = "text2image";
  preview.hidden = true;
  setStatus("Searching…");
  const params = new URLSearchParams({ q: text, mode: mode.value, k: "24" });
  render(await call(`${API}/search?${params}`));
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
  render(await call(`${API}/search/image`, { method: "POST", body }));
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
  else complain("Type a query, or choose, drop or paste an image.");
});
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
