// Medvec's serverless search page: everything it reads is a file in its own folder (bundle.json says
// which), and every query is answered in this browser. Common findings answer at once from the
// precomputed lists; any other text goes to the Web Worker (worker.js), which tokenises it, encodes it
// with the ONNX text tower and ranks the packed image vectors. Two views, chosen by the #hash: search
// (the default) and metrics (the bundle's retrieval evaluation and build checks).

const NO_NEIGHBOUR = 0xffffffff;
const MAX_K = 50;

const state = {
  manifest: null,
  index: null, // columns of data/index.json, row-aligned with the packed vectors, once loaded
  indexReady: null, // Promise of the index
  fallbacks: new Map(), // normalised query → {rows, scores}
  fallbackImages: {}, // row → metadata of the images the fallback answers show (before the index is in)
  similar: null, // Promise of {rows: Uint32Array, scores: Float32Array} (data/similar.bin)
  worker: null,
  pending: new Map(), // request id → {resolve, reject}
  nextId: 1,
  modelReady: false,
  generation: 0, // a newer search makes older answers stale
  selectedRow: null,
  view: "search",
  metricsShown: false,
};

// --- files of this bundle ------------------------------------------------------------------------

async function fetchOk(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
  return response;
}

const getJson = async (path) => (await fetchOk(path)).json();

function thumbPath(row) {
  const thumbs = state.manifest.thumbs;
  return thumbs.pattern.replace("{folder}", String(Math.floor(row / thumbs.per_folder))).replace("{row}", String(row));
}

function loadSimilar() {
  if (!state.similar) {
    const layout = state.manifest.similar;
    state.similar = fetchOk(layout.file).then((r) => r.arrayBuffer()).then((buffer) => ({
      rows: new Uint32Array(buffer, 0, layout.rows * layout.k),
      scores: new Float32Array(buffer, layout.scores_offset, layout.rows * layout.k),
    }));
    state.similar.catch(() => { state.similar = null; }); // try again on the next click
  }
  return state.similar;
}

// --- startup -------------------------------------------------------------------------------------

async function start() {
  try {
    const manifest = await getJson("bundle.json");
    state.manifest = manifest;
    const model = manifest.model;
    $("#status").textContent =
      `${model.name} · ${manifest.images} images · ${manifest.table} v${manifest.table_version}`;
    if (model.no_retrieval_quality) {
      $("#warning").hidden = false;
      $("#warning").textContent = `${model.name} has random weights: its results show how the bundle works, ` +
        "not what a model finds.";
    }
    startWorker();
    // The full index grows with the collection; the fallback answers carry their own images' metadata,
    // so common queries answer without waiting for it.
    state.indexReady = getJson(manifest.index).then((index) => { state.index = index; return index; });
    state.indexReady.catch((err) => showError(`the image index could not be loaded: ${err.message}`));
    const fallbacks = await getJson(manifest.fallbacks);
    for (const query of fallbacks.queries) state.fallbacks.set(query.key, query);
    state.fallbackImages = fallbacks.images;
    showSuggestions(fallbacks.queries.slice(0, 8).map((q) => q.key));
    $("#q").disabled = false;
    $("#search-button").disabled = false;
    $("#q").focus();
  } catch (err) {
    $("#status").textContent = `this bundle could not be read: ${err.message}`;
    $("#status").classList.add("bad");
  }
  showView(viewFromAddress());
}

function startWorker() {
  setModelStatus("text model loading…");
  const worker = new Worker("worker.js", { type: "module" });
  worker.onmessage = ({ data }) => {
    if (data.type === "model-ready") {
      state.modelReady = true;
      setModelStatus(`text model ready (${(data.ms / 1000).toFixed(1)} s)`);
    } else if (data.type === "failed") {
      setModelStatus(`the ${data.part === "model" ? "text model" : "image vectors"} could not be loaded: ` +
        `${data.message}`, true);
    } else if (data.type === "answer") {
      const waiting = state.pending.get(data.id);
      state.pending.delete(data.id);
      if (!waiting) return;
      if (data.error) waiting.reject(new Error(data.error));
      else waiting.resolve(data);
    }
  };
  worker.onerror = (event) => setModelStatus(`the search worker stopped: ${event.message}`, true);
  worker.postMessage({ type: "init", manifest: state.manifest });
  state.worker = worker;
}

