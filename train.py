"""Train a diffusion model (DDPM, VDM or flow matching) on MNIST, or Fashion-MNIST, KMNIST, CIFAR-10 or
a folder of your own images.

    python train.py                                              # defaults; writes checkpoints/ddpm_checkpoint
    python train.py --process vdm --fourier_features 7 8 --checkpoint_path checkpoints/vdm   # for bits/dim
    python train.py --dataset folder --data_dir my_images --checkpoint_path checkpoints/mine
    python train.py --checkpoint_path checkpoints/ddpm_checkpoint  # resumes that run exactly
    torchrun --nproc_per_node=4 train.py                         # DistributedDataParallel

The run's length is a wall-clock budget (--minutes) turned into a number of steps before step 0,
or --epochs / --total_steps. If --checkpoint_path exists, training resumes from it (same step,
optimizer, LR, EMA, RNG, length) and keeps writing there; model and diffusion settings then
come from the checkpoint. The pieces of the algorithm live in training/, the maths in diffusion/.
"""
import copy
import dataclasses
import signal
import sys
import time
from functools import partial
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from diffusion.config import DiffusionConfig, refuse_flags_of_other_processes
from diffusion.processes import PROCESSES, make_process
from models.load import diffusion_config, refuse_shipped
from models.unet import UNet, count_parameters
from training.batches import Batches, fit_batch
from training.budget import planned_steps, repeat_flags, time_steps
from training.distill import Student
from training.ema import ema_rate
from training.log import Log, Progress
from training.posthoc import PostHocEMA
from training.schedule import learning_rate
from training.state import RunState
from training.step import BadSteps, make_optimizer, make_step
from utils import distributed
from utils.checkpoint import (config_mismatch, load_checkpoint, lock_checkpoint, main_path, release_locks,
                              save_checkpoint)
from utils.config import DATASET_MODEL, GPU_PRESET, ModelConfig, TrainConfig
from utils.datasets import load_dataset
from utils.device import autocast, resolve_precision, select_device, set_cpu_threads
from utils.errors import UserError, ensure_writable, exit_on_user_error
from utils.flags import from_args, parse_flags
from utils.memory import check_batch
from utils.plotting import loss_curve

CONFIGS = (TrainConfig, ModelConfig, DiffusionConfig)
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


def main(argv=None, make_model=UNet):
    """Train; `make_model(model_config)` builds the network (the benchmarks swap in a peer model)."""
    try:
        return train(argv, make_model)
    finally:
        release_locks()  # a run refused or failed before its first save leaves no lock file behind


