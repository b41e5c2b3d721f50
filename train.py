"""Train a DDPM on MNIST (or Fashion-MNIST, KMNIST, CIFAR-10, or a folder of your own images).

    python train.py                                              # defaults; writes checkpoints/ddpm_checkpoint
    python train.py --dataset folder --data_dir my_images --checkpoint_path checkpoints/mine
    python train.py --checkpoint_path checkpoints/ddpm_checkpoint  # resumes that run exactly
    torchrun --nproc_per_node=4 train.py                         # DistributedDataParallel

The run's length is a wall-clock budget (--minutes) turned into a number of steps before step 0,
or --epochs / --total_steps. If --checkpoint_path exists, training resumes from it (same step,
optimizer, LR, EMA, RNG, length) and keeps writing there; model and diffusion settings then
come from the checkpoint.
"""
import argparse
import csv
import dataclasses
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
from diffusion.samplers import generate
from models.classifier import load_classifier
from models.load import SHIPPED_MODEL
from models.unet import UNet, count_parameters
from utils import distributed
from utils.checkpoint import (config_mismatch, load_checkpoint, main_path, restore_training, save_checkpoint,
                              training_state)
from utils.config import (DATASET_MODEL, GPU_PRESET, DiffusionConfig, ModelConfig, SamplingConfig, TrainConfig,
                          add_arguments, from_args, typed_flags)
from utils.data import to_model_range
from utils.datasets import load_dataset
from utils.device import autocast, resolve_precision, sampling_batch_size, select_device, set_cpu_threads
from utils.errors import UserError, exit_on_user_error
from utils.metrics import class_statistics, classify, fid_kid
from utils.plotting import loss_curve, save_grid
from utils.train_step import make_optimizer, make_step, nan_batch

LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "images_per_s", "bad_steps", "wall_s"]
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}
BUDGET_SHARE = 0.95  # of a --minutes budget given to training steps; the rest: sample grids, saves, noise

# ---- seeds: every random stream of a run comes from --seed, here and nowhere else ----------------
# Checkpoints from before seed_scheme 2 keep their own derivation when they resume (seed + epoch
# for the data order made seed 0's epoch 1 the same shuffle as seed 1's epoch 0).
GRID_SEED = 1234        # the fixed noise of the per-epoch sample grids, the same at every epoch
QUICK_FID_SEED = 4321   # the samples of --eval_every, the same at every evaluation


def data_order_seed(seed, epoch, scheme):
    """Seed of the shuffle of `epoch`: distinct for every (seed, epoch) pair."""
    return seed + epoch if scheme == 1 else seed * 2 ** 32 + epoch


def step_noise_seed(seed, step, scheme):
    """Seed of the noise, timesteps and label dropout of `step`: distinct for every (seed, step) pair."""
    return seed * 1_000_003 + step if scheme == 1 else seed * 2 ** 32 + 2 ** 31 + step


def build_parser():
    parser = argparse.ArgumentParser(description="Train a DDPM on MNIST.", allow_abbrev=False)
    for cls in (TrainConfig, ModelConfig, DiffusionConfig):
        add_arguments(parser, cls)
    return parser


