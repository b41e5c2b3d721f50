"""Train a DDPM on MNIST.

    python train.py                                              # defaults; writes checkpoints/ddpm_checkpoint
    python train.py --checkpoint_path checkpoints/ddpm_checkpoint  # resumes that run exactly
    torchrun --nproc_per_node=4 train.py                         # DistributedDataParallel

If --checkpoint_path exists, training resumes from it (same step, optimizer, LR, EMA, RNG) and
keeps writing there. Model and diffusion settings then come from the checkpoint.
"""
import argparse
import csv
import dataclasses
import math
import signal
import sys
import time
from pathlib import Path

import torch
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from diffusion.gaussian import GaussianDiffusion
from diffusion.samplers import DEFAULT_SAMPLER, generate
from models.unet import UNet, count_parameters
from utils import distributed
from utils.checkpoint import FORMAT_VERSION, config_mismatch, load_checkpoint, load_weights, main_path, save_checkpoint
from utils.config import DiffusionConfig, ModelConfig, TrainConfig, add_arguments, from_args
from utils.data import load_mnist, to_model_range
from utils.device import autocast, resolve_precision, select_device, set_cpu_threads
from utils.errors import UserError, exit_on_user_error
from utils.metrics import make_quick_fid
from utils.plotting import loss_curve, save_grid

LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "images_per_s", "bad_steps", "wall_s"]
TRAINING_STATE = ("train_config", "optimizer", "lr_scheduler", "grad_scaler", "bad_steps", "rng")
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


def build_parser(suppress_defaults=False):
    parser = argparse.ArgumentParser(description="Train a DDPM on MNIST.", allow_abbrev=False)
    for cls in (TrainConfig, ModelConfig, DiffusionConfig):
        add_arguments(parser, cls, skip=("num_classes",), suppress_defaults=suppress_defaults)
    return parser


def resolve_configs(argv):
    """Configs from the flags, or from the checkpoint being resumed (plus flags typed now)."""
    args = build_parser().parse_args(argv)
    typed = set(vars(build_parser(suppress_defaults=True).parse_args(argv)))
    train_cfg = from_args(TrainConfig, args)
    model_cfg = from_args(ModelConfig, argparse.Namespace(**vars(args), num_classes=10 if args.class_cond else 0))
    diffusion_cfg = from_args(DiffusionConfig, args)
    path = Path(train_cfg.checkpoint_path)
    if not (path.exists() or train_cfg.checkpoint_path == "latest"):
        return train_cfg, model_cfg, diffusion_cfg, None

    ckpt, source = load_checkpoint(train_cfg.checkpoint_path)
    missing = [key for key in TRAINING_STATE if key not in ckpt]
    if missing:
        raise UserError(f"{source} cannot be resumed: it lacks the training state {', '.join(missing)}")
    requested = {**dataclasses.asdict(model_cfg), **dataclasses.asdict(diffusion_cfg)}
    saved = {**ckpt["model_config"], **ckpt["diffusion_config"]}
    typed_arch = sorted(typed & set(saved) | ({"num_classes"} if "class_cond" in typed else set()))
    mismatch = config_mismatch(saved, requested, typed_arch)
    if mismatch:
        raise UserError(f"{source} was trained with a different architecture: {'; '.join(mismatch)}")
    train_cfg = TrainConfig(**{**ckpt["train_config"], **{k: getattr(args, k) for k in typed if hasattr(train_cfg, k)},
                               "checkpoint_path": str(main_path(source))})
    return train_cfg, ModelConfig(**ckpt["model_config"]), DiffusionConfig(**ckpt["diffusion_config"]), ckpt


def check_writable(folder):
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe = Path(folder) / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to {folder}: {err.strerror}") from None


