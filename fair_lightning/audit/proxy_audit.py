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
"""

from __future__ import annotations

import numpy as np

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
