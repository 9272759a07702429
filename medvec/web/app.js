// Medvec search page: talks to /api/* on this origin only. Images are fetched with the same
// Authorization header as the JSON calls and shown through blob: URLs, so a token never sits in a URL.
"use strict";

const TOKEN_KEY = "medvec.token";
const META_ROWS = [
  ["image_id", "Image id"], ["study_id", "Study"], ["series_id", "Series"], ["subject_key", "Subject key"],
  ["view_position", "View"], ["modality", "Modality"], ["body_part", "Body part"], ["labels", "Labels"],
  ["split", "Split"], ["source_size", "Source size"], ["webp_size", "Image size"], ["source_format", "Format"],
  ["photometric", "Photometric"], ["bits_stored", "Bits stored"], ["window_source", "Window"], ["batch", "Batch"],
  ["extra", "Extra"],
];

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  last: null,          // the query on screen: {kind: "text", text} | {kind: "image", file} | {kind: "similar", imageId}
  selected: null,      // the hit shown in the detail panel
  resultBlobs: [],     // blob: URLs of the thumbnails on screen, revoked when results change
  detailBlob: null,
  generation: 0,       // a newer search makes older answers stale
};

const $ = (selector) => document.querySelector(selector);

// --- talking to the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(path, { ...options, headers });
  if (response.ok) return response;
  let message = `${response.status} ${response.statusText}`;
  try {
    const body = await response.json();
    if (body && body.error) message = body.error;
  } catch (_) { /* not JSON: keep the status line */ }
  if (response.status === 401) showTokenForm(true);
  throw new ApiError(response.status, message);
}

const getJson = async (path, options) => (await api(path, options)).json();

async function blobUrl(path) {
  const blob = await (await api(path)).blob();
  return URL.createObjectURL(blob);
}

// --- token ----------------------------------------------------------------------------------------

function takeTokenFromAddress() {
  const address = new URL(window.location.href);
  const token = address.searchParams.get("token");
  if (!token) return;
  setToken(token);
  address.searchParams.delete("token");
  history.replaceState(null, "", address.pathname + address.search + address.hash);
}