def resolve_configs(argv):
    """Configs from the flags, or from the checkpoint being resumed (plus flags typed now)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    typed = typed_flags(parser, sys.argv[1:] if argv is None else list(map(str, argv)))
    train_cfg, diffusion_cfg = from_args(TrainConfig, args), from_args(DiffusionConfig, args)
    smallest = (args.image_size // 2 ** (len(args.channel_mults) - 1),)  # attention there unless typed
    model_cfg = from_args(ModelConfig, args, **({} if "attention_resolutions" in typed else
                                                {"attention_resolutions": smallest}))
    if Path(train_cfg.checkpoint_path).resolve() == SHIPPED_MODEL.resolve():
        raise UserError(f"{SHIPPED_MODEL} is the shipped model; train into another --checkpoint_path")
    if not (Path(train_cfg.checkpoint_path).exists() or train_cfg.checkpoint_path == "latest"):
        return train_cfg, model_cfg, diffusion_cfg, None, typed

    ckpt, source = load_checkpoint(train_cfg.checkpoint_path)
    requested = {**dataclasses.asdict(model_cfg), **dataclasses.asdict(diffusion_cfg)}
    saved = {**ckpt["model_config"], **ckpt["diffusion_config"]}
    mismatch = config_mismatch(saved, requested, sorted(typed & set(saved)))
    if mismatch:
        raise UserError(f"{source} was trained with a different architecture: {'; '.join(mismatch)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    saved_train = {"seed_scheme": 1, **{k: v for k, v in ckpt.get("train_config", {}).items() if k in known}}
    changes = {k: getattr(args, k) for k in typed & known}
    if typed & {"epochs", "minutes"} and "total_steps" not in typed:
        changes["total_steps"] = 0  # a new length for the run: from the typed --epochs or --minutes
    train_cfg = TrainConfig(**{**saved_train, **changes, "checkpoint_path": str(main_path(source))})
    return train_cfg, ModelConfig(**ckpt["model_config"]), DiffusionConfig(**ckpt["diffusion_config"]), ckpt, typed


def shaped_for(data, cfg, dataset, typed):
    """The U-Net of a fresh run shaped by its data: the images' size and channels, one label per
    class (0 = unconditional, for unlabelled images), attention at the smallest feature map, and
    the data set's own defaults (DATASET_MODEL), each unless typed."""
    _, channels, size, _ = data.images.shape
    for name, value in (("image_size", size), ("in_channels", channels)):
        if name in typed and getattr(cfg, name) != value:  # only a folder is resized or converted
            raise UserError(f"--{name} {getattr(cfg, name)}: the {dataset} images have {value}")
    fields = {**DATASET_MODEL.get(dataset, {}), "num_classes": len(data.classes)}
    fields = {k: v for k, v in fields.items() if k not in typed}
    if data.labels is None and "num_classes" in typed and cfg.num_classes:
        raise UserError(f"--num_classes {cfg.num_classes}: the images in {dataset} have no labels (put each class "
                        "in a sub-folder named after it)")
    if data.labels is not None and 0 < cfg.num_classes < len(data.classes) and "num_classes" in typed:
        raise UserError(f"--num_classes {cfg.num_classes} is fewer than the {len(data.classes)} classes of the data")
    levels = len(fields.get("channel_mults", cfg.channel_mults))
    if "attention_resolutions" not in typed:
        fields["attention_resolutions"] = (size // 2 ** (levels - 1),)
    return dataclasses.replace(cfg, image_size=size, in_channels=channels, **fields)


def with_gpu_preset(cfg, typed, is_main):
    """cfg with GPU_PRESET's value for each of its settings not typed, said in one line."""
    preset = {k: v for k, v in GPU_PRESET.items() if k not in typed}
    if typed & {"epochs", "total_steps"}:
        preset.pop("minutes", None)
    if is_main and preset:
        print("GPU preset: " + " ".join(f"--{k} {v:g}" for k, v in preset.items())
              + " (type a flag to change it; --no-gpu_preset for the defaults)", file=sys.stderr)
    return dataclasses.replace(cfg, **preset)


def main(argv=None, make_model=UNet):
    """Train; `make_model(model_config)` builds the network (the benchmarks swap in a peer model)."""
    start = time.perf_counter()
    train_cfg, model_cfg, diffusion_cfg, ckpt, typed = resolve_configs(argv)
    stop = {"signal": None}
    for signum in EXIT_CODES:  # preemption or Ctrl-C: finish the step, save, exit
        signal.signal(signum, lambda signum, frame: stop.update(signal=signum))

    # ---- devices, data, model, optimizer ----------------------------------------------------------
    rank, world_size, device_name = distributed.setup(train_cfg.device)
    is_main, device = rank == 0, select_device(device_name)
    if ckpt is None and device.type == "cuda" and train_cfg.gpu_preset:
        train_cfg = with_gpu_preset(train_cfg, typed, is_main)
    set_cpu_threads()
    amp_dtype = resolve_precision(train_cfg.precision, device)
    graphed = train_cfg.cuda_graph and device.type == "cuda" and world_size == 1 and amp_dtype != torch.float16
    amp = lambda: autocast(device, amp_dtype)  # noqa: E731  (the autocast context of grids and quick FID)
    if train_cfg.batch_size % world_size:
        raise UserError(f"--batch_size {train_cfg.batch_size} must be divisible by the {world_size} processes")
    torch.manual_seed(train_cfg.seed)
    out_dir = Path(train_cfg.output_dir)
    if is_main:
        check_writable(out_dir, Path(train_cfg.checkpoint_path).parent)
    given = typed if ckpt is None else {"image_size", "in_channels"}  # else taken from the images
    data = load_dataset(train_cfg.dataset, train_cfg.data_dir, train=True,
                        image_size=model_cfg.image_size if "image_size" in given else 0,
                        channels=model_cfg.in_channels if "in_channels" in given else 0)
    model_cfg = shaped_for(data, model_cfg, train_cfg.dataset, typed) if ckpt is None else model_cfg
    if tuple(data.images.shape[1:]) != (model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size):
        raise UserError(f"the {train_cfg.dataset} images are {tuple(data.images.shape[1:])} (C, H, W); the "
                        f"checkpoint's U-Net takes {(model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size)}")
    labels = data.labels.to(device) if data.labels is not None else None
    batches = Batches(data.images.to(device), labels, train_cfg, rank, world_size, diffusion_cfg.num_timesteps,
                      model_cfg.num_classes)

    model = make_model(model_cfg).to(device)
    diffusion = GaussianDiffusion(diffusion_cfg, device)
    optimizer = make_optimizer(model, train_cfg, device, capturable=graphed)
    ema = ModelEmaV3(model, decay=train_cfg.ema_decay, use_warmup=True)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step, bad_steps = 0, 0
    if ckpt is not None:
        step, bad_steps = restore_training(ckpt, train_cfg.checkpoint_path, model, ema.module, optimizer, scaler, device)
    net = torch.compile(model) if train_cfg.compile else model
    if world_size > 1:
        net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    run_step = make_step(net, model, ema.module, optimizer, scaler, diffusion, amp_dtype, train_cfg.grad_clip,
                         batches.get(step), graphed)

    def train_step(step, batch=None):  # the EMA rate 1 - decay follows timm's EMA warmup
        return run_step(batches.get(step) if batch is None else batch, 1 - ema.get_decay(step + 1))

    fix_length(train_cfg, batches, step, start, train_step, scaler, device, is_main)
    end_step = min(train_cfg.total_steps, train_cfg.max_steps or train_cfg.total_steps)
    scheduler = lr_schedule(optimizer, train_cfg, ckpt, step)

    def save(step, bad_steps):
        if is_main:
            write(training_state((model_cfg, diffusion_cfg, train_cfg), model, ema.module, optimizer, scheduler,
                                 scaler, step, step // batches.steps_per_epoch, bad_steps, device, data.classes),
                  train_cfg)

    if is_main:
        print(f"device {device} | precision {amp_dtype or torch.float32} | processes {world_size} | "
              f"{'CUDA graph | ' if graphed else ''}"
              f"{count_parameters(model):,} parameters | {batches.steps_per_epoch} steps/epoch | "
              f"{'resuming at' if ckpt else 'starting at'} step {step} of {end_step}", file=sys.stderr)
        if step >= end_step:
            print(f"{train_cfg.checkpoint_path} is at step {step} already; raise --total_steps or --max_steps "
                  "to train further", file=sys.stderr)
    log = Log(out_dir / "train_log.csv", train_cfg, end_step, step, fresh=ckpt is None, start=start, enabled=is_main)
    quick_fid = QuickFid(device, train_cfg, model_cfg) if is_main and train_cfg.eval_every else None

    # ---- training loop ---------------------------------------------------------------------------
    # The step's results stay on the device (no sync per step); they are read back every --log_every
    # steps, and at saves and the end. bad_run counts the non-finite steps in a row (fp16: the grad
    # scaler's skipped steps are normal and not counted), worst_run its maximum since the last read.
    bad_run = torch.tensor(bad_steps, device=device)
    worst_run = bad_run.clone()
    while step < end_step:
        epoch = step // batches.steps_per_epoch
        loss, grad_norm, finite = train_step(step)
        if not scaler.is_enabled():
            bad_run = (bad_run + 1) * ~finite
            worst_run = torch.maximum(worst_run, bad_run)
        step += 1
        scheduler.step_update(step)
        stopping = distributed.any_rank(stop["signal"] is not None, device)
        log.tick()
        if step % train_cfg.log_every == 0 or step % train_cfg.save_every == 0 or step == end_step or stopping:
            bad_steps, too_many = int(bad_run), int(worst_run) >= train_cfg.max_bad_steps
            worst_run.copy_(bad_run)
            log.step(step, epoch, loss.item(), optimizer.param_groups[0]["lr"], grad_norm.item(), bad_steps)
            if step % train_cfg.save_every == 0 or step == end_step or stopping or too_many:
                save(step, bad_steps)
            if too_many:
                raise UserError(f"stopped at step {step}: {train_cfg.max_bad_steps} non-finite losses or gradients "
                                f"in a row (last finite weights saved to {train_cfg.checkpoint_path}); try a lower --lr")
            if stopping:
                log.close()
                exit_on_signal(stop["signal"] or signal.SIGTERM, step, train_cfg.checkpoint_path)
        if quick_fid and step % train_cfg.eval_every == 0:
            quick_fid.log(ema.module, diffusion, amp, step, train_cfg.eval_samples, out_dir / "eval_log.csv")
        if is_main and train_cfg.num_grid_samples and (step % batches.steps_per_epoch == 0 or step == end_step):
            n = train_cfg.num_grid_samples  # a look at progress: EMA weights, default sampling, fixed noise
            grid = generate(ema.module, diffusion, n, SamplingConfig(seed=GRID_SEED), batch_size=n, autocast=amp)
            save_grid(grid, out_dir / f"samples_epoch{epoch + 1:03d}.png")
    log.close()

    if world_size > 1 and not distributed.ranks_agree(model):
        raise UserError("the processes ended with different weights; this is a bug, please report it")
    if is_main:
        if world_size > 1:
            print(f"weights identical on all {world_size} processes", file=sys.stderr)
        loss_curve(log.path, out_dir / "loss_curve.png")
        print(f"done: step {step} in {time.perf_counter() - start:.1f} s, checkpoint {train_cfg.checkpoint_path}, "
              f"images in {out_dir}/", file=sys.stderr)
    distributed.cleanup()


def write(state, cfg):
    try:
        save_checkpoint(state, cfg.checkpoint_path, cfg.keep_last)
    except OSError as err:
        raise UserError(f"could not save the checkpoint to {cfg.checkpoint_path}: {err}") from None


def exit_on_signal(signum, step, path):
    print(f"received {signal.Signals(signum).name}: saved step {step} to {path}", file=sys.stderr)
    distributed.cleanup()
    sys.exit(EXIT_CODES[signum])


def check_writable(*folders):
    for folder in folders:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            probe = Path(folder) / ".write_test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise UserError(f"cannot write to {folder}: {err.strerror}") from None


class Batches:
    """What step s trains on: this rank's slice of the global batch, with its noise, timesteps and
    label dropout. The data order depends only on (seed, epoch) and the noise only on (seed, s), so
    a resumed run draws exactly what an uninterrupted one would, even in the middle of an epoch."""

    def __init__(self, images, labels, cfg, rank, world_size, num_timesteps, num_classes):
        self.images, self.labels, self.cfg = images, labels, cfg
        self.num_timesteps, self.num_classes = num_timesteps, num_classes
        local = cfg.batch_size // world_size
        self.part = slice(rank * local, (rank + 1) * local)
        self.steps_per_epoch = len(images) // cfg.batch_size
        self.noise_gen = torch.Generator(device=images.device)
        self.epoch, self.order = None, None

    def get(self, step):
        cfg, device = self.cfg, self.images.device
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self.epoch:
            generator = torch.Generator().manual_seed(data_order_seed(cfg.seed, epoch, cfg.seed_scheme))
            self.epoch, self.order = epoch, torch.randperm(len(self.images), generator=generator).to(device)
        batch = self.order[index * cfg.batch_size:][:cfg.batch_size][self.part]
        x0 = to_model_range(self.images[batch])
        y = self.labels[batch] if self.labels is not None else None

        # noise, timesteps and label dropout for the whole global batch; keep this rank's part
        self.noise_gen.manual_seed(step_noise_seed(cfg.seed, step, cfg.seed_scheme))
        noise = torch.randn((cfg.batch_size, *x0.shape[1:]), generator=self.noise_gen, device=device)[self.part]
        t = torch.randint(0, self.num_timesteps, (cfg.batch_size,), generator=self.noise_gen, device=device)[self.part]
        drop = torch.rand(cfg.batch_size, generator=self.noise_gen, device=device)[self.part] < cfg.p_uncond
        y = torch.where(drop, self.num_classes, y) if self.num_classes else None  # num_classes: the null label
        return x0, y, noise, t


# ---- the length of a run ---------------------------------------------------------------------------

def fix_length(cfg, batches, step, start, train_step, scaler, device, is_main):
    """Set cfg.total_steps once, before the first step: --total_steps, else --epochs, else as many
    steps as the rest of the --minutes budget allows at the speed of a few timed steps."""
    if cfg.total_steps:
        return
    if cfg.epochs:
        cfg.total_steps = cfg.epochs * batches.steps_per_epoch
        return
    seconds_per_step = time_steps(train_step, batches, step, scaler, device)
    seconds_left = cfg.minutes * 60 - (time.perf_counter() - start)
    planned = step + max(1, int(BUDGET_SHARE * seconds_left / seconds_per_step))
    cfg.total_steps = distributed.from_rank0(planned, device)
    if is_main:
        print(f"budget {cfg.minutes:g} min: {seconds_per_step:.3f} s/step measured -> {cfg.total_steps:,} steps in all "
              f"(to repeat this run: --total_steps {cfg.total_steps})", file=sys.stderr)


def time_steps(train_step, batches, step, scaler, device, warmup=2, min_steps=5, min_seconds=2.0):
    """Seconds per training step, timed on the run's own next batches after `warmup` untimed steps.
    The batches get NaN noise, so the guard skips every update (weights, EMA and AdamW untouched);
    the grad scaler and the RNG are put back as they were, so the run itself starts untouched."""
    saved = scaler.state_dict(), torch.get_rng_state(), torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    for i in range(warmup):
        train_step(step + i, nan_batch(batches.get(step + i)))
    sync()
    timed, begin = 0, time.perf_counter()
    while timed < min_steps or time.perf_counter() - begin < min_seconds:
        train_step(step + warmup + timed, nan_batch(batches.get(step + warmup + timed)))
        timed += 1
        sync()
    seconds = (time.perf_counter() - begin) / timed
    if scaler.is_enabled():
        scaler.load_state_dict(saved[0])
    torch.set_rng_state(saved[1])
    if saved[2] is not None:
        torch.cuda.set_rng_state_all(saved[2])
    return seconds


def lr_schedule(optimizer, cfg, ckpt, step):
    """Linear warmup to --lr, then a cosine decay to 1% of it at total_steps (timm's scheduler)."""
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, cfg.total_steps - cfg.warmup_steps),
                                  warmup_t=cfg.warmup_steps, warmup_prefix=True, t_in_epochs=False,
                                  warmup_lr_init=0.01 * cfg.lr, lr_min=0.01 * cfg.lr)
    if ckpt is not None and ckpt["lr_scheduler"]["t_initial"] == scheduler.t_initial:
        scheduler.load_state_dict(ckpt["lr_scheduler"])
    scheduler.step_update(step)
    return scheduler


