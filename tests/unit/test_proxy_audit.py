"""The proxy's setting-only check: it flags an encoder that matches people by their
background, and passes one that matches them by their face."""

from __future__ import annotations

import numpy as np
import pytest

from fair_lightning.audit.proxy_audit import (
    chance_retrieval,
    clip_retrieval,
    face_ellipse,
    proxy_figures,
    proxy_line,
    read_proxy_csv,
    readout_figures,
    readout_line,
    setting_descriptor,
    task_readout,
    write_proxy_csv,
)

PEOPLE, CLIPS, K, S = 20, 3, 2, 24


def clips(face_of_person: bool, setting_of_person: bool, seed: int = 0):
    """Face crops [n, K, 3, S, S]: inside the ellipse a face colour, outside a setting
    colour; each is drawn per person or per clip."""
    rng = np.random.default_rng(seed)
    inside = face_ellipse(S, S)
    face_p, set_p = rng.uniform(0, 255, (PEOPLE, 3)), rng.uniform(0, 255, (PEOPLE, 3))
    out, person = [], []
    for p in range(PEOPLE):
        for _ in range(CLIPS):
            face = face_p[p] if face_of_person else rng.uniform(0, 255, 3)
            setting = set_p[p] if setting_of_person else rng.uniform(0, 255, 3)
            img = np.where(inside[None], face[:, None, None], setting[:, None, None])
            img = img[None] + rng.normal(0, 2, (K, 3, S, S))
            out.append(np.clip(img, 0, 255).astype(np.uint8))
            person.append(p)
    return np.stack(out), np.array(person)


def background_encoder(faces):  # "trained on backgrounds alone": reads the corners only
    return faces[..., :3, :3].reshape(len(faces), faces.shape[1], 3, -1).mean((1, 3))


def face_encoder(faces):  # reads the centre of the crop only
    c = S // 2
    return faces[..., c - 3:c + 3, c - 3:c + 3].reshape(len(faces), faces.shape[1], 3,
                                                        -1).mean((1, 3))


def test_an_encoder_of_backgrounds_is_flagged():
    faces, person = clips(face_of_person=True, setting_of_person=True)
    fig = proxy_figures(background_encoder(faces).astype(float), setting_descriptor(faces),
                        person)
    assert fig["proxy/retrieval"] == 1.0 and fig["proxy/setting_retrieval"] == 1.0
    assert fig["proxy/setting_explains"] == 1.0


def test_an_encoder_of_faces_passes_when_settings_vary_by_clip():
    faces, person = clips(face_of_person=True, setting_of_person=False)
    fig = proxy_figures(face_encoder(faces).astype(float), setting_descriptor(faces), person)
    assert fig["proxy/retrieval"] == 1.0
    assert fig["proxy/setting_retrieval"] < 0.3
    assert fig["proxy/setting_explains"] == 0.0 and fig["proxy/setting_share"] < 0.3


def test_a_proxy_that_singles_nobody_out_is_not_called_a_setting_matcher():
    """A few directions of a face descriptor (one number here) find few people's other
    clips, fewer than the setting does: that is no setting matcher, and no warning."""
    faces, person = clips(face_of_person=True, setting_of_person=True)
    one = (person % 2)[:, None].astype(float)  # a binary look shared by half the people
    fig = proxy_figures(one + np.random.default_rng(0).normal(0, 1, one.shape),
                        setting_descriptor(faces), person)
    assert fig["proxy/retrieval"] < 0.5 * fig["proxy/setting_retrieval"]
    assert fig["proxy/singles_out"] == 0.0 and fig["proxy/setting_explains"] == 0.0
    assert "does not single people out" in proxy_line(fig)
    assert "explains" not in proxy_line(fig)


def test_the_setting_descriptor_reads_no_face_pixel():
    faces, _ = clips(face_of_person=True, setting_of_person=True)
    changed = faces.copy()
    changed[..., face_ellipse(S, S)] = 0
    assert np.allclose(setting_descriptor(faces), setting_descriptor(changed))


