"""Choose the EMA's length after training (post-hoc EMA, Karras et al. 2024; training/posthoc.py).

    python train.py --posthoc_ema 8                               # keeps two EMA profiles, 8 snapshots each
    python posthoc_ema.py --sigma_rel 0.05 0.1 0.2                # checkpoints/ddpm_checkpoint_ema0.05, ...
    python evaluate.py --checkpoint_path checkpoints/ddpm_checkpoint_ema0.1 --num_samples 1000

Each written checkpoint is the run's with its EMA replaced by the one of that length, so every
script samples, scores and resumes from it as from the run's own.
"""
import os
import sys
from pathlib import Path

from models.load import refuse_shipped
from training.posthoc import reconstruct
from utils.checkpoint import load_checkpoint, main_path, save_checkpoint
from utils.config import PostHocConfig
from utils.errors import UserError, exit_on_user_error
from utils.flags import from_args, parse_flags


def main(argv=None):
    args, _ = parse_flags("Make the EMA of a chosen length from a run trained with --posthoc_ema.", (PostHocConfig,), argv)
    cfg = from_args(PostHocConfig, args)
    ckpt, path = load_checkpoint(cfg.checkpoint_path)
    if "posthoc" not in ckpt:
        raise UserError(f"{path} keeps no post-hoc EMA snapshots: train with --posthoc_ema N")
    steps = sorted({step for step, _, _ in ckpt["posthoc"]["snapshots"]})
    if not steps:
        raise UserError(f"{path} has no post-hoc EMA snapshot yet: train it further (--posthoc_ema N takes one every "
                        "1/N of the run)")
    if cfg.step and cfg.step not in steps:
        raise UserError(f"--step {cfg.step}: {path} has snapshots at steps {', '.join(map(str, steps))}")
    step = cfg.step or steps[-1]
    outs = [Path(cfg.out.format(sigma_rel=f"{sigma_rel:g}") if cfg.out else f"{main_path(path)}_ema{sigma_rel:g}")
            for sigma_rel in cfg.sigma_rel]
    refuse_overwrites(outs, cfg.sigma_rel, path)
    for sigma_rel, out in zip(cfg.sigma_rel, outs):
        made = {key: value for key, value in ckpt.items() if key != "posthoc"}
        made["ema"] = reconstruct(ckpt["posthoc"], sigma_rel, step)
        made["train_config"] = {**ckpt["train_config"], "posthoc_ema": 0}
        made["posthoc_source"] = {"checkpoint": str(path), "sigma_rel": sigma_rel, "step": step}
        save_checkpoint(made, out)
    written = list(map(str, outs))
    print(f"EMA at step {step} of sigma_rel {', '.join(f'{s:g}' for s in cfg.sigma_rel)}: {', '.join(written)}",
          file=sys.stderr)
    return written


def refuse_overwrites(outs, sigma_rels, source):
    """Each length writes a file of its own, never the checkpoint it comes from (by any name: a link,
    its main path) nor the shipped model."""
    resolved = [out.resolve() for out in outs]
    for i, out in enumerate(outs):
        refuse_shipped(f"--out {out}", out, "give another --out")
        linked = out.exists() and os.path.samefile(out, source)  # a hard link: the run's step file and main path
        if linked or resolved[i] in (source.resolve(), main_path(source).resolve()):
            raise UserError(f"--out {out} would write over {source}, the checkpoint it is made from; give another --out")
        first = resolved.index(resolved[i])
        if first != i:
            raise UserError(f"--sigma_rel {sigma_rels[first]:g} and {sigma_rels[i]:g} would both write {out}; give "
                            "distinct lengths, or an --out whose {sigma_rel} tells them apart")


if __name__ == "__main__":
    exit_on_user_error(main)
