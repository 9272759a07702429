"""`medvec-demo-clip`: a small SigLIP-shaped dual encoder trained here on Medvec's synthetic chest images.

Trained on synthetic images only: it shows the pipeline working end to end (a "pleural effusion" query
finds effusions), not clinical accuracy. The weights ship in the package (`weights/`, a few MB) and load
through the same registry and transformers embedder as any Hugging Face SigLIP; `train.py` rebuilds
them from a seed, and the safetensors metadata records that script's hash and the data seed.
"""

from pathlib import Path

NAME = "medvec-demo-clip"
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
QUALITY_NOTE = "trained on synthetic images: shows the pipeline, not clinical accuracy"
IMAGE_SIZE = 64
DIM = 64
TEXT_LENGTH = 16