def test_retrieval_and_its_chance():
    person = np.array([0, 0, 1, 1, 2, 2])
    assert chance_retrieval(person) == pytest.approx(1 / 5)
    z = np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [-1, 0], [-1, -0.1]])
    assert clip_retrieval(z, person) == 1.0


def readout_split(n_people: int, merit_weight: float, seed: int) -> dict:
    """Three clips a person; a 3-d proxy of the person's gender, plus `merit_weight` of their
    merit on its second axis; label = merit + gender bias."""
    rng = np.random.default_rng(seed)
    g = np.repeat(rng.integers(0, 2, n_people), 3).astype(float)
    m = np.repeat(rng.standard_normal(n_people), 3) + 0.2 * rng.standard_normal(3 * n_people)
    z = np.stack([g, merit_weight * m, np.zeros_like(g)], 1) + 0.3 * rng.standard_normal(
        (3 * n_people, 3))
    return {"proxy": z, "label": m + 0.5 * g, "merit": m, "gender": g,
            "identity": np.repeat(np.arange(n_people) + 1000 * seed, 3),
            "clip_id": np.array([f"c{seed}-{i}" for i in range(3 * n_people)])}


def test_a_proxy_of_gender_alone_explains_no_merit_and_is_not_flagged():
    fig = readout_figures(readout_split(80, 0.0, 0), readout_split(60, 0.0, 1))
    assert abs(fig["proxy/merit_r"]) < 0.2 and fig["proxy/explains_merit"] == 0.0
    assert fig["proxy/label_r"] > 0.2  # the label's gender bias is what it explains
    assert "carries merit" not in readout_line(fig)


def test_a_proxy_that_explains_the_task_is_flagged():
    fig = readout_figures(readout_split(80, 1.0, 0), readout_split(60, 1.0, 1))
    assert fig["proxy/merit_r"] > 0.6 and fig["proxy/explains_merit"] == 1.0
    assert "carries merit" in readout_line(fig)


def test_unknown_merit_gives_no_merit_figure():
    fit, ev = readout_split(40, 1.0, 0), readout_split(30, 1.0, 1)
    fit["merit"] = np.full_like(fit["merit"], np.nan)
    fig = readout_figures(fit, ev)
    assert "proxy/merit_r" not in fig and "proxy/explains_merit" not in fig
    assert "merit" not in readout_line(fig)


def test_the_readout_is_held_out_and_picks_its_penalty():
    """128 noise dimensions and one that carries the target: the chosen ridge still reads it
    on unseen people; pure noise reads nothing on them."""
    rng = np.random.default_rng(0)
    y_fit, y_ev = rng.standard_normal(300), rng.standard_normal(200)
    z_fit, z_ev = rng.standard_normal((300, 128)), rng.standard_normal((200, 128))
    assert abs(task_readout(z_fit, y_fit, np.arange(300) // 3, z_ev, y_ev)) < 0.2
    z_fit[:, 0] += 2 * y_fit
    z_ev[:, 0] += 2 * y_ev
    assert task_readout(z_fit, y_fit, np.arange(300) // 3, z_ev, y_ev) > 0.8


def test_proxy_csv_round_trips(tmp_path):
    fit, ev = readout_split(4, 0.0, 0), readout_split(3, 0.0, 1)
    write_proxy_csv(tmp_path / "proxy.csv", {"val": fit, "test": ev})
    back = read_proxy_csv(tmp_path / "proxy.csv")
    assert list(back) == ["val", "test"]
    np.testing.assert_allclose(back["test"]["proxy"], ev["proxy"], rtol=1e-5)
    assert list(back["val"]["clip_id"]) == list(fit["clip_id"])
    text = (tmp_path / "proxy.csv").read_text()
    assert "gender" not in text and "label" not in text  # no attribute, no label written
