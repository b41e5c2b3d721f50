"""Imports run one way: utils/ (plumbing) <- diffusion/ (the process) <- models/ (the network) <-
training/ (the algorithm that drives both) <- the scripts and benchmarks."""
import ast

import pytest

from conftest import ROOT

# package -> the project packages its modules may import
ALLOWED = {"utils": {"utils"}, "diffusion": {"diffusion", "utils"}, "models": {"models", "diffusion", "utils"},
           "training": {"training", "models", "diffusion", "utils"}}


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


def test_the_training_step_names_the_process_and_the_network_it_drives():
    """The step calls the process (q_sample, loss) and the network through objects it is handed;
    its signature names their types, so the dependency is an import the layering test sees."""
    step = set(project_imports(ROOT / "training" / "step.py")) | set(project_imports(ROOT / "training" / "state.py"))
    assert {"diffusion", "models"} <= step
    assert not any((ROOT / "utils").glob("train*.py"))  # no training algorithm under plumbing
    for path in (ROOT / "utils").glob("*.py"):
        text = path.read_text()
        assert ".backward(" not in text and "optimizer.step(" not in text, path.name
