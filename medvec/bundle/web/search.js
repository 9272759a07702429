// Exact top-k by dot product over the bundle's packed image vectors (data/embeddings.bin), the same
// ranking the Python search path computes below 20,000 rows, on int8 codes with per-vector scales or
// on float16 values. Plain JavaScript on purpose: V8 turns these loops into scalar machine code fast
// enough for a few hundred thousand vectors (BENCHMARKS.md, "Search in the browser").

let HALF_TO_FLOAT = null;

/** Float32 value of every IEEE half-float bit pattern: float16 rows are scanned through this table. */
function halfTable() {
  if (HALF_TO_FLOAT) return HALF_TO_FLOAT;
  const table = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1;
    const exponent = (bits >> 10) & 0x1f;
    const fraction = bits & 0x3ff;
    table[bits] = exponent === 0 ? sign * fraction * 2 ** -24
      : exponent === 31 ? (fraction ? NaN : sign * Infinity)
        : sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }
  HALF_TO_FLOAT = table;
  return table;
}

export class PackedVectors {
  /** `layout` is bundle.json's "vectors" entry: precision, rows, dim and byte offsets (little-endian). */
  constructor(buffer, layout) {
    this.rows = layout.rows;
    this.dim = layout.dim;
    this.precision = layout.precision;
    const values = layout.rows * layout.dim;
    if (layout.precision === "int8") {
      this.codes = new Int8Array(buffer, layout.codes_offset, values);
      this.scales = new Float32Array(buffer, layout.scales_offset, layout.rows);
    } else if (layout.precision === "float16") {
      this.codes = new Uint16Array(buffer, layout.codes_offset, values);
      this.table = halfTable();
    } else {
      throw new Error(`unknown precision ${layout.precision}`);
    }
  }

  /** Scores of every row against `query` (a Float32Array of length dim), into `out`. */
  scores(query, out = new Float32Array(this.rows)) {
    if (query.length !== this.dim) throw new Error(`query has ${query.length} dims, the vectors ${this.dim}`);
    return this.precision === "int8" ? this.scoresInt8(query, out) : this.scoresHalf(query, out);
  }

  scoresInt8(query, out) {
    const { codes, scales, rows, dim } = this;
    const tail = dim - (dim % 4);
    for (let row = 0, offset = 0; row < rows; row++, offset += dim) {
      // Four running sums let the multiplications overlap instead of waiting on one another.
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let j = 0; j < tail; j += 4) {
        s0 += query[j] * codes[offset + j];
        s1 += query[j + 1] * codes[offset + j + 1];
        s2 += query[j + 2] * codes[offset + j + 2];
        s3 += query[j + 3] * codes[offset + j + 3];
      }
      for (let j = tail; j < dim; j++) s0 += query[j] * codes[offset + j];
      out[row] = (s0 + s1 + s2 + s3) * scales[row];
    }
    return out;
  }

  scoresHalf(query, out) {
    const { codes, table, rows, dim } = this;
    const tail = dim - (dim % 4);
    for (let row = 0, offset = 0; row < rows; row++, offset += dim) {
      let s0 = 0, s1 = 0, s2 = 0, s3 = 0;
      for (let j = 0; j < tail; j += 4) {
        s0 += query[j] * table[codes[offset + j]];
        s1 += query[j + 1] * table[codes[offset + j + 1]];
        s2 += query[j + 2] * table[codes[offset + j + 2]];
        s3 += query[j + 3] * table[codes[offset + j + 3]];
      }
      for (let j = tail; j < dim; j++) s0 += query[j] * table[codes[offset + j]];
      out[row] = s0 + s1 + s2 + s3;
    }
    return out;
  }

  /** Row `row` as float32, unit length again (the query vector for find-similar beyond the stored lists). */
  vector(row) {
    const vector = new Float32Array(this.dim);
    const offset = row * this.dim;
    let norm = 0;
    for (let j = 0; j < this.dim; j++) {
      const code = this.codes[offset + j];
      const value = this.precision === "int8" ? code * this.scales[row] : this.table[code];
      vector[j] = value;
      norm += value * value;
    }
    norm = Math.sqrt(norm) || 1;
    for (let j = 0; j < this.dim; j++) vector[j] /= norm;
    return vector;
  }
}

/** The k best rows of `scores`, best first; `exclude` (a row) is never returned. */
export function topK(scores, k, exclude = -1) {
  k = Math.min(k, scores.length - (exclude >= 0 && exclude < scores.length ? 1 : 0));
  if (!(k > 0)) return { rows: [], scores: [] };
  const rows = new Int32Array(k);
  const best = new Float32Array(k).fill(-Infinity);
  let filled = 0;
  let floor = -Infinity; // the k-th best score so far: most rows fail this one comparison
  for (let row = 0; row < scores.length; row++) {
    const score = scores[row];
    if ((filled === k && score <= floor) || row === exclude) continue;
    let at = filled < k ? filled++ : k - 1;
    while (at > 0 && best[at - 1] < score) {
      best[at] = best[at - 1];
      rows[at] = rows[at - 1];
      at--;
    }
    best[at] = score;
    rows[at] = row;
    if (filled === k) floor = best[k - 1];
  }
  return { rows: Array.from(rows.subarray(0, filled)), scores: Array.from(best.subarray(0, filled)) };
}
