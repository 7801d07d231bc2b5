"""Does the face proxy match people by their face, or by the setting their clips share?

A candidate's clips are usually cut from one recording: same background, clothes, camera
and light. A proxy that finds a person's other clips (held-out cross-clip retrieval) may
then be a setting matcher, and a setting matcher carries little gender or ethnicity, so an
adversary that removes it removes little. The audit compares, on unseen people:

* `proxy/retrieval`: the share of clips whose nearest other clip (cosine similarity of
  standardised proxy vectors) shows the same person;
* `proxy/setting_retrieval`: the same for a setting-only view, the mean colours of the face
  crops *outside* the face's ellipse (background, clothes, light level and tint), with no
  face pixel and no model;
* `proxy/chance_retrieval`: what a random neighbour gives;
* `proxy/setting_share` = (setting - chance) / (proxy - chance), clipped to [0, 1], and
  `proxy/setting_explains` = 1 when it reaches `SETTING_EXPLAINS` (a warning says so);
* `proxy/singles_out` = 0 when the proxy finds a person's clips less often than the
  setting alone does (above chance): it then does not tell people apart as the setting
  does (e.g. `model.face_proxy_components`, a few directions of a face descriptor), its
  retrieval is not the setting's, and no warning is due; `leak/proxy` says what it carries.

What the proxy carries of gender and ethnicity is the audit's `proxy` layer
(`leak/proxy/<attr>/<clip|person>/...`), judged by the same attacker suite as h.

A proxy must stand for the sensitive attributes, not for the task: what an adversary removes
with it goes from the score too. Its share of the task is the held-out Pearson r of its best
linear read-out (ridge, the penalty chosen by cross-validation grouped by person on the
audit's fit split, scored on the evaluation split's clips):

* `proxy/label_r`: of the label. A biased label is partly explained by gender, so a good
  proxy of gender explains some of it: read it beside `leak/proxy`;
* `proxy/merit_r`: of the true merit, where the source has it (synthetic data; the real-face
  benchmark joins its own merit on `proxy.csv`), and `proxy/explains_merit` = 1 when it
  exceeds `MERIT_R_WARN` (a warning says so): such a proxy takes merit out of h.
"""

from __future__ import annotations

import numpy as np

from fair_lightning.audit.probes import pearson

MERIT_R_WARN = 0.2  # a proxy whose read-out follows merit this closely removes merit
RIDGE_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3)  # times the number of rows
READOUT_FOLDS = 4
SETTING_EXPLAINS = 0.8  # the setting alone reaches 80 % of the proxy's retrieval above chance
# the face box is widened by data.preprocess.face_margin (0.25 a side) before cropping, so the
# face fills the central ~2/3 of a crop; the ellipse inscribed there is the face's
FACE_AXES = (0.6, 0.75)  # half-axes (x, y) in crop coordinates [-1, 1]


def face_ellipse(h: int, w: int) -> np.ndarray:
    """[h, w] bool: the crop's pixels inside the face's ellipse."""
    ys = (np.arange(h) + 0.5) / h * 2 - 1
    xs = (np.arange(w) + 0.5) / w * 2 - 1
    return (xs[None, :] / FACE_AXES[0]) ** 2 + (ys[:, None] / FACE_AXES[1]) ** 2 <= 1


def setting_descriptor(faces: np.ndarray) -> np.ndarray:
    """Face crops [B, K, 3, H, W] (uint8 or float) -> [B, 9] per clip: per channel, the mean
    of the pixels outside the face's ellipse, of its upper half (background) and of its lower
    half (clothes), averaged over the K crops. Means only: a texture statistic would be
    mostly sensor noise, and standardised it would weigh as much as the colours."""
    x = np.asarray(faces, dtype=np.float32) / (255.0 if faces.dtype == np.uint8 else 1.0)
    h, w = x.shape[-2:]
    out = ~face_ellipse(h, w)
    top = (np.arange(h) < h // 2)[:, None]
    parts = [x[..., out].mean(-1), x[..., out & top].mean(-1), x[..., out & ~top].mean(-1)]
    return np.concatenate(parts, -1).mean(1)


def clip_retrieval(z: np.ndarray, person: np.ndarray) -> float:
    """Share of clips whose nearest other clip (cosine, features standardised over the
    clips) belongs to the same person; clips of people seen once are still queried."""
    z = np.asarray(z, dtype=np.float64)
    z = (z - z.mean(0)) / np.maximum(z.std(0), 1e-12)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)
    person = np.asarray(person)
    return float((person[sim.argmax(1)] == person).mean())


def chance_retrieval(person: np.ndarray) -> float:
    """Expected retrieval of a random other clip: mean over clips of the share of the other
    clips that are the same person's."""
    _, counts = np.unique(np.asarray(person), return_counts=True)
    n = counts.sum()
    return float((counts * (counts - 1)).sum() / (n * (n - 1))) if n > 1 else 0.0


def proxy_figures(z: np.ndarray, setting: np.ndarray, person: np.ndarray) -> dict[str, float]:
    """The `proxy/*` retrieval figures on one split's clips (see the module docstring)."""
    chance = chance_retrieval(person)
    proxy = clip_retrieval(z, person)
    setting_r = clip_retrieval(setting, person)
    share = (min(1.0, max(0.0, (setting_r - chance) / (proxy - chance)))
             if proxy > chance else 1.0)
    singles_out = proxy >= setting_r
    return {"proxy/retrieval": proxy, "proxy/setting_retrieval": setting_r,
            "proxy/chance_retrieval": chance, "proxy/setting_share": share,
            "proxy/singles_out": float(singles_out),
            "proxy/setting_explains": float(singles_out and share >= SETTING_EXPLAINS)}


