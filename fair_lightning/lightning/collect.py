"""Reading every clip of a split through the module, for the callbacks that fit or audit
after (or before) training: the proxy fit, the erasure stage and the attacker audit."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

from fair_lightning.ops.runtime import gather_objects


def log_to_loggers(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    # self.log is not allowed in on_train_end / on_test_end: talk to the loggers directly
    # in batches trained, as the steps of Lightning's own logging
    step = trainer.lightning_module.trained_batches
    for lg in trainer.loggers:
        lg.log_metrics(metrics, step=step)
        if hasattr(lg, "save"):
            lg.save()


@torch.no_grad()
def collect_rows(module, loader, rows, max_clips: int = 0) -> dict[str, np.ndarray]:
    """`rows(batch)` -> {name: array [B, ...]} over every clip of a loader, in eval mode
    without gradients; under DDP every rank collects its shard and the result is gathered
    (identical on every rank), de-duplicated by clip id and sorted. Outside autocast: what
    the proxy fits, the erasure stage and the audit read is computed in float32 whatever
    the trainer's precision."""
    was_training = module.training
    module.eval()
    chunks: dict[str, list] = {}
    try:
        with torch.autocast(module.device.type, enabled=False):
            _collect(module, loader, rows, chunks, max_clips)
    finally:
        module.train(was_training)
    local = {k: np.concatenate(v) for k, v in chunks.items()}
    parts = [p for p in gather_objects(local) if p]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    _, first = np.unique(merged["clip_id"], return_index=True)  # DDP may pad with repeats
    merged = {k: v[first] for k, v in merged.items()}
    if max_clips:
        merged = {k: v[:max_clips] for k, v in merged.items()}
    return merged


def _collect(module, loader, rows, chunks: dict, max_clips: int) -> None:
    seen = 0
    for batch in loader:
        batch = batch.to(module.device)
        for name, r in rows(batch).items():
            chunks.setdefault(name, []).append(r)
        chunks.setdefault("identity", []).append(batch.identity.cpu().numpy())
        chunks.setdefault("clip_id", []).append(np.array(batch.clip_id))
        seen += len(batch)
        if max_clips and seen >= max_clips:
            break


def extract_representations(module, loader, max_clips: int = 0) -> dict[str, np.ndarray]:
    """Named representations, attributes and identities of every clip of a loader."""
    from fair_lightning.audit.proxy_audit import setting_descriptor

    def rows(batch):
        out = {name: r.float().cpu().numpy() for name, r in module.representations(batch).items()}
        if "proxy" in out:  # the setting-only view the proxy's retrieval is compared with
            out["setting"] = setting_descriptor(batch.faces.cpu().numpy())
        out["label"] = batch.label.float().cpu().numpy()  # the proxy's share of the task
        out["merit"] = batch.merit.float().cpu().numpy()
        s = batch.sensitive
        out["gender"] = s.gender.cpu().numpy()
        out["ethnicity"] = s.ethnicity.cpu().numpy()
        return out

    return collect_rows(module, loader, rows, max_clips)
