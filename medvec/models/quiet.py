"""Silencing `transformers` while Medvec loads or builds a model: the pipeline reports its own progress."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def quiet_transformers():
    """Config validation warns about default sub-config token ids our checkpoints never use, and
    per-weight progress bars flood logs; the pipeline reports its own progress."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)
        if bars:
            transformers_logging.enable_progress_bar()
