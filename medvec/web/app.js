// Medvec search page: talks to /api/* on this origin only. Images are fetched with the same
// Authorization header as the JSON calls and shown through blob: URLs, so a token never sits in a URL.
// Two views, chosen by the address's #hash: search (the default) and metrics (the latest `medvec eval`).
// Where the home holds several collections, a picker chooses one; the address's ?collection= keeps the choice
// and every /api/* request carries it.
// Report text is only ever put on the page as text nodes (matched words in <mark> elements built here),
// never as HTML.
"use strict";

const TOKEN_KEY = "medvec.token";
const META_ROWS = [
  ["image_id", "Image id"], ["study_id", "Study"], ["series_id", "Series"], ["subject_key", "Subject key"],
  ["view_position", "View"], ["modality", "Modality"], ["body_part", "Body part"], ["labels", "Labels"],
  ["split", "Split"], ["source_size", "Source size"], ["webp_size", "Image size"], ["source_format", "Format"],
  ["photometric", "Photometric"], ["bits_stored", "Bits stored"], ["window_source", "Window"], ["batch", "Batch"],
  ["extra", "Extra"],
];

const REPORT_SECTIONS = [["indication", "Indication"], ["findings", "Findings"], ["impression", "Impression"]];
const ROUTE_TITLES = {
  image: "the text matched the image itself",
  report: "a matching report belongs to the image's study",
  "image+report": "found both directly and through a matching report",
};

const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  collection: new URL(window.location.href).searchParams.get("collection") || "", // "": the server's own
  reportsAvailable: false, // the model has a reports table (health says how many reports)
  last: null,          // the query on screen: {kind: "text", text} | {kind: "image", file} | {kind: "similar", imageId}
  selected: null,      // the hit shown in the detail panel
  resultBlobs: [],     // blob: URLs of the thumbnails on screen, revoked when results change
  detailBlob: null,
  generation: 0,       // a newer search makes older answers stale
  view: "search",      // "search" | "metrics"
  ready: false,        // health answered and, where one is needed, a token is at hand
  metricsBlobs: [],    // blob: URLs of the plot and hard-case thumbnails, revoked when the report is redrawn
  metricsGeneration: 0,
  relevant: new Set(),    // image ids marked "more like these" (relevance feedback), cleared by a new query
  notRelevant: new Set(), // image ids marked "not these"
};

// --- talking to the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The chosen collection on every /api/* request (image URLs from the server already name theirs).
function inCollection(path) {
  if (!state.collection || !path.startsWith("/api/") || path.startsWith("/api/collections")) return path;
  const url = new URL(path, window.location.origin);
  if (!url.searchParams.has("collection")) url.searchParams.set("collection", state.collection);
  return url.pathname + url.search;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  if (state.token) headers.set("Authorization", `Bearer ${state.token}`);
  const response = await fetch(inCollection(path), { ...options, headers });
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
  const reports = health.reports === null || health.reports === undefined ? "" : ` · ${health.reports} reports`;
  $("#status").textContent = health.ok
    ? `${health.model} · ${health.rows} images${reports} · ${health.table} v${health.table_version}`
    : `not ready: ${health.reason}`;
  $("#status").classList.toggle("bad", !health.ok);
  // Random or synthetic-only weights: say so beside every result, not only on the Metrics tab.
  const note = $("#model-note");
  note.textContent = health.model_note ? `${health.model}: ${health.model_note}` : "";
  note.hidden = !health.model_note;
  setReportsAvailable(health.ok && typeof health.reports === "number");
  if (health.auth_required && !state.token) {
    showTokenForm(true);
    return;
  }
  state.ready = true;
  if (state.view === "metrics") loadMetrics();
  loadCollections();
  await loadFilters();
}

// The picker shows only when there is a choice. Choosing reloads the page at ?collection=NAME (the token
// stays in this tab's session storage), so every view starts over on the chosen collection.
async function loadCollections() {
  const listed = await getJson("/api/collections").then((body) => body.collections).catch(() => []);
  const picker = $("#collection");
  picker.replaceChildren(...listed.map((c) => {
    const option = element("option", `${c.name || "(this home)"} · ${c.images} images`);
    option.value = c.default ? "" : c.name;
    return option;
  }));
  const chosen = listed.find((c) => (state.collection ? c.name === state.collection : c.default));
  if (!chosen && listed.length) {
    chooseCollection(listed[0].name); // the server's own is an empty home beside its collections: open the first
    return;
  }
  picker.value = chosen && !chosen.default ? chosen.name : "";
  $("#collection-picker").hidden = listed.length < 2;
}

