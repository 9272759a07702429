// The bundle's Web Worker: loads the packed image vectors, the tokenizer and the ONNX text tower
// (onnxruntime-web, WebAssembly, from ./vendor), then answers novel queries and find-similar beyond the
// stored lists, so the page never stalls while the model loads or a query is encoded. Every file it
// reads comes from the bundle's own folder; nothing leaves the device.
import * as ort from "./vendor/ort.wasm.bundle.min.js";
import { Tokenizer } from "./tokenizer.js";
import { PackedVectors, topK } from "./search.js";

let vectorsReady = null; // Promise<PackedVectors>
let modelReady = null; // Promise<{session, tokenizer}>
let manifest = null;

const bundleUrl = (path) => new URL(path, self.location.href).href;
const now = () => performance.now();

async function fetchOk(path) {
  const response = await fetch(bundleUrl(path));
  if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
  return response;
}

async function loadVectors() {
  const started = now();
  const buffer = await (await fetchOk(manifest.vectors.file)).arrayBuffer();
  const vectors = new PackedVectors(buffer, manifest.vectors);
  self.postMessage({ type: "vectors-ready", ms: now() - started, rows: vectors.rows });
  return vectors;
}

async function loadModel() {
  const started = now();
  // One thread: a static host cannot send the COOP/COEP headers that threads (SharedArrayBuffer) need.
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.proxy = false;
  ort.env.wasm.wasmPaths = { wasm: bundleUrl("vendor/ort-wasm-simd-threaded.wasm") };
  const [spec, model] = await Promise.all([
    fetchOk(manifest.text_model.tokenizer).then((r) => r.json()),
    fetchOk(manifest.text_model.file).then((r) => r.arrayBuffer()),
  ]);
  const session = await ort.InferenceSession.create(new Uint8Array(model), {
    executionProviders: ["wasm"], graphOptimizationLevel: "all",
  });
  const loaded = { session, tokenizer: new Tokenizer(spec) };
  self.postMessage({ type: "model-ready", ms: now() - started });
  return loaded;
}

async function encode(text) {
  const { session, tokenizer } = await modelReady;
  const started = now();
  const ids = tokenizer.encode(text);
  const tokenized = now();
  const input = new ort.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, ids.length]);
  const output = await session.run({ [manifest.text_model.input]: input });
  const vector = Float32Array.from(output[manifest.text_model.output].data);
  return { vector, ids, tokenizeMs: tokenized - started, encodeMs: now() - tokenized };
}

async function answer(message) {
  if (message.type === "search") {
    const { vector, ids, tokenizeMs, encodeMs } = await encode(message.text);
    const vectors = await vectorsReady;
    const started = now();
    const hits = topK(vectors.scores(vector), message.k);
    return { ...hits, ids, ms: { tokenize: tokenizeMs, encode: encodeMs, scan: now() - started } };
  }
  if (message.type === "similar") {
    const vectors = await vectorsReady;
    const started = now();
    const hits = topK(vectors.scores(vectors.vector(message.row)), message.k, message.row);
    return { ...hits, ms: { scan: now() - started } };
  }
  if (message.type === "tokenize") {
    const { tokenizer } = await modelReady;
    return { ids: message.texts.map((text) => tokenizer.encode(text)) };
  }
  throw new Error(`unknown request ${message.type}`);
}

self.onmessage = async ({ data: message }) => {
  if (message.type === "init") {
    manifest = message.manifest;
    vectorsReady = loadVectors();
    modelReady = loadModel();
    // Failures are reported here once and again to every request that needs the failed part.
    vectorsReady.catch((error) => self.postMessage({ type: "failed", part: "vectors", message: String(error) }));
    modelReady.catch((error) => self.postMessage({ type: "failed", part: "model", message: String(error) }));
    return;
  }
  try {
    self.postMessage({ type: "answer", id: message.id, ...(await answer(message)) });
  } catch (error) {
    self.postMessage({ type: "answer", id: message.id, error: String(error && error.message || error) });
  }
};
