"""What a run reports: the progress bar, <output_dir>/train_log.csv, the quick FID of --eval_every
(<output_dir>/eval_log.csv), sample grids and, with --tensorboard, all of it as TensorBoard events."""
import csv
import time
from pathlib import Path

from tqdm import tqdm

from diffusion.config import SamplingConfig
from diffusion.pipeline import generate
from models.classifier import load_classifier
from training.batches import GRID_SEED, QUICK_FID_SEED
from utils.datasets import load_dataset, to_model_range
from utils.device import sampling_batch_size
from utils.errors import UserError
from utils.metrics import class_statistics, classify, fid_kid
from utils.plotting import grid_image, save_grid

GRID_EVERY = 200  # steps at least between two sample grids (each ends an epoch)
LOG_FIELDS = ["step", "epoch", "loss", "lr", "grad_norm", "images_per_s", "bad_steps", "wall_s"]


def tensorboard_writer(folder):
    """A TensorBoard SummaryWriter for `folder`, or a one-line error saying how to install it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(str(folder))


class Log:
    """One row every --log_every steps (and at saves and the end, when the step's results are read
    back); wall_s counts from the start of the process. Disabled on every process but the first."""

    def __init__(self, cfg, out_dir, steps, fresh, start, enabled):
        """steps: (the step the run starts at, its last step); fresh: a new run, not a resumed one."""
        first, last = steps
        self.path, self.cfg, self.start, self.enabled = out_dir / "train_log.csv", cfg, start, enabled
        self.bar = tqdm(total=last, initial=first, disable=not enabled, dynamic_ncols=True, desc="train")
        self.smoothed, self.tic, self.tic_step = None, time.perf_counter(), first
        self.board = tensorboard_writer(out_dir / "tensorboard") if enabled and cfg.tensorboard else None
        if enabled and (fresh or not self.path.exists()):
            with open(self.path, "w", newline="") as f:
                csv.writer(f).writerow(LOG_FIELDS)

    def tick(self):
        self.bar.update(1)

    def retotal(self, end_step):
        """A --minutes run re-planned: the bar's new last step."""
        self.bar.total = end_step
        self.bar.refresh()

    def step(self, step, epoch, loss, lr, grad_norm, bad_steps):
        if bad_steps == 0:
            self.smoothed = loss if self.smoothed is None else 0.9 * self.smoothed + 0.1 * loss
        now = time.perf_counter()
        speed = (step - self.tic_step) * self.cfg.batch_size / max(now - self.tic, 1e-9)
        self.tic, self.tic_step = now, step
        self.bar.set_postfix(loss=f"{self.smoothed or float('nan'):.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.0f}")
        if not self.enabled:
            return
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([step, epoch, repr(loss), repr(lr), repr(grad_norm), f"{speed:.1f}",
                                    bad_steps, f"{now - self.start:.1f}"])
        self.scalars(step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                            "train/images_per_s": speed, "train/bad_steps": bad_steps})

    def scalars(self, step, values):
        for tag, value in values.items() if self.board else ():
            self.board.add_scalar(tag, value, step)

    def grid(self, step, samples, path):
        """Save samples (B, C, H, W) in [-1, 1] as a grid to `path`, and as a TensorBoard image."""
        save_grid(samples, path)
        if self.board:
            self.board.add_image("samples", grid_image(samples), step)

    def close(self):
        self.bar.close()
        if self.board:
            self.board.close()


class Progress:
    """How the run's samples look as it trains, from the EMA weights with the default sampling and
    fixed noise: the quick FID of --eval_every (appended to eval_log.csv; the classifier and the
    test-set features are loaded once), and a grid after each epoch (at least GRID_EVERY steps
    apart), both also sent to the Log."""

    def __init__(self, cfg, model_cfg, diffusion, amp, steps_per_epoch):
        self.cfg, self.diffusion, self.amp, self.steps_per_epoch = cfg, diffusion, amp, steps_per_epoch
        self.out_dir = Path(cfg.output_dir)
        self.grid_every = steps_per_epoch * -(-GRID_EVERY // steps_per_epoch)  # whole epochs
        if cfg.eval_every:
            self.classifier = load_classifier(diffusion.device, cfg.dataset)
            if self.classifier is None:
                raise UserError(f"--eval_every needs a classifier of {cfg.dataset}: run python train_classifier.py "
                                f"--dataset {cfg.dataset}")
            test = load_dataset(cfg.dataset, cfg.data_dir, train=False, image_size=model_cfg.image_size,
                                channels=model_cfg.in_channels)
            self.real, _ = classify(self.classifier, to_model_range(test.images), diffusion.device)

    def sample(self, model, step, last, log):
        """After optimizer step `step` (`last`: the run's last one)."""
        cfg = self.cfg
        if cfg.eval_every and step % cfg.eval_every == 0:
            fid, confident = self.quick_fid(model, step)
            log.scalars(step, {"eval/fid": fid, "eval/confident": confident})
        if cfg.num_grid_samples and (step % self.grid_every == 0 or last):
            grid = self.generate(model, cfg.num_grid_samples, GRID_SEED, cfg.num_grid_samples)
            epoch = (step - 1) // self.steps_per_epoch  # the epoch this step belonged to
            log.grid(step, grid, self.out_dir / f"samples_epoch{epoch + 1:03d}.png")

    def generate(self, model, num, seed, batch_size):
        sampling = SamplingConfig(seed=seed).for_model(self.diffusion.config, ())
        return generate(model, self.diffusion, num, sampling, batch_size=batch_size, autocast=self.amp)

    def quick_fid(self, model, step):
        """(FID, confident share) of --eval_samples samples, also appended to eval_log.csv."""
        begin, num, device = time.perf_counter(), self.cfg.eval_samples, self.diffusion.device
        samples = self.generate(model, num, QUICK_FID_SEED, sampling_batch_size(device))
        fake, probs = classify(self.classifier, samples, device)
        fid, confident = fid_kid(self.real, fake)[0], class_statistics(probs)["confident"]
        seconds = time.perf_counter() - begin
        path = self.out_dir / "eval_log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["step", "fid", "confident", "seconds"])
            writer.writerow([step, f"{fid:.4f}", f"{confident:.4f}", f"{seconds:.1f}"])
        tqdm.write(f"step {step}: FID {fid:.3f} on {num} samples ({seconds:.0f} s)")
        return fid, confident