def train(argv, make_model):
    start = time.perf_counter()
    cfg, model_cfg, diffusion_cfg, ckpt, typed, student = resolve_configs(argv)
    stop = {"signal": None}  # preemption or Ctrl-C: finish the step, save, exit (the teacher's pairs: the batch)
    for signum in EXIT_CODES:
        signal.signal(signum, lambda signum, frame: stop.update(signal=signum))

    # ---- setup: devices, data, model, optimizer, length ----------------------------------------------
    rank, world_size, device_name = distributed.setup(cfg.device)
    is_main, device = rank == 0, select_device(device_name)
    lock = lock_checkpoint(cfg.checkpoint_path) if is_main else None  # one run per checkpoint
    cfg = with_gpu_preset(cfg, typed, is_main) if ckpt is None and device.type == "cuda" and cfg.gpu_preset else cfg
    set_cpu_threads()
    amp_dtype = resolve_precision(cfg.precision, device)
    amp = partial(autocast, device, amp_dtype)
    graphed = cfg.cuda_graph and device.type == "cuda" and world_size == 1 and amp_dtype != torch.float16 \
        and not (student and student.method.objective)  # a critic's step of its own is not captured
    torch.manual_seed(cfg.seed)
    out_dir = Path(cfg.output_dir)
    if is_main:
        ensure_writable(out_dir, Path(cfg.checkpoint_path).parent)
    data, model_cfg = training_data(cfg, model_cfg, typed if ckpt is None and not student else None, device,
                                    student, amp, start, stop)
    cfg = dataclasses.replace(cfg, batch_size=fit_batch(cfg.batch_size, len(data.images), world_size, cfg.dataset))
    model, diffusion = make_model(model_cfg).to(device), make_process(diffusion_cfg, device)
    batches = Batches(data, cfg, rank, world_size, diffusion, model_cfg.null_label if model_cfg.num_classes else None)
    state = new_state(model, cfg, ckpt, amp_dtype, graphed, (rank, world_size), student, diffusion)
    step_fn = make_step(state, state.objective or diffusion, amp_dtype, cfg.grad_clip, batches.get(state.step), graphed)
    plan = planned_steps(cfg, batches.steps_per_epoch, lambda: time_steps(step_fn, batches, state, device),
                         time.perf_counter() - start, state.step, start)
    end_step = min(plan.total, cfg.max_steps or plan.total)
    if is_main:
        print(f"device {device} | precision {amp_dtype or torch.float32} | processes {world_size} | "
              f"{'CUDA graph | ' if graphed else ''}{count_parameters(model):,} parameters | {batches.steps_per_epoch} "
              f"steps/epoch | {'resuming' if ckpt else 'starting'} at step {state.step} of {end_step}", file=sys.stderr)
    log = Log(cfg, out_dir, (state.step, end_step), fresh=ckpt is None, start=start, enabled=is_main)
    progress = Progress(cfg, model_cfg, diffusion, amp, batches.steps_per_epoch) if is_main else None
    checkpoint = partial(state.checkpoint, (model_cfg, diffusion_cfg, cfg), plan, batches.steps_per_epoch, data.classes)

    # ---- the loop: batch, step, log, save, sample (the step's results are read back only to log) -------
    bad = BadSteps(state.bad_steps, device, counted=not state.scaler.is_enabled())
    while state.step < end_step:
        # batch and step
        epoch, lr = state.step // batches.steps_per_epoch, learning_rate(state.step, cfg, plan)
        loss, grad_norm, finite = step_fn(batches.get(state.step), lr, ema_rate(state.step, cfg.ema_decay))
        bad.count(finite)
        state.step += 1
        if state.posthoc:
            state.posthoc.update(state.model, state.step, finite, plan.total)
        step, stopping = state.step, distributed.any_rank(stop["signal"] is not None)
        if plan.update(step):  # a --minutes run: the total from the recent pace, to end on time
            end_step = min(plan.total, cfg.max_steps or plan.total)
            log.retotal(end_step)
        log.tick()
        # log and save
        if step % cfg.log_every == 0 or step % cfg.save_every == 0 or step == end_step or stopping:
            state.bad_steps, too_many = bad.read(cfg.max_bad_steps)
            log.step(step, epoch, loss.item(), lr, grad_norm.item(), state.bad_steps)
            if is_main and (step % cfg.save_every == 0 or step == end_step or stopping or too_many):
                save_checkpoint(checkpoint(), cfg.checkpoint_path, cfg.keep_last)
            if too_many:
                raise UserError(f"stopped at step {step}: {cfg.max_bad_steps} non-finite losses or gradients "
                                f"in a row (last finite weights saved to {cfg.checkpoint_path}); try a lower --lr")
            if stopping:
                exit_on_signal(stop["signal"] or signal.SIGTERM, f"saved step {step} to {cfg.checkpoint_path}", log)
        # sample: the quick FID of --eval_every, and a grid after each epoch
        if progress:
            progress.sample(state.ema, step, step == end_step, log)

    # ---- the end: close the log, check the processes agree, draw the loss curve, release the lock ------
    log.close()
    if world_size > 1 and not distributed.ranks_agree(state.model):
        raise UserError("the processes ended with different weights; this is a bug, please report it")
    if is_main:
        if world_size > 1:
            print(f"weights identical on all {world_size} processes", file=sys.stderr)
        loss_curve(log.path, out_dir / "loss_curve.png")
        print(f"done: step {state.step} in {time.perf_counter() - start:.1f} s, checkpoint {cfg.checkpoint_path}, "
              f"images in {cfg.output_dir}/ (to repeat this run: {repeat_flags(plan)})", file=sys.stderr)
    if lock is not None:
        lock.close()
    distributed.cleanup()


