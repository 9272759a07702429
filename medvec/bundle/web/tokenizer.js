// The text tokeniser of the bundle's model, in plain JavaScript: reads `model/tokenizer.json`
// (schema medvec.tokenizer/1, written by medvec/bundle/tokenizer_export.py) and turns a query into the
// fixed-length token ids the ONNX text tower takes. Three models: SentencePiece unigram (SigLIP,
// MedSigLIP), word-level (the offline tiny models) and BPE with CLIP's byte-level pre-tokenizer. The build
// checks these ids against the Python tokenizer on several hundred prompts (node tokenize_check.js).

// Python's string.punctuation: what SigLIP's canonicalize_text removes (ASCII only).
const ASCII_PUNCTUATION = /[!"#$%&'()*+,\-./:;<=>?@[\\\]^_`{|}~]/g;
// Rust regex's \w (what tokenizers' Whitespace pre-tokenizer splits on) is Unicode-aware; JS's is not.
const WORD = "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\u200c\\u200d";
const WORDS_OR_SYMBOLS = new RegExp(`[${WORD}]+|[^${WORD}\\s]+`, "gu");
const META = "\u2581"; // SentencePiece's word-boundary mark
// GPT-2's split, which tokenizers' ByteLevel pre-tokenizer applies when use_regex is set.
const GPT2_SPLIT = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
const BYTE_CHARS = bytesToUnicode();
// BERT's pre-tokenizer: split on whitespace, and every punctuation character (Unicode P*, or any ASCII
// symbol) is a word of its own.
const BERT_PUNCT = "\\p{P}!-\\/:-@\\[-`{-~";
const BERT_WORDS = new RegExp(`[${BERT_PUNCT}]|[^\\s${BERT_PUNCT}]+`, "gu");
const CJK = /([\u{4E00}-\u{9FFF}\u{3400}-\u{4DBF}\u{20000}-\u{2A6DF}\u{2A700}-\u{2B73F}\u{2B740}-\u{2B81F}\u{2B920}-\u{2CEAF}\u{F900}-\u{FAFF}\u{2F800}-\u{2FA1F}])/gu;
const UTF8 = new TextEncoder();

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
    if (spec.model === "bpe") {
      this.ranks = new Map(spec.merges.map(([a, b], rank) => [`${a}\u0001${b}`, rank]));
      this.splits = spec.pre_tokenize.map((step) => (step.type === "matches" ? new RegExp(step.regex, "gu") : null));
    }
  }

  /** Token ids for one text: normalised, split, looked up, wrapped in the special tokens, and
   *  truncated or padded to exactly `length` (SigLIP was trained on 64 tokens, padded). */
  encode(text) {
    const spec = this.spec;
    const body = this.textIds(text);
    const room = spec.length - spec.prefix_ids.length - spec.suffix_ids.length;
    const ids = [...spec.prefix_ids, ...body.slice(0, Math.max(0, room)), ...spec.suffix_ids];
    while (ids.length < spec.length) ids.push(spec.pad_id);
    return ids;
  }

  /** Ids of the text between the added (special) tokens typed in it, and of those tokens. */
  textIds(text) {
    const added = Object.keys(this.spec.added_tokens || {});
    if (!added.length) return this.tokens(this.normalize(text));
    const escape = (token) => token.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const longestFirst = added.sort((a, b) => b.length - a.length).map(escape).join("|");
    return text.split(new RegExp(`(${longestFirst})`, "u")).flatMap((part, i) => (i % 2
      ? [this.spec.added_tokens[part]] : this.tokens(this.normalize(part))));
  }

  normalize(text) {
    for (const step of this.spec.normalize) {
      if (step === "lowercase") text = text.toLowerCase();
      else if (step === "nfkc") text = text.normalize("NFKC");
      else if (step === "strip_punctuation") text = text.replace(ASCII_PUNCTUATION, "");
      else if (step === "collapse_whitespace") text = text.replace(/\s+/gu, " ").trim();
      else if (["nfc", "nfd", "nfkd"].includes(step)) text = text.normalize(step.toUpperCase());
      else if (step === "strip") text = text.trim();
      else if (Array.isArray(step) && step[0] === "bert") text = bertNormalize(text, step[1]);
      else if (Array.isArray(step) && step[0] === "replace") text = text.replace(new RegExp(step[1], "gu"), step[2]);
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
    if (spec.model === "bpe") return this.preTokenize(text).flatMap((word) => this.bpe(word));
    if (spec.model === "wordpiece") return this.preTokenize(text).flatMap((word) => this.wordPiece(word));
    const words = spec.split === "whitespace"
      ? text.split(/\s+/u).filter(Boolean)
      : (text.match(WORDS_OR_SYMBOLS) || []);
    const ids = words.map((word) => (this.ids.has(word) ? this.ids.get(word) : spec.unk_id));
    return spec.fuse_unk ? fuseUnknown(ids, spec.unk_id) : ids;
  }

  /** Pre-tokens as tokenizers makes them: each step splits every piece; ByteLevel maps each UTF-8 byte
   *  of a piece to one printable character (GPT-2's bytes_to_unicode). */
  preTokenize(text) {
    let pieces = [text];
    this.spec.pre_tokenize.forEach((step, i) => {
      if (step.type === "matches") pieces = pieces.flatMap((piece) => piece.match(this.splits[i]) || []);
      else if (step.type === "whitespacesplit") pieces = pieces.flatMap((piece) => piece.split(/\s+/u).filter(Boolean));
      else if (step.type === "bertpretokenizer") pieces = pieces.flatMap((piece) => piece.match(BERT_WORDS) || []);
      else if (step.type === "whitespace") pieces = pieces.flatMap((piece) => piece.match(WORDS_OR_SYMBOLS) || []);
      else if (step.type === "bytelevel") {
        pieces = pieces.flatMap((piece) => {
          if (step.add_prefix_space && !piece.startsWith(" ")) piece = " " + piece;
          return step.use_regex ? (piece.match(GPT2_SPLIT) || []) : [piece];
        }).map((piece) => Array.from(UTF8.encode(piece), (byte) => BYTE_CHARS[byte]).join(""));
      } else throw new Error(`unknown pre-tokenizer step ${step.type}`);
    });
    return pieces.filter(Boolean);
  }

  /** One word's BPE ids (tokenizers' BPE.merge_word): characters, with the continuing-subword prefix on
   *  all but the first and the end-of-word suffix (CLIP's `</w>`) on the last; characters missing from
   *  the vocabulary become <unk>; then the lowest-ranked adjacent pair is merged, leftmost first, until
   *  no pair is in the merge list. */
  bpe(word) {
    const spec = this.spec;
    const chars = [...word];
    if (spec.ignore_merges) {
      const whole = word + spec.end_of_word_suffix;
      if (this.ids.has(whole)) return [this.ids.get(whole)];
    }
    let symbols = chars.map((char, i) => (i > 0 ? spec.continuing_subword_prefix : "") + char
      + (i === chars.length - 1 ? spec.end_of_word_suffix : ""));
    symbols = symbols.map((piece) => (this.ids.has(piece) ? piece : null));
    const prefixLength = spec.continuing_subword_prefix.length;
    for (;;) {
      let best = Infinity;
      let at = -1;
      for (let i = 0; i + 1 < symbols.length; i++) {
        if (symbols[i] === null || symbols[i + 1] === null) continue;
        const rank = this.ranks.get(`${symbols[i]}\u0001${symbols[i + 1]}`);
        if (rank !== undefined && rank < best) {
          best = rank;
          at = i;
        }
      }
      if (at < 0) break;
      symbols.splice(at, 2, symbols[at] + symbols[at + 1].slice(prefixLength));
    }
    const ids = [];
    for (const piece of symbols) {
      if (piece !== null) ids.push(this.ids.get(piece));
      else if (spec.unk_id !== null && !(spec.fuse_unk && ids.at(-1) === spec.unk_id)) ids.push(spec.unk_id);
    }
    return ids;
  }

  /** BERT's WordPiece: the longest vocabulary piece from the left, then `##`-prefixed pieces; a word with
   *  a part no piece covers, or longer than max_input_chars_per_word, is one [UNK]. */
  wordPiece(word) {
    const spec = this.spec;
    const chars = [...word];
    if (chars.length > spec.max_input_chars_per_word) return [spec.unk_id];
    const ids = [];
    for (let start = 0; start < chars.length;) {
      let end = chars.length;
      let found = null;
      for (; end > start; end--) {
        const piece = (start > 0 ? spec.continuing_subword_prefix : "") + chars.slice(start, end).join("");
        if (this.ids.has(piece)) {
          found = this.ids.get(piece);
          break;
        }
      }
      if (found === null) return [spec.unk_id];
      ids.push(found);
      start = end;
    }
    return ids;
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

/** GPT-2's map from the 256 byte values to printable characters (bytes_to_unicode): printable Latin-1
 *  bytes stand for themselves, the rest are shifted to U+0100 and up, in order. */
function bytesToUnicode() {
  const printable = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const chars = new Array(256);
  let shifted = 0;
  for (let b = 0; b < 256; b++) {
    chars[b] = String.fromCodePoint(printable.includes(b) ? b : 256 + shifted++);
  }
  return chars;
}

/** tokenizers' BertNormalizer: drop NUL, U+FFFD and control characters (tab and newlines are spaces), put
 *  spaces around CJK ideographs, strip accents (NFD, then no combining marks), lower-case. */
function bertNormalize(text, options) {
  if (options.clean_text) {
    text = text.replace(/[\t\n\r]/gu, " ").replace(/[\0\uFFFD]|\p{C}/gu, "").replace(/\s/gu, " ");
  }
  if (options.handle_chinese_chars) text = text.replace(CJK, " $1 ");
  if (options.strip_accents) text = text.normalize("NFD").replace(/\p{Mn}/gu, "");
  if (options.lowercase) text = text.toLowerCase();
  return text;
}
