"""The face proxy's components, fitted at the start of fit (label-free)."""

from __future__ import annotations

import logging

import lightning as L
import torch

from fair_lightning.lightning.collect import collect_rows
from fair_lightning.models.proxy import partner_statistics

log = logging.getLogger(__name__)


class ProxyComponentsFit(L.Callback):
    """At the start of fit, before any step: fit the face adversary's proxy components
    (`models.proxy.ProxyComponents`) on the training split's face embeddings, read without
    sensitive attributes. A resumed run's components come from its checkpoint and are kept."""

    def __init__(self, datamodule):
        self.dm = datamodule
        self.metrics: dict[str, float] = {}

    def on_fit_start(self, trainer, pl_module):
        comp = pl_module.adversary.components
        if comp.fitted:
            return
        def rows(b):
            out = {"face": pl_module.adversary.encoder_embed(b).float().cpu().numpy()}
            out.update({name: x.numpy() for name, x in
                        partner_statistics(b, comp.partners).items()})
            return out

        emb = collect_rows(pl_module, self.dm.eval_dataloader("train", sensitive=False), rows)
        self.metrics = comp.fit(torch.from_numpy(emb["face"]), torch.from_numpy(emb["identity"]),
                                {p: torch.from_numpy(emb[p]) for p in comp.partners})
        if lead := comp.variance_shares():
            log.info("face proxy: %d leading directions across people hold %.0f%% of the "
                     "between-person variance (%s)", comp.k, 100 * sum(lead),
                     ", ".join(f"{100 * e:.0f}%" for e in lead))
        if corr := comp.canonical_correlations():
            log.info("face proxy: %d canonical directions shared by face and %s across "
                     "people, correlations %s", comp.k, " and ".join(comp.partners),
                     ", ".join(f"{c:.2f}" for c in corr))