/** Send a request to the worker; resolves with its answer. */
function ask(message) {
  const id = state.nextId++;
  return new Promise((resolve, reject) => {
    state.pending.set(id, { resolve, reject });
    state.worker.postMessage({ ...message, id });
  });
}

function setModelStatus(text, bad = false) {
  $("#model-status").textContent = text;
  $("#model-status").classList.toggle("bad", bad);
}

function showSuggestions(keys) {
  const box = $("#suggestions");
  box.replaceChildren(element("span", "Answer at once: ", "muted"));
  for (const key of keys) {
    const button = element("button", key, "suggestion");
    button.type = "button";
    button.addEventListener("click", () => {
      $("#q").value = key;
      runText(key);
    });
    box.append(button, " ");
  }
}

// --- searching -----------------------------------------------------------------------------------

/** The key fallback answers are stored under (medvec.search.normalize_query_text). */
function normalizeQuery(text) {
  return text.trim().toLowerCase().replace(/[.,;:!?]+$/u, "").replace(/\s+/gu, " ");
}

function readK() {
  const k = Math.round(Number($("#k").value) || 12);
  return Math.min(MAX_K, Math.max(1, k));
}

async function runText(text) {
  text = text.trim();
  if (!text) return;
  const k = readK();
  const stored = state.fallbacks.get(normalizeQuery(text));
  if (stored && k <= stored.rows.length) {
    return show(`“${text}”`, () => ({
      route: "fallback", rows: stored.rows.slice(0, k), scores: stored.scores.slice(0, k), detail: "precomputed",
    }));
  }
  return show(`“${text}”`, async () => {
    if (!state.modelReady) setSummary("encoding in this browser as soon as the text model has loaded…");
    const [answer] = await Promise.all([ask({ type: "search", text, k }), state.indexReady]);
    return { route: "index", rows: answer.rows, scores: answer.scores,
      detail: `tokenise ${ms(answer.ms.tokenize)} · encode ${ms(answer.ms.encode)} · scan ${ms(answer.ms.scan)}` };
  });
}

async function runSimilar(row) {
  const k = readK();
  const what = `image ${shortId(meta(row).id)}`;
  if (k <= state.manifest.similar.k) {
    return show(what, async () => {
      const [lists] = await Promise.all([loadSimilar(), state.indexReady]);
      const start = row * state.manifest.similar.k;
      const rows = [], scores = [];
      for (let j = start; j < start + state.manifest.similar.k && rows.length < k; j++) {
        if (lists.rows[j] === NO_NEIGHBOUR) break;
        rows.push(lists.rows[j]);
        scores.push(lists.scores[j]);
      }
      return { route: "similar_images", rows, scores, detail: "precomputed" };
    }, "similar to");
  }
  return show(what, async () => {
    const [answer] = await Promise.all([ask({ type: "similar", row, k }), state.indexReady]);
    return { route: "index", rows: answer.rows, scores: answer.scores, detail: `scan ${ms(answer.ms.scan)}` };
  }, "similar to");
}