function chooseCollection(name) {
  const address = new URL(window.location.href);
  if (name) address.searchParams.set("collection", name);
  else address.searchParams.delete("collection");
  window.location.assign(address.toString());
}

function setReportsAvailable(available) {
  state.reportsAvailable = available;
  const box = $("#reports");
  box.disabled = !available;
  if (!available) box.checked = false;
  $("#reports-toggle").classList.toggle("off", !available);
  $("#reports-toggle").title = available
    ? "Search the radiology reports too: matching studies, and images found through their reports"
    : "This collection has no reports: put them beside the images and run `medvec ingest`";
  $("#mode").disabled = !box.checked;
}

const withReports = () => state.reportsAvailable && $("#reports").checked;
const byStudy = () => $("#by-study").checked;
const marked = () => state.relevant.size + state.notRelevant.size > 0;

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

async function run(query, keepMarks = false) {
  if (!keepMarks) clearMarks();
  if (state.view !== "search") { // answers show in the search view
    window.location.hash = "search";
    showView("search");
  }
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
  if (!withReports() && (byStudy() || marked())) return askRefined(query, params);
  if (query.kind === "text") {
    params.set("q", query.text);
    if (withReports()) {
      params.set("reports", "true");
      params.set("mode", $("#mode").value);
    }
    return getJson(`/api/search?${params}`);
  }
  if (query.kind === "image") {
    const form = new FormData();
    form.append("file", query.file);
    return getJson(`/api/search/image?${params}`, { method: "POST", body: form });
  }
  if (withReports()) params.set("reports", "true");
  return getJson(`/api/similar/${encodeURIComponent(query.imageId)}?${params}`);
}

// Study-level hits and relevance feedback: POST /api/search/refine with the same query and filters.
function askRefined(query, params) {
  if (byStudy()) params.set("by_study", "true");
  state.relevant.forEach((id) => params.append("relevant", id));
  state.notRelevant.forEach((id) => params.append("not_relevant", id));
  const options = { method: "POST" };
  if (query.kind === "text") params.set("q", query.text);
  else if (query.kind === "similar") params.set("image_id", query.imageId);
  else if (query.kind === "image") {
    options.body = new FormData();
    options.body.append("file", query.file);
  }
  return getJson(`/api/search/refine?${params}`, options);
}

function rerun() {
  if (state.last) run(state.last, true);
}

function clearMarks() {
  state.relevant.clear();
  state.notRelevant.clear();
  showMarks();
}

function showMarks() {
  $("#feedback").hidden = !marked();
  $("#feedback-count").textContent = `${state.relevant.size} more like these · ${state.notRelevant.size} not these`;
  document.querySelectorAll("[data-image-id]").forEach((node) => {
    node.classList.toggle("marked-relevant", state.relevant.has(node.dataset.imageId));
    node.classList.toggle("marked-not-relevant", state.notRelevant.has(node.dataset.imageId));
  });
}

// "More like these" / "not these" on a hit (or on every view of a study): a second click unmarks.
function markButtons(imageIds) {
  const box = element("div", null, "feedback-marks");
  for (const [label, mine, other, title] of [["＋ like", state.relevant, state.notRelevant, "more like these"],
    ["－ not", state.notRelevant, state.relevant, "not these"]]) {
    const button = element("button", label, mine === state.relevant ? "mark-relevant" : "mark-not-relevant");
    button.type = "button";
    button.title = title;
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      const on = imageIds.every((id) => mine.has(id));
      imageIds.forEach((id) => { other.delete(id); if (on) mine.delete(id); else mine.add(id); });
      showMarks();
    });
    box.append(button);
  }
  return box;
}

