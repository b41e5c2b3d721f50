"""The settings of the network, of training and of each script, declared once, field by field.

One dataclass per concern; the command-line flags of every script are made from their fields
(utils/flags.py), each numeric field's allowed range declared next to it. The settings of the
process and of sampling, whose choices come from diffusion/'s registries: diffusion/config.py.
The model and diffusion configs are saved in every checkpoint.
"""
from dataclasses import dataclass

from utils.errors import UserError
from utils.flags import check_fields, option, recorded

# The project's folders, relative to where a script runs.
DATA_DIR, OUTPUT_DIR, CHECKPOINT_DIR = "data", "outputs", "checkpoints"
DEFAULT_CHECKPOINT = f"{CHECKPOINT_DIR}/ddpm_checkpoint"
DATASETS = ("mnist", "fashion_mnist", "kmnist", "cifar10", "folder")  # utils/datasets.py loads them


# ---- the settings every script shares, declared here once ----------------------------------------

def device_option():
    return option("auto", "auto (cuda, then mps, then cpu), or a torch device like cpu or cuda:1")


def precision_option():
    return option("auto", "autocast precision of the network: auto picks bf16 where supported (CPUs with "
                  "AVX512-BF16 or AMX, recent GPUs), fp16 on older GPUs, else fp32", choices=("auto", "fp32", "bf16", "fp16"))


def checkpoint_option(what="checkpoint to load"):
    return option(DEFAULT_CHECKPOINT, f"{what} (a file, a folder or 'latest': the newest valid one); with nothing "
                  "at the default path, the shipped MNIST model")


def data_dir_option():
    return option("", f"where the data set is stored (default: the checkpoint's --data_dir, else {DATA_DIR})")


