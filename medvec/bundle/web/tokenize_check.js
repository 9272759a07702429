// Node helper for the build and the tests (not copied into bundles): reads
// {"tokenizer": <medvec.tokenizer/1 spec>, "texts": [...]} on stdin and prints the token ids the page
// would compute for each text, as JSON.
import { Tokenizer } from "./tokenizer.js";

let input = "";
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const { tokenizer, texts } = JSON.parse(input);
  const encoder = new Tokenizer(tokenizer);
  process.stdout.write(JSON.stringify(texts.map((text) => encoder.encode(text))));
});
