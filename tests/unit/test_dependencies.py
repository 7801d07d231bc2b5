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


def _imports_of(f: Path) -> set[str]:
    """Every absolute module a file imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(f.read_text(), str(f))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _layer_violations() -> list[str]:
    pkg = ROOT / "fair_lightning"
    bad = []
    for f in sorted([*pkg.rglob("*.py"), *(ROOT / "data_modules").rglob("*.py")]):
        rel = f.relative_to(ROOT).as_posix()
        mods = _imports_of(f)
        if not rel.startswith("fair_lightning/cli/"):  # entry points: imported by nothing
            bad += [f"{rel} imports {m}" for m in mods if m.startswith("fair_lightning.cli")]
            if not rel.startswith("fair_lightning/bench/"):  # the bench: by its entry point
                bad += [f"{rel} imports {m}" for m in mods
                        if m.startswith("fair_lightning.bench")]
        if rel.startswith(("fair_lightning/audit/", "fair_lightning/models/", "fair_lightning/ops/")) \
                or rel == "fair_lightning/steps.py":  # plain torch and numpy, no Lightning
            bad += [f"{rel} imports {m}" for m in mods
                    if m.split(".")[0] == "lightning" or m.startswith("fair_lightning.lightning")
                    or m.startswith("fair_lightning.experiment")]
        if rel.startswith("data_modules/"):  # the data layer stands alone
            bad += [f"{rel} imports {m}" for m in mods if m.startswith("fair_lightning")]
    return bad


def test_layers_import_downwards_only():
    """cli -> bench -> experiment -> lightning -> audit, models, steps, ops -> data_modules:
    no entry point and no bench code is imported by library code, and the audit, the
    networks, the training step and the plumbing run without Lightning."""
    assert _layer_violations() == []


def test_the_layer_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check reads imports inside functions too."""
    fake = tmp_path / "fair_lightning" / "audit"
    fake.mkdir(parents=True)
    (fake / "x.py").write_text("def f():\n    from fair_lightning.cli.train import main\n"
                               "    import lightning\n"
                               "    from fair_lightning.bench.plain import PlainEngine\n")
    (tmp_path / "data_modules").mkdir()
    (tmp_path / "data_modules" / "y.py").write_text("from fair_lightning import config\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sorted(_layer_violations()) == [
        "data_modules/y.py imports fair_lightning",
        "data_modules/y.py imports fair_lightning.config",
        "fair_lightning/audit/x.py imports fair_lightning.bench.plain",
        "fair_lightning/audit/x.py imports fair_lightning.bench.plain.PlainEngine",
        "fair_lightning/audit/x.py imports fair_lightning.cli.train",
        "fair_lightning/audit/x.py imports fair_lightning.cli.train.main",
        "fair_lightning/audit/x.py imports lightning"]
