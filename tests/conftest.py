"""Shared fixtures: schema-valid random records (no generator needed) and tiny configs."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

AUDIO_DIM = 8


def make_records(n_ids: int = 6, clips: int = 2, seed: int = 0, prefix: str = "p",
                 faces_k: int = 2, size: int = 16) -> list[dict]:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n_ids):
        g, e = int(rng.integers(2)), int(rng.integers(3))
        for c in range(clips):
            recs.append({
                "clip_id": f"{prefix}{i:03d}.{c:03d}", "identity": f"{prefix}{i:03d}",
                "text": rng.normal(size=(int(rng.integers(1, 5)), 384)).astype(np.float16),
                "audio": rng.normal(size=(int(rng.integers(3, 12)), AUDIO_DIM)).astype(np.float16),
                "video": rng.integers(0, 256, (3, 3, size, size), dtype=np.uint8),
                "faces": rng.integers(0, 256, (faces_k, 3, size, size), dtype=np.uint8),
                "label": np.float32(rng.uniform()), "merit": np.float32(rng.normal()),
                "gender": g, "ethnicity": e,
            })
    return recs


@pytest.fixture
def records():
    return make_records()


def tiny_overrides(tmp_path, **extra) -> list[tuple[str, str]]:
    """Overrides for a seconds-long end-to-end run on a tiny synthetic benchmark."""
    base = {
        "output_dir": str(tmp_path / "run"),
        "data.cache_dir": str(tmp_path / "cache"),
        "data.derived_cache_dir": str(tmp_path / "derived"),
        "data.batch_size": "8",
        "data.synthetic.num_identities": "30",
        "data.synthetic.clips_per_identity": "2",
        "data.synthetic.audio_seconds": "[1.0,1.5]",
        "data.synthetic.image_size": "16",
        "trainer.max_epochs": "1",
        "probe.bootstrap": "50",
        # the fast pair; the default full suite is for results, not for plumbing
        "probe.attackers": "[linear,kernel]",
        "logger.wandb.mode": "disabled",
    }
    base.update(extra)
    return list(base.items())


UNIT_TIMEOUT_S = 60  # a unit test that needs longer belongs in tests/integration


def pytest_collection_modifyitems(config, items):
    """tests/integration/: marked `integration`; tests/unit/: a per-test timeout of a minute
    (pyproject.toml's `timeout` bounds every other test)."""
    for item in items:
        parts = item.path.parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        elif "unit" in parts and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))
