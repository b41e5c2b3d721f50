"""Pictures: sample grids, the denoising-steps figure, the loss curve, the denoising GIF."""
import csv
import os
import sys

import matplotlib
import numpy as np
import torchvision


def can_show():
    """False when there is no display to open a window on (headless servers, CI)."""
    return not sys.platform.startswith("linux") or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pyplot(show):
    """matplotlib.pyplot, with the non-interactive Agg backend unless a window will be shown."""
    if not show:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def to_unit(images):
    """[-1, 1] model range -> [0, 1] for display."""
    return ((images.float().cpu() + 1) / 2).clamp(0, 1)


def grid_image(images, nrow=8):
    """(B, C, H, W) images in [-1, 1] -> one (C, H', W') grid in [0, 1]."""
    return torchvision.utils.make_grid(to_unit(images), nrow=nrow, padding=2)


def save_grid(images, path, nrow=8):
    """Save (B, C, H, W) images in [-1, 1] as one PNG grid."""
    torchvision.utils.save_image(grid_image(images, nrow), path)


def spread(timesteps, count):
    """`count` times spread evenly from the first (the noise) to the last (the data) of the sampler's."""
    picks = np.unique(np.linspace(0, len(timesteps) - 1, min(count, len(timesteps))).round().astype(int))
    return {timesteps[i] for i in picks}


def step_figure(steps, path, show=False, with_x0=True, row_names=None):
    """Denoising figure: columns = the chosen steps from t = T-1 down to t = 0; each sample gets a row
    of x_t and, with_x0, a second row of the model's predicted x0; row_names (their classes) label them."""
    plt = pyplot(show)
    num_samples = steps[0].x.shape[0]
    rows_per_sample = 2 if with_x0 else 1
    fig, axes = plt.subplots(num_samples * rows_per_sample, len(steps), squeeze=False,
                             figsize=(1.1 * len(steps) + 0.8, 1.1 * num_samples * rows_per_sample + 0.4))
    for col, step in enumerate(steps):
        pictures = [to_unit(step.x)] + ([to_unit(step.pred_x0)] if with_x0 else [])
        for i in range(num_samples):
            for kind, images in enumerate(pictures):
                ax = axes[i * rows_per_sample + kind, col]
                picture = images[i, 0] if images.shape[1] == 1 else images[i].permute(1, 2, 0)
                ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
                ax.set(xticks=[], yticks=[])
                if i == 0 and kind == 0:
                    ax.set_title("final" if step.t < 0 else f"t={step.t:.3g}", fontsize=8)
                if col == 0:
                    name = f"{row_names[i]}: " if row_names and kind == 0 else ""
                    ax.set_ylabel(name + ("x_t" if kind == 0 else "pred x0"), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    if show:
        plt.show()
    plt.close(fig)


def loss_curve(log_path, path):
    """Plot loss (and the LR on a second axis) from the training CSV log."""
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    plt = pyplot(False)
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [float(r["loss"]) for r in rows], label="loss")
    ax.set(xlabel="step", ylabel="loss", yscale="log")
    lr_axis = ax.twinx()
    lr_axis.plot(steps, [float(r["lr"]) for r in rows], color="tab:orange", alpha=0.6, label="lr")
    lr_axis.set_ylabel("learning rate")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_gif(frames, path, nrow=8, frame_ms=60, hold_last=20):
    """Animated GIF of a list of (B, C, H, W) batches in [-1, 1]; the last frame is held."""
    pictures = [torchvision.transforms.functional.to_pil_image(grid_image(frame, nrow)) for frame in frames]
    pictures += [pictures[-1]] * hold_last
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=frame_ms, loop=0)