/** Run `answer` (sync or async), then draw its hits unless a newer search started meanwhile. */
async function show(what, answer, relation = "for") {
  if (state.view !== "search") {
    window.location.hash = "search";
    showView("search");
  }
  const generation = ++state.generation;
  const started = performance.now();
  showError("");
  document.body.classList.add("busy");
  try {
    const result = await answer();
    if (generation !== state.generation) return;
    const took = performance.now() - started;
    $("#results").replaceChildren(...result.rows.map((row, i) => card(row, result.scores[i], i + 1)));
    $("#empty").hidden = result.rows.length > 0;
    $("#summary").dataset.route = result.route;
    $("#summary").replaceChildren(
      element("strong", `${result.rows.length} hit${result.rows.length === 1 ? "" : "s"}`),
      ` ${relation} ${what} · route `, element("code", result.route, "route"),
      ` · ${result.detail} · `, element("span", ms(took), "latency"), " in this browser",
    );
    performance.mark("medvec:answer", { detail: { route: result.route } });
  } catch (err) {
    if (generation === state.generation) showError(err.message);
  } finally {
    if (generation === state.generation) document.body.classList.remove("busy");
  }
}

function setSummary(text) {
  $("#summary").textContent = text;
}

// --- showing results -----------------------------------------------------------------------------

/** One image's metadata: from the index once it is in, before that from the fallback answers' own. */
function meta(row) {
  const index = state.index;
  if (!index) return state.fallbackImages[row];
  return { id: index.ids[row], view_position: index.view_position[row], modality: index.modality[row],
    body_part: index.body_part[row], labels: index.labels[row], split: index.split[row], width: index.width[row],
    height: index.height[row], thumb: index.thumb[row] };
}

function card(row, score, rank) {
  const article = element("article", null, "card");
  article.dataset.imageId = meta(row).id;
  article.dataset.row = String(row);
  article.tabIndex = 0;
  article.append(thumbnail(row));
  const similar = element("button", "Find similar", "similar");
  similar.type = "button";
  similar.addEventListener("click", (event) => {
    event.stopPropagation();
    runSimilar(row);
  });
  const body = element("div", null, "card-body");
  const line = element("div", null, "row");
  line.append(element("span", `#${rank}`, "rank"), element("span", score.toFixed(4), "score"));
  body.append(line, tags(row), similar);
  article.append(body);
  article.addEventListener("click", () => openDetail(row));
  article.addEventListener("keydown", (event) => { if (event.key === "Enter") openDetail(row); });
  return article;
}

function thumbnail(row) {
  const image = meta(row);
  const img = element("img", null, "thumb");
  img.alt = `${image.view_position || "image"} ${(image.labels || []).join(", ")}`;
  img.loading = "lazy";
  if (image.thumb) img.src = thumbPath(row);
  else img.classList.add("missing");
  return img;
}

function tags(row) {
  const image = meta(row);
  const box = element("div", null, "tags");
  if (image.view_position) box.append(element("span", image.view_position, "tag view"));
  for (const label of image.labels || []) box.append(element("span", label, "tag label"));
  if (image.split) box.append(element("span", image.split, "tag split"));
  return box;
}

function openDetail(row) {
  const image = meta(row);
  state.selectedRow = row;
  document.querySelectorAll(".card").forEach((c) => c.classList.toggle("selected", c.dataset.row === String(row)));
  $("#detail").hidden = false;
  const img = $("#detail-image");
  if (image.thumb) img.src = thumbPath(row);
  else img.removeAttribute("src");
  img.alt = `image ${image.id}`;
  const size = image.width && image.height ? `${image.width} × ${image.height}` : "";
  const rows = [["Image id", image.id], ["View", image.view_position], ["Modality", image.modality],
    ["Body part", image.body_part], ["Labels", (image.labels || []).join(", ")], ["Split", image.split],
    ["Image size", size]];
  $("#detail-meta tbody").replaceChildren(...rows.map(([title, value]) => {
    const tr = document.createElement("tr");
    const cell = element("td", value === null || value === undefined || value === "" ? "—" : String(value));
    if (title === "Image id") cell.className = "image-id";
    tr.append(element("th", title), cell);
    return tr;
  }));
}

function closeDetail() {
  state.selectedRow = null;
  $("#detail").hidden = true;
  document.querySelectorAll(".selected").forEach((c) => c.classList.remove("selected"));
}

