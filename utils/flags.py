"""Settings as dataclasses, and the command-line flags made from them: a field made by `option` is
checked in one place (`check_fields`), `parse_flags` makes its --flag and `from_args` builds the
dataclass back. The settings themselves: utils/config.py (the network, training and the scripts),
diffusion/config.py (the process and sampling, whose choices come from the registries in diffusion/).
"""
import argparse
import dataclasses
import math
import re
import sys
from dataclasses import field

from utils.errors import UserError


def option(default, help, choices=None, bounds=None, item=None):
    """A config field with its --help text, allowed values, and for numbers the allowed range as
    an interval, e.g. "[0, 1)" or "(0, inf)" (checked for every number, tuples element-wise);
    item: the type of a tuple's elements on the command line (default: the default's, else int).
    help and choices may be functions, asked when they are needed: a registry's names as they are then."""
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds, "item": item})


def recorded(default, help):
    """A config field saved in every checkpoint that no flag sets: how a model was made, where the
    project has settled the choice (a checkpoint made before keeps its own value)."""
    return field(default=default, metadata={"help": help, "choices": None, "bounds": None, "item": None, "flag": False})


def check_fields(config):
    """Raise a one-line UserError for the first field outside its range or its choices (a config
    read from a checkpoint too, which argparse never saw); NaN and +-inf are refused everywhere."""
    for f in dataclasses.fields(config):
        value, bounds, choices = getattr(config, f.name), f.metadata["bounds"], now(f.metadata["choices"])
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if choices is not None and item not in choices:
                raise UserError(f"--{f.name} {item!r} is not one this version knows ({', '.join(map(str, choices))})")
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not math.isfinite(item):
                raise UserError(f"--{f.name} must be a finite number, got {item}")
            if bounds and not in_bounds(item, bounds):
                raise UserError(f"--{f.name} must be {describe(bounds)}, got {item:g}")


def now(value):
    """A help text or a list of choices: given, or made now by the function given."""
    return value() if callable(value) else value


def in_bounds(number, bounds):
    low_bracket, low, high, high_bracket = re.fullmatch(r"([\[(])(.+), (.+)([\])])", bounds).groups()
    low, high = float(low), float(high)
    return ((number >= low if low_bracket == "[" else number > low)
            and (number <= high if high_bracket == "]" else number < high))


def describe(bounds):
    """'[1, inf)' -> 'at least 1', '(0, inf)' -> 'positive', '[0, inf)' -> '>= 0', else 'in [0, 1)'."""
    return {"(0, inf)": "positive", "[0, inf)": ">= 0"}.get(bounds) or (
        f"at least {bounds[1:].split(',')[0]}" if bounds[0] == "[" and bounds.endswith("inf)") else f"in {bounds}")


# ---- flags from dataclasses -------------------------------------------------------------

def add_arguments(parser, config_cls):
    """Add one --flag per field of config_cls, with its default and help text."""
    group = parser.add_argument_group(config_cls.__name__)
    for f in dataclasses.fields(config_cls):
        if not f.metadata.get("flag", True):
            continue
        kwargs = {"default": f.default, "help": f"{now(f.metadata['help'])} (default: {_show(f.default)})"}
        if f.metadata["choices"]:
            kwargs["choices"] = now(f.metadata["choices"])
        if isinstance(f.default, bool):  # --x / --no-x, except fields already named no_x
            kwargs["action"] = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
        elif f.type in (tuple, "tuple"):
            kwargs.update(nargs="*", type=f.metadata["item"] or (type(f.default[0]) if f.default else int))
        else:
            kwargs["type"] = f.type  # the field's declared type (its default may be None)
        group.add_argument(f"--{f.name}", **kwargs)


class Parser(argparse.ArgumentParser):
    """argparse with the project's error style: one line on stderr, exit code 2, no usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_flags(description, config_classes, argv=None):
    """(the parsed flags of every field of config_classes, the names of those typed on this command line
    rather than left at their defaults: the parser takes no abbreviations, so each appears whole)."""
    parser = Parser(description=description, allow_abbrev=False)
    for cls in config_classes:
        add_arguments(parser, cls)
    args = parser.parse_args(argv)
    given = {arg.split("=")[0] for arg in (sys.argv[1:] if argv is None else map(str, argv))}
    return args, {f.name for cls in config_classes for f in dataclasses.fields(cls)
                  if given & {f"--{f.name}", f"--no-{f.name}"}}


def _show(value):
    return " ".join(map(str, value)) if isinstance(value, tuple) else "see above" if value is None else value


def from_args(config_cls, args, **overrides):
    """Build config_cls from the parsed flags that belong to it (plus `overrides`)."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}  # nargs: lists
    return config_cls(**{**given, **overrides})
