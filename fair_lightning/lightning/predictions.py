"""The test split's predictions, written to the run directory."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from fair_lightning.ops.runtime import gather_objects


class TestPredictions(L.Callback):
    """`predictions.csv` in the run directory: clip, person, predicted score and label of
    every test clip (gathered from every rank, each clip once, sorted by clip). No sensitive
    attribute is written: scoring against other ground truth (a benchmark's true merit)
    joins on the clip id."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[tuple[str, str, float, float]] = []

    def on_test_epoch_start(self, trainer, pl_module):
        self.rows = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx,
                          dataloader_idx=0):
        scores = outputs["score"].detach().float().cpu().tolist()
        labels = batch.label.detach().float().cpu().tolist()
        people = batch.identity.tolist() if torch.is_tensor(batch.identity) else batch.identity
        self.rows += [(str(c), str(p), s, y) for c, p, s, y in
                      zip(batch.clip_id, people, scores, labels, strict=True)]

    def on_test_epoch_end(self, trainer, pl_module):
        rows = {r[0]: r for part in gather_objects(self.rows) for r in part}
        if not trainer.is_global_zero:
            return
        import csv
        import io

        from data_modules.files import atomic_write

        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")  # quotes a clip name holding a comma
        out.writerow(["clip_id", "identity", "score", "label"])
        out.writerows([c, p, f"{s:.6f}", f"{y:.6f}"] for c, p, s, y in
                      (rows[k] for k in sorted(rows)))
        atomic_write(self.path, buf.getvalue())
