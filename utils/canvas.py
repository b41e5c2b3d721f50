"""The demo page's pictures: images to zoomed grids, and its drawing and erasing canvases to 28 x 28 digits."""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from utils.datasets import read_image
from utils.errors import UserError
from utils.plotting import grid_image

ZOOM = 4            # screen pixels per image pixel in the grids (torchvision's make_grid, padding 2)
CANVAS = 280        # the drawing and erasing canvases: 10 screen pixels per image pixel
MAX_UPLOAD_MB = 8


def picture(images, nrow, zoom=ZOOM):
    """(B, C, 28, 28) in [-1, 1] -> a uint8 (H, W, 3) grid, `zoom` screen pixels per pixel."""
    return zoomed((grid_image(images.float(), nrow) * 255).round().byte().permute(1, 2, 0).numpy(), zoom)


def zoomed(grid, zoom=ZOOM):
    return grid.repeat(zoom, 0).repeat(zoom, 1)


def drawing_to_digit(sketch):
    """A drawn digit as MNIST draws them, (1, 28, 28) uint8, white on black: the ink's bounding box
    scaled to fit 20 x 20 pixels, its centre of mass at the centre, 13.5 (LeCun et al. 1998); None if blank."""
    if sketch is None or sketch.get("composite") is None:
        return None
    rgba = np.asarray(sketch["composite"], dtype=np.float32)
    if rgba.shape[:2] != (CANVAS, CANVAS):
        raise UserError(f"the drawing should be {CANVAS} x {CANVAS} pixels, got {rgba.shape[1]} x {rgba.shape[0]}")
    if rgba.ndim == 2:
        rgba = np.stack([rgba] * 3 + [np.full_like(rgba, 255)], axis=-1)
    alpha = rgba[..., 3] / 255 if rgba.shape[-1] == 4 else 1.0
    ink = alpha * (1 - rgba[..., :3].mean(-1) / 255)  # dark strokes on a light or transparent page
    rows, cols = np.nonzero(ink > 0.1)
    if len(rows) == 0:
        return None
    crop = Image.fromarray((ink[rows.min():rows.max() + 1, cols.min():cols.max() + 1] * 255).astype(np.uint8))
    scale = 20 / max(crop.size)
    crop = np.asarray(crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
                                  Image.Resampling.LANCZOS), dtype=np.float32)
    ys, xs = np.indices(crop.shape)
    top = int(np.clip(round(13.5 - (ys * crop).sum() / crop.sum()), 0, 28 - crop.shape[0]))
    left = int(np.clip(round(13.5 - (xs * crop).sum() / crop.sum()), 0, 28 - crop.shape[1]))
    digit = np.zeros((28, 28), np.float32)
    digit[top:top + crop.shape[0], left:left + crop.shape[1]] = crop
    return torch.from_numpy(digit.clip(0, 255).round().astype(np.uint8))[None]


def erased(editor):
    """(the image, (1, 28, 28) uint8; the mask, (1, 1, 28, 28), 1 = keep) from the erasing canvas:
    the image is its background, the mask what was brushed over it (None where nothing was)."""
    if editor is None or editor.get("background") is None:
        return None, None
    background = np.asarray(editor["background"])
    composite = background if editor.get("composite") is None else editor["composite"]
    if background.shape[:2] != (CANVAS, CANVAS) or np.shape(composite)[:2] != (CANVAS, CANVAS):
        raise UserError(f"the canvas should be {CANVAS} x {CANVAS} pixels, got {background.shape[1]} x "
                        f"{background.shape[0]}")
    composite = np.asarray(composite, dtype=np.float32)[..., :3]
    background, size = background[..., :3].astype(np.float32), CANVAS // 28
    brushed = (np.abs(composite - background).max(-1) > 8).astype(np.float32)
    pooled = lambda a: a[:28 * size, :28 * size].reshape(28, size, 28, size).mean((1, 3))  # noqa: E731
    image = torch.from_numpy(pooled(background.mean(-1)).round().astype(np.uint8))[None]
    mask = torch.from_numpy((pooled(brushed) < 0.25).astype(np.float32))[None, None]
    return image, (mask if mask.min() == 0 else None)


def canvas(image):
    """A (1, 28, 28) uint8 image as the erasing canvas's background, CANVAS pixels a side."""
    return zoomed(np.asarray(image[0]), CANVAS // 28)


def read_upload(path):
    """An uploaded image as (1, 28, 28) uint8, white digit on black (a light page is inverted)."""
    if Path(path).stat().st_size > MAX_UPLOAD_MB << 20:
        raise UserError(f"{Path(path).name} is larger than {MAX_UPLOAD_MB} MB")
    image = read_image(path, 28, 1)
    return 255 - image if image.float().mean() > 127 else image