# ---- logging -------------------------------------------------------------------------------------

class Log:
    """The progress bar and <output_dir>/train_log.csv: one row every --log_every steps (and at saves
    and the end, when the step's results are read back); wall_s counts from the start of the process."""

    def __init__(self, path, cfg, end_step, step, fresh, start, enabled):
        self.path, self.cfg, self.end_step, self.start, self.enabled = path, cfg, end_step, start, enabled
        self.bar = tqdm(total=end_step, initial=step, disable=not enabled, dynamic_ncols=True, desc="train")
        self.smoothed, self.tic, self.tic_step = None, time.perf_counter(), step
        if enabled and (fresh or not path.exists()):
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_FIELDS)

    def tick(self):
        self.bar.update(1)

    def step(self, step, epoch, loss, lr, grad_norm, bad_steps):
        if bad_steps == 0:
            self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        now = time.perf_counter()
        speed = (step - self.tic_step) * self.cfg.batch_size / max(now - self.tic, 1e-9)
        self.tic, self.tic_step = now, step
        self.bar.set_postfix(loss=f"{self.smoothed or float('nan'):.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")
        if self.enabled:
            with open(self.path, "a", newline="") as f:
                csv.writer(f).writerow([step, epoch, repr(loss), repr(lr), repr(grad_norm), f"{speed:.1f}",
                                        bad_steps, f"{now - self.start:.1f}"])

    def close(self):
        self.bar.close()


