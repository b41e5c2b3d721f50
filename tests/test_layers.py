"""Imports run one way: utils/ (leaf helpers) <- models/, diffusion/ <- the scripts."""
import ast

import pytest

from conftest import ROOT

# package -> the project packages its modules may import
ALLOWED = {"utils": {"utils"}, "diffusion": {"diffusion", "utils"}, "models": {"models", "diffusion", "utils"}}


def project_imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        for name in names:
            top = name.split(".")[0]
            if (ROOT / top).is_dir() or (ROOT / f"{top}.py").exists():
                yield top


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_import_runs_up_a_layer(package):
    for path in sorted((ROOT / package).glob("*.py")):
        wrong = set(project_imports(path)) - ALLOWED[package]
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_diffusion_and_models_do_not_import_each_other_both_ways():
    diffusion = {top for p in (ROOT / "diffusion").glob("*.py") for top in project_imports(p)}
    assert "models" not in diffusion  # models/load.py may build a GaussianDiffusion; never the reverse
