"""What the code imports is what pyproject.toml declares, both ways."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fair_lightning", "data_modules")
# the checkout's benchmark fixtures: `make bench BENCH=preprocess` imports them, and says
# with an error line that a source checkout is needed where they are absent
CHECKOUT_ONLY = ("benchmarks",)
# modules whose distribution metadata does not name them as a top-level package
DISTRIBUTION_OF = {"dlib": "dlib-bin"}
# located by name rather than imported (their files are read, not their code)
LOCATED = {"face_recognition_models": "face-recognition-models"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_modules() -> set[str]:
    mods = set()
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(), str(f))):
                if isinstance(node, ast.Import):
                    mods.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods.add(node.module.split(".")[0])
    return {m for m in mods if m not in sys.stdlib_module_names
            and m not in PACKAGES + CHECKOUT_ONLY}


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {_norm(re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0]) for r in reqs}  # noqa: E731
    return names(project["dependencies"]), {k: names(v) for k, v in
                                            project["optional-dependencies"].items()}


def test_every_import_is_declared_and_every_declaration_imported():
    dists = md.packages_distributions()
    needed = set()
    for mod in imported_modules():
        dist = DISTRIBUTION_OF.get(mod) or (dists.get(mod) or [None])[0]
        assert dist, f"{mod}: imported, but no installed distribution provides it"
        needed.add(_norm(dist))
    needed |= {_norm(d) for d in LOCATED.values()}
    core, extras = declared()
    runtime = core | extras["faces"] | extras["sweeps"]
    assert needed - runtime == set(), "imported but not declared"
    assert runtime - needed == set(), "declared but never imported"
    # the optional parts are extras, each with an install line where it is needed
    assert {"dlib-bin", "face-recognition-models"} == extras["faces"]
    assert {"sweeps"} == extras["sweeps"]
    assert not (core & (extras["faces"] | extras["sweeps"]))


def test_the_constraints_file_pins_what_is_declared():
    """constraints.txt (the tested versions) agrees with every exact pin of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for v in project["optional-dependencies"].values()
                                      for r in v]
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text()
                .splitlines() if "==" in line and not line.startswith("#"))
    pins = {_norm(k): v.strip() for k, v in pins.items()}
    for req in reqs:
        if "==" in req:
            name, version = req.split("==", 1)
            assert pins.get(_norm(name)) == version.strip(), req