function setToken(token) {
  state.token = token;
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function showTokenForm(show) {
  $("#token-form").hidden = !show;
  if (show) $("#token-input").focus();
}

// --- startup: health, then the filter values from /api/stats ---------------------------------------

async function start() {
  takeTokenFromAddress();
  const health = await getJson("/api/health").catch((err) => ({ ok: false, reason: err.message }));
  $("#status").textContent = health.ok
    ? `${health.model} · ${health.rows} images · ${health.table} v${health.table_version}`
    : `not ready: ${health.reason}`;
  $("#status").classList.toggle("bad", !health.ok);
  if (health.auth_required && !state.token) {
    showTokenForm(true);
    return;
  }
  await loadFilters();
}

async function loadFilters() {
  try {
    const stats = await getJson("/api/stats");
    fillFilter("#filter-view", stats.by_view);
    fillFilter("#filter-label", stats.by_label);
    fillFilter("#filter-modality", stats.by_modality);
    fillFilter("#filter-split", stats.by_split);
    showTokenForm(false);
  } catch (err) {
    showError(err.message);
  }
}

function fillFilter(selector, counts) {
  const group = $(selector);
  group.querySelectorAll("label").forEach((label) => label.remove());
  for (const [value, count] of Object.entries(counts || {})) {
    if (value === "unknown") continue; // missing values cannot be filtered on
    const label = document.createElement("label");
    label.className = "chip";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = value;
    box.addEventListener("change", rerun);
    label.append(box, ` ${value} `, element("small", String(count)));
    group.append(label);
  }
}

function queryParams() {
  const params = new URLSearchParams();
  params.set("k", $("#k").value || "12");
  document.querySelectorAll(".filters fieldset").forEach((group) => {
    group.querySelectorAll("input:checked").forEach((box) => params.append(group.dataset.param, box.value));
  });
  return params;
}

// --- searching ------------------------------------------------------------------------------------

async function run(query) {
  const generation = ++state.generation;
  state.last = query;
  showError("");
  document.body.classList.add("busy");
  const started = performance.now();
  try {
    const result = await ask(query, queryParams());
    if (generation !== state.generation) return;
    renderResults(result, performance.now() - started, query);
  } catch (err) {
    if (generation === state.generation) showError(err.message);
  } finally {
    if (generation === state.generation) document.body.classList.remove("busy");
  }
}

function ask(query, params) {
  if (query.kind === "text") {
    params.set("q", query.text);
    return getJson(`/api/search?${params}`);
  }
  if (query.kind === "image") {
    const form = new FormData();
    form.append("file", query.file);
    return getJson(`/api/search/image?${params}`, { method: "POST", body: form });
  }
  return getJson(`/api/similar/${encodeURIComponent(query.imageId)}?${params}`);
}

function rerun() {
  if (state.last) run(state.last);
}

function describe(query) {
  if (query.kind === "text") return `“${query.text}”`;
  if (query.kind === "image") return `the uploaded ${query.file.name}`;
  return `image ${shortId(query.imageId)}`;
}

// --- showing results ------------------------------------------------------------------------------

function renderResults(result, roundTripMs, query) {
  state.resultBlobs.forEach((url) => URL.revokeObjectURL(url));
  state.resultBlobs = [];
  const grid = $("#results");
  grid.replaceChildren(...result.hits.map(card));
  $("#empty").hidden = result.hits.length > 0;
  $("#empty").textContent = "No images match these filters.";
  const what = query.kind === "similar" ? "similar to" : "for";
  $("#summary").replaceChildren(
    element("strong", `${result.hits.length} hit${result.hits.length === 1 ? "" : "s"}`),
    ` ${what} ${describe(query)} · route `, element("code", result.route, "route"),
    ` · search ${result.took_ms.toFixed(1)} ms · round trip `,
    element("span", `${Math.round(roundTripMs)} ms`, "latency"),
  );
}

function card(hit) {
  const article = element("article", null, "card");
  article.dataset.imageId = hit.image_id;
  article.tabIndex = 0;
  const img = element("img", null, "thumb");
  img.alt = `${hit.view_position || "image"} ${(hit.labels || []).join(", ")}`;
  blobUrl(hit.thumbnail_url).then((url) => {
    state.resultBlobs.push(url);
    img.src = url;
  }).catch(() => img.classList.add("missing"));

  const similar = element("button", "Find similar", "similar");
  similar.type = "button";
  similar.addEventListener("click", (event) => {
    event.stopPropagation();
    run({ kind: "similar", imageId: hit.image_id });
  });
  const body = element("div", null, "card-body");
  body.append(
    row(element("span", `#${hit.rank}`, "rank"), element("span", hit.score.toFixed(4), "score")),
    tags(hit),
    similar,
  );
  article.append(img, body);
  article.addEventListener("click", () => openDetail(hit));
  article.addEventListener("keydown", (event) => { if (event.key === "Enter") openDetail(hit); });
  return article;
}

function tags(hit) {
  const box = element("div", null, "tags");
  if (hit.view_position) box.append(element("span", hit.view_position, "tag view"));
  for (const label of hit.labels || []) box.append(element("span", label, "tag label"));
  if (hit.split) box.append(element("span", hit.split, "tag split"));
  return box;
}

// --- the detail panel -----------------------------------------------------------------------------

async function openDetail(hit) {
  state.selected = hit;
  document.querySelectorAll(".card.selected").forEach((c) => c.classList.remove("selected"));
  document.querySelectorAll(".card").forEach((c) => {
    if (c.dataset.imageId === hit.image_id) c.classList.add("selected");
  });
  $("#detail").hidden = false;
  $("#detail-meta tbody").replaceChildren(...META_ROWS.map(([key, title]) => metaRow(title, metaValue(hit, key))));
  const img = $("#detail-image");
  img.removeAttribute("src");
  img.alt = `full image ${hit.image_id}`;
  try {
    const url = await blobUrl(hit.image_url);
    if (state.selected !== hit) return URL.revokeObjectURL(url);
    if (state.detailBlob) URL.revokeObjectURL(state.detailBlob);
    state.detailBlob = url;
    img.src = url;
  } catch (err) {
    showError(err.message);
  }
}

function metaValue(hit, key) {
  if (key === "source_size") return hit.columns && hit.rows ? `${hit.columns} × ${hit.rows}` : "";
  if (key === "webp_size") return hit.width && hit.height ? `${hit.width} × ${hit.height}` : "";
  if (key === "labels") return (hit.labels || []).join(", ");
  if (key === "extra") return Object.keys(hit.extra || {}).length ? JSON.stringify(hit.extra) : "";
  const value = hit[key];
  return value === null || value === undefined ? "" : String(value);
}

function metaRow(title, value) {
  const tr = document.createElement("tr");
  const cell = element("td", value || "—");
  if (title === "Image id") cell.className = "image-id";
  tr.append(element("th", title), cell);
  return tr;
}

function closeDetail() {
  state.selected = null;
  $("#detail").hidden = true;
  document.querySelectorAll(".card.selected").forEach((c) => c.classList.remove("selected"));
}

// --- small helpers --------------------------------------------------------------------------------

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== null && text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function row(...children) {
  const box = element("div", null, "row");
  box.append(...children);
  return box;
}

function shortId(id) {
  return id.length > 18 ? `…${id.slice(-16)}` : id;
}

function showError(message) {
  $("#error").textContent = message;
  $("#error").hidden = !message;
}

// --- wiring ---------------------------------------------------------------------------------------

function wire() {
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("#q").value.trim();
    if (text) run({ kind: "text", text });
  });
  $("#upload").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = ""; // choosing the same file again still searches
    if (file) run({ kind: "image", file });
  });
  $("#k").addEventListener("change", rerun);
  $("#detail-close").addEventListener("click", closeDetail);
  $("#detail-similar").addEventListener("click", () => {
    if (state.selected) run({ kind: "similar", imageId: state.selected.image_id });
  });
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("#token-input").value.trim());
    $("#token-input").value = "";
    loadFilters().then(rerun);
  });
  $("#token-forget").addEventListener("click", () => {
    setToken("");
    showTokenForm(true);
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) run({ kind: "image", file });
  });
}

wire();
start();