def new_state(model, cfg, ckpt, amp_dtype, graphed, ranks, student, diffusion):
    """The RunState of a fresh run, or of the checkpoint `ckpt` resumed: the model, its EMA copy,
    AdamW (capturable for a CUDA graph), the fp16 grad scaler, a student's objective, and the network
    the step calls (compiled with --compile, in DistributedDataParallel under torchrun)."""
    device, world_size = next(model.parameters()).device, ranks[1]
    check_batch(model, cfg.batch_size // world_size, device, work=training_pass, what="training step")
    if ckpt is None and student:  # a reflow student starts as its teacher (and so does its EMA)
        student.start(model)
    state = RunState(model, copy.deepcopy(model).eval().requires_grad_(False),
                     make_optimizer(model, cfg, device, capturable=graphed),
                     torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                     posthoc=PostHocEMA(model, cfg.posthoc_ema) if cfg.posthoc_ema else None,
                     objective=student.objective(cfg, diffusion, device, ranks) if student else None)
    if ckpt is not None:
        state.restore(ckpt, cfg.checkpoint_path)
        if state.step >= min(cfg.total_steps or float("inf"), cfg.max_steps or float("inf")):
            print(f"{cfg.checkpoint_path} is at step {state.step} already; raise --total_steps or --max_steps to "
                  "train further", file=sys.stderr)
    state.net = torch.compile(model) if cfg.compile else model
    if world_size > 1:  # after the restore: DDP starts every process from rank 0's weights
        state.net = DistributedDataParallel(state.net, device_ids=[device.index] if device.type == "cuda" else None)
    return state


def training_pass(net, x, t):
    """A forward and backward pass, as the training step makes (for check_batch's estimate)."""
    net(x, t, None).sum().backward()


def resolve_configs(argv):
    """Configs from the flags, or from the checkpoint being resumed (plus flags typed now), then the
    checkpoint, the flags typed and the Student of a --teacher run (training/distill.py), else None."""
    args, typed = parse_flags("Train a diffusion model.", CONFIGS, argv)
    cfg = from_args(TrainConfig, args)
    refuse_shipped(cfg.checkpoint_path, Path(cfg.checkpoint_path))
    ckpt = source = None
    if Path(cfg.checkpoint_path).exists() or cfg.checkpoint_path == "latest":
        ckpt, source = load_checkpoint(cfg.checkpoint_path)
        refuse_shipped(cfg.checkpoint_path, main_path(source))  # the file a folder or a link resolved to
    student = Student.of(cfg, args, typed, ckpt, source)  # a student keeps its teacher; no run learns from itself
    if ckpt is None:
        if student:
            return (*student.configs, None, typed, student)
        diffusion_cfg = from_args(DiffusionConfig, args)  # a shortcut model's network is told its steps' size
        refuse_flags_of_other_processes(diffusion_cfg, typed)
        model_cfg = from_args(ModelConfig, args, step_condition=PROCESSES[diffusion_cfg.process].takes_step)
        return cfg, model_cfg, diffusion_cfg, None, typed, None

    diffusion_cfg = diffusion_config(ckpt, source)
    refuse_flags_of_other_processes(diffusion_cfg, typed)
    saved = {**ckpt["model_config"], **dataclasses.asdict(diffusion_cfg)}
    process = {} if "process" in typed else {"process": diffusion_cfg.process}  # flags read as of the saved process
    requested = {**dataclasses.asdict(from_args(ModelConfig, args)),
                 **dataclasses.asdict(from_args(DiffusionConfig, args, **process))}
    mismatch = config_mismatch(saved, requested, sorted(typed & set(saved)))
    if mismatch:
        raise UserError(f"{source} was trained with other settings: {'; '.join(mismatch)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    changes = {k: getattr(args, k) for k in typed & known}
    if typed & {"epochs", "minutes"} and "total_steps" not in typed:
        changes["total_steps"] = 0  # a new length for the run: from the typed --epochs or --minutes
    if typed & {"epochs", "minutes", "total_steps"} and "plan" not in typed:
        changes["plan"] = ()  # the saved plan gives way to the new length
    saved_train = {k: v for k, v in ckpt["train_config"].items() if k in known}
    cfg = TrainConfig(**{**saved_train, **changes, "checkpoint_path": str(main_path(source))})
    return cfg, ModelConfig(**ckpt["model_config"]), diffusion_cfg, ckpt, typed, student


def training_data(cfg, model_cfg, typed, device, student, amp, start, stop):
    """(the training images on `device`, the U-Net config shaped by them). typed: the flags typed
    for a fresh run, whose U-Net takes the images' size, channels and classes, attention at the
    smallest feature map and the data set's own defaults (DATASET_MODEL), each unless typed;
    None when resuming, whose U-Net is the checkpoint's. A reflow `student`'s: the teacher's pairs,
    made under `amp` within the budget that began at `start`; a signal in `stop` first ends the run."""
    if student and student.method.pairs:
        pairs = student.pairs(cfg, device, amp, start, stop)
        if pairs is None:  # nothing saved: the next run makes them
            exit_on_signal(stop["signal"] or signal.SIGTERM, "stopped making the teacher's pairs; nothing saved")
        return pairs, model_cfg
    given = {"image_size", "in_channels"} if typed is None else typed
    data = load_dataset(cfg.dataset, cfg.data_dir, train=True,
                        image_size=model_cfg.image_size if "image_size" in given else 0,
                        channels=model_cfg.in_channels if "in_channels" in given else 0)
    if typed is not None:
        model_cfg = shaped_for(data, model_cfg, cfg.dataset, typed)
    shape = (model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size)
    if tuple(data.images.shape[1:]) != shape:
        raise UserError(f"the {cfg.dataset} images are {tuple(data.images.shape[1:])} (C, H, W); the "
                        f"checkpoint's U-Net takes {shape}")
    labels = data.labels.to(device) if data.labels is not None else None
    return dataclasses.replace(data, images=data.images.to(device), labels=labels), model_cfg


def shaped_for(data, cfg, dataset, typed):
    """The U-Net config of a fresh run on `data` (see training_data)."""
    _, channels, size, _ = data.images.shape
    for name, value in (("image_size", size), ("in_channels", channels)):
        if name in typed and getattr(cfg, name) != value:  # only a folder is resized or converted
            raise UserError(f"--{name} {getattr(cfg, name)}: the {dataset} images have {value}")
    fields = {**DATASET_MODEL.get(dataset, {}), "num_classes": len(data.classes), "attention_resolutions": None}
    fields = {k: v for k, v in fields.items() if k not in typed}
    if data.labels is None and "num_classes" in typed and cfg.num_classes:
        raise UserError(f"--num_classes {cfg.num_classes}: the images in {dataset} have no labels (put each class "
                        "in a sub-folder named after it)")
    if data.labels is not None and 0 < cfg.num_classes < len(data.classes) and "num_classes" in typed:
        raise UserError(f"--num_classes {cfg.num_classes} is fewer than the {len(data.classes)} classes of the data")
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


def exit_on_signal(signum, done, log=None):
    """Close the log, say what was `done`, exit with the signal's code (EXIT_CODES)."""
    if log is not None:
        log.close()
    print(f"received {signal.Signals(signum).name}: {done}", file=sys.stderr)
    distributed.cleanup()
    sys.exit(EXIT_CODES[signum])


if __name__ == "__main__":
    exit_on_user_error(main)