def main(argv=None, make_model=UNet):
    """Train; `make_model(model_config)` builds the network (the benchmarks swap in a peer model)."""
    train_cfg, model_cfg, diffusion_cfg, ckpt = resolve_configs(argv)
    stop = {"signal": None}
    for signum in EXIT_CODES:  # preemption or Ctrl-C: finish the step, save, exit
        signal.signal(signum, lambda signum, frame: stop.update(signal=signum))

    # ---- devices, precision, seeds -------------------------------------------------------------
    rank, world_size, device_name = distributed.setup(train_cfg.device)
    is_main = rank == 0
    device = select_device(device_name)
    set_cpu_threads()
    amp_dtype = resolve_precision(train_cfg.precision, device)

    def amp():  # the autocast context for this device and precision
        return autocast(device, amp_dtype)

    if train_cfg.batch_size % world_size:
        raise UserError(f"--batch_size {train_cfg.batch_size} must be divisible by the {world_size} processes")
    torch.manual_seed(train_cfg.seed)
    out_dir = Path(train_cfg.output_dir)
    if is_main:
        check_writable(out_dir)
        check_writable(Path(train_cfg.checkpoint_path).parent)

    # ---- data: all of MNIST as one uint8 tensor on the device ------------------------------------
    images, labels = load_mnist(train_cfg.data_dir, train=True)
    images, labels = images.to(device), labels.to(device)
    steps_per_epoch = len(images) // train_cfg.batch_size
    total_steps = train_cfg.epochs * steps_per_epoch
    end_step = min(total_steps, train_cfg.max_steps) if train_cfg.max_steps else total_steps
    local_batch = train_cfg.batch_size // world_size

    # ---- model, EMA, optimizer, LR schedule ---------------------------------------------------
    model = make_model(model_cfg).to(device)
    diffusion = GaussianDiffusion(diffusion_cfg, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total_steps - train_cfg.warmup_steps),
                                  warmup_t=train_cfg.warmup_steps, warmup_prefix=True, t_in_epochs=False,
                                  warmup_lr_init=0.01 * train_cfg.lr, lr_min=0.01 * train_cfg.lr)
    ema = ModelEmaV3(model, decay=train_cfg.ema_decay, use_warmup=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step, bad_steps = 0, 0
    if ckpt is not None:
        load_weights(model, ckpt["model"], train_cfg.checkpoint_path)
        load_weights(ema.module, ckpt["ema"], train_cfg.checkpoint_path)
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt["lr_scheduler"]["t_initial"] == scheduler.t_initial:
            scheduler.load_state_dict(ckpt["lr_scheduler"])
        if ckpt["grad_scaler"]:  # empty when the run was saved without fp16
            scaler.load_state_dict(ckpt["grad_scaler"])
        step, bad_steps = ckpt["step"], ckpt["bad_steps"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if device.type == "cuda" and ckpt["rng"]["cuda"] is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], device)
    net = torch.compile(model) if train_cfg.compile else model
    if world_size > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint_state():
        return {
            "format_version": FORMAT_VERSION,
            "model_config": dataclasses.asdict(model_cfg),
            "diffusion_config": dataclasses.asdict(diffusion_cfg),
            "train_config": dataclasses.asdict(train_cfg),
            "model": model.state_dict(),  # the unwrapped, uncompiled module: no prefixes
            "ema": ema.module.state_dict(),
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": scheduler.state_dict(),
            "grad_scaler": scaler.state_dict(),
            "step": step,
            "epoch": step // steps_per_epoch,
            "bad_steps": bad_steps,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
        }

    def save():
        if not is_main:
            return
        try:
            save_checkpoint(checkpoint_state(), train_cfg.checkpoint_path, train_cfg.keep_last)
        except OSError as err:
            raise UserError(f"could not save the checkpoint to {train_cfg.checkpoint_path}: {err}") from None

    if is_main:
        print(f"device {device} | precision {amp_dtype or torch.float32} | processes {world_size} | "
              f"{count_parameters(model):,} parameters | {steps_per_epoch} steps/epoch | "
              f"{'resuming at' if ckpt else 'starting at'} step {step} of {end_step}", file=sys.stderr)
        if step >= end_step:
            print(f"{train_cfg.checkpoint_path} has already reached step {step}; raise --epochs or --max_steps "
                  "to train further", file=sys.stderr)
    log_path = out_dir / "train_log.csv"
    if is_main and (ckpt is None or not log_path.exists()):
        with open(log_path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)

    # ---- training loop -------------------------------------------------------------------------
    # The data order and the noise of step s depend only on (seed, epoch) and (seed, s), so a
    # resumed run draws exactly what an uninterrupted one would, even in the middle of an epoch.
    noise_gen = torch.Generator(device=device)
    quick_fid = make_quick_fid(device, train_cfg.data_dir) if is_main and train_cfg.eval_every else None
    progress = tqdm(total=end_step, initial=step, disable=not is_main, dynamic_ncols=True, desc="train")
    smoothed, tic, tic_step = None, time.perf_counter(), step
    run_start, run_start_step = tic, step
    while step < end_step:
        epoch = step // steps_per_epoch
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(train_cfg.seed + epoch))
        order = order.to(device)
        for batch_index in range(step % steps_per_epoch, steps_per_epoch):
            # get batch: this rank's slice of the global batch
            batch = order[batch_index * train_cfg.batch_size:][:train_cfg.batch_size]
            batch = batch[rank * local_batch:(rank + 1) * local_batch]
            x0, y = to_model_range(images[batch]), labels[batch]

            # noise, timesteps and label dropout for the whole global batch; keep this rank's part
            noise_gen.manual_seed(train_cfg.seed * 1_000_003 + step)
            global_shape = (train_cfg.batch_size, *x0.shape[1:])
            part = slice(rank * local_batch, (rank + 1) * local_batch)
            noise = torch.randn(global_shape, generator=noise_gen, device=device)[part]
            t = torch.randint(0, diffusion.num_timesteps, (train_cfg.batch_size,), generator=noise_gen, device=device)[part]
            drop = torch.rand(train_cfg.batch_size, generator=noise_gen, device=device)[part] < train_cfg.p_uncond
            y = torch.where(drop, model_cfg.num_classes, y) if model_cfg.num_classes else None

            # forward
            x_t = diffusion.q_sample(x0, t, noise)
            with amp():
                prediction = net(x_t, t, y)
            loss = diffusion.loss(prediction, x0, noise, t)

            # backward and step, skipping updates whose loss or gradient is not finite
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip or float("inf"))
            loss_value = loss.item()
            finite = math.isfinite(loss_value) and bool(torch.isfinite(grad_norm))
            if finite:
                scaler.step(optimizer)
                ema.update(model, step=step + 1)
            scaler.update()
            bad_steps = 0 if finite or scaler.is_enabled() else bad_steps + 1
            step += 1
            scheduler.step_update(step)

            # log
            if finite:
                smoothed = loss_value if smoothed is None else 0.98 * smoothed + 0.02 * loss_value
            progress.update(1)
            if step % train_cfg.log_every == 0 or step == end_step or not finite:
                now = time.perf_counter()
                speed = (step - tic_step) * train_cfg.batch_size / max(now - tic, 1e-9)
                tic, tic_step = now, step
                lr = optimizer.param_groups[0]["lr"]
                progress.set_postfix(loss=f"{smoothed or float('nan'):.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")
                if is_main:
                    with open(log_path, "a", newline="") as f:
                        csv.writer(f).writerow([step, epoch, repr(loss_value), repr(lr), repr(grad_norm.item()),
                                                f"{speed:.1f}", bad_steps, f"{now - run_start:.1f}"])
            if bad_steps >= train_cfg.max_bad_steps:
                save()
                raise UserError(f"stopped at step {step}: {bad_steps} non-finite losses or gradients in a row "
                                f"(last finite weights saved to {train_cfg.checkpoint_path}); try a lower --lr")

            # save, and stop on a signal or at the end
            stopping = distributed.any_rank(stop["signal"] is not None, device)
            if step % train_cfg.save_every == 0 or step == end_step or stopping:
                save()
            if stopping:
                progress.close()
                signum = stop["signal"] or signal.SIGTERM
                print(f"received {signal.Signals(signum).name}: saved step {step} to {train_cfg.checkpoint_path}",
                      file=sys.stderr)
                distributed.cleanup()
                sys.exit(EXIT_CODES[signum])
            # cheap FID during training
            if is_main and train_cfg.eval_every and step % train_cfg.eval_every == 0:
                log_quick_fid(quick_fid, ema.module, diffusion, amp, step, train_cfg.eval_samples,
                              out_dir / "eval_log.csv")
            if step == end_step:
                break

        # sample grid at the end of each epoch, from the EMA weights, on fixed noise
        if is_main and train_cfg.num_grid_samples and (step % steps_per_epoch == 0 or step == end_step):
            # a quick look at progress: the default sampler, fixed noise, digits 0-9 in turn if conditional
            n = train_cfg.num_grid_samples
            grid = generate(ema.module, diffusion, n, DEFAULT_SAMPLER, seed=1234, batch_size=n, autocast=amp)
            save_grid(grid, out_dir / f"samples_epoch{epoch + 1:03d}.png")
    progress.close()
    if world_size > 1:
        if not distributed.ranks_agree(model):
            raise UserError("the processes ended with different weights; this is a bug, please report it")
        if is_main:
            print(f"weights identical on all {world_size} processes", file=sys.stderr)

    if is_main:
        loss_curve(log_path, out_dir / "loss_curve.png")
        seconds = time.perf_counter() - run_start
        print(f"done: step {step} ({step - run_start_step} steps in {seconds:.1f} s), "
              f"checkpoint {train_cfg.checkpoint_path}, images in {out_dir}/", file=sys.stderr)
    distributed.cleanup()


def log_quick_fid(quick_fid, model, diffusion, autocast_fn, step, num, log_path):
    """Append the FID of `num` samples (and their confident share) to log_path."""
    fid, confident, seconds = quick_fid(model, diffusion, autocast_fn, num)
    new = not log_path.exists()
    with open(log_path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["step", "fid", "confident", "seconds"])
        writer.writerow([step, f"{fid:.4f}", f"{confident:.4f}", f"{seconds:.1f}"])
    tqdm.write(f"step {step}: FID {fid:.3f} on {num} samples ({seconds:.0f} s)")


if __name__ == "__main__":
    exit_on_user_error(main)