// A study as one hit (by_study): its views, best first, and its report's impression.
function studyGroupCard(study) {
  const article = element("article", null, "study study-group");
  article.dataset.studyId = study.study_id || "";
  const head = element("header", null, "study-head");
  head.append(element("span", `#${study.rank}`, "rank"), element("strong", `Study ${study.study_id || "—"}`,
    "study-key"), element("span", `${study.views.length} view(s)`, "tag"), element("span", study.score.toFixed(4),
    "score"));
  const strip = element("div", null, "study-images");
  for (const view of study.views) strip.append(studyImage(view));
  article.append(head, strip, reportLine(study.reports), markButtons(study.views.map((v) => v.image_id)));
  return article;
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
  if (result.studies && !result.images) return renderStudyGroups(result, roundTripMs, query);
  $("#studies-heading span").textContent = "reports that match, with their images";
  const studies = result.studies || null; // a report search: studies, then the merged images
  const hits = studies ? result.images : result.hits;
  $("#study-list").replaceChildren(...(studies || []).map((study, i) => studyCard(study, i, result.mode)));
  $("#studies").hidden = !studies;
  $("#images-heading").hidden = !studies;
  $("#results").replaceChildren(...hits.map(card));
  $("#empty").hidden = hits.length > 0;
  $("#empty").textContent = "No images match these filters.";
  const what = query.kind === "similar" ? "similar to" : "for";
  const summary = [];
  if (studies) {
    summary.push(element("strong", `${plural(studies.length, "study", "studies")} and ${plural(hits.length, "image")}`),
      ` ${what} ${describe(query)} · reports `, element("code", result.mode, "mode"),
      " · images route ", element("code", result.direct_route, "route"));
  } else {
    summary.push(element("strong", plural(hits.length, "hit")), ` ${what} ${describe(query)} · route `,
      element("code", result.route, "route"));
    if (hits.some((hit) => hit.reports)) summary.push(" · with reports");
  }
  summary.push(` · search ${result.took_ms.toFixed(1)} ms · round trip `,
    element("span", `${Math.round(roundTripMs)} ms`, "latency"));
  $("#summary").replaceChildren(...summary);
  showMarks();
}

function renderStudyGroups(result, roundTripMs, query) {
  $("#studies-heading span").textContent = "each study's views, best first, and its report";
  $("#study-list").replaceChildren(...result.studies.map(studyGroupCard));
  $("#studies").hidden = false;
  $("#images-heading").hidden = true;
  $("#results").replaceChildren();
  $("#empty").hidden = result.studies.length > 0;
  $("#empty").textContent = "No study matches these filters.";
  $("#summary").replaceChildren(element("strong", plural(result.studies.length, "study", "studies")),
    ` ${query.kind === "similar" ? "similar to" : "for"} ${describe(query)} · route `,
    element("code", result.route, "route"), ` · search ${result.took_ms.toFixed(1)} ms · round trip `,
    element("span", `${Math.round(roundTripMs)} ms`, "latency"));
  showMarks();
}

// Report-mode scores are reciprocal-rank fusion sums (about 0.016 to 0.033), not cosines: label them.
function fusedScore(score) {
  const span = element("span", `${score.toFixed(4)} fused`, "score fused");
  span.title = "reciprocal-rank fusion: each route adds 1/(60+rank), so about 0.016 (one route, rank 1) "
    + "to 0.033 (both routes, rank 1); not a cosine similarity";
  return span;
}

function plural(count, one, many = `${one}s`) {
  return `${count} ${count === 1 ? one : many}`;
}

// A report that matched: its snippet with the query's words marked, its findings, its study's thumbnails.
function studyCard(study, index, mode) {
  const article = element("article", null, "study");
  article.dataset.reportId = study.report_id;
  article.dataset.studyKey = study.study_key;
  const head = element("header", null, "study-head");
  const routes = element("span", study.routes.join("+"), "tag route");
  routes.title = "the rankings that found this report";
  head.append(element("span", `#${index + 1}`, "rank"), element("strong", `Study ${study.study_key}`, "study-key"),
    element("span", study.layout, "tag report-layout"), routes,
    mode === "hybrid" ? fusedScore(study.score) : element("span", study.score.toFixed(4), "score"));
  const snippet = element("p", null, "snippet");
  snippet.append(highlighted(study.snippet, study.highlights));
  const labels = element("div", null, "tags");
  for (const label of study.labels || []) labels.append(element("span", label, "tag label"));
  const strip = element("div", null, "study-images");
  for (const image of study.images) strip.append(studyImage(image));
  if (!study.images.length) strip.append(element("p", "No image of this study is in the collection.", "muted"));
  article.append(head, snippet, labels, strip);
  return article;
}

function studyImage(image) {
  const figure = element("figure", null, "study-image");
  figure.dataset.imageId = image.image_id;
  figure.tabIndex = 0;
  const img = element("img", null, "thumb");
  img.alt = `${image.view_position || "image"} ${(image.labels || []).join(", ")}`;
  blobUrl(image.thumbnail_url).then((url) => {
    state.resultBlobs.push(url);
    img.src = url;
  }).catch(() => img.classList.add("missing"));
  figure.append(img, element("figcaption", image.view_position || "—"));
  const open = () => openStoredImage(image.image_id);
  figure.addEventListener("click", open);
  figure.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  return figure;
}

