"""The attacker audit without Lightning: every layer x attribute attacked by the suite of
`fair_lightning.audit.probes.AttackSuite`, fitted suites remembered by the bytes they were
fitted on, and the rows turned into flat metrics (`probe/...`, `leak/...`).

`fair_lightning.lightning.probe.SensitiveAttributeProbe` runs it at the end of fit and on
test; `make bench` and `benchmarks/audit_strength.py` run it on frozen representations.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch

from data_modules.progress import Progress
from data_modules.schema import SENSITIVE
from fair_lightning.audit.probes import AttackerResult, AttackSuite, one_thread

log = logging.getLogger(__name__)


def identity_disjoint(fit: dict, ev: dict) -> tuple[dict, int]:
    """`ev` without the clips of people who are also in `fit` (ChaLearn's official splits
    share people), and how many people that removed."""
    shared = np.isin(ev["identity"], fit["identity"])
    if not shared.any():
        return ev, 0
    people = int(np.unique(ev["identity"][shared]).size)
    return {k: v[~shared] for k, v in ev.items()}, people


def fingerprint(*arrays: np.ndarray) -> str:
    """A digest of numeric arrays' bytes: equal digests mean the same representations."""
    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


ROUND_OFF_SPREAD = 1e-6  # a representation's spread under this share of its scale: constant


def relative_spread(x: np.ndarray) -> float:
    """sqrt(total variance) / root-mean-square of the values: ~1e-16 for a representation
    erased to round-off, 0 for an exactly constant one."""
    x = np.asarray(x, dtype=np.float64)
    scale = float(np.sqrt(np.mean(x * x))) if x.size else 0.0
    spread = float(np.sqrt(np.var(x, axis=0).sum())) if len(x) > 1 else 0.0
    return spread / scale if scale > 0 else 0.0


def unauditable(fit_y, ev_y, ev_person) -> str | None:
    """Why an attribute cannot be attacked on these splits (None when it can): an attacker
    needs two known groups on the fit side and known clips of two people on the eval side
    (a corpus may annotate an attribute for a few people only)."""
    fit_y, ev_y = np.asarray(fit_y), np.asarray(ev_y)
    groups = np.unique(fit_y[fit_y >= 0])
    if groups.size < 2:
        return (f"the fit split has {groups.size} known group(s) "
                f"({int((fit_y >= 0).sum())} of {fit_y.size} clips annotated)")
    if np.unique(np.asarray(ev_person)[ev_y >= 0]).size < 2:
        return (f"the scored split has known values for fewer than 2 people "
                f"({int((ev_y >= 0).sum())} of {ev_y.size} clips annotated)")
    return None