class QuickFid:
    """--eval_every: the FID and confident share of a few samples (default sampling, fixed noise),
    appended to eval_log.csv. The classifier and the test-set features are loaded once."""

    def __init__(self, device, cfg, model_cfg):
        self.device, self.classifier = device, load_classifier(device, cfg.dataset)
        if self.classifier is None:
            raise UserError(f"--eval_every needs a classifier of {cfg.dataset}: run python train_classifier.py "
                            f"--dataset {cfg.dataset}")
        test = load_dataset(cfg.dataset, cfg.data_dir, train=False, image_size=model_cfg.image_size,
                            channels=model_cfg.in_channels)
        self.real, _ = classify(self.classifier, to_model_range(test.images), device)

    def log(self, model, diffusion, amp, step, num, path):
        begin = time.perf_counter()
        samples = generate(model, diffusion, num, SamplingConfig(seed=QUICK_FID_SEED),
                           batch_size=sampling_batch_size(self.device), autocast=amp)
        fake, probs = classify(self.classifier, samples, self.device)
        fid, confident = fid_kid(self.real, fake)[0], class_statistics(probs)["confident"]
        seconds = time.perf_counter() - begin
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "fid", "confident", "seconds"])
            writer.writerow([step, f"{fid:.4f}", f"{confident:.4f}", f"{seconds:.1f}"])
        tqdm.write(f"step {step}: FID {fid:.3f} on {num} samples ({seconds:.0f} s)")


if __name__ == "__main__":
    exit_on_user_error(main)
