"""The text tower as ONNX for onnxruntime-web, checked against PyTorch with onnxruntime.

The graph takes `input_ids` (int64, [batch, text_length]: SigLIP's fixed 64 tokens, CLIP's 77, dynamic batch) and
returns `text_embeds` (float32, [batch, dim]) already L2-normalised, so the page's dot product with the
packed image vectors is the cosine the Python search path scores with.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from medvec.bundle.compact_onnx import compact_onnx

log = logging.getLogger(__name__)

#: onnxruntime-web runs opsets up to 21; 17 is the first with LayerNormalization as one op.
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input_ids", "text_embeds"
MIN_COSINE = 0.999


class ExportError(RuntimeError):
    """The text tower cannot be exported, or the export does not match PyTorch."""


def text_module(model):
    import torch

    class TextTower(torch.nn.Module):
        """get_text_features + L2 normalisation, the path TransformersEmbedder.embed_texts takes."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            output = self.model.get_text_features(input_ids=input_ids)
            # transformers 5 returns an output object whose vector is `.pooler_output`.
            features = output if hasattr(output, "shape") else output.pooler_output
            return torch.nn.functional.normalize(features.float(), dim=-1)

    return TextTower(model).eval()


def cpu_float32_text_tower(embedder):
    """The embedder's text tower as a float32 module on the CPU (a copy when it runs elsewhere or in
    another dtype), which is what gets exported and what the export is checked against."""
    import torch

    spec = embedder.spec
    model = embedder.model
    if spec.loader != "transformers":
        raise ExportError(f"{spec.name} is an {spec.loader} model; the browser bundle exports transformers SigLIP "
                          "and CLIP text towers (open_clip checkpoints such as BiomedCLIP are not exported yet)")
    if model is None:
        raise ExportError(f"{spec.name}: the embedder was closed")
    model_type = getattr(model.config, "model_type", None)
    # SigLIP was trained on fixed-length, unmasked text. CLIP pads to the longest text with a mask, but its
    # causal attention and its pooling at the first end token make padding to the full length exact too.
    if model_type not in ("siglip", "clip") or (model_type == "siglip" and spec.text_padding != "max_length"):
        raise ExportError(f"{spec.name} is a {model_type!r} model; the browser bundle exports SigLIP and CLIP "
                          "text towers only (text padded to a fixed length, no attention mask)")
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        model = copy.deepcopy(model).float().cpu()
    return text_module(model)


def export_text_tower(module, token_ids: Sequence[Sequence[int]], path: Path, *, opset: int = OPSET) -> dict:
    """Write the module to `path` as ONNX; `token_ids` is an example batch of fixed-length ids."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.tensor([list(token_ids[0])], dtype=torch.int64)
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter needs no onnxscript and handles these small graphs in well under a
        # second; torch marks it deprecated in favour of the dynamo exporter.
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    size = compact_onnx(path)  # what the page downloads; check_text_onnx then checks this very file
    return {"file": path.name, "input": INPUT_NAME, "output": OUTPUT_NAME, "opset": opset,
            "text_length": len(token_ids[0]), "bytes": size}


def check_text_onnx(module, path: Path, token_ids: Sequence[Sequence[int]], texts: Sequence[str], *,
                    min_cosine: float = MIN_COSINE, batch: int = 16) -> dict:
    """onnxruntime's text embeddings against PyTorch's, prompt by prompt; raises below `min_cosine`."""
    import onnxruntime
    import torch

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = np.asarray(token_ids, dtype=np.int64)
    onnx_out, torch_out = [], []
    for start in range(0, len(ids), batch):
        chunk = ids[start:start + batch]
        onnx_out.append(session.run([OUTPUT_NAME], {INPUT_NAME: chunk})[0])
        with torch.no_grad():
            torch_out.append(module(torch.from_numpy(chunk)).numpy())
    a, b = np.concatenate(onnx_out), np.concatenate(torch_out)
    cosines = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    worst = int(np.argmin(cosines))
    result = {"prompts": len(texts), "min_cosine": round(float(cosines.min()), 6),
              "mean_cosine": round(float(cosines.mean()), 6), "threshold": min_cosine,
              "worst_prompt": texts[worst], "onnxruntime": onnxruntime.__version__}
    if cosines.min() < min_cosine:
        raise ExportError(f"the ONNX text tower disagrees with PyTorch: cosine {cosines.min():.5f} < {min_cosine} "
                          f"on {texts[worst]!r}; try another opset or report the model")
    return result
