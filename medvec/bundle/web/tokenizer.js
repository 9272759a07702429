// The text tokeniser of the bundle's model, in plain JavaScript: reads `model/tokenizer.json`
// (schema medvec.tokenizer/1, written by medvec/bundle/tokenizer_export.py) and turns a query into the
// fixed-length token ids the ONNX text tower takes. Two models are enough for the SigLIP family:
// SentencePiece unigram (SigLIP, MedSigLIP) and word-level (the offline tiny-siglip). The build checks
// these ids against the Python tokenizer on a set of prompts (node tokenize_check.js).

// Python's string.punctuation: what SigLIP's canonicalize_text removes (ASCII only).
const ASCII_PUNCTUATION = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/g;
// Rust regex's \w (what tokenizers' Whitespace pre-tokenizer splits on) is Unicode-aware; JS's is not.
const WORD = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\u200c\\u200d";
const WORDS_OR_SYMBOLS = new RegExp(`[${WORD}]+|[^${WORD}\\s]+`, "gu");
const META = "\u2581"; // SentencePiece's word-boundary mark

export class Tokenizer {
  constructor(spec) {
    if (spec.schema !== "medvec.tokenizer/1") throw new Error(`unknown tokenizer schema ${spec.schema}`);
    this.spec = spec;
    this.ids = new Map();
    spec.vocab.forEach((piece, id) => {
      if (!this.ids.has(piece)) this.ids.set(piece, id);
    });
    if (spec.model === "unigram") {
      const skip = new Set(spec.skip_ids || []);
      this.pieces = new Map(); // matchable piece → [id, score]
      this.longest = 1;
      spec.vocab.forEach((piece, id) => {
        if (skip.has(id) || this.pieces.has(piece)) return;
        this.pieces.set(piece, [id, spec.scores[id]]);
        this.longest = Math.max(this.longest, [...piece].length);
      });
      // SentencePiece scores an unknown character 10 below the lowest piece (kUnkPenalty).
      this.unkScore = Math.min(...spec.scores.filter((_, id) => !skip.has(id))) - 10;
    }
  }

  /** Token ids for one text: normalised, split, looked up, wrapped in the special tokens, and
   *  truncated or padded to exactly `length` (SigLIP was trained on 64 tokens, padded). */
  encode(text) {
    const spec = this.spec;
    const body = this.tokens(this.normalize(text));
    const room = spec.length - spec.prefix_ids.length - spec.suffix_ids.length;
    const ids = [...spec.prefix_ids, ...body.slice(0, Math.max(0, room)), ...spec.suffix_ids];
    while (ids.length < spec.length) ids.push(spec.pad_id);
    return ids;
  }

  normalize(text) {
    for (const step of this.spec.normalize) {
      if (step === "lowercase") text = text.toLowerCase();
      else if (step === "nfkc") text = text.normalize("NFKC");
      else if (step === "strip_punctuation") text = text.replace(ASCII_PUNCTUATION, "");
      else if (step === "collapse_whitespace") text = text.replace(/\s+/gu, " ").trim();
      else throw new Error(`unknown normalisation step ${step}`);
    }
    return text;
  }

  tokens(text) {
    const spec = this.spec;
    if (spec.model === "unigram") {
      if (!text) return [];
      return this.viterbi(META + text.replaceAll(" ", META));
    }
    const words = spec.split === "whitespace"
      ? text.split(/\s+/u).filter(Boolean)
      : (text.match(WORDS_OR_SYMBOLS) || []);
    const ids = words.map((word) => (this.ids.has(word) ? this.ids.get(word) : spec.unk_id));
    return spec.fuse_unk ? fuseUnknown(ids, spec.unk_id) : ids;
  }

  /** The most probable segmentation under the unigram model (SentencePiece's Viterbi): best[i] is
   *  the best total score of text[0:i]; a character no piece covers becomes <unk>, and runs of <unk>
   *  are fused into one, as SentencePiece does. */
  viterbi(text) {
    const chars = [...text];
    const n = chars.length;
    const best = new Float64Array(n + 1).fill(-Infinity);
    const from = new Int32Array(n + 1);
    const token = new Int32Array(n + 1);
    best[0] = 0;
    for (let start = 0; start < n; start++) {
      if (best[start] === -Infinity) continue;
      let piece = "";
      let covered = false;
      for (let end = start + 1; end <= Math.min(n, start + this.longest); end++) {
        piece += chars[end - 1];
        const found = this.pieces.get(piece);
        if (!found) continue;
        if (end === start + 1) covered = true;
        const score = best[start] + found[1];
        if (score > best[end]) {
          best[end] = score;
          from[end] = start;
          token[end] = found[0];
        }
      }
      if (!covered) {
        const score = best[start] + this.unkScore;
        if (score > best[start + 1]) {
          best[start + 1] = score;
          from[start + 1] = start;
          token[start + 1] = this.spec.unk_id;
        }
      }
    }
    const ids = [];
    for (let end = n; end > 0; end = from[end]) ids.push(token[end]);
    ids.reverse();
    return fuseUnknown(ids, this.spec.unk_id);
  }
}

function fuseUnknown(ids, unk) {
  return ids.filter((id, i) => !(id === unk && i > 0 && ids[i - 1] === unk));
}
