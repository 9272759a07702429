"""Embedding benchmark (issue 3): images/s from WebP files through `embed_records`, beside the
model's bare forward rate on pre-made tensors in the same run.

    .venv/bin/python benchmarks/embed.py [--images 128] [--models tiny-siglip siglip-base] [--dtypes fp32 bf16]

`siglip-base` is the real architecture (SiglipConfig defaults: ViT-B/16 at 224 px, 12+12 layers)
with random weights: the same FLOPs as google/siglip-base-patch16-224, no download.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from medvec.embedders.transformers_local import TransformersEmbedder, quiet_transformers  # noqa: E402
from medvec.ingest.embed import embed_records  # noqa: E402
from medvec.models.registry import resolve_model  # noqa: E402
from medvec.models.tiny import build_word_tokenizer, build_tiny_siglip  # noqa: E402
from medvec.tables.records import ImageRecord  # noqa: E402


def build_random_siglip_base(out_dir: Path) -> Path:
    import torch
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    if (out_dir / "config.json").exists():
        return out_dir
    out_dir.mkdir(parents=True)
    build_word_tokenizer(out_dir, pad="</s>", eos="</s>", bos=None, max_length=64)
    torch.manual_seed(0)
    with quiet_transformers():
        SiglipModel(SiglipConfig()).eval().save_pretrained(out_dir)
    SiglipImageProcessorPil(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                            resample=3).save_pretrained(out_dir)
    return out_dir


def make_images(home: Path, n: int) -> list[ImageRecord]:
    """n distinct 512 px chest-sized grey WebP files, as normalisation writes them."""
    rng = np.random.default_rng(0)
    records = []
    (home / "images").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:512, 0:448]
    for i in range(n):
        base = 120 + 60 * np.sin(xx / (30 + i % 7)) * np.cos(yy / 41)
        pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="WEBP", quality=90, method=0)
        (home / "images" / f"{i}.webp").write_bytes(buffer.getvalue())
        records.append(ImageRecord(image_id=str(i), batch="bench", source_uri=f"/bench/{i}", content_sha256="",
                                   image_uri=f"images/{i}.webp", thumb_uri="", source_format="dicom"))
    return records


def bare_forward_rate(embedder: TransformersEmbedder, batch: int, seconds: float = 8.0) -> float:
    size = embedder.spec.image_size
    pixels = np.random.default_rng(1).normal(size=(batch, 3, size, size)).astype(np.float32)
    embedder.embed_prepared(list(pixels))  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.embed_prepared(list(pixels))
        done += batch
    return done / (time.perf_counter() - started)


def pipeline_rate(embedder: TransformersEmbedder, records, home: Path, batch: int, workers: int) -> float:
    embed_records(records[:batch], home, embedder, chunk_size=batch, workers=1)  # warm-up
    started = time.perf_counter()
    result = embed_records(records, home, embedder, chunk_size=batch, workers=workers)
    assert len(result.records) == len(records)
    return len(records) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--models", nargs="+", default=["tiny-siglip", "siglip-base"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--workers", type=int, default=0, help="preparation processes (0: cores - 1, min 1)")
    args = parser.parse_args()

    import torch

    work = Path(tempfile.mkdtemp(prefix="medvec-embed-bench-"))
    records = make_images(work / "home", args.images)
    dirs = {"tiny-siglip": build_tiny_siglip(work / "tiny"), "siglip-base": build_random_siglip_base(work / "base")}
    print("# Medvec embedding benchmark\n")
    print(f"- command: `{' '.join([Path(sys.executable).name] + sys.argv)}`")
    print(f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    print(f"- {args.images} WebP images (448x512 grey), batch {args.batch}, preparation workers "
          f"{args.workers or 'auto'}\n")
    print("| model | device | dtype | bare forward img/s | pipeline from WebP img/s | pipeline / bare |")
    print("|---|---|---|---:|---:|---:|")
    for name in args.models:
        for dtype in args.dtypes:
            embedder = TransformersEmbedder(resolve_model(name), dirs[name], dtype=dtype, batch_size=args.batch)
            bare = bare_forward_rate(embedder, args.batch)
            piped = pipeline_rate(embedder, records, work / "home", args.batch, args.workers)
            print(f"| {name} | {embedder.device} | {dtype} | {bare:.1f} | {piped:.1f} | {piped / bare:.0%} |",
                  flush=True)


if __name__ == "__main__":
    main()