def _ridge(z: np.ndarray, y: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge weights on standardised z (penalty scaled by the rows); returns (w, scaling)."""
    mu, sd = z.mean(0), np.maximum(z.std(0), 1e-12)
    x = (z - mu) / sd
    w = np.linalg.solve(x.T @ x + penalty * len(x) * np.eye(x.shape[1]), x.T @ (y - y.mean()))
    return w, np.stack([mu, sd])


def task_readout(z_fit, y_fit, groups_fit, z_ev, y_ev) -> float:
    """Held-out Pearson r of the best linear read-out of y from z: a ridge fitted on the fit
    rows (penalty chosen by cross-validation grouped by `groups_fit`, so a person's clips never
    straddle a fold), scored on the evaluation rows. NaN when a target is unknown or constant."""
    z_fit, z_ev = np.asarray(z_fit, np.float64), np.asarray(z_ev, np.float64)
    y_fit, y_ev = np.asarray(y_fit, np.float64), np.asarray(y_ev, np.float64)
    if not (np.isfinite(y_fit).all() and np.isfinite(y_ev).all()) or y_fit.std() == 0:
        return float("nan")
    people = np.unique(np.asarray(groups_fit), return_inverse=True)[1]
    folds = people % min(READOUT_FOLDS, people.max() + 1)
    best, best_r = RIDGE_PENALTIES[0], -np.inf
    if folds.max() > 0:
        for pen in RIDGE_PENALTIES:
            pred = np.empty_like(y_fit)
            for f in range(folds.max() + 1):
                tr = folds != f
                w, (mu, sd) = _ridge(z_fit[tr], y_fit[tr], pen)
                pred[~tr] = ((z_fit[~tr] - mu) / sd) @ w
            r = pearson(pred, y_fit)
            if np.isfinite(r) and r > best_r:
                best, best_r = pen, r
    w, (mu, sd) = _ridge(z_fit, y_fit, best)
    return pearson(((z_ev - mu) / sd) @ w, y_ev)


def readout_figures(fit: dict, ev: dict) -> dict[str, float]:
    """`proxy/label_r`, and `proxy/merit_r` with `proxy/explains_merit` where merit is known,
    from the `proxy`, `label`, `merit` and `identity` rows of the two splits."""
    out = {"proxy/label_r": task_readout(fit["proxy"], fit["label"], fit["identity"],
                                         ev["proxy"], ev["label"])}
    merit = task_readout(fit["proxy"], fit["merit"], fit["identity"], ev["proxy"], ev["merit"])
    if np.isfinite(merit):
        out["proxy/merit_r"] = merit
        out["proxy/explains_merit"] = float(merit > MERIT_R_WARN)
    return out


def proxy_line(fig: dict) -> str:
    """One line for logs and the run report."""
    line = (f"face proxy: held-out cross-clip retrieval {fig['proxy/retrieval']:.2f}, "
            f"{fig['proxy/setting_retrieval']:.2f} from the setting alone (chance "
            f"{fig['proxy/chance_retrieval']:.2f})")
    if not fig.get("proxy/singles_out", 1.0):
        line += ": it does not single people out (the setting does more), so it removes no " \
                "identity; what it carries is `leak/proxy`"
    elif fig["proxy/setting_explains"]:
        line += (": the setting explains the proxy's retrieval, so it may carry little of "
                 "the person's gender or ethnicity (read `leak/proxy`)")
    return line


def readout_line(fig: dict) -> str | None:
    """The proxy's share of the task in one line (a warning's text when it follows merit)."""
    if "proxy/label_r" not in fig:
        return None
    line = f"face proxy: its best linear read-out gives r {fig['proxy/label_r']:.2f} with the label"
    if "proxy/merit_r" in fig:
        line += f", r {fig['proxy/merit_r']:.2f} with the true merit"
        if fig["proxy/explains_merit"]:
            line += (f": above {MERIT_R_WARN}, the proxy carries merit, and the adversary "
                     "removes merit from h with it")
    return line


def write_proxy_csv(path, splits: dict[str, dict]) -> None:
    """`proxy.csv`: split, clip, person and proxy coordinates of every audited clip (no
    label, no sensitive attribute), written whole or not at all."""
    import csv
    import io

    from data_modules.files import atomic_write

    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    width = next(iter(splits.values()))["proxy"].shape[1]
    out.writerow(["split", "clip_id", "identity", *(f"proxy_{i}" for i in range(width))])
    for name, rows in splits.items():
        for c, p, z in zip(rows["clip_id"], rows["identity"], rows["proxy"], strict=True):
            out.writerow([name, c, p, *(f"{v:.6g}" for v in z)])
    atomic_write(path, buf.getvalue())


def read_proxy_csv(path) -> dict[str, dict]:
    """`proxy.csv` back as {split: {"clip_id", "identity", "proxy"}}."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    head, rows = rows[0], rows[1:]
    width = len(head) - 3
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r[0] for r in rows):
        part = [r for r in rows if r[0] == name]
        out[name] = {"clip_id": np.array([r[1] for r in part]),
                     "identity": np.array([r[2] for r in part]),
                     "proxy": np.array([[float(v) for v in r[3:]] for r in part]).reshape(
                         len(part), width)}
    return out