// Text with [start, end) spans wrapped in <mark>, as nodes. The server counts code points, so the text is
// split into code points first (a JavaScript string counts UTF-16 units).
function highlighted(text, spans) {
  const chars = Array.from(text || "");
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const [start, end] of [...(spans || [])].sort((a, b) => a[0] - b[0])) {
    if (start < last || end <= start) continue;
    fragment.append(chars.slice(last, start).join(""), element("mark", chars.slice(start, end).join("")));
    last = end;
  }
  fragment.append(chars.slice(last).join(""));
  return fragment;
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
    row(element("span", `#${hit.rank}`, "rank"),
      hit.routes ? fusedScore(hit.score) : element("span", hit.score.toFixed(4), "score")),
    tags(hit),
  );
  if (hit.routes) { // a report search: how the image was found, and the report that found it
    const route = hit.routes.join("+");
    const badge = element("span", route, `tag route route-${route.replace("+", "-")}`);
    badge.title = ROUTE_TITLES[route] || route;
    body.append(row(badge));
    if (hit.report) {
      const snippet = element("p", null, "snippet small");
      snippet.append(highlighted(hit.report.snippet, hit.report.highlights));
      body.append(snippet);
    }
  }
  if (hit.reports) body.append(reportLine(hit.reports)); // find-similar with reports
  body.append(similar, markButtons([hit.image_id]));
  article.append(img, body);
  article.addEventListener("click", () => openDetail(hit));
  article.addEventListener("keydown", (event) => { if (event.key === "Enter") openDetail(hit); });
  return article;
}