// --- views ---------------------------------------------------------------------------------------


function showView(name) {
  state.view = name === "metrics" ? "metrics" : "search";
  const metrics = state.view === "metrics";
  $("#view-search").hidden = metrics;
  $("#view-metrics").hidden = !metrics;
  for (const [id, view] of [["#tab-search", "search"], ["#tab-metrics", "metrics"]]) {
    if (view === state.view) $(id).setAttribute("aria-current", "page");
    else $(id).removeAttribute("aria-current");
  }
  if (metrics && state.manifest && !state.metricsShown) {
    state.metricsShown = true;
    showMetrics().catch((err) => {
      state.metricsShown = false;
      showError(`the metrics could not be loaded: ${err.message}`);
    });
  }
}

// --- the metrics view ----------------------------------------------------------------------------

async function showMetrics() {
  renderChecks(state.manifest);
  if (!state.manifest.metrics) {
    $("#metrics-empty").hidden = false;
    return;
  }
  const report = await getJson(state.manifest.metrics);
  const section = report.model;
  const ks = report.ks || [1, 5, 10];
  const stale = section.table_version !== report.bundle_table_version
    ? ` · evaluated on v${section.table_version}, this bundle holds v${report.bundle_table_version}` : "";
  $("#metrics-summary").replaceChildren(element("strong", section.model),
    ` · ${report.split ? `${report.split} split` : "all images"} · ${section.images} images, ` +
    `${section.labelled_images} labelled · uncertain labels: ${report.uncertain_policy}${stale}`);
  const body = $("#metrics-body");
  const names = [...ks.map((k) => `recall@${k}`), "mrr", "map"];
  const overview = numbersTable(["Task", ...ks.map((k) => `R@${k}`), "MRR", "mAP", "Queries"]);
  overview.id = "metrics-models";
  const t2i = section.text_to_image;
  const i2i = section.image_to_image || {};
  if (t2i && t2i.macro && Object.keys(t2i.macro).length) {
    const findings = `${t2i.macro.findings} findings`;
    overview.tBodies[0].append(numbersRow("text → image (macro)", t2i.macro, names, findings));
  } else {
    const why = section.text_to_image_skipped || "no finding has relevant images";
    overview.tBodies[0].append(noteRow("text → image", why));
  }
  if (i2i.queries) overview.tBodies[0].append(numbersRow("image → image", i2i, names, String(i2i.queries)));
  else overview.tBodies[0].append(noteRow("image → image", i2i.note || "no queries"));
  if (section.chance) overview.tBodies[0].append(numbersRow("random ranking", section.chance, names, "—"));
  body.append(scroll(overview));
  if (state.manifest.metrics_plot) {
    const img = element("img", null, "plot");
    img.src = state.manifest.metrics_plot;
    img.alt = "Recall@K for K = 1 to 50";
    body.append(element("h3", "Recall@K"), img);
  }
  if (!t2i || !Object.keys(t2i.per_finding || {}).length) return;
  const findings = numbersTable(["Finding", "Relevant", ...ks.map((k) => `R@${k}`), "MRR", "mAP"]);
  findings.classList.add("per-finding");
  for (const [finding, m] of Object.entries(t2i.per_finding)) {
    findings.tBodies[0].append(numbersRow(finding, m, names, null, String(m.relevant)));
  }
  body.append(element("h3", "Text → image per finding"), scroll(findings));
  body.append(element("h3", "Hard cases"), element("p", "Per finding: the other findings its prompts retrieve, " +
    "and its relevant images ranked lowest. Click one to see it.", "hint"));
  const grid = element("div", null, "hard-cases");
  const rowOf = new Map((await state.indexReady).ids.map((id, row) => [id, row]));
  for (const [finding, cases] of Object.entries(t2i.hard_cases || {})) {
    const box = element("div", null, "hard-case");
    box.dataset.finding = finding;
    const instead = Object.entries(cases.confused_with || {}).map(([other, count]) => `${other} (${count})`);
    const retrieves = `Retrieves instead: ${instead.join(", ") || "nothing else"}`;
    box.append(element("h4", finding), element("p", retrieves, "instead"));
    const strip = element("div", null, "worst");
    for (const image of cases.worst_ranked || []) {
      const row = rowOf.get(image.image_id);
      const figure = element("figure", null, "worst-image");
      figure.dataset.imageId = image.image_id;
      if (row !== undefined) {
        figure.append(thumbnail(row));
        figure.addEventListener("click", () => openDetail(row));
      }
      figure.append(element("figcaption", `rank ${Number(image.mean_rank).toFixed(1)}`));
      strip.append(figure);
    }
    box.append(strip);
    grid.append(box);
  }
  body.append(grid);
}

