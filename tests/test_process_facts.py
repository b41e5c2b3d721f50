"""A process owns its facts: its name, defaults and refusals are on its class; the flags' choices come
from the registries; code outside the process files asks a process only what the contract declares,
and never compares a process's name."""
import ast
import re

import pytest

from conftest import ROOT
from diffusion.config import DiffusionConfig
from diffusion.processes import PROCESSES, Process
from utils.errors import UserError

PROCESS_FILES = {"diffusion/processes.py", "diffusion/gaussian.py", "diffusion/ddpm.py", "diffusion/continuous.py",
                 "diffusion/shortcut.py",
                 "diffusion/likelihood.py"}  # the bound terms each process's own `bound` calls with itself


def project_files():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if not rel.startswith(("tests/", ".")) and rel not in PROCESS_FILES:
            yield rel, path.read_text()


def declared():
    return set(Process.__annotations__) | {name for name in vars(Process) if not name.startswith("_")}


def test_code_outside_the_process_files_asks_only_what_the_contract_declares():
    members = {name for kind in PROCESSES.values() for name in dir(kind) if not name.startswith("_")}
    members |= {"discrete", "num_timesteps", "t_min", "t_max", "gamma_min", "gamma_max", "alphas_cumprod"}
    undeclared = set()
    for rel, text in project_files():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in ("diffusion", "process") and node.attr in members - declared():
                undeclared.add(f"{rel}: {node.value.id}.{node.attr}")
    assert not undeclared, sorted(undeclared)


def test_no_code_outside_the_process_files_compares_a_process_s_name():
    names = "|".join(map(re.escape, PROCESSES))
    comparison = re.compile(rf"""(==|!=|\bin)\s*\(?[^#\n]*["'](?:{names})["']""")
    found = [f"{rel}:{i}: {line.strip()}" for rel, text in project_files()
             for i, line in enumerate(text.splitlines(), 1)
             if comparison.search(line) and "sampler" not in line]  # ddpm is also a sampler's name
    assert not found, found


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_a_process_s_defaults_come_from_its_class(name):
    kind, config = PROCESSES[name], DiffusionConfig(process=name)
    assert kind.name == name and isinstance(kind.about, str) and kind.about
    for field, value in kind.defaults.items():
        assert getattr(config, field) == value, field
    for field, values in kind.allowed.items():
        assert getattr(config, field) in values


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_a_process_refuses_what_it_does_not_allow_in_one_line(name):
    for field, values in PROCESSES[name].allowed.items():
        choices = {"prediction": ("eps", "x0", "v", "velocity"), "weighting": ("elbo", "velocity", "target"),
                   "clip_x0": (True, False)}[field]
        for value in (v for v in choices if v not in values):
            with pytest.raises(UserError, match=f"{field} {value} is not for a {name} model"):
                DiffusionConfig(process=name, **{field: value})


def test_the_choices_of_the_flags_are_the_registries(capsys):
    import inference
    import train
    from diffusion.grids import GRIDS
    from diffusion.samplers import SAMPLERS
    from diffusion.times import TIMES
    from diffusion.weightings import WEIGHTINGS
    for script in (train, inference):
        with pytest.raises(SystemExit):
            script.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, registry in (("--process", PROCESSES), ("--weighting", WEIGHTINGS), ("--t_sampling", TIMES),
                           ("--sampler", SAMPLERS)):
        assert f"{flag} {{{','.join(registry)}}}" in text, flag
    assert "--grid {," + ",".join(GRIDS) + "}" in text
    for name, kind in PROCESSES.items():
        assert f"{name} ({kind.about})" in text