function reportLine(reports) {
  if (!reports.length) return element("p", "No report for this image.", "impression muted");
  const first = reports[0];
  const line = element("p", null, "impression");
  line.title = `Study ${first.study_key}`;
  line.append(element("span", "Impression: ", "muted"), first.impression || first.findings || "—");
  return line;
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
  document.querySelectorAll(".card, .worst-image").forEach((c) => {
    c.classList.toggle("selected", c.dataset.imageId === hit.image_id);
  });
  $("#detail").hidden = false;
  $("#detail-meta tbody").replaceChildren(...META_ROWS.map(([key, title]) => metaRow(title, metaValue(hit, key))));
  const img = $("#detail-image");
  img.removeAttribute("src");
  img.alt = `full image ${hit.image_id}`;
  loadDetailReports(hit);
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

async function loadDetailReports(hit) {
  const box = $("#detail-reports");
  box.replaceChildren();
  box.hidden = !state.reportsAvailable;
  if (!state.reportsAvailable) return;
  box.append(element("p", "loading the report…", "muted"));
  let body;
  try {
    body = await getJson(`/api/images/${encodeURIComponent(hit.image_id)}/reports`);
  } catch (err) {
    if (state.selected !== hit) return;
    box.replaceChildren(element("p", `The report could not be loaded: ${err.message}`, "muted"));
    return;
  }
  if (state.selected !== hit) return;
  if (!body.reports.length) {
    box.replaceChildren(element("p", "No report links to this image.", "muted"));
    return;
  }
  box.replaceChildren(...body.reports.map(reportBlock));
}

function reportBlock(report) {
  const article = element("article", null, "report");
  article.dataset.reportId = report.report_id;
  const title = element("h3", `Report · study ${report.study_key} `);
  title.append(element("small", report.layout, "tag report-layout"));
  const list = document.createElement("dl");
  for (const [key, name] of REPORT_SECTIONS) {
    if (!report[key]) continue;
    const value = element("dd", report[key]);
    value.dataset.section = key;
    list.append(element("dt", name), value);
  }
  const labels = element("div", null, "tags");
  for (const label of report.labels || []) labels.append(element("span", label, "tag label"));
  article.append(title, list, labels);
  return article;
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
  document.querySelectorAll(".selected").forEach((c) => c.classList.remove("selected"));
}

// --- views ------------------------------------------------------------------------------------------

function showView(name) {
  const previous = state.view;
  state.view = name === "metrics" ? "metrics" : "search";
  const metrics = state.view === "metrics";
  document.body.classList.toggle("view-metrics", metrics);
  $("#view-search").hidden = metrics;
  $("#view-metrics").hidden = !metrics;
  for (const [id, view] of [["#tab-search", "search"], ["#tab-metrics", "metrics"]]) {
    if (view === state.view) $(id).setAttribute("aria-current", "page");
    else $(id).removeAttribute("aria-current");
  }
  if (state.view !== previous) showError("");
  if (metrics && state.ready) loadMetrics(); // read again on every visit: a new `medvec eval` shows at once
}

// --- the metrics view: the latest retrieval evaluation ----------------------------------------------

const METRIC_NAMES = ["mrr", "map"];
const TASKS = [
  ["text", "text → image (macro)"], ["image", "image → image"], ["chance", "random ranking (text → image)"],
];

async function loadMetrics() {
  const generation = ++state.metricsGeneration;
  $("#metrics-summary").textContent = "loading the latest evaluation…";
  try {
    const response = await api("/api/eval");
    const report = await response.json();
    if (generation !== state.metricsGeneration) return;
    renderMetrics(report, response.headers.get("Last-Modified"));
  } catch (err) {
    if (generation !== state.metricsGeneration) return;
    clearMetrics();
    $("#metrics-empty").hidden = err.status !== 404;
    $("#metrics-summary").textContent = err.status === 404 ? "" : `could not load the evaluation: ${err.message}`;
  }
}

function clearMetrics() {
  state.metricsBlobs.forEach((url) => URL.revokeObjectURL(url));
  state.metricsBlobs = [];
  $("#metrics-body").replaceChildren();
}

function renderMetrics(report, written) {
  clearMetrics();
  $("#metrics-empty").hidden = true;
  const models = report.models || [];
  const when = written ? ` · written ${new Date(written).toLocaleString()}` : "";
  $("#metrics-summary").replaceChildren(
    element("strong", `${models.length} model${models.length === 1 ? "" : "s"}`),
    ` · ${report.split ? `${report.split} split` : "all images"} · uncertain labels: ${report.uncertain_policy}${when}`,
  );
  const ks = report.ks || [1, 5, 10];
  const body = $("#metrics-body");
  const randomWeights = models.filter(hasRandomWeights).map((m) => m.model);
  if (randomWeights.length) body.append(warning(randomWeightsText(randomWeights)));
  body.append(element("h3", "Models side by side"), scroll(modelsTable(models, ks)), plotFigure(models));
  for (const section of models) body.append(modelSection(section, ks));
  if (report.zero_shot) body.append(zeroShotSection(report.zero_shot));
  if (report.probes) body.append(probesSection(report.probes));
}

// --- zero-shot AUC and probes: point estimates with their 95% patient-bootstrap intervals ----------

function aucCell(entry, key = "auc") {
  const value = entry ? entry[key] : null;
  if (value === null || value === undefined) return element("td", "—", "num");
  const interval = entry.ci_low === null || entry.ci_low === undefined ? "" : ` [${fixed3(entry.ci_low)}, ${fixed3(entry.ci_high)}]`;
  return element("td", `${fixed3(value)}${interval}`, "num auc");
}

function findingAucTable(id, columns, findings, cellsOf) {
  const table = element("table", null, "numbers per-finding");
  table.id = id;
  table.append(head(["Finding", ...columns]));
  const tbody = document.createElement("tbody");
  for (const finding of [...findings, "macro"]) {
    const tr = document.createElement("tr");
    tr.dataset.finding = finding;
    const name = element("th", finding === "macro" ? "Macro (mean over findings)" : finding);
    name.scope = "row";
    tr.append(name, ...cellsOf(finding));
    tbody.append(tr);
  }
  table.append(tbody);
  return table;
}

function zeroShotSection(zeroShot) {
  const box = element("section", null, "eval-zero-shot");
  box.id = "metrics-zero-shot";
  box.append(element("h3", "Zero-shot ROC AUC per finding"), element("p",
    "Score = cos(image, positive prompts) − cos(image, negative prompts), as CheXzero and MedSigLIP evaluate; " +
    `AUC [95% CI] from ${zeroShot.replicates} bootstrap replicates over patients (seed ${zeroShot.seed}). ` +
    "0.5 is chance.", "hint"));
  const models = (zeroShot.models || []).filter((m) => !m.error);
  const said = (zeroShot.models || []).filter((m) => m.error).map((m) => ["note", `${m.model}: ${m.error}`]);
  if (said.length) box.append(notes(said));
  if (!models.length) return box;
  const findings = [...new Set(models.flatMap((m) => Object.keys(m.per_finding)))];
  box.append(scroll(findingAucTable("zero-shot-auc", models.map((m) => `${m.model} AUC [95% CI]`), findings,
    (f) => models.map((m) => aucCell(f === "macro" ? m.macro : m.per_finding[f])))));
  for (const c of zeroShot.comparisons || []) {
    box.append(element("h4", `Paired difference: ${c.a} − ${c.b}`), element("p",
      `${c.images} images, ${c.patients} patients; each replicate draws the same patients for both models.`, "hint"));
    box.append(scroll(findingAucTable("", ["AUC difference [95% CI]"], Object.keys(c.per_finding),
      (f) => [aucCell(f === "macro" ? c.macro : c.per_finding[f], "difference")])));
  }
  const figure = element("figure", null, "plot");
  const img = element("img");
  img.id = "zero-shot-plot";
  img.alt = "Zero-shot ROC AUC per finding and model, with 95% intervals";
  const caption = element("figcaption", "Dots: AUC; bars: 95% patient-bootstrap interval; dotted line: chance.");
  figure.append(img, caption);
  blobUrl("/api/eval/zero_shot.png").then((url) => {
    state.metricsBlobs.push(url);
    img.src = url;
  }).catch((err) => caption.replaceChildren(`The plot could not be loaded: ${err.message}`));
  box.append(figure);
  return box;
}

function probesSection(probes) {
  const box = element("section", null, "eval-probes");
  box.id = "metrics-probes";
  box.append(element("h3", "Linear probes per finding"), element("p",
    "A logistic regression per finding on the stored embeddings of the train split, scored on the test split; " +
    "search re-ranks a finding query with it (rerank=probe).", "hint"));
  for (const section of probes) {
    if (section.error) {
      box.append(notes([["note", `${section.model}: probes not fitted: ${section.error}`]]));
      continue;
    }
    box.append(element("h4", `${section.model}: ${section.train_split} → ${section.test_split}`));
    box.append(scroll(findingAucTable("", ["Test AUC [95% CI]", "Test +/−", "Train +/−"], Object.keys(section.per_finding),
      (f) => {
        const m = f === "macro" ? section.macro : section.per_finding[f];
        return [aucCell(m), element("td", f === "macro" ? "" : `${m.positives}/${m.negatives}`, "num"),
          element("td", f === "macro" ? "" : `${m.train_positives}/${m.train_negatives}`, "num")];
      })));
  }
  return box;
}

function modelsTable(models, ks) {
  const table = element("table", null, "numbers");
  table.id = "metrics-models";
  table.append(head(["Model", "Task", ...ks.map((k) => `R@${k}`), "MRR", "mAP", "Queries"]));
  const tbody = document.createElement("tbody");
  const span = ks.length + 3;
  for (const section of models) {
    const rows = section.error
      ? [[null, "—", null, section.error]]
      : modelRows(section);
    rows.forEach(([task, title, values, queries], i) => {
      const tr = document.createElement("tr");
      tr.dataset.model = section.model;
      if (task) tr.dataset.task = task;
      if (i === 0) {
        const name = element("th", null, "model-name");
        name.scope = "row";
        name.rowSpan = rows.length;
        name.append(element("span", section.model));
        if (hasRandomWeights(section)) name.append(" ", element("small", "random weights", "badge"));
        tr.append(name);
      }
      tr.append(element("td", title, "task"));
      if (values) {
        for (const name of metricNames(ks)) tr.append(numberCell(values[name], name));
        tr.append(element("td", queries, "num queries"));
      } else {
        const note = element("td", queries, "note");
        note.colSpan = span;
        tr.append(note);
      }
      tbody.append(tr);
    });
  }
  table.append(tbody);
  return table;
}

function modelRows(section) {
  const rows = [];
  const t2i = section.text_to_image;
  if (!t2i) {
    rows.push(["text", "text → image", null, `skipped: ${section.text_to_image_skipped || "no text encoder"}`]);
  } else if (!Object.keys(t2i.macro || {}).length) {
    rows.push(["text", "text → image", null, "no finding with a prompt has relevant images here"]);
  } else {
    const prompts = Object.values(t2i.per_finding).reduce((sum, m) => sum + m.queries, 0);
    rows.push(["text", TASKS[0][1], t2i.macro, `${prompts} (${t2i.macro.findings} findings)`]);
  }
  const i2i = section.image_to_image || {};
  rows.push(i2i.queries ? ["image", TASKS[1][1], i2i, String(i2i.queries)] : ["image", TASKS[1][1], null, i2i.note || "no queries"]);
  if (section.chance && Object.keys(section.chance).length) rows.push(["chance", TASKS[2][1], section.chance, "—"]);
  return rows;
}

function plotFigure(models) {
  const figure = element("figure", null, "plot");
  const img = element("img");
  img.id = "metrics-plot";
  img.alt = "Recall@K for K = 1 to 50: text → image and image → image per model, and a random ranking";
  const caption = element("figcaption", "Recall@K, K = 1…50: solid text → image (macro), dashed image → image, " +
    "dotted a random ranking.");
  figure.append(element("h3", "Recall@K"), img, caption);
  if (!models.some((m) => m.recall_curve)) return figure;
  blobUrl("/api/eval/plot.png").then((url) => {
    state.metricsBlobs.push(url);
    img.src = url;
  }).catch((err) => caption.replaceChildren(`The plot could not be loaded: ${err.message}`));
  return figure;
}

function modelSection(section, ks) {
  const box = element("section", null, "eval-model");
  box.dataset.model = section.model;
  const title = element("h3", section.model);
  if (hasRandomWeights(section)) title.append(" ", element("small", "random weights", "badge"));
  box.append(title);
  if (section.error) {
    box.append(notes([["error", `not evaluated: ${section.error}`]]));
    return box;
  }
  const i2i = section.image_to_image || {};
  box.append(element("p", [
    `${section.table} v${section.table_version}`, `${section.images} images, ${section.labelled_images} labelled`,
    section.split ? `${section.split} split` : "all images", `${section.seconds} s`,
  ].join(" · "), "meta-line"));
  const said = [];
  if (section.text_to_image_skipped) said.push(["note", `text → image skipped: ${section.text_to_image_skipped}`]);
  if (i2i.note) said.push(["note", `image → image: ${i2i.note}`]);
  if (i2i.queries) {
    said.push(["info", `image → image: ${i2i.queries} labelled images each queried the rest; ` +
      `${i2i.excluded_same_subject_or_study} candidate pairs of the same subject or study were left out` +
      (i2i.sampled ? "; the queries are a random sample" : "")]);
  }
  box.append(notes(said));
  const t2i = section.text_to_image;
  if (!t2i || !Object.keys(t2i.per_finding).length) return box;
  box.append(element("h4", "Text → image per finding"), scroll(findingTable(t2i, ks)));
  box.append(element("h4", "Hard cases"), element("p",
    "Per finding: the other findings its prompts retrieve among the top " +
    `${Math.max(...ks)}, and the relevant images ranked lowest (mean rank over its prompts). ` +
    "Click one to see it.", "hint"));
  const grid = element("div", null, "hard-cases");
  for (const [finding, cases] of Object.entries(t2i.hard_cases || {})) grid.append(hardCase(finding, cases));
  box.append(grid);
  return box;
}

function findingTable(t2i, ks) {
  const table = element("table", null, "numbers per-finding");
  table.append(head(["Finding", "Relevant", "Candidates", ...ks.map((k) => `R@${k}`), "MRR", "mAP", "Prompts"]));
  const tbody = document.createElement("tbody");
  for (const [finding, m] of Object.entries(t2i.per_finding)) {
    const tr = document.createElement("tr");
    tr.dataset.finding = finding;
    const name = element("th", finding);
    name.scope = "row";
    tr.append(name, element("td", String(m.relevant), "num"), element("td", String(m.candidates), "num"));
    for (const metric of metricNames(ks)) tr.append(numberCell(m[metric], metric));
    tr.append(element("td", String(m.prompts), "num"));
    tbody.append(tr);
  }
  table.append(tbody);
  return table;
}

function hardCase(finding, cases) {
  const box = element("div", null, "hard-case");
  box.dataset.finding = finding;
  box.append(element("h5", finding));
  const instead = element("p", null, "instead");
  const confused = Object.entries(cases.confused_with || {});
  instead.append(element("span", "Retrieves instead: ", "muted"));
  if (!confused.length) instead.append("nothing else");
  for (const [other, count] of confused) {
    const chip = element("span", `${other} `, "tag label");
    chip.dataset.finding = other;
    chip.append(element("b", String(count)));
    instead.append(chip, " ");
  }
  const strip = element("div", null, "worst");
  for (const image of cases.worst_ranked || []) strip.append(worstImage(image));
  box.append(instead, strip);
  return box;
}

function worstImage(image) {
  const figure = element("figure", null, "worst-image");
  figure.dataset.imageId = image.image_id;
  figure.tabIndex = 0;
  figure.title = `${image.image_id}\nlabels: ${(image.labels || []).join(", ")}\nmean score ${fixed3(image.score)}`;
  const img = element("img", null, "thumb");
  img.alt = `${(image.labels || []).join(", ")}, mean rank ${image.mean_rank.toFixed(1)}`;
  blobUrl(`/api/images/${encodeURIComponent(image.image_id)}/thumbnail`).then((url) => {
    state.metricsBlobs.push(url);
    img.src = url;
  }).catch(() => img.classList.add("missing")); // not in the table this server searches
  figure.append(img, element("figcaption", `rank ${image.mean_rank.toFixed(1)}`));
  const open = () => openStoredImage(image.image_id);
  figure.addEventListener("click", open);
  figure.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  return figure;
}

async function openStoredImage(imageId) {
  try {
    openDetail(await getJson(`/api/images/${encodeURIComponent(imageId)}`));
  } catch (err) {
    showError(err.message);
  }
}

// The registry's tiny-* models have random weights: their numbers test the plumbing, not retrieval.
const hasRandomWeights = (section) => section.model.startsWith("tiny-");

function randomWeightsText(names) {
  const which = names.join(", ");
  return `${which} ${names.length === 1 ? "has" : "have"} random weights: these numbers show that the ` +
    "evaluation runs, not how well a model retrieves. Embed and evaluate a real model for meaningful numbers.";
}

function metricNames(ks) {
  return [...ks.map((k) => `recall@${k}`), ...METRIC_NAMES];
}

function numberCell(value, metric) {
  const cell = element("td", value === null || value === undefined ? "—" : fixed3(value), "num");
  cell.dataset.metric = metric;
  return cell;
}

// Three decimals as `medvec eval` prints them. Python rounds an exact half to even (1/16 = 0.0625 → 0.062)
// where toFixed rounds it up; a double is an exact half at the third decimal only when it is a multiple of 1/16.
function fixed3(value) {
  const scaled = value * 1000;
  if (Number.isInteger(value * 16) && scaled % 1 === 0.5 && Math.floor(scaled) % 2 === 0) {
    return (Math.floor(scaled) / 1000).toFixed(3);
  }
  return value.toFixed(3);
}

function head(titles) {
  const thead = document.createElement("thead");
  const tr = document.createElement("tr");
  tr.append(...titles.map((title) => element("th", title)));
  thead.append(tr);
  return thead;
}

function warning(text) {
  return element("p", text, "callout warn");
}

function notes(items) {
  const list = element("ul", null, "notes");
  for (const [kind, text] of items) list.append(element("li", text, `callout ${kind}`));
  return list;
}

// --- small helpers --------------------------------------------------------------------------------

function row(...children) {
  const box = element("div", null, "row");
  box.append(...children);
  return box;
}

function shortId(id) {
  return id.length > 18 ? `…${id.slice(-16)}` : id;
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
  $("#collection").addEventListener("change", (event) => chooseCollection(event.target.value));
  $("#by-study").addEventListener("change", rerun);
  $("#feedback-apply").addEventListener("click", () => {
    if (state.last) run(state.last, true);
  });
  $("#feedback-clear").addEventListener("click", () => { clearMarks(); rerun(); });
  $("#reports").addEventListener("change", () => {
    $("#mode").disabled = !$("#reports").checked;
    if (state.last && state.last.kind !== "image") rerun(); // image uploads are searched without reports
  });
  $("#mode").addEventListener("change", () => {
    if (state.last && state.last.kind === "text") rerun();
  });
  $("#detail-close").addEventListener("click", closeDetail);
  $("#detail-similar").addEventListener("click", () => {
    if (state.selected) run({ kind: "similar", imageId: state.selected.image_id });
  });
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setToken($("#token-input").value.trim());
    $("#token-input").value = "";
    state.ready = true;
    loadCollections();
    loadFilters().then(rerun);
    if (state.view === "metrics") loadMetrics();
  });
  $("#token-forget").addEventListener("click", () => {
    setToken("");
    showTokenForm(true);
  });
  window.addEventListener("hashchange", () => showView(viewFromAddress()));
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeDetail(); });
  document.addEventListener("dragover", (event) => event.preventDefault());
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) run({ kind: "image", file });
  });
}

wire();
showView(viewFromAddress());
start();
