"""Train `medvec-demo-clip` from a seed: `python -m medvec.models.demo_clip.train [--out DIR]`.

A SigLIP-shaped dual encoder (4 vision and 3 text layers, 128-d) trained contrastively on synthetic
chest images and their captions. The loss counts every caption true of an image as a match (a batch
holds many "cardiomegaly" images), image → text and text → image. A few minutes on 2 CPU cores; the same
seed and script give the same weights up to float summation order. The safetensors metadata records
the script's SHA-256 and the data seed, and the registry loads the result like any Hugging Face SigLIP.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from medvec.models.demo_clip import DIM, IMAGE_SIZE, NAME, QUALITY_NOTE, TEXT_LENGTH, WEIGHTS_DIR
from medvec.models.demo_clip.captions import matches, vocabulary

log = logging.getLogger(__name__)

DATA_SEED = 7
TRAIN_SEED = 11
TRAIN_IMAGES = 4000
STEPS = 1000
BATCH = 128


def script_sha256() -> str:
    """The hash of the training recipe (this file and its data and caption modules)."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in ("train.py", "data.py", "captions.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def build_untrained(tmp: Path):
    """The architecture and tokenizer, saved to `tmp`; returns (model, tokenizer)."""
    from transformers import SiglipConfig, SiglipImageProcessorPil, SiglipModel

    from medvec.models.tiny import build_word_tokenizer

    tokenizer, vocab = build_word_tokenizer(tmp, vocabulary(), pad="</s>", eos="</s>", bos=None,
                                            max_length=TEXT_LENGTH, model_input_names=["input_ids"])
    config = SiglipConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": DIM, "intermediate_size": 2 * DIM,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": TEXT_LENGTH,
                     "pad_token_id": vocab["</s>"], "bos_token_id": vocab["</s>"], "eos_token_id": vocab["</s>"]},
        vision_config={"hidden_size": DIM, "intermediate_size": 2 * DIM, "num_hidden_layers": 3,
                       "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": 16},
    )
    SiglipImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                            image_std=[0.5] * 3, resample=3).save_pretrained(tmp)
    return SiglipModel(config), tokenizer


def match_matrix(batch) -> np.ndarray:
    """[i, j] = caption j is true of image i."""
    return np.array([[matches(c.caption, i.cardiomegaly, i.sides, i.view) for c in batch] for i in batch],
                    dtype=np.float32)


def contrastive_loss(image_vectors, text_vectors, positives, log_scale):
    """Multi-positive InfoNCE both ways: each row's target spreads over every true caption / image."""
    import torch.nn.functional as F

    logits = log_scale.exp() * image_vectors @ text_vectors.T
    image_to_text = -(F.log_softmax(logits, 1) * positives / positives.sum(1, keepdim=True)).sum(1).mean()
    text_to_image = -(F.log_softmax(logits.T, 1) * positives.T / positives.T.sum(1, keepdim=True)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def train(out_dir: Path, *, images: int = TRAIN_IMAGES, steps: int = STEPS, batch: int = BATCH) -> dict:
    import torch

    from medvec.embedders.transformers_local import PixelPreparer, features_of
    from medvec.models.demo_clip.data import training_images

    torch.manual_seed(TRAIN_SEED)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".training")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model, tokenizer = build_untrained(tmp)
    started = time.perf_counter()
    data = training_images(images, DATA_SEED, PixelPreparer(IMAGE_SIZE, (0.5,) * 3, (0.5,) * 3, "squash", "bicubic"))
    log.info("%d training images in %.0fs", len(data), time.perf_counter() - started)
    pixels = torch.from_numpy(np.stack([d.pixels for d in data]))
    tokens = tokenizer([d.caption.text for d in data], padding="max_length", max_length=TEXT_LENGTH,
                       truncation=True, return_tensors="pt")["input_ids"]
    log_scale = torch.nn.Parameter(torch.tensor(np.log(10.0), dtype=torch.float32))
    optimizer = torch.optim.AdamW([*model.parameters(), log_scale], lr=1e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    order = torch.Generator().manual_seed(TRAIN_SEED)
    model.train()
    for step in range(steps):
        pick = torch.randint(len(data), (batch,), generator=order)
        positives = torch.from_numpy(match_matrix([data[i] for i in pick.tolist()]))
        image_vectors = F_normalize(features_of(model.get_image_features(pixel_values=pixels[pick])))
        text_vectors = F_normalize(features_of(model.get_text_features(input_ids=tokens[pick])))
        loss = contrastive_loss(image_vectors, text_vectors, positives, log_scale)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("step %d/%d loss %.3f (%.0fs)", step, steps, loss.item(), time.perf_counter() - started)
    model.eval()
    return _save(model, tmp, out_dir, {"steps": steps, "images": images, "final_loss": round(loss.item(), 4),
                                       "seconds": round(time.perf_counter() - started)})


def F_normalize(vectors):
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _save(model, tmp: Path, out_dir: Path, stats: dict) -> dict:
    from safetensors.torch import save_file

    model.config.save_pretrained(tmp)
    metadata = {"format": "pt", "medvec_model": NAME, "note": QUALITY_NOTE, "script_sha256": script_sha256(),
                "data_seed": str(DATA_SEED), "train_seed": str(TRAIN_SEED), "stats": json.dumps(stats)}
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"), metadata=metadata)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return {**stats, "out": str(out_dir)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(WEIGHTS_DIR), help="folder to write (default: the packaged weights)")
    parser.add_argument("--images", type=int, default=TRAIN_IMAGES, help="synthetic training images")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimiser steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(train(Path(args.out), images=args.images, steps=args.steps), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