function renderChecks(manifest) {
  const checks = manifest.checks || {};
  const onnx = checks.onnx || {};
  const tokenizer = checks.tokenizer || {};
  const packing = checks.packing || {};
  const rows = [
    ["Text tower (ONNX vs PyTorch)",
      `lowest cosine ${onnx.min_cosine} over ${onnx.prompts} prompts (needs ≥ ${onnx.threshold})`],
    ["Tokenizer (this page vs Python)", tokenizer.checked
      ? `${tokenizer.matching} of ${tokenizer.prompts} prompts give the same token ids`
      : `not checked at build time: ${tokenizer.reason}`],
  ];
  for (const precision of ["int8", "float16"]) {
    const cost = packing[precision];
    if (!cost) continue;
    const chosen = packing.chosen === precision ? " (this bundle)" : "";
    rows.push([`Vectors as ${precision}${chosen}`, `${cost.bytes_per_vector} bytes a vector · recall@10 against ` +
      `float32: ${cost.text_queries.recall} for text queries, ${cost.image_queries.recall} for images`]);
  }
  const megabytes = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;
  rows.push(["Size", `${megabytes(manifest.sizes.total)} in all, of which the runtime ` +
    `${megabytes(manifest.sizes.runtime)} and the text model ${megabytes(manifest.sizes.text_model)}`]);
  $("#bundle-checks tbody").replaceChildren(...rows.map(([title, value]) => {
    const tr = document.createElement("tr");
    tr.append(element("th", title), element("td", value));
    return tr;
  }));
}

function numbersTable(titles) {
  const table = element("table", null, "numbers");
  const head = document.createElement("thead");
  const tr = document.createElement("tr");
  for (const title of titles) tr.append(element("th", title));
  head.append(tr);
  table.append(head, document.createElement("tbody"));
  return table;
}

function numbersRow(title, values, names, last, first) {
  const tr = document.createElement("tr");
  tr.append(element("th", title));
  if (first !== undefined) tr.append(element("td", first, "num"));
  for (const name of names) {
    const value = values[name];
    tr.append(element("td", value === null || value === undefined ? "—" : Number(value).toFixed(3), "num"));
  }
  if (last !== null && last !== undefined) tr.append(element("td", last, "num"));
  return tr;
}

function noteRow(title, note) {
  const tr = document.createElement("tr");
  const cell = element("td", note, "note");
  cell.colSpan = 8;
  tr.append(element("th", title), cell);
  return tr;
}

// --- small helpers -------------------------------------------------------------------------------

const ms = (value) => `${value < 10 ? value.toFixed(1) : Math.round(value)} ms`;
const shortId = (id) => (id.length > 18 ? `${id.slice(0, 8)}…${id.slice(-6)}` : id);

$("#search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  runText($("#q").value);
});
$("#detail-close").addEventListener("click", closeDetail);
$("#detail-similar").addEventListener("click", () => {
  if (state.selectedRow !== null) runSimilar(state.selectedRow);
});
window.addEventListener("hashchange", () => showView(viewFromAddress()));
start();
