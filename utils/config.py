"""Every hyperparameter, declared once.

One dataclass per concern (model, diffusion, training, sampling), commented field by field.
The command-line flags of train.py and inference.py are generated from these fields, and the
model and diffusion configs are saved in every checkpoint.
"""
import argparse
import dataclasses
from dataclasses import dataclass, field

from diffusion.samplers import DEFAULT_GUIDANCE, DEFAULT_GUIDANCE_INTERVAL, DEFAULT_SAMPLER
from utils.errors import UserError


def option(default, help, choices=None):
    """A config field with its --help text (and allowed values) next to the default."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class ModelConfig:
    image_size: int = option(28, "height and width of the (square) images")
    in_channels: int = option(1, "image channels (1 for MNIST)")
    base_channels: int = option(32, "channels of the first U-Net level")
    channel_mults: tuple = option((1, 2, 2), "channel multiplier per level; one downsample between levels")
    num_res_blocks: int = option(1, "residual blocks per level on the way down")
    attention_resolutions: tuple = option((7,), "feature-map sizes that get self-attention")
    num_heads: int = option(4, "attention heads")
    dropout: float = option(0.0, "dropout inside residual blocks")
    norm_groups: int = option(8, "GroupNorm groups; must divide every channel width")
    num_classes: int = option(0, "number of class labels (0 = unconditional); set by --class_cond")

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)
        levels = len(self.channel_mults)
        if levels < 1 or min(self.channel_mults) < 1 or self.base_channels < 1:
            raise UserError("base_channels and every channel_mult must be positive")
        if self.image_size % 2 ** (levels - 1):
            raise UserError(f"image_size {self.image_size} must be divisible by 2**(levels-1) = "
                            f"{2 ** (levels - 1)} for {levels} channel_mults")
        sizes = [self.image_size // 2 ** i for i in range(levels)]
        for res in self.attention_resolutions:
            if res not in sizes:
                raise UserError(f"attention resolution {res} is not one of the U-Net's sizes {sizes}")
        for mult in self.channel_mults:
            width = self.base_channels * mult
            if width % self.norm_groups:
                raise UserError(f"norm_groups {self.norm_groups} must divide every channel width "
                                f"(base_channels * mult = {width})")
            if self.attention_resolutions and width % self.num_heads:
                raise UserError(f"num_heads {self.num_heads} must divide every channel width ({width})")
        if self.num_res_blocks < 1:
            raise UserError("num_res_blocks must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError("dropout must be in [0, 1)")


@dataclass
class DiffusionConfig:
    num_timesteps: int = option(1000, "T, the number of diffusion steps (Ho et al. 2020: 1000)")
    schedule: str = option("linear", "beta schedule: linear (Ho et al. 2020) or cosine (Nichol & Dhariwal 2021)",
                           choices=("linear", "cosine"))
    beta_start: float = option(1e-4, "first beta of the linear schedule")
    beta_end: float = option(0.02, "last beta of the linear schedule")
    prediction: str = option("eps", "what the network predicts: eps (noise), x0, or v (Salimans & Ho 2022)",
                             choices=("eps", "x0", "v"))
    min_snr_gamma: float = option(5.0, "min-SNR-gamma loss weighting (Hang et al. 2023); 0 = plain MSE as in Ho et al.")

    def __post_init__(self):
        if self.num_timesteps < 2:
            raise UserError("num_timesteps must be at least 2")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise UserError("need 0 < beta_start <= beta_end < 1")
        if self.min_snr_gamma < 0:
            raise UserError("min_snr_gamma must be >= 0")


@dataclass
class TrainConfig:
    data_dir: str = option("data", "where MNIST is stored (downloaded there if missing)")
    output_dir: str = option("outputs", "sample grids, logs and the loss curve go here")
    checkpoint_path: str = option("checkpoints/ddpm_checkpoint",
                                  "checkpoint file; if it exists training resumes from it ('latest' or a folder: newest valid one)")
    epochs: int = option(6, "passes over the 60k training images")
    max_steps: int = option(0, "stop after this many optimizer steps in total (0 = no limit)")
    batch_size: int = option(128, "images per optimizer step (global, over all processes)")
    lr: float = option(2e-3, "peak learning rate of AdamW")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_steps: int = option(200, "linear LR warmup steps before the cosine decay")
    grad_clip: float = option(1.0, "clip the gradient norm to this value (0 = off)")
    ema_decay: float = option(0.999, "EMA decay of the weights used for sampling (with EMA warmup)")
    seed: int = option(0, "random seed: data order, noise and timesteps")
    device: str = option("auto", "auto (cuda, then mps, then cpu), or a torch device like cpu or cuda:1")
    precision: str = option("auto", "autocast precision: auto picks bf16 where supported, else fp32 (fp16 on old GPUs)",
                            choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile the model")
    class_cond: bool = option(True, "class-conditional model: a label embedding, labels dropped with p_uncond so "
                              "guidance works; --no-class_cond trains the unconditional DDPM of Ho et al. 2020")
    p_uncond: float = option(0.1, "probability of dropping the label (classifier-free guidance, Ho & Salimans 2022)")
    save_every: int = option(500, "write a checkpoint every this many steps (and at the end)")
    keep_last: int = option(2, "step-numbered checkpoints kept next to the main one")
    log_every: int = option(50, "append step, loss and LR to the log every this many steps")
    num_grid_samples: int = option(64, "samples in the grid drawn after each epoch (0 = none)")
    max_bad_steps: int = option(5, "stop after this many non-finite losses in a row")
    eval_every: int = option(0, "every this many steps, FID of --eval_samples samples (EMA, default sampling) -> <output_dir>/eval_log.csv (0 = off)")
    eval_samples: int = option(1000, "samples for the FID of --eval_every")

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1")
        for name in ("max_steps", "warmup_steps", "keep_last", "num_grid_samples", "grad_clip", "weight_decay",
                     "eval_every"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0")
        for name in ("save_every", "log_every", "max_bad_steps", "eval_samples"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1")
        if not self.lr > 0:
            raise UserError("--lr must be positive")
        if not 0.0 <= self.ema_decay < 1.0:
            raise UserError("--ema_decay must be in [0, 1)")
        if not 0.0 <= self.p_uncond < 1.0:
            raise UserError("--p_uncond must be in [0, 1)")


@dataclass
class SampleConfig:
    checkpoint_path: str = option("checkpoints/ddpm_checkpoint", "checkpoint file, a folder, or 'latest' (newest valid one)")
    num_samples: int = option(64, "digits in the final grid")
    sampler: str = option(DEFAULT_SAMPLER, "dpm++ (DPM-Solver++(2M), Lu et al. 2022; the SDE unless --eta 0), ddim "
                          "(Song et al. 2021) or ddpm (ancestral, all T steps)", choices=("ddpm", "ddim", "dpm++"))
    steps: int = option(0, "steps of ddim / dpm++ (0 = the sampler's default: dpm++ 15, ddim 50)")
    eta: float = option(-1.0, "noise of the ddim / dpm++ steps: 0 = deterministic (ODE), 1 = stochastic (DDPM "
                         "posterior / SDE); -1 = the sampler's default (ddim 0, dpm++ 1)")
    digit: str = option("", "class-conditional checkpoints: a digit 0-9, 'all' for one row per digit, or empty "
                        "for every digit in turn, one per column")
    guidance: float = option(DEFAULT_GUIDANCE, "classifier-free guidance scale w: eps = cond + w (cond - uncond); "
                             "0 = plain conditional sampling, 1-3 = crisper digits, less variety")
    guidance_interval: tuple = option(DEFAULT_GUIDANCE_INTERVAL, "guide only the steps with t / T in [LO, HI]; each "
                                      "guided step costs two network evaluations (0 1 = every step)")
    seed: int = option(0, "seed of the starting noise (same seed, same noise)")
    device: str = option("auto", "auto (cuda, then mps, then cpu), or a torch device like cpu or cuda:1")
    precision: str = option("auto", "autocast precision for the network", choices=("auto", "fp32", "bf16", "fp16"))
    use_ema: bool = option(True, "sample with the EMA weights (else the raw weights)")
    output_dir: str = option("outputs", "where samples.png, denoising_steps.png (and the GIF) are written")
    figure_samples: int = option(6, "samples (rows) in the denoising-steps figure")
    figure_steps: int = option(10, "timesteps (columns) in the denoising-steps figure, from T-1 down to 0")
    show_x0: bool = option(True, "add a row of the predicted x0 under each x_t in the figure")
    no_show: bool = option(False, "only save the figures, never open a window (automatic when headless)")
    gif: str = option("", "also write an animated GIF of the denoising to this path")
    gif_every: int = option(0, "one GIF frame every this many steps (0 = about 50 frames)")

    def __post_init__(self):
        for name in ("num_samples", "figure_samples", "figure_steps"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be at least 1")
        for name in ("steps", "gif_every"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0")
        if not (0.0 <= self.eta <= 1.0 or self.eta == -1.0):
            raise UserError("--eta must be in [0, 1] (or -1 for the sampler's default)")
        self.guidance_interval = check_guidance(self.guidance, self.guidance_interval)
        if self.digit not in ("", "all") and self.digit not in [str(d) for d in range(10)]:
            raise UserError(f"--digit must be 0-9 or 'all', got {self.digit!r}")


@dataclass
class EvalConfig:
    checkpoint_path: str = option("checkpoints/ddpm_checkpoint", "checkpoint to evaluate (file, folder or 'latest')")
    real: bool = option(False, "evaluate 10k real training images instead of a checkpoint (the 'real data' floor)")
    num_samples: int = option(10000, "samples to generate and compare with the 10k MNIST test images")
    sampler: str = option(DEFAULT_SAMPLER, "dpm++, ddim or ddpm (see inference.py --help)", choices=("ddpm", "ddim", "dpm++"))
    steps: int = option(0, "steps of ddim / dpm++ (0 = the sampler's default)")
    eta: float = option(-1.0, "noise of the ddim / dpm++ steps: 0 = deterministic (ODE), 1 = stochastic (DDPM "
                         "posterior / SDE); -1 = the sampler's default (ddim 0, dpm++ 1)")
    guidance: float = option(DEFAULT_GUIDANCE, "classifier-free guidance scale for class-conditional checkpoints (0 = none)")
    guidance_interval: tuple = option(DEFAULT_GUIDANCE_INTERVAL, "guide only the steps with t / T in [LO, HI] (0 1 = every step)")
    batch_size: int = option(0, "samples generated per batch (0 = 100 on the CPU, 1000 on a GPU)")
    seed: int = option(0, "seed of the starting noise")
    device: str = option("auto", "auto (cuda, then mps, then cpu), or a torch device")
    precision: str = option("auto", "autocast precision for the network", choices=("auto", "fp32", "bf16", "fp16"))
    data_dir: str = option("data", "where MNIST is stored (downloaded there if missing)")
    out: str = option("", "JSON file for the results (default: next to the checkpoint, or outputs/ for --real)")

    def __post_init__(self):
        if self.num_samples < 1 or self.batch_size < 0:
            raise UserError("need --num_samples >= 1 and --batch_size >= 0")
        if self.steps < 0 or not (0.0 <= self.eta <= 1.0 or self.eta == -1.0):
            raise UserError("need --steps >= 0 and --eta in [0, 1] (or -1: the sampler's default)")
        self.guidance_interval = check_guidance(self.guidance, self.guidance_interval)


def check_guidance(guidance, interval):
    """The interval as a tuple, after checking both flags."""
    interval = tuple(interval)
    if guidance < 0:
        raise UserError("--guidance must be >= 0")
    if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise UserError("--guidance_interval needs two fractions of T, 0 <= LO <= HI <= 1; got "
                        + " ".join(map(str, interval)))
    return interval


# ---- flags from dataclasses -------------------------------------------------------------

def add_arguments(parser, config_cls, skip=(), suppress_defaults=False):
    """Add one --flag per field of config_cls, with its default and help text.

    With suppress_defaults, flags the user did not type are absent from the parsed namespace,
    which tells the options given explicitly apart from those left at their defaults.
    """
    group = parser.add_argument_group(config_cls.__name__)
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        kwargs = {"default": f.default, "help": f"{f.metadata['help']} (default: {_show(f.default)})"}
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
        if isinstance(f.default, bool):  # --x / --no-x, except fields already named no_x
            kwargs["action"] = "store_true" if f.name.startswith("no_") else argparse.BooleanOptionalAction
        elif isinstance(f.default, tuple):  # numbers, typed like the default's
            kwargs.update(nargs="*", type=type(f.default[0]) if f.default else int)
        else:
            kwargs["type"] = type(f.default)
        if suppress_defaults:
            kwargs["default"] = argparse.SUPPRESS
        group.add_argument(f"--{f.name}", **kwargs)


def _show(value):
    return " ".join(map(str, value)) if isinstance(value, tuple) else value


def from_args(config_cls, args):
    """Build config_cls from the parsed flags that belong to it."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    return config_cls(**{k: v for k, v in vars(args).items() if k in names})
