"""onnxruntime-web in a bundle: which of its built files the page loads, copied into `vendor/` with the
licence that redistributing them needs."""

from __future__ import annotations

import json
from pathlib import Path

#: onnxruntime-web's WebAssembly-only build: the ES module with its loader inlined, and the wasm binary.
#: Both are renamed to plain .js/.wasm names so that any static server sends a JavaScript MIME type.
ORT_FILES = {"ort.wasm.bundle.min.mjs": "ort.wasm.bundle.min.js",
             "ort-wasm-simd-threaded.wasm": "ort-wasm-simd-threaded.wasm"}

ORT_LICENCE = """MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def copy_ort(dist: Path, vendor: Path) -> None:
    for source, target in ORT_FILES.items():
        data = (dist / source).read_bytes()
        if source.endswith(".mjs"):
            # Drop the source-map comment: the map is not shipped, and dev tools would ask for it.
            data = b"\n".join(line for line in data.split(b"\n") if not line.startswith(b"//# sourceMappingURL="))
        (vendor / target).write_bytes(data)
    # The npm package states its licence in package.json only; redistributing it needs the text.
    licence = dist.parent / "LICENSE"
    text = licence.read_text() if licence.exists() else ORT_LICENCE
    (vendor / "LICENSE.onnxruntime-web.txt").write_text(
        f"onnxruntime-web {ort_version(dist) or ''} (https://github.com/microsoft/onnxruntime)\n\n{text}")


def ort_version(dist: Path) -> str | None:
    try:
        return json.loads((dist.parent / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
