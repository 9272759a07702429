"""The GPU figure (issue 20): siglip-base's image tower from WebP, images/s end to end, in bf16 and fp16 at a
few batch sizes, with preparation on `--workers` processes (default: every core). Two preparation variants:
`cpu` (decode, resize and normalise on the CPU, as `PixelPreparer` does in ingest) and `gpu` (decode on the
CPU, resize and normalise in torch on the device). Random weights from the registry's architecture: no
download. Writes a markdown table to stdout and every number as JSON to --out.

    benchmarks/gpu.sh                       # on a machine with an NVIDIA GPU
    .venv/bin/python benchmarks/gpu.py --dry-run   # CPU smoke run: tiny batches, 2 layers, a few images
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medvec.embedders.transformers_local import PixelPreparer  # noqa: E402
from medvec.models.registry import REGISTRY  # noqa: E402

SPEC = REGISTRY["siglip-base"]
PREPARER = PixelPreparer(size=SPEC.image_size, mean=(0.5,) * 3, std=(0.5,) * 3, resize="square", resample="bicubic")


def _webp_images(count: int, side: int = 512) -> list[bytes]:
    """Synthetic 512 px grey radiograph-like WebPs, as normalisation writes them."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(min(count, 64)):  # 64 distinct images, repeated: decoding cost is what matters
        base = np.linspace(40, 220, side, dtype=np.float32)[None, :] + rng.normal(0, 12, (side, side))
        buf = io.BytesIO()
        Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "WEBP", quality=90)
        out.append(buf.getvalue())
    return [out[i % len(out)] for i in range(count)]


def _prepare_cpu(batch: list[bytes]) -> np.ndarray:
    return np.stack([PREPARER(b) for b in batch])


def _decode_only(batch: list[bytes]) -> np.ndarray:
    """Decoded 8-bit grey pixels; resize and normalise happen on the device."""
    arrays = []
    for data in batch:
        with Image.open(io.BytesIO(data)) as image:
            arrays.append(np.asarray(image.convert("L")))
    return np.stack(arrays)


def _model(device: str, dtype, layers: int | None):
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(image_size=SPEC.image_size, patch_size=16)  # siglip-base-patch16-224's tower
    if layers:
        config.num_hidden_layers = layers
    torch.manual_seed(0)
    return SiglipVisionModel(config).to(device=device, dtype=dtype).eval(), config


def run(args) -> dict:
    import torch
    import torch.nn.functional as F

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    images = _webp_images(args.images)
    results = []
    with ProcessPoolExecutor(args.workers) as pool:
        for dtype_name in args.dtypes:
            dtype = getattr(torch, dtype_name)
            model, config = _model(device, dtype, args.layers)
            for variant in args.variants:
                for batch_size in args.batch_sizes:
                    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
                    prepare = _prepare_cpu if variant == "cpu" else _decode_only
                    mean = torch.tensor(0.5, device=device)

                    def embed(prepared: np.ndarray):
                        x = torch.from_numpy(prepared).to(device, non_blocking=True)
                        if variant == "gpu":  # (n, h, w) uint8 -> (n, 3, size, size), normalised on the device
                            # float32 for the resize: antialiased bicubic has no bf16 kernel on CPU
                            x = x.float().div_(255).unsqueeze(1)
                            x = F.interpolate(x, size=(SPEC.image_size,) * 2, mode="bicubic", antialias=True)
                            x = ((x - mean) / 0.5).expand(-1, 3, -1, -1)
                        with torch.inference_mode():
                            return model(pixel_values=x.to(dtype)).pooler_output

                    embed(prepare(batches[0]))  # warm-up: kernels, allocator
                    if device == "cuda":
                        torch.cuda.synchronize()
                    started = time.perf_counter()
                    prep_wait = 0.0
                    pending = pool.map(prepare, batches)
                    for _ in batches:
                        t0 = time.perf_counter()
                        prepared = next(pending)
                        prep_wait += time.perf_counter() - t0
                        out = embed(prepared)
                    if device == "cuda":
                        torch.cuda.synchronize()
                    seconds = time.perf_counter() - started
                    row = {"dtype": dtype_name, "prep": variant, "batch": batch_size, "images": len(images),
                           "seconds": round(seconds, 3), "images_per_s": round(len(images) / seconds, 1),
                           "waiting_for_prep_share": round(prep_wait / seconds, 2), "dim": int(out.shape[-1])}
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    results.append(row)
            del model
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run)"
    return {"device": name, "workers": args.workers, "layers": args.layers or config.num_hidden_layers,
            "torch": torch.__version__, "dry_run": args.dry_run, "results": results}


def markdown(res: dict) -> str:
    lines = [f"device: {res['device']}; preparation workers: {res['workers']}; layers: {res['layers']}; "
             f"torch {res['torch']}", "", "| dtype | preparation | batch | images/s | waiting for preparation |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['dtype']} | {r['prep']} | {r['batch']} | {r['images_per_s']:,} | {r['waiting_for_prep_share']:.0%} |"
              for r in res["results"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument("--variants", nargs="+", choices=("cpu", "gpu"), default=["cpu", "gpu"])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="CPU smoke run: 6 images, batch 4, 2 layers")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    args = parser.parse_args(argv)
    if args.dry_run:
        args.images, args.batch_sizes, args.dtypes, args.workers, args.layers = 6, [4], ["bfloat16"], 2, 2
    res = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    args.out.with_suffix(".md").write_text(markdown(res) + "\n")
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