class AttackAudit:
    """The attacker suite over every layer x attribute, remembering fitted suites.

    Fitting (grouped cross-validation of every family) depends on the fit split alone, so a
    suite fitted at the end of fit is reused at test when the fit split's representations
    are byte-identical (the tested checkpoint is the final one); otherwise it is refitted.
    """

    def __init__(self, cfg, seed: int = 0):
        self.cfg = cfg
        self.seed = seed
        self._suites: dict[str, AttackSuite] = {}  # fingerprint of (rows, attribute, people)
        self.reused = 0  # suites served by an earlier audit's fit
        self.shared = 0  # suites of this audit served by another layer's identical rows
        self.pool_size = 0  # workers of the last audit that fitted a suite

    def run(self, fit: dict, ev: dict, layers, name: str = "probe", device: str = "cpu"
            ) -> list[dict]:
        rows = []
        self.skipped = {a: why for a in SENSITIVE
                        if (why := unauditable(fit[a], ev[a], ev["identity"]))}
        for attr, why in self.skipped.items():
            log.warning("audit: %s is not scored: %s", attr, why)
        # a standardising attacker would rescale round-off into a number: refused instead
        self.refused = {layer: spread for layer in layers
                        if (spread := relative_spread(fit[layer])) <= ROUND_OFF_SPREAD}
        for layer, spread in self.refused.items():
            log.warning("audit: layer %s is not scored: it is constant up to round-off "
                        "(spread %.1e of its scale), so there is nothing left to read and an "
                        "attacker would only read rescaled round-off", layer, spread)
        todo = [(layer, attr, k) for layer in layers if layer not in self.refused
                for attr, k in SENSITIVE.items() if attr not in self.skipped]
        suites = self._fit_suites(fit, todo, name, device)
        # Lightning tests under inference mode; the MLP attackers need autograd
        with torch.inference_mode(False), torch.enable_grad():
            for layer, attr, _ in todo:
                res = suites[(layer, attr)].evaluate(
                    ev[layer], ev[attr], ev["identity"], bootstrap=self.cfg.bootstrap)
                chosen = {id(r): lvl for lvl, r in res.leak.items()}
                for r in res.attackers:
                    rows.append({"layer": layer, "attr": attr, "attacker": r.attacker,
                                 "level": r.level, "params": r.params,
                                 "selected": id(r) in chosen, **r.as_dict()})
        return rows

    def workers(self) -> int:
        """Suites fitted at once: `probe.workers`, or (0) the run's torch threads; each
        worker computes on one thread, so the audit uses the cores the run was given."""
        n = int(self.cfg.get("workers", 0) or 0)
        return n if n > 0 else max(1, torch.get_num_threads())

    def _fit_suites(self, fit: dict, todo, name: str, device: str) -> dict:
        """A fitted suite per (layer, attribute). Fitting depends on the fit rows alone, so
        rows seen before (an earlier audit of the same weights, or another layer with the
        same bytes, e.g. `erased` when the erasure stage erased nothing) are fitted once;
        the others are fitted `workers()` at a time."""
        from concurrent.futures import ThreadPoolExecutor, as_completed

        # the class count too: two attributes may hold the same bytes
        keys = {(layer, attr): fingerprint(fit[layer], fit[attr], fit["identity"],
                                           np.asarray([k]))
                for layer, attr, k in todo}
        new: dict[str, tuple] = {}
        for layer, attr, k in todo:
            key = keys[(layer, attr)]
            if key in self._suites:
                self.reused += 1
            elif key in new:
                self.shared += 1
            else:
                new[key] = (layer, attr, k)

        def fit_one(layer, attr, k):
            return AttackSuite(k, families=tuple(self.cfg.attackers),
                               person_level=self.cfg.person_level, cv_folds=self.cfg.cv_folds,
                               seed=self.seed, device=device).fit(
                fit[layer], fit[attr], fit["identity"])

        fitted = {}
        if new:
            # read before `one_thread` below sets the process's count to 1
            self.pool_size = min(self.workers(), len(new))
            # BLAS and torch at one thread for the whole pool: each suite's own `one_thread`
            # then saves and restores 1, whichever worker leaves first
            # and in each worker: OpenMP keeps a thread count per thread, and a new thread
            # would otherwise start a team of every core inside each suite
            with (one_thread(), ThreadPoolExecutor(self.pool_size,
                                                   initializer=torch.set_num_threads,
                                                   initargs=(1,)) as pool,
                  Progress(len(new), f"{name} audit", unit="suites", logger=log) as bar):
                jobs = {pool.submit(fit_one, *job): key for key, job in new.items()}
                for done in as_completed(jobs):
                    fitted[jobs[done]] = done.result()
                    layer, attr, _ = new[jobs[done]]
                    bar.update(note=f"{layer}/{attr}")
        # keep the suites of these weights only: earlier epochs' would pile up
        self._suites = {key: self._suites.get(key) or fitted[key] for key in keys.values()}
        return {la: self._suites[key] for la, key in keys.items()}


def audit_time_key(prefix: str) -> str:
    """`probe` -> `time/probe_audit_s`: the wall time of one audit (extraction included)."""
    return f"time/{prefix}_audit_s"


def leak_prefix(prefix: str) -> str:
    """`probe` -> `leak`, `fit_probe` -> `fit_leak`, `val_probe` -> `val_leak`."""
    return prefix.replace("probe", "leak")


LEAK_KEYS = ("bal_acc", "bal_acc_ci_low", "bal_acc_ci_high", "cv_bal_acc", "chance",
             "n_eval")


def rows_to_metrics(rows: list[dict], prefix: str) -> dict[str, float]:
    """Every attacker: `<prefix>/<layer>/<attr>/<attacker>/<field>`; the selected attacker
    at each level: `<leak prefix>/<layer>/<attr>/<clip|person>/<field>`."""
    out = {f"{prefix}/{r['layer']}/{r['attr']}/{r['attacker']}/{k}": r[k]
           for r in rows for k in AttackerResult.NUMERIC}
    out.update({f"{leak_prefix(prefix)}/{r['layer']}/{r['attr']}/{r['level']}/{k}": r[k]
                for r in rows if r["selected"] for k in LEAK_KEYS})
    return out


def selected_attackers(rows: list[dict], prefix: str) -> dict[str, str]:
    """`<leak prefix>/<layer>/<attr>/<level>/attacker` -> the attacker's name and params."""
    return {f"{leak_prefix(prefix)}/{r['layer']}/{r['attr']}/{r['level']}/attacker":
            f"{r['attacker']} ({r['params']})" for r in rows if r["selected"]}