@dataclass
class ModelConfig:
    image_size: int = option(28, "height and width of the (square) images; train.py takes the data set's own, and "
                             "resizes a --dataset folder to the one typed", bounds="[1, inf)")
    in_channels: int = option(1, "image channels; train.py takes the data set's own (a folder: 1 if all its "
                              "images are grayscale, else 3, unless typed)", bounds="[1, inf)")
    base_channels: int = option(16, "channels of the first, full-resolution U-Net level", bounds="[1, inf)")
    channel_mults: tuple = option((1, 2, 4), "channel multiplier per level; one downsample between levels",
                                  bounds="[1, inf)")
    num_res_blocks: int = option(1, "residual blocks per level on the way down", bounds="[1, inf)")
    attention_resolutions: tuple = option(None, "feature-map sizes that get self-attention (default: the smallest "
                                          "one, 7 for 28x28 images)", bounds="[1, inf)")
    num_heads: int = option(4, "attention heads", bounds="[1, inf)")
    dropout: float = option(0.0, "dropout inside residual blocks", bounds="[0, 1)")
    norm_groups: int = option(8, "GroupNorm groups; must divide every channel width", bounds="[1, inf)")
    fourier_features: tuple = option((), "exponents n of extra input channels sin(2^n pi x), cos(2^n pi x), to see the "
                                     "finest pixel differences (Kingma et al. 2021 app. C; e.g. 7 8)", bounds="[0, 30]")
    num_classes: int = option(10, "class labels the model is told, dropped at random for classifier-free guidance (Ho "
                              "& Salimans 2022); 0 = the unconditional DDPM of Ho et al. 2020; train.py, unless typed: "
                              "the data set's classes (0 for unlabelled images)", bounds="[0, inf)")
    step_condition: bool = recorded(False, "a second time input, the size of the step asked for, embedded like t "
                                    "(shortcut models, Frans et al. 2025); train.py sets it for --process shortcut")

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        levels = len(self.channel_mults)
        if levels < 1:
            raise UserError("--channel_mults needs at least one level")
        if self.attention_resolutions is None:  # attention at the smallest feature map
            self.attention_resolutions = (self.image_size // 2 ** (levels - 1),)
        self.attention_resolutions = tuple(self.attention_resolutions)
        self.fourier_features = tuple(self.fourier_features)
        check_fields(self)
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

    @property
    def null_label(self):
        """The label index that means "no label" (classifier-free guidance): the U-Net's last embedding."""
        return self.num_classes


# The U-Net settings of a data set whose images need another shape than MNIST's, for each not typed
# (chosen from common practice for 32x32 colour images, not measured: no CIFAR-10 here).
DATASET_MODEL = {"cifar10": {"base_channels": 32, "channel_mults": (1, 2, 2)}}

# A fresh training run on a CUDA device takes these for each setting not typed: the batch that keeps
# a GPU busy, its LR, and a one-minute budget in which one H100 drew more recognisable digits than
# the 17-minute CPU run (docs/RESULTS.md, "The GPU minute").
GPU_PRESET = {"batch_size": 1024, "lr": 4e-3, "minutes": 1.0}


@dataclass
class TrainConfig:
    dataset: str = option("mnist", "what to learn: mnist, fashion_mnist, kmnist, cifar10 (torchvision's; "
                          "downloaded into --data_dir), or folder: your own images in --data_dir, labelled by "
                          "sub-folder; the U-Net takes the images' size and channels", choices=DATASETS)
    data_dir: str = option(DATA_DIR, "where the data set is stored (downloaded there if missing); for --dataset "
                           "folder, the folder of images")
    output_dir: str = option(OUTPUT_DIR, "sample grids, logs and the loss curve go here")
    checkpoint_path: str = option(DEFAULT_CHECKPOINT, "checkpoint file; if it exists training resumes from it "
                                  "('latest' or a folder: the newest valid one). One run at a time writes it")
    minutes: float = option(17.0, "wall-clock budget of this run: the speed of the first steps fixes the number of "
                            "steps (printed, and saved as total_steps) so that training ends on time with the LR "
                            "annealed; used unless --epochs or --total_steps is given", bounds="[0, 1e6]")
    epochs: int = option(0, "passes over the training images (0 = use --minutes)", bounds="[0, inf)")
    total_steps: int = option(0, "train this many optimizer steps (0 = from --epochs or --minutes); a budgeted run "
                              "saves its own here, so a rerun with the printed value repeats it exactly", bounds="[0, inf)")
    plan: tuple = option((), "a --minutes run's plan as it printed it, its first total then each re-plan's step and "
                         "new total (T0 S1 T1 ...): repeats that run exactly, LR schedule included", bounds="[1, inf)")
    max_steps: int = option(0, "stop at this step, the LR schedule unchanged (0 = no limit)", bounds="[0, inf)")
    batch_size: int = option(128, "images per optimizer step (global, over all processes); a data set with fewer "
                             "images trains with all of them per step", bounds="[1, inf)")
    lr: float = option(2e-3, "peak learning rate of AdamW", bounds="(0, inf)")
    weight_decay: float = option(0.0, "AdamW weight decay", bounds="[0, inf)")
    warmup_steps: int = option(200, "linear LR warmup steps before the cosine decay", bounds="[0, inf)")
    grad_clip: float = option(1.0, "clip the gradient norm to this value (0 = off)", bounds="[0, inf)")
    ema_decay: float = option(0.999, "EMA decay of the weights used for sampling (with EMA warmup)", bounds="[0, 1)")
    posthoc_ema: int = option(0, "post-hoc EMA (Karras et al. 2024): keep two power EMAs and save each this many "
                              "times in the run, so that python posthoc_ema.py can make the EMA of any length "
                              "afterwards (8 is plenty); 0 = off", bounds="[0, inf)")
    p_uncond: float = option(0.1, "label drop rate (classifier-free guidance, Ho & Salimans 2022)", bounds="[0, 1)")
    teacher: str = option("", "distillation (training/distill.py): a checkpoint of any process (or the shipped "
                          "models/weights/ddpm_mnist.pt) whose digits a flow model learns to draw in 1-2 steps, "
                          "by --distill; the student starts from its weights (or --start_from's)")
    distill: str = option("reflow", "--teacher: how the student learns: reflow (the teacher's guided ODE pairs, "
                          "Liu et al. 2023) or dmd (distribution matching of the teacher's digits, Yin et al. 2024; "
                          "unless typed, --lr 3e-4 --batch_size 64 --warmup_steps 20)")
    start_from: str = option("", "--distill dmd: start the generator from this checkpoint's EMA instead of the "
                             "teacher's: a flow model with the teacher's network, such as a reflow student of it")
    pairs: int = option(20000, "--teacher: the teacher's (noise, digit) pairs to learn, made before step 0, in at "
                        "most two fifths of a --minutes budget", bounds="[1, inf)")
    teacher_sha256: str = recorded("", "the SHA-256 of the --teacher file the pairs came from")
    seed: int = option(0, "random seed: data order, noise and timesteps", bounds="[0, inf)")
    device: str = device_option()
    precision: str = precision_option()
    compile: bool = option(False, "torch.compile the model")
    cuda_graph: bool = option(True, "on one CUDA device (bf16 or fp32), replay the whole training step as one CUDA graph")
    gpu_preset: bool = option(True, "on a CUDA device, a fresh run takes " + " ".join(f"--{k} {v:g}" for k, v in
                              GPU_PRESET.items()) + " for each of these not typed (--no-gpu_preset: the defaults above)")
    save_every: int = option(500, "write a checkpoint every this many steps (and at the end)", bounds="[1, inf)")
    keep_last: int = option(2, "step-numbered checkpoints kept next to the main one", bounds="[0, inf)")
    log_every: int = option(50, "read the step's loss back and append step, loss and LR to the log every this many "
                            "steps (the non-finite check runs then too)", bounds="[1, inf)")
    num_grid_samples: int = option(64, "samples in the grid drawn after each epoch, at most every 200 steps (0 = none)",
                                   bounds="[0, inf)")
    max_bad_steps: int = option(5, "stop after this many non-finite losses in a row (checked every --log_every steps)",
                                bounds="[1, inf)")
    eval_every: int = option(0, "every this many steps, FID of --eval_samples samples (EMA, default sampling) -> "
                             "<output_dir>/eval_log.csv (0 = off)", bounds="[0, inf)")
    eval_samples: int = option(1000, "samples for the FID of --eval_every", bounds="[1, inf)")
    tensorboard: bool = option(False, "also write the log, the quick FID and the sample grids as TensorBoard events "
                               "to <output_dir>/tensorboard (pip install tensorboard; tensorboard --logdir outputs)")

    def __post_init__(self):
        check_fields(self)
        self.plan = tuple(self.plan)
        if not (self.minutes > 0 or self.epochs > 0 or self.total_steps > 0):
            raise UserError("give a positive --minutes, --epochs or --total_steps")
        steps, totals = self.plan[1::2], self.plan[0::2]
        if self.plan and (len(self.plan) % 2 == 0 or list(steps) != sorted(set(steps))
                          or any(s >= t for s, t in [*zip(steps, totals), *zip(steps, totals[1:])])):
            raise UserError("--plan takes T0 S1 T1 ... Sn Tn as a run printed it: increasing steps, each before its "
                            "total; got " + " ".join(map(str, self.plan)))
        if self.plan and self.total_steps not in (0, self.plan[-1]):
            raise UserError(f"--plan ends at {self.plan[-1]} steps, --total_steps says {self.total_steps}")


@dataclass
class InferenceConfig:
    checkpoint_path: str = checkpoint_option()
    num_samples: int = option(64, "digits in the final grid (with --inpaint: images to complete; with --image: "
                              "edits; --interpolate draws 4 rows)", bounds="[1, inf)")
    digit: str = option("", "class-conditional checkpoints: a class (a digit 0-9, or its index or name for other "
                        "data), 'all' for one row per class, or empty for every class in turn, one per column")
    device: str = device_option()
    precision: str = precision_option()
    use_ema: bool = option(True, "sample with the EMA weights (else the raw weights)")
    output_dir: str = option(OUTPUT_DIR, "where samples.png, denoising_steps.png, inpainting.png, editing.png or "
                             "interpolation.png and .gif are written")
    figure_samples: int = option(6, "samples (rows) in the denoising-steps figure", bounds="[1, inf)")
    figure_steps: int = option(10, "times (columns) in the denoising-steps figure, noise to data", bounds="[1, inf)")
    show_x0: bool = option(True, "add a row of the predicted x0 under each x_t in the figure")
    no_show: bool = option(False, "only save the figures, never open a window (automatic when headless)")
    gif: str = option("", "also write an animated GIF of the denoising to this path")
    gif_every: int = option(0, "one GIF frame every this many steps (0 = about 50 frames)", bounds="[0, inf)")
    inpaint: str = option("", "complete images: the region to fill in, left, right, top, bottom (halves) or center, "
                          "or a PNG mask (white = keep, black = fill in); of test images, or of --image")
    image: str = option("", "an image (PNG, JPEG, ...) to edit (SDEdit, Meng et al. 2022: noised to --strength, then "
                        "denoised, toward --digit if given; writes editing.png), or with --inpaint to complete")
    strength: float = option(0.5, "with --image: how far toward noise the image goes before it is denoised (0 keeps "
                             "it, 1 draws anew)", bounds="(0, 1]")
    resample: int = option(1, "with --inpaint --sampler ddpm: RePaint's resamplings per step (Lugmayr et al. 2022 "
                           "use 10); the other samplers replace the known region once per step", bounds="[1, inf)")
    interpolate: int = option(0, "frames of an interpolation between two starting noises (spherical), decoded with "
                              "eta 0; 0 = off", bounds="[0, inf)")
    between: tuple = option((), "with --interpolate: two classes (indices) to morph between at a fixed noise, "
                            "e.g. 3 8", bounds="[0, inf)")
    data_dir: str = data_dir_option()

    def __post_init__(self):
        check_fields(self)
        if (self.inpaint or self.image) and self.interpolate:
            raise UserError("--inpaint or --image, and --interpolate, are separate runs; give one")
        if self.interpolate == 1:
            raise UserError("--interpolate needs at least 2 frames")
        if self.between and (len(self.between) != 2 or not self.interpolate):
            raise UserError("--between takes two classes, with --interpolate N")


@dataclass
class LikelihoodConfig:
    checkpoint_path: str = checkpoint_option()
    method: str = option("both", "variational bound, probability-flow ODE, or both", choices=("both", "bound", "ode"))
    num_images: int = option(100, "test images for the bound (each costs T network evaluations; vdm: --t_samples)",
                             bounds="[1, inf)")
    t_samples: int = option(100, "vdm: times t per image for the Monte Carlo estimate of the bound's diffusion term",
                            bounds="[1, inf)")
    ode_images: int = option(16, "test images for the ODE (each costs one forward and backward pass per solver "
                             "evaluation)", bounds="[1, inf)")
    rtol: float = option(1e-5, "relative tolerance of the ODE solver (RK45)", bounds="(0, 1)")
    atol: float = option(1e-5, "absolute tolerance of the ODE solver (RK45)", bounds="(0, 1)")
    batch_size: int = option(500, "network evaluations (and images of the bound's other terms) per batch for the "
                             "bound", bounds="[1, inf)")
    seed: int = option(0, "seed of the test-image choice, the noise of the bound and the ODE's probes and "
                       "dequantisation", bounds="[0, inf)")
    device: str = device_option()
    data_dir: str = data_dir_option()
    out: str = option("", "JSON file for the results (default: next to the checkpoint; outputs/ for the shipped model)")

    def __post_init__(self):
        check_fields(self)


@dataclass
class PostHocConfig:
    checkpoint_path: str = checkpoint_option("checkpoint of a run trained with --posthoc_ema")
    sigma_rel: tuple = option((0.05,), "the EMA lengths to make, one checkpoint each: Karras et al. 2024's sigma_rel, "
                              "the averaging profile's width relative to the run's length", bounds="(0, 0.288]")
    step: int = option(0, "make the EMA as it was at this step (0 = the run's last snapshot)", bounds="[0, inf)")
    out: str = option("", "the file to write, with {sigma_rel} for each length (default: <checkpoint>_ema{sigma_rel})")

    def __post_init__(self):
        check_fields(self)
        self.sigma_rel = tuple(self.sigma_rel)
        if not self.sigma_rel:
            raise UserError("--sigma_rel needs at least one length, e.g. --sigma_rel 0.05 0.1")
        try:
            self.out.format(sigma_rel="0.05")
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as err:
            raise UserError(f"--out {self.out}: give a file name whose only field is {{sigma_rel}} "
                            f"({type(err).__name__}: {err})") from None


@dataclass
class EvalConfig:
    checkpoint_path: str = checkpoint_option("checkpoint to evaluate")
    real: bool = option(False, "evaluate 10k real training images instead of a checkpoint (the 'real data' floor)")
    num_samples: int = option(10000, "samples to generate and compare with the test images", bounds="[1, inf)")
    batch_size: int = option(0, "samples generated per batch (0 = 100 on the CPU, 1000 on a GPU)", bounds="[0, inf)")
    device: str = device_option()
    precision: str = precision_option()
    dataset: str = option("", "the data set to compare with (default: the checkpoint's; mnist for --real)",
                          choices=("",) + DATASETS)
    data_dir: str = data_dir_option()
    classifier: str = option("", "the feature network, a file written by train_classifier.py (default: the data "
                             f"set's own, models/weights/ for MNIST, else {CHECKPOINT_DIR}/classifier_<dataset>.pt)")
    out: str = option("", "JSON file for the results (default: next to the checkpoint; outputs/ for --real and "
                      "the shipped model)")

    def __post_init__(self):
        check_fields(self)


@dataclass
class ClassifierConfig:
    """train_classifier.py: the feature network of the quality metrics (models/classifier.py)."""
    dataset: str = option("mnist", "the data set to classify (as train.py's --dataset)", choices=DATASETS)
    data_dir: str = option(DATA_DIR, "where the data set is stored; for --dataset folder, the folder of images, "
                           "labelled by sub-folder")
    image_size: int = option(0, "--dataset folder: resize and centre-crop every image to this size (0 = the "
                             "images' own, which must be one square size)", bounds="[0, inf)")
    epochs: int = option(5, "passes over the training images", bounds="[1, inf)")
    batch_size: int = option(128, "images per optimizer step", bounds="[1, inf)")
    lr: float = option(3e-3, "peak learning rate of AdamW (one-cycle schedule)", bounds="(0, inf)")
    seed: int = option(0, "random seed: initialisation, data order and shifts", bounds="[0, inf)")
    device: str = device_option()
    out: str = option("", f"where to write the classifier (default: {CHECKPOINT_DIR}/classifier_<dataset>.pt, where "
                      "evaluate.py and --eval_every look first); the shipped one is never written over")

    def __post_init__(self):
        check_fields(self)
